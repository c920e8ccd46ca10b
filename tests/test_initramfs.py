"""The appliance case: ./dotproxy in an initramfs with busybox, booted with Debian's kernel under
qemu-system-x86_64, resolving through the host's loopback DoT test server.

Run by `make test-initramfs` (DOTPROXY_INITRAMFS=1); skipped otherwise.  The guest has qemu
user networking with restrict=on (no route anywhere) and one guestfwd: its connections to
10.0.2.100:853 are handed to `busybox nc 127.0.0.1 <unbound port>` on the host, one relay per
connection.  That is the only way out of the guest.
"""

import glob
import os
import re
import shutil
import subprocess
import time

import pytest

import helpers

ENABLED = os.environ.get("DOTPROXY_INITRAMFS") == "1"
pytestmark = pytest.mark.skipif(not ENABLED, reason="initramfs boot: run `make test-initramfs` "
                                "(DOTPROXY_INITRAMFS=1)")

BOOT_TIMEOUT = 600  # software emulation (TCG) boots in well under a minute; a hard ceiling
BUSYBOX = os.environ.get("BUSYBOX", "/bin/busybox")


def pick_kernel():
    """A /boot/vmlinuz-VERSION with its /lib/modules/VERSION (the cloud flavour first)."""
    found = []
    for k in glob.glob("/boot/vmlinuz-*"):
        ver = k[len("/boot/vmlinuz-"):]
        if os.path.isfile("/lib/modules/%s/modules.dep" % ver) and os.access(k, os.R_OK):
            found.append((("cloud" in ver), ver, k))
    if not found:
        pytest.fail("no readable /boot/vmlinuz-* with modules (.ci/deps.sh initramfs; "
                    "reading /boot/vmlinuz-* needs root on Debian)")
    found.sort()
    return found[-1][2], found[-1][1]


def test_initramfs_resolves(dotproxy_bin, pki, unbound, tmp_path):
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu, "qemu-system-x86_64 missing (.ci/deps.sh initramfs)"
    assert os.path.isfile(BUSYBOX), "busybox-static missing (.ci/deps.sh initramfs)"
    kernel, kver = pick_kernel()

    initrd = tmp_path / "initramfs.cpio.gz"
    b = subprocess.run(["sh", os.path.join(helpers.HERE, "initramfs", "build.sh"), str(initrd),
                        dotproxy_bin, pki.root, kver], capture_output=True, text=True)
    assert b.returncode == 0, b.stdout + b.stderr
    print(b.stdout.strip())
    listing = subprocess.run("gzip -dc '%s' | '%s' cpio -t" % (initrd, BUSYBOX), shell=True,
                             capture_output=True, text=True).stdout.split()
    for f in ("init", "bin/busybox", "sbin/dotproxy", "root.pem", "etc/modules"):
        assert f in listing, (f, listing)

    # The one path out of the guest: 10.0.2.100:853 -> a relay to unbound on 127.0.0.1.
    relay = "%s nc 127.0.0.1 %d" % (BUSYBOX, unbound.port)
    netdev = "user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:853-cmd:%s" % relay
    assert "," not in relay
    cmd = [qemu, "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
           "-no-reboot", "-m", "256", "-machine", "accel=kvm:tcg",
           "-kernel", kernel, "-initrd", str(initrd),
           "-append", "console=ttyS0 panic=-1 quiet",
           "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0"]
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=BOOT_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace")
        pytest.fail("guest did not power off within %ds; console:\n%s" % (BOOT_TIMEOUT, out))
    elapsed = time.monotonic() - t0
    console = p.stdout.decode(errors="replace").replace("\r", "")
    print("boot + resolve + poweroff: %.1f s (kernel %s)" % (elapsed, kver))
    print(console[-3000:])
    assert p.returncode == 0, (p.returncode, p.stderr.decode(errors="replace"), console)
    assert "initramfs: FAILED" not in console, console
    m = re.search(r"^DOTPROXY-INITRAMFS-RESULT: (.*)$", console, re.M)
    assert m, "no result line on the guest console:\n" + console
    assert set(m.group(1).split()) == {"192.0.2.10", "192.0.2.11"}, console
    # dotproxy stopped cleanly on SIGTERM inside the guest.
    assert re.search(r"^DOTPROXY-INITRAMFS-EXIT: 0$", console, re.M), console
