"""OpenWrt package (openwrt/): its scripts, run for real wherever this machine allows.

What is real and what stands in:
- The init script (openwrt/files/dotproxy.init) runs under dash and busybox ash; rc.common,
  /lib/functions.sh and procd.sh are stand-ins (tests/openwrt/harness.sh: config_* parse the
  UCI file as OpenWrt's uci_load does, procd_* print what procd would be told),
  uci_load_validate is OpenWrt's own, and the validate_data it calls is a stand-in
  implementing procd's datatypes (tests/openwrt/ucistub.py validate).
- The dnsmasq hand-off (openwrt/files/dotproxy-dnsmasq) runs as shipped against a stand-in
  uci(1) (tests/openwrt/bin/uci: /etc/config files with uncommitted changes kept apart until
  commit, as uci does) and a stand-in /etc/init.d/dnsmasq (tests/openwrt/dnsmasq-init) that
  turns the dhcp config's server/noresolv/resolvfile into a dnsmasq.conf and runs Debian's
  real dnsmasq; the "ISP" is a plain DNS server on loopback, dotproxy the real binary with
  the command line the init script generated, upstream the tests' unbound DoT fixture.
- Jail, capabilities and no_new_privs: bwrap with an empty root (the binary alone), the
  capabilities file's sets, no_new_privs (bwrap always sets it) and the seccomp list compiled
  by libseccomp (python3-seccomp) and handed to bwrap; procd and ujail themselves are not
  here. The seccomp list is also applied for real to a run of integration tests.
- IPv6 off: a network namespace with net.ipv6.conf.all.disable_ipv6=1.
Every address used is loopback (or inside a private network namespace).
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time

import dns.exception
import dns.rcode
import pytest

import helpers
from helpers import a_addrs, free_port, query_tcp, query_udp

OPENWRT = os.path.join(helpers.REPO, "openwrt")
FILES = os.path.join(OPENWRT, "files")
INIT = os.path.join(FILES, "dotproxy.init")
CONFIG = os.path.join(FILES, "dotproxy.config")
HANDOFF = os.path.join(FILES, "dotproxy-dnsmasq")
CAPS = os.path.join(FILES, "dotproxy.capabilities")
SECCOMP = os.path.join(FILES, "dotproxy.seccomp")
KEEP = os.path.join(FILES, "dotproxy.keep")
TEST_SH = os.path.join(OPENWRT, "test.sh")
DIST = os.path.join(OPENWRT, "dist.sh")
STUBS = os.path.join(helpers.HERE, "openwrt")
HARNESS = os.path.join(STUBS, "harness.sh")
STUB_BIN = os.path.join(STUBS, "bin")
DNSMASQ_INIT = os.path.join(STUBS, "dnsmasq-init")
SECCOMP_RUN = os.path.join(STUBS, "seccomp_run.py")
PROG = "/usr/sbin/dotproxy"
EXAMPLE = {"192.0.2.10", "192.0.2.11"}      # example.test from the unbound DoT fixture
ISP = {"198.51.100.1"}                       # example.test from the plain "ISP" server
CI = os.path.join(helpers.REPO, ".ci")

# The shells to run the scripts with: dash (sh), and busybox ash, OpenWrt's own shell.
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
SHELLS = [["sh"], [BUSYBOX, "sh"]]

SHELL_FILES = [INIT, HANDOFF, TEST_SH, DIST, HARNESS, DNSMASQ_INIT,
               os.path.join(STUB_BIN, "uci"), os.path.join(STUB_BIN, "logger"),
               os.path.join(STUBS, "dotproxy-seccomp"), os.path.join(STUBS, "cross-strace.sh"),
               os.path.join(helpers.HERE, "initramfs", "build.sh"),
               os.path.join(helpers.HERE, "initramfs", "init"),
               os.path.join(CI, "run")] + \
    sorted(os.path.join(CI, f) for f in os.listdir(CI) if f.endswith(".sh"))


def need(tool):
    path = shutil.which(tool) or (os.path.exists("/usr/sbin/" + tool) and "/usr/sbin/" + tool)
    assert path, "%s missing (.ci/deps.sh test installs it)" % tool
    return path


def need_root():
    assert os.geteuid() == 0, "needs root (namespaces, bwrap as root, port 53)"


# IF_INET6 stand-ins: /proc/net/if_inet6 with and without the loopback's ::1
IF_INET6_ON = ("00000000000000000000000000000001 01 80 10 80       lo\n"
               "fe800000000000000000000000000001 02 40 20 80     eth0\n")
IF_INET6_OFF = "fe800000000000000000000000000001 02 40 20 80     eth0\n"


def run_harness(config_text, tmp_path, shell=("sh",), action="start_service", args=(),
                env=None, ipv6=True, check=True):
    cfg = tmp_path / "dotproxy.config"
    cfg.write_text(config_text)
    inet6 = tmp_path / "if_inet6"
    inet6.write_text(IF_INET6_ON if ipv6 else IF_INET6_OFF)
    e = dict(os.environ, HARNESS_IF_INET6=str(inet6), LOGGER_FILE=str(tmp_path / "logger"),
             PATH=STUB_BIN + ":" + os.environ["PATH"])
    if ipv6 is None:
        e.pop("HARNESS_IF_INET6")
    e.update(env or {})
    r = subprocess.run(list(shell) + [HARNESS, INIT, str(cfg), action] + list(args),
                       capture_output=True, text=True, timeout=120, env=e)
    if check:
        assert r.returncode == 0, r.stderr
        assert not r.stderr, r.stderr
        return r.stdout
    return r


def instances(out):
    """{instance: {"command": [argv], param: [values]...}} in order of appearance."""
    res = {}
    for line in out.splitlines():
        inst, _, rest = line.partition(" ")
        if inst in ("trigger", "validation"):
            continue
        key, _, val = rest.partition(" ")
        d = res.setdefault(inst, {"command": []})
        if key == "command":
            d["command"].append(val)
        else:
            d[key] = val.split(" ")
    return res


@pytest.fixture(params=[" ".join(s) for s in SHELLS])
def shell(request):
    return request.param.split(" ")


# ---------------------------------------------------------------- shellcheck, files

@pytest.mark.parametrize("path", SHELL_FILES, ids=lambda p: os.path.relpath(p, helpers.REPO))
def test_shellcheck(path):
    """POSIX sh, except what says bash in its first line (.ci/run); each script in .ci/ says
    what it does in a comment at its top."""
    sc = need("shellcheck")
    first = open(path).readline()
    sh = "bash" if "bash" in first else "sh"
    r = subprocess.run([sc, "-s", sh, "-x", path], capture_output=True, text=True,
                       cwd=os.path.dirname(path))
    assert r.returncode == 0, r.stdout + r.stderr
    if os.path.dirname(path) == CI:
        assert first.startswith("#!") and open(path).read().split("\n")[1].startswith("# "), \
            "%s: no header comment" % path


def test_busybox_is_there():
    """busybox ash is OpenWrt's shell: the scripts run under it here too (not skipped)."""
    assert os.access(BUSYBOX, os.X_OK), "busybox missing (.ci/deps.sh test installs it)"


def test_init_script_is_procd():
    text = open(INIT).read()
    assert text.startswith("#!/bin/sh /etc/rc.common\n")
    assert re.search(r"^USE_PROCD=1$", text, re.M)
    # after network (20) and before dnsmasq is anything but started (19 < 25 < 60)
    assert int(re.search(r"^START=(\d+)$", text, re.M).group(1)) > 20
    for f in ("dotproxy.init", "dotproxy-dnsmasq"):
        assert os.access(os.path.join(FILES, f), os.X_OK), f
    assert os.access(TEST_SH, os.X_OK)


def test_capabilities_file():
    """ujail's capabilities file: CAP_NET_BIND_SERVICE and nothing else, in every set, ambient
    included (an unprivileged user keeps it across execve)."""
    caps = json.load(open(CAPS))
    assert sorted(caps) == ["ambient", "bounding", "effective", "inheritable", "permitted"]
    for k, v in caps.items():
        assert v == ["CAP_NET_BIND_SERVICE"], k


def test_seccomp_file_format():
    """procd's OCI form: a KILL_PROCESS default, one ALLOW rule, names sorted and unique,
    execve in it (ujail loads the filter before execve), nothing dotproxy has no use for."""
    doc = json.load(open(SECCOMP))
    assert doc["defaultAction"] == "SCMP_ACT_KILL_PROCESS"
    assert [r["action"] for r in doc["syscalls"]] == ["SCMP_ACT_ALLOW"]
    names = doc["syscalls"][0]["names"]
    assert names == sorted(set(names))
    assert "execve" in names and "select" in names and "exit_group" in names
    for bad in ("execveat", "fork", "clone", "vfork", "ptrace", "mount", "chroot", "setuid",
                "unlink", "openat2", "kill", "bpf", "init_module", "reboot"):
        assert bad not in names, bad


def test_keep_file_names_the_guard():
    """sysupgrade keeps the guard that gives dnsmasq its servers back in a new image
    without dotproxy."""
    guard = re.search(r"^GUARD=\$\{DOTPROXY_GUARD:-(\S+)\}$", open(HANDOFF).read(), re.M)
    assert guard and open(KEEP).read().split() == [guard.group(1)]
    assert guard.group(1).startswith("/etc/uci-defaults/")


# ---------------------------------------------------------------- UCI -> procd

def test_shipped_config(tmp_path, shell):
    out = run_harness(open(CONFIG).read(), tmp_path, shell)
    inst = instances(out)
    assert list(inst) == ["main"]
    m = inst["main"]
    assert m["command"] == [PROG, "-l", "127.0.0.1@5453", "-l", "::1@5453",
                            "-u", "1.1.1.1", "-u", "1.0.0.1", "-u", "2606:4700:4700::1111",
                            "-t", "4000", "--cache-size", "128k", "--serve-stale", "3600",
                            "--drain-timeout", "2000", "--syslog"]
    assert m["user"] == ["dotproxy"]
    assert m["respawn"] == ["3600", "5", "0"]      # for ever: dnsmasq may be pointed here
    assert m["stdout"] == ["1"] and m["stderr"] == ["1"]
    assert m["no_new_privs"] == ["1"]
    assert m["capabilities"] == ["/etc/capabilities/dotproxy.json"]
    assert m["seccomp"] == ["/etc/seccomp/dotproxy.json"]
    # an empty read-only root; /dev/log only, as --syslog writes there
    assert m["jail"] == ["dotproxy", "log", "ronly"]
    assert "jail_mount" not in m
    # procd waits term_timeout seconds after SIGTERM: longer than the drain timeout
    assert int(m["term_timeout"][0]) * 1000 > 2000


def test_shipped_config_without_ipv6(tmp_path, shell):
    """No ::1 on the router: the default listeners leave it out, and so does an explicit
    'list listen ::1@PORT' (with a notice in the log), instead of a dotproxy that cannot
    bind and a procd that gives up."""
    m = instances(run_harness(open(CONFIG).read(), tmp_path, shell, ipv6=False))["main"]
    assert [a for a in m["command"] if a.startswith(("::1", "[::1]"))] == []
    assert m["command"][1:3] == ["-l", "127.0.0.1@5453"]
    conf = "config dotproxy main\n\tlist listen '127.0.0.1@5400'\n\tlist listen '::1@5400'\n" \
        "\tlist listen '[::1]:5401'\n"
    m = instances(run_harness(conf, tmp_path, shell, ipv6=False))["main"]
    assert m["command"][:3] == [PROG, "-l", "127.0.0.1@5400"]
    assert "-l" not in m["command"][3:]
    if shell == ["sh"]:     # busybox ash runs its own logger applet, not the stand-in
        log = (tmp_path / "logger").read_text()
        assert "not listening on ::1@5400" in log and "not listening on [::1]:5401" in log
    m = instances(run_harness(conf, tmp_path, shell, ipv6=True))["main"]
    assert m["command"][:7] == [PROG, "-l", "127.0.0.1@5400", "-l", "::1@5400",
                                "-l", "[::1]:5401"]


def test_defaults(tmp_path, shell):
    m = instances(run_harness("config dotproxy 'main'\n", tmp_path, shell))["main"]
    assert m["command"] == [PROG, "-l", "127.0.0.1@5453", "-l", "::1@5453", "--syslog"]
    assert m["user"] == ["dotproxy"]
    assert m["term_timeout"] == ["10"]
    assert m["jail"] == ["dotproxy", "log", "ronly"]


ALL_OPTIONS = """
config dotproxy 'main'
	option enabled 'yes'
	list listen '127.0.0.1@5453'
	list listen '192.168.1.1@53'
	list upstream '9.9.9.9'
	list upstream '192.0.2.53@8853#dns.example.net^sha256/AAAA'
	list forward_zone 'corp.example=10.8.0.1'
	list forward_zone 'lan=192.168.1.1@53,tcp'
	list allow '192.168.1.0/24'
	list allow 'fd00::/8'
	list allow '10.0.0.7'
	option ca_file '{ca}'
	option timeout '3000'
	option idle_timeout '20000'
	option max_backoff '60000'
	option padding '0'
	option cache_size '1m'
	option cache_min_ttl '30'
	option cache_max_ttl '3600'
	option serve_stale '86400'
	option stale_timeout '500'
	option prefetch '20'
	option hedge_percent '0'
	option coalesce 'off'
	option drain_timeout '1500'
	option http '127.0.0.1@9153'
	option log 'verbose'
	option syslog 'no'
	option user 'root'
	option term_timeout '3'
	option jail '1'
	option seccomp 'false'
	list extra_args '--lame-duck'
	list extra_args '500'
"""


def test_every_option(tmp_path, shell):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    m = instances(run_harness(ALL_OPTIONS.format(ca=ca), tmp_path, shell))["main"]
    assert m["command"] == [
        PROG, "-l", "127.0.0.1@5453", "-l", "192.168.1.1@53",
        "-u", "9.9.9.9", "-u", "192.0.2.53@8853#dns.example.net^sha256/AAAA",
        "--forward-zone", "corp.example=10.8.0.1", "--forward-zone", "lan=192.168.1.1@53,tcp",
        "--allow", "192.168.1.0/24", "--allow", "fd00::/8", "--allow", "10.0.0.7",
        "-c", str(ca), "-t", "3000", "--idle-timeout", "20000", "--max-backoff", "60000",
        "--padding", "0", "--cache-size", "1m", "--cache-min-ttl", "30",
        "--cache-max-ttl", "3600", "--serve-stale", "86400", "--stale-timeout", "500",
        "--prefetch", "20", "--hedge-percent", "0", "--no-coalesce", "--drain-timeout", "1500",
        "--http", "127.0.0.1@9153", "-v", "--lame-duck", "500"]
    assert "user" not in m          # root: procd's default
    assert "seccomp" not in m       # seccomp 'false'
    assert m["term_timeout"] == ["3"]
    assert m["jail"] == ["dotproxy", "ronly"]       # no syslog: nothing mounted at all
    assert m["jail_mount"] == [str(ca)]             # the CA file, read at start
    assert m["file"] == [str(ca)]                   # a new CA file restarts it


def test_every_option_is_one_dotproxy_knows(tmp_path, dotproxy_bin):
    """Each flag the init script can generate is in dotproxy --help."""
    r = helpers.run_dotproxy(dotproxy_bin, ["--help"], check_safe=False)
    known = set(re.findall(r"(--[a-z][a-z-]*|(?<![\w-])-[a-zA-Z])\b", r.stdout))
    text = open(INIT).read()
    used = set(re.findall(r"(?:add_opt|append_arg|procd_append_param command) (-[-a-z]+)",
                          text))
    assert len(used) > 20, used
    assert used - known == set()


BAD_VALUES = [
    ("timeout", "99"), ("timeout", "4s"), ("port", "0"), ("port", "70000"),
    ("padding", "8"), ("cache_size", "12q"), ("serve_stale", "-1"), ("prefetch", "90"),
    ("hedge_percent", "101"), ("log", "debug"), ("syslog", "maybe"), ("jail", "2"),
    ("cache_min_ttl", "86401"), ("ca_file", "/nonexistent/ca.pem"), ("stale_timeout", "5"),
    ("term_timeout", "0"), ("dnsmasq", "x"),
]


@pytest.mark.parametrize("opt,value", BAD_VALUES, ids=lambda v: str(v))
def test_invalid_value_is_refused(tmp_path, opt, value):
    """A value outside its datatype: the section is not started, and logread says why."""
    conf = "config dotproxy 'main'\n\toption %s '%s'\n" % (opt, value)
    r = run_harness(conf, tmp_path, check=False)
    assert instances(r.stdout) == {}
    assert "section 'main': invalid options" in r.stderr
    assert "daemon.err dotproxy: section 'main': invalid options" in \
        (tmp_path / "logger").read_text()


def test_invalid_list_item_is_refused(tmp_path):
    conf = "config dotproxy 'main'\n\tlist allow '192.168.1.0/24'\n\tlist allow 'lan'\n"
    r = run_harness(conf, tmp_path, check=False)
    assert instances(r.stdout) == {} and "invalid options" in r.stderr


def test_forward_zones_and_quiet(tmp_path, shell):
    conf = """
config dotproxy 'main'
	list forward_zone 'lan=192.168.1.1@53'
	list forward_zone '168.192.in-addr.arpa=192.168.1.1'
	option log 'quiet'
	option syslog '0'
"""
    m = instances(run_harness(conf, tmp_path, shell))["main"]
    assert m["command"] == [PROG, "-l", "127.0.0.1@5453", "-l", "::1@5453",
                            "--forward-zone", "lan=192.168.1.1@53",
                            "--forward-zone", "168.192.in-addr.arpa=192.168.1.1", "-q"]


def test_disabled_and_several_instances(tmp_path, shell):
    conf = """
config dotproxy 'off'
	option enabled '0'
	list listen '127.0.0.1@5454'

config dotproxy 'a'
	list listen '127.0.0.1@5455'
	list upstream '1.1.1.1'
	option syslog '0'

config other 'ignored'
	option enabled '1'

config dotproxy 'bad'
	option timeout 'soon'

config dotproxy
	option enabled 'on'
	list listen '127.0.0.1@5456'
	option syslog '0'
"""
    r = run_harness(conf, tmp_path, shell, check=False)
    inst = instances(r.stdout)
    assert list(inst) == ["a", "cfg5"]  # unnamed: cfg<N>, N counting all sections
    assert inst["a"]["command"] == [PROG, "-l", "127.0.0.1@5455", "-u", "1.1.1.1"]
    assert inst["cfg5"]["command"] == [PROG, "-l", "127.0.0.1@5456"]
    assert "section 'bad': invalid options" in r.stderr


def test_nothing_enabled(tmp_path, shell):
    out = run_harness("config dotproxy 'main'\n\toption enabled '0'\n", tmp_path, shell)
    assert out == ""


def test_triggers(tmp_path, shell):
    out = run_harness("", tmp_path, shell, action="triggers")
    assert out.splitlines() == ["trigger reload dotproxy",
                                "validation validate_dotproxy_section"]


# ---------------------------------------------------------------- the hand-off, unit

DHCP = """
config dnsmasq
	option domainneeded '1'
	option localise_queries '1'
	option local '/lan/'
	option domain 'lan'
	list server '/ntp.test/127.0.0.1#{ntp}'
{extra}
config dhcp 'lan'
	option interface 'lan'
	option start '100'
"""


class Router:
    """A stand-in router in a directory: /etc/config (dhcp, dotproxy) read and written by
    the stand-in uci, logger's lines, the hand-off's guard, and dnsmasq (the stand-in init
    script running the real dnsmasq, when dnsmasq_port is given)."""

    def __init__(self, tmp, dhcp, dotproxy="", dnsmasq_port=None, prog=None, shell=("sh",)):
        self.dir = tmp
        self.conf = tmp / "config"
        self.conf.mkdir()
        (self.conf / "dhcp").write_text(dhcp)
        (self.conf / "dotproxy").write_text(dotproxy)
        self.guard = tmp / "uci-defaults" / "95-dotproxy-dnsmasq"
        self.dnsmasq_dir = tmp / "dnsmasq"
        self.dnsmasq_dir.mkdir()
        self.shell = list(shell)
        self.env = dict(os.environ, PATH=STUB_BIN + ":" + os.environ["PATH"],
                        UCI_CONFIG_DIR=str(self.conf), LOGGER_FILE=str(tmp / "logger"),
                        DOTPROXY_GUARD=str(self.guard), DOTPROXY_INIT=str(tmp / "no-init"),
                        DOTPROXY_DNSMASQ_INIT=DNSMASQ_INIT if dnsmasq_port else "true",
                        DNSMASQ_DIR=str(self.dnsmasq_dir), DNSMASQ_PORT=str(dnsmasq_port or 0),
                        HARNESS_HANDOFF=HANDOFF, HARNESS_PROG=prog or PROG)
        self.env.pop("HARNESS_IF_INET6", None)
        self.dnsmasq_port = dnsmasq_port

    def run(self, argv, check=True):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=180, env=self.env)
        if check:
            assert r.returncode == 0, r.stdout + r.stderr
        return r

    def handoff(self, *args):
        return self.run(self.shell + [HANDOFF] + list(args))

    def init(self, action, *args):
        """The init script's ACTION (start, stop, restart, disable, ...) with the stand-ins."""
        return self.run(self.shell + [HARNESS, INIT, str(self.conf / "dotproxy"), action]
                        + list(args)).stdout

    def dhcp_text(self):
        return (self.conf / "dhcp").read_text()

    def dnsmasq(self):
        """The first dnsmasq section as committed: {option: value or [items]}."""
        sys.path.insert(0, STUBS)
        try:
            import ucistub
        finally:
            sys.path.pop(0)
        return [s for s in ucistub.parse(self.dhcp_text()) if s["type"] == "dnsmasq"][0]["opts"]

    def committed(self):
        return parsed(self.dhcp_text())

    def log(self):
        p = self.dir / "logger"
        return p.read_text() if p.exists() else ""

    def dnsmasq_starts(self):
        p = self.dnsmasq_dir / "starts"
        return len(p.read_text().split()) if p.exists() else 0

    def start_dnsmasq(self):
        self.run([DNSMASQ_INIT, "restart"])

    def stop_dnsmasq(self):
        self.run([DNSMASQ_INIT, "stop"], check=False)


def parsed(text):
    """An /etc/config file as [(type, name, sorted options)]."""
    sys.path.insert(0, STUBS)
    try:
        import ucistub
    finally:
        sys.path.pop(0)
    return [(s["type"], s["name"], sorted(s["opts"].items())) for s in ucistub.parse(text)]


def servers(opts, key="server"):
    v = opts.get(key, [])
    return v if isinstance(v, list) else [v]


@pytest.mark.parametrize("shell,noresolv", [(["sh"], None), (["sh"], "0"), (["sh"], "1"),
                                           ([BUSYBOX, "sh"], None)],
                         ids=["sh-unset", "sh-0", "sh-1", "busybox-unset"])
def test_handoff_round_trip(tmp_path, shell, noresolv):
    """apply then restore gives back the dhcp config as it was: the server list in its order,
    noresolv as it was (unset stays unset); domain-specific servers stay through the
    hand-off; applying again changes nothing."""
    extra = "\tlist server '127.0.0.1#5301'\n\tlist server '9.9.9.9'\n"
    if noresolv is not None:
        extra += "\toption noresolv '%s'\n" % noresolv
    r = Router(tmp_path, DHCP.format(ntp=5300, extra=extra), shell=shell)
    before = r.committed()
    r.handoff("apply", "127.0.0.1#5453", "::1#5453")
    d = r.dnsmasq()
    assert servers(d) == ["/ntp.test/127.0.0.1#5300", "127.0.0.1#5453", "::1#5453"]
    assert d["noresolv"] == "1"
    assert r.guard.is_file()
    if shell == ["sh"]:     # busybox ash runs its own logger applet, not the stand-in
        assert "daemon.notice dotproxy: dnsmasq forwards to dotproxy" in r.log()
    text = r.dhcp_text()
    r.handoff("apply", "127.0.0.1#5453", "::1#5453")
    assert r.dhcp_text() == text
    st = r.handoff("status").stdout
    assert "handed to dotproxy (127.0.0.1#5453 ::1#5453)" in st, st
    r.handoff("restore")
    assert r.committed() == before
    assert servers(r.dnsmasq()) == ["/ntp.test/127.0.0.1#5300", "127.0.0.1#5301", "9.9.9.9"]
    assert not r.guard.exists()
    assert "dotproxy_" not in r.dhcp_text()
    r.handoff("restore")            # nothing saved: nothing changes
    assert r.committed() == before


def test_handoff_keeps_what_was_added_meanwhile(tmp_path):
    """A global server added by hand during the hand-off comes back with the others (after
    the next apply or at restore); a domain-specific one added meanwhile stays; a new
    dotproxy port replaces the old one."""
    r = Router(tmp_path, DHCP.format(ntp=5300, extra="\tlist server '127.0.0.1#5301'\n"))
    before = r.committed()
    r.handoff("apply", "127.0.0.1#5453")
    r.run(["uci", "add_list", "dhcp.@dnsmasq[0].server=8.8.8.8"])
    r.run(["uci", "add_list", "dhcp.@dnsmasq[0].server=/corp.example/10.8.0.1"])
    r.run(["uci", "commit", "dhcp"])
    r.handoff("apply", "127.0.0.1#5454")
    assert servers(r.dnsmasq()) == ["/ntp.test/127.0.0.1#5300", "/corp.example/10.8.0.1",
                                    "127.0.0.1#5454"]
    r.handoff("restore")
    assert servers(r.dnsmasq()) == ["/ntp.test/127.0.0.1#5300", "127.0.0.1#5301", "8.8.8.8",
                                    "/corp.example/10.8.0.1"]
    assert r.dnsmasq().get("noresolv") is None
    assert len(r.committed()) == len(before)


def test_handoff_from_the_old_one_way_package(tmp_path):
    """The old package's uci-defaults left server 127.0.0.1#5453 and noresolv 1 with nothing
    saved: after one apply and a restore, dnsmasq reads its resolv file again (never
    noresolv with no server at all), and the log says so."""
    extra = "\tlist server '127.0.0.1#5453'\n\toption noresolv '1'\n"
    r = Router(tmp_path, DHCP.format(ntp=5300, extra=extra))
    r.handoff("apply", "127.0.0.1#5453")
    r.handoff("restore")
    d = r.dnsmasq()
    assert servers(d) == ["/ntp.test/127.0.0.1#5300"]
    assert "noresolv" not in d
    assert "noresolv was on with no server but dotproxy's: removed" in r.log()


def test_handoff_picks_sections(tmp_path):
    """Two dnsmasq instances: -s names one (by name or index); the other keeps or gets back
    its own servers."""
    dhcp = """
config dnsmasq 'main'
	list server '127.0.0.1#5301'

config dnsmasq 'guest'
	list server '127.0.0.1#5302'
"""
    r = Router(tmp_path, dhcp)
    r.handoff("apply", "127.0.0.1#5453")
    assert "127.0.0.1#5453" in r.run(["uci", "get", "dhcp.guest.server"]).stdout
    r.handoff("apply", "-s", "0", "--", "127.0.0.1#5453")
    assert r.run(["uci", "get", "dhcp.main.server"]).stdout.split() == ["127.0.0.1#5453"]
    assert r.run(["uci", "get", "dhcp.guest.server"]).stdout.split() == ["127.0.0.1#5302"]
    assert r.run(["uci", "-q", "get", "dhcp.guest.noresolv"], check=False).returncode == 1
    r.handoff("restore")
    assert r.run(["uci", "get", "dhcp.main.server"]).stdout.split() == ["127.0.0.1#5301"]


@pytest.mark.parametrize("shell,installed", [(["sh"], False), ([BUSYBOX, "sh"], False),
                                            (["sh"], True)],
                         ids=["sh-without", "busybox-without", "sh-with"])
def test_sysupgrade_guard(tmp_path, shell, installed):
    """The guard is run as /etc/init.d/boot runs uci-defaults: sourced in a subshell, with no
    arguments, before dnsmasq starts. In a new image without dotproxy it restores dnsmasq
    (and restarts nothing); with dotproxy still there it leaves the hand-off alone. It exits
    0 either way (uci-defaults then deletes it)."""
    r = Router(tmp_path, DHCP.format(ntp=5300, extra="\tlist server '127.0.0.1#5301'\n"),
               shell=shell)
    before = r.committed()
    r.handoff("apply", "127.0.0.1#5453")
    assert r.guard.read_text() == open(HANDOFF).read()
    handed = r.committed()
    if installed:
        (tmp_path / "no-init").write_text("#!/bin/sh\n")
        os.chmod(tmp_path / "no-init", 0o755)
    # /etc/init.d/boot's uci_apply_defaults, called with no arguments
    boot = 'uci_apply_defaults() { cd "$D" && for f in *; do ( . "./$f" ) && rm -f "$f"; done; }' \
        '; uci_apply_defaults'
    r.env["D"] = str(r.guard.parent)
    starts = r.dnsmasq_starts()
    res = r.run(shell + ["-c", boot], check=False)
    assert res.returncode == 0, res.stderr
    assert r.committed() == (handed if installed else before)
    assert not r.guard.exists()         # exit 0: uci-defaults deleted it
    assert r.dnsmasq_starts() == starts


# ---------------------------------------------------------------- real dnsmasq in front

ROUTER_CONF = """
config dotproxy 'main'
	option port '{port}'
	list upstream '127.0.0.1@{up}#dns.test'
	option ca_file '{ca}'
	option timeout '2000'
	option syslog '0'
	option plaintext_fallback '{fallback}'
"""


@pytest.fixture
def router(tmp_path, dotproxy_bin, unbound, pki, plain_dns):
    """dnsmasq (real) whose own upstream is the "ISP" (plain DNS on loopback), and the
    package's config for a dotproxy in front of the unbound DoT fixture. Yields a function
    making the Router for a plaintext_fallback value."""
    need("dnsmasq")
    isp = plain_dns("test")
    made = []

    def make(fallback="1"):
        conf = ROUTER_CONF.format(port=free_port(), up=unbound.port, ca=pki.root,
                                  fallback=fallback)
        r = Router(tmp_path, DHCP.format(ntp=isp.port, extra="\tlist server '127.0.0.1#%d'\n"
                                         % isp.port),
                   dotproxy=conf, dnsmasq_port=free_port(), prog=dotproxy_bin)
        r.isp = isp
        r.proxy = None
        made.append(r)
        r.start_dnsmasq()
        return r
    yield make
    for r in made:
        if r.proxy:
            r.proxy.stop()
        r.stop_dnsmasq()


def ask(r, name="example.test", tcp=False):
    q = query_tcp if tcp else query_udp
    return q(r.dnsmasq_port, name, timeout=4)


def via_isp(r):
    before = r.isp.udp + r.isp.tcp
    ans = a_addrs(ask(r))
    return ans == ISP and r.isp.udp + r.isp.tcp > before


def via_dotproxy(r):
    before = r.isp.udp + r.isp.tcp
    ans = a_addrs(ask(r)), a_addrs(ask(r, tcp=True))
    return ans == (EXAMPLE, EXAMPLE) and r.isp.udp + r.isp.tcp == before


def start_proxy(r, dotproxy_bin):
    """What procd would do with the init script's command line (./dotproxy for
    /usr/sbin/dotproxy): start it, then rc.common's start runs service_started."""
    m = instances(r.init("start_service"))["main"]
    argv = m["command"]
    assert argv[0] == dotproxy_bin
    r.proxy = helpers.DotProxy(dotproxy_bin, argv[1:], port=int(argv[2].split("@")[1]))
    r.init("start")


def test_dnsmasq_start_stop(router, dotproxy_bin):
    """Before: dnsmasq asks the ISP. start: once dotproxy answers, dnsmasq forwards there (the
    ISP sees nothing more, ntp.test still goes to its own server). stop: dnsmasq has the
    ISP back, with dotproxy still running (stop_service runs before procd's kill), and the
    dhcp config is as it was."""
    r = router()
    before = r.committed()
    assert via_isp(r)
    start_proxy(r, dotproxy_bin)
    assert via_dotproxy(r)
    assert a_addrs(ask(r, "pool.ntp.test")) == ISP
    assert servers(r.dnsmasq()) == ["/ntp.test/127.0.0.1#%d" % r.isp.port,
                                    "127.0.0.1#%s" % r.proxy.port]
    starts = r.dnsmasq_starts()
    r.init("start")                 # a reload: nothing changes, dnsmasq is not restarted
    assert r.dnsmasq_starts() == starts
    r.init("stop")
    assert r.proxy.alive()
    assert via_isp(r)
    assert r.committed() == before
    assert r.proxy.stop() == 0


def test_dnsmasq_restart_keeps_the_handoff(router, dotproxy_bin):
    """restart (and shutdown) leave dnsmasq pointed at dotproxy: no plaintext query, and no
    dnsmasq restart, while dotproxy restarts."""
    r = router()
    start_proxy(r, dotproxy_bin)
    starts = r.dnsmasq_starts()
    r.init("shutdown")
    assert r.dnsmasq_starts() == starts and via_dotproxy(r)
    r.init("restart")
    assert r.dnsmasq_starts() == starts and via_dotproxy(r)
    r.init("stop")
    assert via_isp(r)


def test_dnsmasq_dotproxy_does_not_come_up(router):
    """start with no dotproxy answering: after its wait, service_started gives dnsmasq its
    own servers (plaintext_fallback 1), and logread says why."""
    r = router()
    r.init("start")
    assert via_isp(r)
    assert "dnsmasq keeps its own servers" in r.log()
    assert "dotproxy_backup" not in r.dhcp_text()


def test_dnsmasq_disable_and_removal(router, dotproxy_bin):
    """disable gives dnsmasq its servers back; so does package removal (default_prerm:
    disable and stop, then the package's prerm), which also drops the guard."""
    r = router()
    start_proxy(r, dotproxy_bin)
    assert via_dotproxy(r)
    r.init("disable")
    assert via_isp(r)
    r.init("start")
    assert via_dotproxy(r) and r.guard.is_file()
    # the package's prerm as the SDK writes it: default_prerm (disable, stop), then ours
    prerm = open(os.path.join(OPENWRT, "Makefile")).read().split(
        "define Package/dotproxy/prerm\n", 1)[1].split("\nendef", 1)[0].replace("$$", "$")
    script = r.dir / "prerm"
    script.write_text(prerm.replace("/usr/libexec/dotproxy-dnsmasq", HANDOFF))
    r.init("disable")
    r.init("stop")
    r.run(["sh", str(script)])
    assert via_isp(r)
    assert not r.guard.exists()
    assert r.proxy.stop() == 0


def test_dnsmasq_no_plaintext_fallback(router, dotproxy_bin):
    """plaintext_fallback 0: stop keeps dnsmasq pointed at dotproxy; with dotproxy gone the
    router has no DNS (SERVFAIL or no answer) and the ISP sees nothing. A start that finds
    no dotproxy answering keeps the hand-off too. Only disable gives the ISP back."""
    r = router(fallback="0")
    start_proxy(r, dotproxy_bin)
    assert via_dotproxy(r)
    r.init("stop")
    assert r.proxy.stop() == 0
    r.proxy = None
    before = r.isp.udp + r.isp.tcp
    try:
        res = ask(r)
        assert res.rcode() != dns.rcode.NOERROR or not a_addrs(res)
    except dns.exception.Timeout:
        pass
    r.init("start")                 # nothing answers: the hand-off stays
    assert "plaintext_fallback 0: dnsmasq stays pointed at dotproxy" in r.log()
    assert r.isp.udp + r.isp.tcp == before
    r.init("disable")
    assert via_isp(r)


# ---------------------------------------------------------------- jail, capabilities, seccomp

def caps_args():
    caps = json.load(open(CAPS))
    return [a for c in sorted(set(caps["permitted"])) for a in ("--cap-add", c)]


def loopback_53():
    """An address 127.53.x.y whose port 53 is free (UDP and TCP)."""
    for i in range(1, 250):
        addr = "127.53.%d.%d" % (os.getpid() % 250, i)
        try:
            for t in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                s = socket.socket(socket.AF_INET, t)
                s.bind((addr, 53))
                s.close()
            return addr
        except OSError:
            continue
    raise AssertionError("no free 127.53.x.y:53")


def bwrap_argv(tmp_path, binary, caps, seccomp_drop=(), files=()):
    """bwrap: a new root that is an empty tmpfs with the binary alone (and `files`, each at
    its own path, as procd_add_jail_mount puts them), read-only; no /proc, /dev or /etc; the
    host's network (loopback); no_new_privs (bwrap always sets it); the capabilities given,
    every other one dropped, the bounding set included (uid 0 is otherwise powerless); the
    package's seccomp list (minus seccomp_drop) compiled by libseccomp. Returns (argv, fd of
    the BPF program to pass)."""
    bpf = tmp_path / "filter.bpf"
    subprocess.run([sys.executable, SECCOMP_RUN, "bpf"]
                   + [a for d in seccomp_drop for a in ("--drop", d)] + [str(bpf)], check=True)
    fd = os.open(str(bpf), os.O_RDONLY)
    binds = [a for f in files for a in ("--ro-bind", f, f)]
    argv = [need("bwrap"), "--tmpfs", "/", "--ro-bind", binary, PROG] + binds + \
        ["--remount-ro", "/", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
         "--die-with-parent", "--new-session", "--cap-drop", "ALL"] + caps + \
        ["--seccomp", str(fd), PROG]
    return argv, fd


def child_named(pid, name, timeout=10):
    """The pid of the process `name` among pid's descendants."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        todo = [str(pid)]
        while todo:
            p = todo.pop()
            try:
                kids = open("/proc/%s/task/%s/children" % (p, p)).read().split()
            except OSError:
                kids = []
            for k in kids:
                try:
                    if open("/proc/%s/comm" % k).read().strip() == name:
                        return k
                except OSError:
                    continue
                todo.append(k)
        time.sleep(0.1)
    raise AssertionError("no %s under %d" % (name, pid))


@helpers.requires_static_binary
def test_jail_empty_root_caps_seccomp(tmp_path, dotproxy_bin, unbound, pki):
    """The init script's command for a LAN listener on port 53 (a loopback address here),
    run as procd would run it in its jail: an empty read-only root holding the binary and
    the one file the config names (ca_file: the test root, which the loopback upstream
    needs), uid 0 with CAP_NET_BIND_SERVICE alone (the capabilities file's), no_new_privs,
    the seccomp list. It binds port 53, resolves over UDP and TCP, /proc agrees on all of
    the above, and SIGTERM ends it with status 0."""
    need_root()
    addr = loopback_53()
    conf = ("config dotproxy 'main'\n\tlist listen '%s@53'\n\tlist upstream "
            "'127.0.0.1@%d#dns.test'\n\toption ca_file '%s'\n\toption syslog '0'\n"
            % (addr, unbound.port, pki.root))
    m = instances(run_harness(conf, tmp_path))["main"]
    assert m["jail"] == ["dotproxy", "ronly"] and m["jail_mount"] == [pki.root]
    argv, fd = bwrap_argv(tmp_path, dotproxy_bin, caps_args(), files=m["jail_mount"])
    p = subprocess.Popen(argv + m["command"][1:], pass_fds=(fd,), stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(fd)
    pid = None
    try:
        pid = child_named(p.pid, "dotproxy")
        deadline = time.monotonic() + 20
        ok = False
        while time.monotonic() < deadline and p.poll() is None and not ok:
            try:
                ok = a_addrs(query_udp(53, "example.test", host=addr, timeout=1)) == EXAMPLE
            except (dns.exception.Timeout, OSError):
                time.sleep(0.2)
        assert p.poll() is None, p.stderr.read().decode()
        assert a_addrs(query_udp(53, "example.test", host=addr)) == EXAMPLE
        assert a_addrs(query_tcp(53, "example.test", host=addr)) == EXAMPLE
        st = dict(l.split(":\t", 1) for l in open("/proc/%s/status" % pid).read().splitlines()
                  if ":\t" in l)
        assert st["NoNewPrivs"].strip() == "1"
        assert st["Seccomp"].strip() == "2"
        assert int(st["CapEff"], 16) == 1 << 10      # CAP_NET_BIND_SERVICE alone
        assert int(st["CapPrm"], 16) == 1 << 10
        # (bwrap leaves the bounding set alone; ujail applies the file's, CAP_NET_BIND_SERVICE
        # alone: checked only statically, test_capabilities_file. With no_new_privs a
        # wider bounding set gives nothing back anyway.)
        assert sorted(os.listdir("/proc/%s/root/" % pid)) == sorted(
            {"usr", pki.root.split("/")[1]})
        assert os.listdir("/proc/%s/root/usr/sbin" % pid) == ["dotproxy"]
    finally:
        if pid:
            os.kill(int(pid), signal.SIGTERM)
        try:
            rc = p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
    assert rc == 0, p.stderr.read().decode()


@helpers.requires_static_binary
def test_jail_syslog_levels(tmp_path, dotproxy_bin):
    """syslog 1 (the default): the jail's one mount is /dev/log ('log'), and the lines
    reach it with their own levels (daemon.info <30>, daemon.warn <28>), as logd files
    them for logread; nothing on stderr (which procd would file as daemon.err)."""
    need_root()
    port = free_port()
    conf = ("config dotproxy 'main'\n\tlist listen '127.0.0.1@%d'\n\tlist upstream "
            "'127.0.0.1@%d#dns.test'\n\toption timeout '500'\n" % (port, free_port()))
    m = instances(run_harness(conf, tmp_path))["main"]
    assert m["jail"] == ["dotproxy", "log", "ronly"] and "--syslog" in m["command"]
    log = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    log.bind(str(tmp_path / "log"))
    log.settimeout(0.5)
    argv, fd = bwrap_argv(tmp_path, dotproxy_bin, caps_args())
    i = argv.index("--remount-ro")
    argv[i:i] = ["--bind", str(tmp_path / "log"), "/dev/log"]
    p = subprocess.Popen(argv + m["command"][1:], pass_fds=(fd,), stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(fd)
    got = []
    try:
        pid = child_named(p.pid, "dotproxy")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any("ready:" in g for g in got):
            try:
                got.append(log.recv(4096).decode())
            except socket.timeout:
                pass
        try:
            query_udp(port, "example.test", timeout=3)   # no upstream: a warning
        except dns.exception.Timeout:
            pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(g.startswith("<28>") for g in got):
            try:
                got.append(log.recv(4096).decode())
            except socket.timeout:
                pass
        os.kill(int(pid), signal.SIGTERM)
        rc = p.wait(15)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        log.close()
    err = p.stderr.read().decode()
    assert rc == 0 and err == "", err
    assert any(g.startswith("<30>dotproxy: info: ready: ") for g in got), got
    assert any(g.startswith("<28>dotproxy: warn: ") for g in got), got


def test_syslog_reader_that_stops_reading_does_not_stop_dns(tmp_path, dotproxy_bin):
    """syslog 1 is the package default, and logd can stall or restart: dotproxy must go on
    answering (dropping log lines, or falling back) and stop on SIGTERM. The control, with a
    reader that reads, answers all."""
    need_root()
    results = {}
    for reads in (True, False):
        d = tmp_path / ("dev-%s" % reads)
        d.mkdir()
        log = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        log.bind(str(d / "log"))
        if reads:
            import threading
            log.settimeout(0.2)

            def drain(sock=log):
                while True:
                    try:
                        sock.recv(65536)
                    except socket.timeout:
                        continue
                    except OSError:
                        return
            threading.Thread(target=drain, daemon=True).start()
        port = free_port()
        args = ["--syslog", "-v", "-l", "127.0.0.1@%d" % port, "-u", "127.0.0.1@1#dns.test",
                "-t", "300"]
        helpers.check_safe_args(args, {})
        p = subprocess.Popen(["unshare", "-m", "sh", "-c", 'mount --bind "$1" /dev && shift '
                              '&& exec "$@"', "sh", str(d), dotproxy_bin] + args,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        assert helpers.wait_tcp_listening("127.0.0.1", port, 10)
        ok = 0
        for i in range(40):
            try:
                query_udp(port, "q%d.test" % i, timeout=1)
                ok += 1
            except dns.exception.Timeout:
                pass
        p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = "killed: SIGTERM ignored"
        log.close()
        results[reads] = (ok, rc)
    assert results[True] == (40, 0), results
    assert results[False] == (40, 0), results


@helpers.requires_static_binary
def test_jail_without_the_capability_cannot_bind_53(tmp_path, dotproxy_bin):
    """The control: the same jail without CAP_NET_BIND_SERVICE fails to bind port 53."""
    need_root()
    addr = loopback_53()
    argv, fd = bwrap_argv(tmp_path, dotproxy_bin, [])
    r = subprocess.run(argv + ["-l", "%s@53" % addr, "-u", "127.0.0.1@1#dns.test"],
                       pass_fds=(fd,), capture_output=True, text=True, timeout=30)
    os.close(fd)
    assert r.returncode != 0
    assert "ermission denied" in r.stderr, r.stderr


@helpers.requires_static_binary
def test_seccomp_control_kills(tmp_path, dotproxy_bin):
    """The list is enforced: without 'bind' on it, dotproxy is killed by SIGSYS at its first
    bind (and with the whole list the same command answers --probe: the next test)."""
    r = subprocess.run([sys.executable, SECCOMP_RUN, "exec", "--drop", "bind", "--",
                        dotproxy_bin, "-l", "127.0.0.1@%d" % free_port(), "-u",
                        "127.0.0.1@1#dns.test"], capture_output=True, timeout=30)
    assert r.returncode == -signal.SIGSYS, (r.returncode, r.stderr)


@helpers.requires_static_binary
def test_seccomp_integration_run(tmp_path, dotproxy_bin):
    """Integration tests with every dotproxy under the seccomp list (tests/openwrt/
    dotproxy-seccomp as DOTPROXY): queries over UDP and TCP, the cache, serve-stale,
    upstream failures and failover, signals (SIGHUP, SIGUSR1, SIGTERM drain), /health,
    /ready, /metrics, --probe, --syslog. A call not on the list would kill dotproxy with
    SIGSYS and fail them."""
    wrapper = os.path.join(STUBS, "dotproxy-seccomp")
    cz, av = "tests/test_cache_zones.py::", "tests/test_availability.py::"
    tests = ["tests/test_engine.py", "tests/test_observe.py",
             cz + "test_serve_stale_when_upstream_down_then_refresh",
             cz + "test_forward_zone_routes_and_caches", cz + "test_forward_zone_tcp_only",
             cz + "test_graceful_stop_finishes_in_flight", cz + "test_sigusr1_counters",
             cz + "test_cache_size_values", cz + "test_cache_entry_expires",
             av + "test_sighup_retries_upstream_in_backoff_at_once",
             av + "test_accept_emfile_pauses_instead_of_spinning",
             av + "test_upstream_reset_with_queries_in_flight_alone_loses_no_query"]
    env = dict(os.environ, DOTPROXY=wrapper, DOTPROXY_REAL=dotproxy_bin)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
                       + tests, cwd=helpers.REPO, env=env, capture_output=True, text=True,
                       timeout=1500)
    tail = "\n".join(r.stdout.splitlines()[-30:])
    assert r.returncode == 0, tail
    assert "SIGSYS" not in r.stdout
    m = re.search(r"(\d+) passed", r.stdout)
    assert m and int(m.group(1)) >= 80, tail


# ---------------------------------------------------------------- IPv6 off, in a namespace

NETNS_SCRIPT = r"""
set -e
ip link set lo up
# a kernel without IPv6 at all has no net.ipv6: IPv6 is off there anyway
if [ -d /proc/sys/net/ipv6 ] || [ "$1" = 0 ]; then
	sysctl -qw net.ipv6.conf.all.disable_ipv6=$1 net.ipv6.conf.default.disable_ipv6=$1 \
		net.ipv6.conf.lo.disable_ipv6=$1
fi
shift
"$@"
"""


def in_netns(ipv6_off, argv, **kw):
    need_root()
    return subprocess.run([need("unshare"), "-n", "sh", "-c", NETNS_SCRIPT, "netns",
                           "1" if ipv6_off else "0"] + argv, **kw)


@pytest.mark.parametrize("ipv6_off", [True, False], ids=["ipv6-off", "ipv6-on"])
def test_ipv6_off_namespace(tmp_path, dotproxy_bin, ipv6_off):
    """In a network namespace with IPv6 disabled (the kernel's /proc/net/if_inet6 there has
    no ::1), the init script's default config leaves ::1 out and the generated command
    starts and answers (--probe: localhost., answered by dotproxy itself; the upstream is a
    loopback port with nothing behind it). The control, IPv6 on: ::1 is in, and answers."""
    if not ipv6_off and not os.path.isdir("/proc/sys/net/ipv6"):
        pytest.skip("this kernel has no IPv6: the control cannot be run")
    conf = tmp_path / "dotproxy.config"
    conf.write_text("config dotproxy 'main'\n\toption port '5453'\n\tlist upstream "
                    "'127.0.0.1@1#dns.test'\n\toption syslog '0'\n")
    script = r"""
out=$(sh "$HARNESS" "$INIT" "$CONF" start_service | sed -n 's/^main command //p' | tr '\n' ' ')
echo "argv: $out"
set -- $out
shift
"$BIN" "$@" &
pid=$!
n=0
until "$BIN" --probe 127.0.0.1@5453 >/dev/null 2>&1; do
	n=$((n + 1)); [ $n -lt 50 ] || { echo "no answer on 127.0.0.1"; exit 1; }
	kill -0 $pid || { echo "dotproxy exited"; exit 1; }
	sleep 0.2
done
echo "probe 127.0.0.1: ok"
if "$BIN" --probe ::1@5453 >/dev/null 2>&1; then echo "probe ::1: ok"; fi
kill $pid
wait $pid
echo "exit $?"
"""
    env = dict(os.environ, HARNESS=HARNESS, INIT=INIT, CONF=str(conf), BIN=dotproxy_bin,
               LOGGER_FILE=str(tmp_path / "logger"), PATH=STUB_BIN + ":" + os.environ["PATH"])
    env.pop("HARNESS_IF_INET6", None)
    r = in_netns(ipv6_off, ["sh", "-c", script], capture_output=True, text=True, timeout=60,
                 env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "probe 127.0.0.1: ok" in r.stdout and "exit 0" in r.stdout, r.stdout
    if ipv6_off:
        assert "::1" not in r.stdout.split("argv:")[1].split("\n")[0], r.stdout
        assert "probe ::1: ok" not in r.stdout
    else:
        assert "-l ::1@5453" in r.stdout and "probe ::1: ok" in r.stdout, r.stdout


def test_ipv6_off_old_config_fails(tmp_path, dotproxy_bin):
    """Why it matters: the old shipped config (::1@5453 always) in the same namespace exits
    at once (procd would respawn it until it gives up: no DNS)."""
    r = in_netns(True, [dotproxy_bin, "-l", "127.0.0.1@5453", "-l", "::1@5453", "-u",
                        "127.0.0.1@1#dns.test"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "::1" in r.stderr, r.stderr


# ---------------------------------------------------------------- test.sh, the feed's CI

def test_feed_test_sh(tmp_path, dotproxy_bin):
    """openwrt/test.sh as the feed's CI runs it (sh test.sh PKG_NAME PKG_VERSION; sh being
    busybox ash there) on an install laid out under IPKG_INSTROOT, with the stand-in uci and
    a dhcp config: passes, the dhcp config unchanged; and fails for another version."""
    shell = [BUSYBOX, "sh"]
    root = tmp_path / "root"
    mk = open(os.path.join(OPENWRT, "Makefile")).read()
    install = recipe(mk, "Package/dotproxy/install")
    for line in install:
        words = line.split()
        if words[0] == "$(INSTALL_DIR)":
            for d in words[1:]:
                (root / d.replace("$(1)/", "")).mkdir(parents=True, exist_ok=True)
        else:
            src = words[1].replace("$(PKG_BUILD_DIR)/dotproxy", dotproxy_bin).replace(
                "./files/", FILES + "/")
            dst = root / words[2].replace("$(1)/", "")
            shutil.copy(src, dst)
            os.chmod(dst, 0o755 if words[0] == "$(INSTALL_BIN)" else 0o644)
    conf = tmp_path / "config"
    conf.mkdir()
    (conf / "dhcp").write_text(DHCP.format(ntp=5300, extra="\toption noresolv '0'\n"))
    env = dict(os.environ, IPKG_INSTROOT=str(root), UCI_CONFIG_DIR=str(conf),
               PATH=STUB_BIN + ":" + os.environ["PATH"], TEST_PORT=str(free_port()))
    version = re.search(r"^PKG_VERSION:=(\S+)$", mk, re.M).group(1)
    before = (conf / "dhcp").read_text()
    for v in (version, version + "-1", version + "-r1"):
        r = subprocess.run(shell + [TEST_SH, "dotproxy", v], capture_output=True, text=True,
                           timeout=120, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "dotproxy %s: ok" % version in r.stdout
    after = (conf / "dhcp").read_text()
    assert "dotproxy_" not in after
    # the same options (uci moves a list it rewrites to the end of its section)
    assert parsed(before) == parsed(after)
    r = subprocess.run(shell + [TEST_SH, "dotproxy", "9.9.9"], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 1 and "not 9.9.9" in r.stderr
    r = subprocess.run(shell + [TEST_SH, "other-package", "1"], capture_output=True, text=True,
                       timeout=30, env=env)
    assert r.returncode == 0 and r.stdout == ""


# ---------------------------------------------------------------- the package recipe

def mkvar(text, name):
    m = re.search(r"^%s\s*[:?]?=\s*(.+?)\s*$" % name, text, re.M)
    assert m, name
    return m.group(1)


def recipe(mk, name):
    """The lines of `define NAME ... endef` in an OpenWrt package Makefile, continuations
    joined."""
    body = mk.split("define %s\n" % name, 1)[1].split("\nendef", 1)[0]
    return [l.strip() for l in re.sub(r"\\\n\s*", " ", body).splitlines() if l.strip()]


def test_package_makefile():
    mk = open(os.path.join(OPENWRT, "Makefile")).read()
    top = open(os.path.join(helpers.REPO, "Makefile")).read()
    fetch = open(os.path.join(CI, "fetch.sh")).read()
    assert mkvar(mk, "PKG_NAME") == "dotproxy"
    assert mkvar(mk, "PKG_VERSION") == mkvar(top, "VERSION")
    assert mkvar(mk, "PKG_SOURCE") == "$(PKG_NAME)-$(PKG_VERSION).tar.gz"
    assert mkvar(mk, "PKG_SOURCE_URL").startswith("https://")
    assert re.fullmatch(r"[0-9a-f]{64}", mkvar(mk, "PKG_HASH"))
    assert re.fullmatch(r".+ <[^@ ]+@[^@ ]+>", mkvar(mk, "PKG_MAINTAINER"))
    assert mkvar(mk, "PKG_LICENSE") == "MIT"
    assert mkvar(mk, "PKG_LICENSE_FILES").split() == ["LICENSE", "bearssl/LICENSE.txt"]
    assert mkvar(mk, "BEARSSL_HASH") == mkvar(fetch, "BEARSSL_SHA256")
    assert mkvar(mk, "BEARSSL_VERSION") == mkvar(fetch, "BEARSSL_VERSION")
    assert "HASH:=$(BEARSSL_HASH)" in mk
    assert "DOTPROXY_SRC" not in mk and "$(CURDIR)/.." not in mk   # nothing from a checkout
    assert "sh .ci/fetch.sh bearssl" in mk and "DEPS_CHECKED=1" in mk
    assert 'CC="$(TARGET_CC)"' in mk and "-static" in mk
    assert "USERID:=dotproxy:dotproxy" in mk
    # every file in files/ is installed, each where the scripts look for it
    install = " ".join(recipe(mk, "Package/dotproxy/install"))
    for f in os.listdir(FILES):
        assert "./files/%s " % f in install, f
    init = open(INIT).read()
    for var, path in (("PROG", "/usr/sbin/dotproxy"), ("HANDOFF", "/usr/libexec/dotproxy-dnsmasq"),
                      ("CAPABILITIES", "/etc/capabilities/dotproxy.json"),
                      ("SECCOMP", "/etc/seccomp/dotproxy.json")):
        assert re.search(r"^%s=%s$" % (var, path), init, re.M), var
        assert "$(1)%s" % path in install, path
    assert "$(1)/lib/upgrade/keep.d/dotproxy" in install
    conffiles = mk.split("define Package/dotproxy/conffiles", 1)[1].split("endef", 1)[0]
    assert conffiles.split() == ["/etc/config/dotproxy"]


def test_release_tarball(tmp_path):
    """openwrt/dist.sh: the same commit gives the same bytes; the tarball has what the
    recipe builds from (dotproxy.c, anchors.pem, Makefile, .ci/fetch.sh), the licence file
    PKG_LICENSE_FILES names, and not the package recipe itself (the feed has it). PKG_HASH is
    the SHA-256 of the tarball of the commit openwrt/Makefile names as the release's."""
    mk = open(os.path.join(OPENWRT, "Makefile")).read()
    commit = re.search(r"^# Release source: commit ([0-9a-f]{40})", mk, re.M)
    assert commit, "openwrt/Makefile names no release commit"
    outs = []
    for d in ("a", "b"):
        r = subprocess.run(["sh", DIST, commit.group(1), str(tmp_path / d)],
                           capture_output=True, text=True, timeout=120, cwd=helpers.REPO)
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout.split("sha256 ")[1].split()[0])
    assert outs[0] == outs[1]
    assert outs[0] == mkvar(mk, "PKG_HASH")
    name = "dotproxy-%s" % mkvar(mk, "PKG_VERSION")
    tgz = tmp_path / "a" / (name + ".tar.gz")
    with tarfile.open(tgz) as t:
        members = t.getnames()
    for f in ("dotproxy.c", "anchors.pem", "Makefile", ".ci/fetch.sh", "LICENSE"):
        assert "%s/%s" % (name, f) in members, f
    assert not [m for m in members if m.startswith(name + "/openwrt")]


def test_package_prepare_runs_the_fetch_script(tmp_path):
    """Build/Prepare with the SDK's variables: after the release tarball is unpacked
    (Build/Prepare/Default), BearSSL is handed to .ci/fetch.sh, which checks the downloaded
    tarball's SHA-256 itself (a tarball with another one is refused, nothing unpacked)."""
    mk = open(os.path.join(OPENWRT, "Makefile")).read()
    build, dl = tmp_path / "build", tmp_path / "dl"
    build.mkdir()
    dl.mkdir()
    (build / ".ci").mkdir()
    shutil.copy(os.path.join(CI, "fetch.sh"), build / ".ci" / "fetch.sh")
    subprocess.run(["tar", "czf", str(dl / "bearssl-0.6.tar.gz"), "-C", str(build), "."],
                   check=True)
    values = {"PKG_BUILD_DIR": str(build), "DL_DIR": str(dl),
              "BEARSSL_FILE": "bearssl-0.6.tar.gz"}
    lines = recipe(mk, "Build/Prepare")
    assert lines[0] == "$(call Build/Prepare/Default)"
    out = ""
    for line in lines[1:]:
        cmd = re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], line)
        r = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=60)
        out += r.stdout + r.stderr
        if r.returncode != 0:
            break
    assert r.returncode != 0 and "CHECKSUM MISMATCH" in out, out
    assert "fetch.sh bearssl" in cmd
    assert not (build / "bearssl").exists()
