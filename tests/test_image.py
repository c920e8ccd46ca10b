"""The multi-architecture image, built for real: the Dockerfile under buildah for linux/amd64,
linux/arm64 and linux/arm/v7, a manifest list of the three, inspected offline.

Run by `make test-image` (DOTPROXY_IMAGE=1); skipped otherwise.  Slow: apt, musl and BearSSL
once per target, about 13 minutes on 2 CPUs from nothing (mmdebstrap 1, amd64 2, arm64 4 to 6,
arm/v7 3); each run's times are added to build/image/times, the build logs are build/image/.

- The build stage's base is a Debian bookworm made here from Debian's archive (mmdebstrap into
  build/image/debian-bookworm.tar, imported once), since no registry is reachable; BearSSL and
  musl come from Debian's source packages inside the build (BEARSSL_FROM=debian), or from
  bearssl-0.6.tar.gz / musl-1.2.3.tar.gz when they lie in the build context.
- buildah keeps its images in its own store, build/image/storage (vfs driver, chroot
  isolation: no container runtime, no cgroups needed), never the machine's.
- Each target is built with --platform; the log shows the build stage ran on the build
  machine's own platform and cross-compiled (no emulation). Each image holds one file, a static
  binary for its architecture, which runs (under qemu-user for arm) and answers a query through
  the loopback DoT upstream.
- buildah manifest create/add makes the list; buildah manifest inspect shows it; it is pushed to
  an OCI layout (oci:DIR) and read back with skopeo inspect --raw, per platform with skopeo's
  --override-arch/--override-variant, and from the layout's own blobs (checked by digest).
"""

import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import tarfile
import time

import pytest

import helpers
from helpers import a_addrs, free_port, query_tcp, query_udp

ENABLED = os.environ.get("DOTPROXY_IMAGE") == "1"
pytestmark = pytest.mark.skipif(not ENABLED, reason="multi-arch image build: run "
                                "`make test-image` (DOTPROXY_IMAGE=1)")

CACHE = os.environ.get("DOTPROXY_IMAGE_CACHE") or os.path.join(helpers.REPO, "build", "image")
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE = "localhost/dotproxy-build-base:bookworm"
NAME = "localhost/dotproxy-test"
LIST = NAME + ":multiarch"
EXAMPLE = {"192.0.2.10", "192.0.2.11"}
BUILD_TIMEOUT = 3600  # one target: a hard ceiling, not a performance bound
TIMEOUT = 20.0  # emulated TLS handshakes are slow
# DOTPROXY_IMAGE_REUSE=1 (working on this test only): take the images of the last run instead
# of building them again.
REUSE = os.environ.get("DOTPROXY_IMAGE_REUSE") == "1"

# platform: tag, what the build stage makes (.arch), qemu name, (ELF class, data, machine),
# file(1)'s word for it, OCI architecture and variant
PLATFORMS = {
    "linux/amd64": ("amd64", "native", None, (2, 1, 62), "x86-64", "amd64", ""),
    "linux/arm64": ("arm64", "aarch64", "aarch64", (2, 1, 183), "ARM aarch64", "arm64", "v8"),
    "linux/arm/v7": ("arm-v7", "armhf", "arm", (1, 1, 40), "ARM, EABI5", "arm", "v7"),
}
DEB_TO_PLATFORM = {"amd64": "linux/amd64", "arm64": "linux/arm64", "armhf": "linux/arm/v7"}


def storage_opts():
    return ["--root", os.path.join(CACHE, "storage"), "--runroot", os.path.join(CACHE, "run"),
            "--storage-driver", "vfs"]


def buildah(*args, timeout=600, check=True):
    r = subprocess.run(["buildah"] + storage_opts() + list(args), capture_output=True,
                       text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                       env=dict(os.environ, BUILDAH_ISOLATION="chroot"))
    if check:
        assert r.returncode == 0, "buildah %s: %s\n%s" % (" ".join(args), r.stdout[-3000:],
                                                          r.stderr[-3000:])
    return r


def host_platform():
    deb = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert deb in DEB_TO_PLATFORM, "no image build on a %s machine" % deb
    return DEB_TO_PLATFORM[deb]


def note(line):
    """A line for the report (build/image/times) and pytest's output."""
    print(line)
    with open(os.path.join(CACHE, "times"), "a") as f:
        f.write("%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), line))


def elf_header(data):
    assert data[:4] == b"\x7fELF", "not an ELF file"
    machine = struct.unpack("<H" if data[5] == 1 else ">H", data[18:20])[0]
    return data[4], data[5], machine


@pytest.fixture(scope="module")
def tools():
    for t in ("buildah", "skopeo", "mmdebstrap", "file", "dpkg"):
        assert shutil.which(t), "%s missing (.ci/deps.sh image)" % t
    if os.geteuid() != 0:
        pytest.fail("building images with buildah's vfs store and chroot isolation needs root")
    os.makedirs(CACHE, exist_ok=True)


@pytest.fixture(scope="module")
def base(tools):
    """The build stage's base image: Debian bookworm (minbase) from Debian's archive."""
    if buildah("inspect", "--type", "image", BASE, check=False).returncode == 0:
        return BASE
    tar = os.path.join(CACHE, "debian-bookworm.tar")
    if not os.path.isfile(tar):
        t0 = time.time()
        tmp = os.path.join(CACHE, "debian-bookworm.tmp.tar")
        r = subprocess.run(["mmdebstrap", "--variant=minbase", "--format=tar", "--quiet",
                            "bookworm", tmp, MIRROR], capture_output=True, text=True,
                           timeout=1800, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        os.rename(tmp, tar)
        note("mmdebstrap bookworm: %.0f s" % (time.time() - t0))
    ctr = buildah("from", "scratch").stdout.strip()
    try:
        mnt = buildah("mount", ctr).stdout.strip()
        subprocess.run(["tar", "-xf", tar, "-C", mnt], check=True, timeout=600)
        buildah("umount", ctr)
        os_, _, arch = host_platform().partition("/")
        arch, _, variant = arch.partition("/")
        cfg = ["config", "--os", os_, "--arch", arch, "--cmd", "/bin/sh"]
        if variant:
            cfg += ["--variant", variant]
        buildah(*(cfg + [ctr]))
        buildah("commit", "--rm", ctr, BASE, timeout=1200)
    except BaseException:
        buildah("rm", ctr, check=False)
        raise
    return BASE


def build_args():
    """--build-arg options: the local base; BearSSL and musl from Debian's source packages
    unless their tarballs are in the build context (the repository); BUILDPLATFORM, which
    buildah 1.28 (Debian bookworm's) leaves unset."""
    args = {"DEBIAN_IMAGE": BASE, "BUILDPLATFORM": host_platform()}
    if os.path.isfile(os.path.join(helpers.REPO, "bearssl-0.6.tar.gz")):
        args["BEARSSL_TARBALL"] = "bearssl-0.6.tar.gz"
    else:
        args["BEARSSL_FROM"] = "debian"
    if os.path.isfile(os.path.join(helpers.REPO, "musl-1.2.3.tar.gz")):
        args["MUSL_TARBALL"] = "musl-1.2.3.tar.gz"
    if os.environ.get("SOURCE_DATE_EPOCH"):
        args["SOURCE_DATE_EPOCH"] = os.environ["SOURCE_DATE_EPOCH"]
    out = []
    for k, v in sorted(args.items()):
        out += ["--build-arg", "%s=%s" % (k, v)]
    return out


def build(platform, tag, timeout=BUILD_TIMEOUT):
    """buildah build of the repository for one platform; (CompletedProcess, seconds). No
    --layers: with the vfs driver every committed layer is a full copy of the build stage's
    tree (about 600 MB each, 16 of them per platform); without it each build is one working
    container and one commit of the final image."""
    t0 = time.time()
    r = buildah("build", "--isolation", "chroot", "--layers=false", "--pull=never", "--format",
                "docker", "--platform", platform, *build_args(), "-t", tag, "-f",
                os.path.join(helpers.REPO, "Dockerfile"), helpers.REPO,
                timeout=timeout, check=False)
    return r, time.time() - t0


@pytest.fixture(scope="module")
def images(base):
    """{platform: (image id, build log)}, one build per platform, one after the other (each
    uses all CPUs)."""
    out = {}
    for platform, (tag, *_rest) in PLATFORMS.items():
        if REUSE and os.path.isfile(os.path.join(CACHE, "build-%s.log" % tag)) and buildah(
                "inspect", "--type", "image", "%s:%s" % (NAME, tag), check=False).returncode == 0:
            with open(os.path.join(CACHE, "build-%s.log" % tag)) as f:
                log = f.read()
            iid = buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}",
                          "%s:%s" % (NAME, tag)).stdout.strip()
            out[platform] = (iid, log)
            continue
        r, secs = build(platform, "%s:%s" % (NAME, tag))
        log = r.stdout + r.stderr
        with open(os.path.join(CACHE, "build-%s.log" % tag), "w") as f:
            f.write(log)
        assert r.returncode == 0, "build for %s failed:\n%s" % (platform, log[-5000:])
        note("buildah build --platform %s: %.0f s" % (platform, secs))
        iid = buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}",
                      "%s:%s" % (NAME, tag)).stdout.strip()
        out[platform] = (iid, log)
    return out


@pytest.fixture(scope="module")
def layout(images, tmp_path_factory):
    """The manifest list, made with buildah manifest create/add and pushed (--all) to an OCI
    layout: (its directory, buildah manifest inspect's JSON)."""
    buildah("manifest", "rm", LIST, check=False)
    buildah("rmi", LIST, check=False)
    buildah("manifest", "create", LIST)
    for platform, (tag, _a, _q, _e, _f, _arch, variant) in PLATFORMS.items():
        # buildah 1.28's manifest add leaves the arm/v7 image's variant out of the list (build
        # --manifest records it): give it
        extra = ["--variant", variant] if variant == "v7" else []
        buildah("manifest", "add", *extra, LIST, "%s:%s" % (NAME, tag))
    inspected = json.loads(buildah("manifest", "inspect", LIST).stdout)
    d = str(tmp_path_factory.mktemp("oci") / "layout")
    buildah("manifest", "push", "--all", "--format", "oci", LIST, "oci:%s:dotproxy" % d,
            timeout=600)
    return d, inspected


def platform_of(entry):
    p = entry["platform"]
    return p["os"], p["architecture"], p.get("variant", "")


def blob(layout_dir, digest):
    algo, _, hexd = digest.partition(":")
    assert algo == "sha256", digest
    with open(os.path.join(layout_dir, "blobs", "sha256", hexd), "rb") as f:
        data = f.read()
    assert hashlib.sha256(data).hexdigest() == hexd, "blob %s does not match its digest" % digest
    return data


def skopeo_raw(layout_dir, *extra):
    r = subprocess.run(["skopeo", "inspect", *extra, "oci:%s:dotproxy" % layout_dir],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def binaries(layout, tmp_path_factory):
    """{platform: path of /dotproxy}, from each image's layers in the OCI layout; each image
    holds that one file and nothing else."""
    d, _ = layout
    index = skopeo_raw(d, "--raw")
    out = {}
    outdir = tmp_path_factory.mktemp("bins")
    for entry in index["manifests"]:
        os_, arch, variant = platform_of(entry)
        platform = "/".join(x for x in (os_, arch, variant) if x and x != "v8")
        manifest = json.loads(blob(d, entry["digest"]))
        files = {}
        for layer in manifest["layers"]:
            data = blob(d, layer["digest"])
            if layer["mediaType"].endswith("+gzip") or data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            with tarfile.open(fileobj=io.BytesIO(data)) as t:
                for m in t.getmembers():
                    name = m.name.lstrip("./")
                    if not name:
                        continue
                    if m.isfile():
                        files[name] = t.extractfile(m).read()
                    else:
                        files.setdefault(name, None)
        assert list(files) == ["dotproxy"], "%s: the image holds %r" % (platform, sorted(files))
        path = outdir / ("dotproxy-" + PLATFORMS[platform][0])
        path.write_bytes(files["dotproxy"])
        os.chmod(path, 0o755)
        out[platform] = str(path)
    return out


# ---------------------------------------------------------------- the builds

def test_each_target_is_cross_compiled_on_the_build_platform(images):
    """The build stage ran on the build machine's platform (dpkg there says so), and made the
    native binary for it and make cross's binary for the others: nothing ran emulated."""
    here = host_platform()
    for platform, (iid, log) in images.items():
        what = PLATFORMS[platform][1] if platform != here else "native"
        line = "dotproxy: building for %s on %s (BUILDPLATFORM %s): %s" % (
            platform, here, here, what)
        assert line in log, "%s: %r not in the build log" % (platform, line)
        if what != "native":
            assert "dotproxy-%s" % what in log, log[-3000:]
    assert len({iid for iid, _ in images.values()}) == len(PLATFORMS), images


def test_image_configs(images):
    """Each image says its platform, runs the binary as 65534:65534, keeps the health check
    (--format docker: the OCI format has no HEALTHCHECK) and the DNS ports."""
    for platform, (tag, _a, _q, _e, _f, arch, variant) in PLATFORMS.items():
        info = json.loads(buildah("inspect", "--type", "image", "%s:%s" % (NAME, tag)).stdout)
        oci = info["OCIv1"]
        assert (oci["os"], oci["architecture"]) == ("linux", arch), (platform, oci)
        if variant == "v7":
            assert oci.get("variant") == "v7", oci
        cfg = info["Docker"]["config"]
        assert cfg["User"] == "65534:65534", cfg
        assert cfg["Entrypoint"] == ["/dotproxy"], cfg
        assert {"53/udp", "53/tcp"} <= set(cfg["ExposedPorts"]), cfg
        assert cfg["Healthcheck"]["Test"] == ["CMD", "/dotproxy", "--probe"], cfg


# ---------------------------------------------------------------- the manifest list

def test_manifest_list_has_the_three_platforms(images, layout):
    d, inspected = layout
    got = sorted(platform_of(m) for m in inspected["manifests"])
    want = sorted(("linux", a, v) for (_t, _a, _q, _e, _f, a, v) in PLATFORMS.values())
    # buildah may leave arm64's variant out
    norm = lambda ps: sorted((o, a, "" if v == "v8" else v) for o, a, v in ps)  # noqa: E731
    assert norm(got) == norm(want), inspected

    # the pushed layout: an OCI index of the three, read back by skopeo without a registry
    index = skopeo_raw(d, "--raw")
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json", index
    assert norm(platform_of(m) for m in index["manifests"]) == norm(want), index
    for entry in index["manifests"]:
        _os, arch, variant = platform_of(entry)
        manifest = json.loads(blob(d, entry["digest"]))
        config = json.loads(blob(d, manifest["config"]["digest"]))
        assert (config["os"], config["architecture"]) == ("linux", arch), config
        # skopeo picks the same image from the list for that platform (its "Digest" is the
        # list's: compare the layers)
        extra = ["--override-os", "linux", "--override-arch", arch]
        if variant:
            extra += ["--override-variant", variant]
        picked = skopeo_raw(d, *extra)
        assert picked["Architecture"] == arch, (picked, entry)
        assert picked["Layers"] == [l["digest"] for l in manifest["layers"]], (picked, manifest)


def test_binaries_are_static_for_their_architecture(binaries):
    assert set(binaries) == set(PLATFORMS), binaries
    sizes = {}
    for platform, path in binaries.items():
        _t, _a, _q, elf, word, _arch, _v = PLATFORMS[platform]
        with open(path, "rb") as f:
            data = f.read()
        assert elf_header(data) == elf, platform
        assert b"/lib/ld-" not in data and b"ld-musl" not in data, "%s: dynamic" % platform
        desc = subprocess.run(["file", "-b", path], capture_output=True, text=True,
                              check=True).stdout
        assert word in desc and "statically linked" in desc, (platform, desc)
        sizes[platform] = len(data)
    note("image binaries: " + ", ".join("%s %d bytes" % kv for kv in sorted(sizes.items())))


@pytest.mark.parametrize("platform", list(PLATFORMS))
def test_binary_resolves(binaries, platform, pki, unbound):
    """Each image's binary, natively or under qemu-user, answers through the loopback DoT
    upstream over UDP and TCP."""
    qname = PLATFORMS[platform][2]
    prefix = []
    if platform != host_platform():
        qemu = shutil.which("qemu-%s-static" % qname) or shutil.which("qemu-%s" % qname)
        assert qemu, "qemu-%s-static missing (.ci/deps.sh image)" % qname
        prefix = [qemu]
    v = subprocess.run(prefix + [binaries[platform], "--version"], capture_output=True,
                       text=True, timeout=60)
    assert v.returncode == 0 and v.stdout.startswith("dotproxy "), v
    port = free_port()
    p = helpers.DotProxy(binaries[platform],
                         ["-l", "127.0.0.1@%d" % port, "-u", "127.0.0.1@%d#dns.test" % unbound.port,
                          "-c", pki.root, "-t", "20000"],
                         port=port, ready_timeout=TIMEOUT, cmd_prefix=prefix)
    try:
        assert a_addrs(query_udp(port, "example.test", timeout=TIMEOUT)) == EXAMPLE
        assert a_addrs(query_tcp(port, "example.test", timeout=TIMEOUT)) == EXAMPLE
    finally:
        rc = p.stop(timeout=15.0)
    assert rc == 0, p.log()
