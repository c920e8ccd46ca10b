"""OpenWrt package: shellcheck, and the UCI-to-flags translation of the procd init script.

tests/openwrt/harness.sh stands in for rc.common, /lib/functions.sh and procd.sh, loads a
fixture /etc/config/dotproxy, runs start_service and prints the procd instances it builds.
Nothing here starts anything but ./dotproxy on loopback (the last test), and no fixture
address other than loopback is ever contacted: the others are only compared as text.
"""

import os
import re
import shutil
import subprocess

import pytest

import helpers
from helpers import a_addrs, free_port, query_tcp, query_udp, run_dotproxy

OPENWRT = os.path.join(helpers.REPO, "openwrt")
INIT = os.path.join(OPENWRT, "files", "dotproxy.init")
CONFIG = os.path.join(OPENWRT, "files", "dotproxy.config")
UCI_DEFAULTS = os.path.join(OPENWRT, "files", "dotproxy.uci-defaults")
HARNESS = os.path.join(helpers.HERE, "openwrt", "harness.sh")
PROG = "/usr/sbin/dotproxy"
EXAMPLE = {"192.0.2.10", "192.0.2.11"}

# The shells to run the init script with: dash (sh), and busybox ash, OpenWrt's own shell,
# when a busybox is installed.
SHELLS = [["sh"]]
for bb in ("/bin/busybox", "/usr/bin/busybox"):
    if os.path.isfile(bb):
        SHELLS.append([bb, "sh"])
        break

CI = os.path.join(helpers.REPO, ".ci")
SHELL_FILES = [INIT, UCI_DEFAULTS, HARNESS,
               os.path.join(helpers.HERE, "initramfs", "build.sh"),
               os.path.join(helpers.HERE, "initramfs", "init"),
               os.path.join(CI, "run")] + \
    sorted(os.path.join(CI, f) for f in os.listdir(CI) if f.endswith(".sh"))


def run_harness(config_text, tmp_path, shell=("sh",), action="start"):
    cfg = tmp_path / "dotproxy.config"
    cfg.write_text(config_text)
    r = subprocess.run(list(shell) + [HARNESS, INIT, str(cfg), action],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert not r.stderr, r.stderr
    return r.stdout


def instances(out):
    """{instance: {"command": [argv], param: [values]...}} in order of appearance."""
    res = {}
    for line in out.splitlines():
        inst, _, rest = line.partition(" ")
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


# ---------------------------------------------------------------- shellcheck

@pytest.mark.parametrize("path", SHELL_FILES, ids=lambda p: os.path.relpath(p, helpers.REPO))
def test_shellcheck(path):
    """POSIX sh, except what says bash in its first line (.ci/run); each script in .ci/ says
    what it does in a comment at its top."""
    sc = shutil.which("shellcheck")
    assert sc, "shellcheck missing (.ci/deps.sh test installs it)"
    first = open(path).readline()
    shell = "bash" if "bash" in first else "sh"
    r = subprocess.run([sc, "-s", shell, "-x", path], capture_output=True, text=True,
                       cwd=os.path.dirname(path))
    assert r.returncode == 0, r.stdout + r.stderr
    if os.path.dirname(path) == CI:
        assert first.startswith("#!") and open(path).read().split("\n")[1].startswith("# "), \
            "%s: no header comment" % path


def test_init_script_is_procd():
    text = open(INIT).read()
    assert text.startswith("#!/bin/sh /etc/rc.common\n")
    assert re.search(r"^USE_PROCD=1$", text, re.M)
    assert re.search(r"^START=\d+$", text, re.M)
    assert "procd_set_param respawn" in text
    assert "procd_set_param stdout 1" in text and "procd_set_param stderr 1" in text


# ---------------------------------------------------------------- UCI -> argv

def test_shipped_config(tmp_path, shell):
    inst = instances(run_harness(open(CONFIG).read(), tmp_path, shell))
    assert list(inst) == ["main"]
    m = inst["main"]
    assert m["command"] == [PROG, "-l", "127.0.0.1@5453", "-l", "::1@5453",
                            "-u", "1.1.1.1", "-u", "1.0.0.1", "-u", "2606:4700:4700::1111",
                            "-t", "4000", "--padding", "128", "--cache-size", "128k",
                            "--drain-timeout", "2000"]
    assert m["user"] == ["nobody"]
    assert m["respawn"] == ["3600", "5", "5"]
    assert m["stdout"] == ["1"] and m["stderr"] == ["1"]
    assert m["file"] == ["/etc/config/dotproxy"]
    # procd waits term_timeout seconds after SIGTERM: longer than the drain timeout
    assert int(m["term_timeout"][0]) * 1000 > 2000


def test_defaults(tmp_path, shell):
    inst = instances(run_harness("config dotproxy 'main'\n", tmp_path, shell))
    assert inst["main"]["command"] == [PROG, "-l", "127.0.0.1@5453"]
    assert inst["main"]["user"] == ["nobody"]
    assert inst["main"]["term_timeout"] == ["10"]


def test_several_upstreams_and_options(tmp_path, shell):
    conf = """
config dotproxy 'main'
	option enabled 'yes'
	list listen '127.0.0.1@5453'
	list listen '[::1]:5453'
	list upstream '9.9.9.9'
	list upstream '149.112.112.112'
	list upstream '192.0.2.53@8853#dns.example.net'
	option ca_file '/etc/dotproxy/ca.pem'
	option timeout '3000'
	option idle_timeout '20000'
	option max_backoff '60000'
	option padding '0'
	option log 'verbose'
	option user 'root'
	option term_timeout '3'
"""
    inst = instances(run_harness(conf, tmp_path, shell))
    m = inst["main"]
    assert m["command"] == [PROG, "-l", "127.0.0.1@5453", "-l", "[::1]:5453",
                            "-u", "9.9.9.9", "-u", "149.112.112.112",
                            "-u", "192.0.2.53@8853#dns.example.net",
                            "-c", "/etc/dotproxy/ca.pem", "-t", "3000",
                            "--idle-timeout", "20000", "--max-backoff", "60000",
                            "--padding", "0", "-v"]
    assert "user" not in m  # root: procd's default
    assert m["term_timeout"] == ["3"]


def test_forward_zones(tmp_path, shell):
    conf = """
config dotproxy 'main'
	list forward_zone 'lan=192.168.1.1@53'
	list forward_zone '168.192.in-addr.arpa=192.168.1.1'
	option log 'quiet'
"""
    m = instances(run_harness(conf, tmp_path, shell))["main"]
    assert m["command"] == [PROG, "-l", "127.0.0.1@5453",
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

config other 'ignored'
	option enabled '1'

config dotproxy
	option enabled 'on'
	list listen '127.0.0.1@5456'
"""
    inst = instances(run_harness(conf, tmp_path, shell))
    assert list(inst) == ["a", "cfg4"]  # unnamed: cfg<N>, N counting all sections
    assert inst["a"]["command"] == [PROG, "-l", "127.0.0.1@5455", "-u", "1.1.1.1"]
    assert inst["cfg4"]["command"] == [PROG, "-l", "127.0.0.1@5456"]


def test_nothing_enabled(tmp_path, shell):
    out = run_harness("config dotproxy 'main'\n\toption enabled '0'\n", tmp_path, shell)
    assert out == ""


def test_reload_trigger(tmp_path, shell):
    out = run_harness("", tmp_path, shell, action="triggers")
    assert out.splitlines() == ["trigger reload dotproxy"]


def test_uci_defaults_hands_dnsmasq_to_dotproxy():
    text = open(UCI_DEFAULTS).read()
    conf = open(CONFIG).read()
    listen = re.search(r"list listen '127\.0\.0\.1@(\d+)'", conf).group(1)
    assert "add_list dhcp.@dnsmasq[0].server='127.0.0.1#%s'" % listen in text
    assert "set dhcp.@dnsmasq[0].noresolv='1'" in text
    assert "commit dhcp" in text


def test_package_makefile():
    mk = open(os.path.join(OPENWRT, "Makefile")).read()
    top = open(os.path.join(helpers.REPO, "Makefile")).read()

    def var(text, name):
        m = re.search(r"^%s\s*[:?]?=\s*(\S+)\s*$" % name, text, re.M)
        assert m, name
        return m.group(1)

    fetch = open(os.path.join(CI, "fetch.sh")).read()
    assert var(mk, "PKG_NAME") == "dotproxy"
    assert var(mk, "BEARSSL_HASH") == var(fetch, "BEARSSL_SHA256")
    assert var(mk, "BEARSSL_VERSION") == var(fetch, "BEARSSL_VERSION")
    assert var(mk, "PKG_VERSION") == var(top, "VERSION")
    assert "HASH:=$(BEARSSL_HASH)" in mk
    # BearSSL is unpacked by the project's fetch script, not by hand into its layout
    assert "sh .ci/fetch.sh bearssl" in mk
    assert ".source" not in mk and "DEPS_CHECKED=1" in mk
    assert 'CC="$(TARGET_CC)"' in mk and "-static" in mk
    assert "$(INSTALL_BIN) $(PKG_BUILD_DIR)/dotproxy $(1)/usr/sbin/dotproxy" in mk
    assert "./files/dotproxy.init $(1)/etc/init.d/dotproxy" in mk
    assert "./files/dotproxy.config $(1)/etc/config/dotproxy" in mk
    assert "/etc/config/dotproxy" in mk.split("define Package/dotproxy/conffiles", 1)[1]
    assert re.search(r"^PROG=/usr/sbin/dotproxy$", open(INIT).read(), re.M)


def recipe(mk, name):
    """The lines of `define NAME ... endef` in an OpenWrt package Makefile, continuations
    joined."""
    body = mk.split("define %s\n" % name, 1)[1].split("\nendef", 1)[0]
    return [l.strip() for l in re.sub(r"\\\n\s*", " ", body).splitlines() if l.strip()]


def test_package_prepare_runs_the_fetch_script(tmp_path):
    """Build/Prepare with the SDK's variables: the project's files are copied and BearSSL is
    handed to .ci/fetch.sh, which checks the downloaded tarball's SHA-256 itself (a tarball
    with another one is refused, nothing unpacked)."""
    mk = open(os.path.join(OPENWRT, "Makefile")).read()
    build, dl = tmp_path / "build", tmp_path / "dl"
    build.mkdir()
    dl.mkdir()
    subprocess.run(["tar", "czf", str(dl / "bearssl-0.6.tar.gz"), "-C", str(build), "."],
                   check=True)
    values = {"PKG_BUILD_DIR": str(build), "DOTPROXY_SRC": helpers.REPO, "CP": "cp -fpR",
              "DL_DIR": str(dl), "BEARSSL_FILE": "bearssl-0.6.tar.gz"}
    out = ""
    for line in recipe(mk, "Build/Prepare"):
        cmd = re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], line)
        r = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=60)
        out += r.stdout + r.stderr
        if r.returncode != 0:
            break
    assert r.returncode != 0 and "CHECKSUM MISMATCH" in out, out
    assert "fetch.sh bearssl" in cmd
    for f in ("Makefile", "dotproxy.c", "anchors.pem", ".ci/fetch.sh"):
        assert (build / f).is_file(), f
    assert not (build / "bearssl").exists()


# ---------------------------------------------------------------- the binary takes the argv

def known_options(binary):
    r = run_dotproxy(binary, ["--help"], check_safe=False)
    assert r.returncode == 0
    return set(re.findall(r"(--[a-z][a-z-]*|(?<![\w-])-[a-zA-Z])\b", r.stdout))


def test_generated_argv_runs(tmp_path, dotproxy_bin, unbound, pki):
    """A loopback-only config: the init script's command line, with ./dotproxy for
    /usr/sbin/dotproxy, starts and resolves through both upstreams' first."""
    port = free_port()
    conf = """
config dotproxy 'main'
	list listen '127.0.0.1@{port}'
	list upstream '127.0.0.1@{up}#dns.test'
	list upstream '127.0.0.1@{up}#dns.test'
	option ca_file '{ca}'
	option timeout '3000'
	option idle_timeout '20000'
	option max_backoff '5000'
	option padding '64'
""".format(port=port, up=unbound.port, ca=pki.root)
    argv = instances(run_harness(conf, tmp_path))["main"]["command"]
    assert argv[0] == PROG
    opts = [a for a in argv[1:] if a.startswith("-")]
    missing = set(opts) - known_options(dotproxy_bin)
    if missing:
        pytest.skip("the binary does not have %s yet" % sorted(missing))
    p = helpers.DotProxy(dotproxy_bin, argv[1:], port=port)
    try:
        assert a_addrs(query_udp(port, "example.test")) == EXAMPLE
        assert a_addrs(query_tcp(port, "example.test")) == EXAMPLE
        assert p.count("warn") == 0, p.log()
    finally:
        assert p.stop() == 0, p.log()
