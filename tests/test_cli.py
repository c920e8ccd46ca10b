"""Command line, environment, signals, listen-address forms, IPv6, chroot."""

import os
import shutil
import signal
import subprocess
import time

import pytest

from helpers import a_addrs, free_port, query_tcp, query_udp, run_dotproxy

EXAMPLE = {"192.0.2.10", "192.0.2.11"}


def safe_base(unbound):
    """A loopback listener and a loopback upstream: nothing can ever go out."""
    return ["-l", "127.0.0.1@%d" % free_port(), "-u", "127.0.0.1@%d#dns.test" % unbound.port]


def netns_prefix():
    """A command prefix running the program in a fresh network namespace with
    only `lo` up, or None when that is impossible (not root / no unshare)."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return None
    r = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True)
    if r.returncode != 0:
        return None
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


# ---------------------------------------------------------------- 17. bad options

def test_help(dotproxy_bin, unbound):
    r = run_dotproxy(dotproxy_bin, safe_base(unbound) + ["--help"])
    assert r.returncode == 0, r.stderr
    assert "--listen" in r.stdout and "--upstream" in r.stdout
    r = run_dotproxy(dotproxy_bin, safe_base(unbound) + ["-h"])
    assert r.returncode == 0 and "--upstream" in r.stdout


def test_version(dotproxy_bin, unbound):
    for opt in ("--version", "-V"):
        r = run_dotproxy(dotproxy_bin, safe_base(unbound) + [opt])
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("dotproxy "), r.stdout
        assert r.stdout.split()[1][0].isdigit()


def test_unknown_option(dotproxy_bin, unbound):
    r = run_dotproxy(dotproxy_bin, safe_base(unbound) + ["--bogus-option"])
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.strip()


BAD_VALUES = [
    # (id, extra args, text the message must contain)
    ("listen-5-octets", ["-l", "1.2.3.4.5"], "1.2.3.4.5"),
    ("listen-port-70000", ["-l", "127.0.0.1@70000"], "70000"),
    ("listen-port-garbage", ["-l", "127.0.0.1@53x"], "53x"),
    ("listen-v6-unbracketed-port", ["-l", "[::1:53"], "[::1:53"),
    ("upstream-port-0", ["-u", "127.0.0.1@0#x"], None),
    ("upstream-no-authname", ["-u", "127.0.0.1"], "#"),
    ("upstream-bad-ip", ["-u", "127.0.0.256#x.test"], "127.0.0.256"),
    ("missing-ca-file", ["--ca-file", "/nonexistent/dotproxy-ca.pem"],
     "/nonexistent/dotproxy-ca.pem"),
    ("timeout-abc", ["-t", "abc"], "abc"),
]


@pytest.mark.parametrize("extra,needle", [c[1:] for c in BAD_VALUES], ids=[c[0] for c in BAD_VALUES])
def test_bad_value(dotproxy_bin, unbound, extra, needle):
    base = safe_base(unbound)
    if extra[0] == "-u":
        base = base[:2]   # the bad upstream is the only one
    t0 = time.monotonic()
    r = run_dotproxy(dotproxy_bin, base + extra, check_safe=False)
    assert r.returncode is not None, "dotproxy kept running with %r\n%s" % (extra, r.stderr)
    assert time.monotonic() - t0 < 3
    assert r.returncode == 1, "exit %r for a bad value %r; stderr: %s" % (r.returncode, extra,
                                                                         r.stderr)
    assert r.stderr.strip()
    if needle is not None:
        assert needle in r.stderr, "stderr does not name %r: %s" % (needle, r.stderr)
    assert "ready" not in r.stderr


def test_ca_file_without_certificates(dotproxy_bin, unbound, tmp_path):
    f = tmp_path / "empty.pem"
    f.write_text("not a certificate\n")
    r = run_dotproxy(dotproxy_bin, safe_base(unbound) + ["-c", str(f)])
    assert r.returncode not in (0, None), r.stderr
    assert str(f) in r.stderr


# ---------------------------------------------------------------- listen forms

@pytest.mark.parametrize("form", ["{ip}@{port}", "{ip}:{port}"])
def test_listen_ipv4_forms(proxies, unbound, form):
    port = free_port()
    proxies.start("127.0.0.1@%d#dns.test" % unbound.port,
                  listen=form.format(ip="127.0.0.1", port=port), port=port)
    assert a_addrs(query_udp(port, "example.test")) == EXAMPLE
    assert a_addrs(query_tcp(port, "example.test")) == EXAMPLE


def test_two_listeners(proxies, unbound):
    a, b = free_port(), free_port()
    proxies.start("127.0.0.1@%d#dns.test" % unbound.port,
                  listen=["127.0.0.1@%d" % a, "127.0.0.1@%d" % b], port=a)
    for port in (a, b):
        assert a_addrs(query_udp(port, "example.test")) == EXAMPLE
        assert a_addrs(query_tcp(port, "example.test")) == EXAMPLE


# ---------------------------------------------------------------- 15. IPv6

@pytest.fixture
def need_v6(have_ipv6):
    if not have_ipv6:
        pytest.skip("::1 is not usable on this host")


def test_ipv6_listen_and_upstream(proxies, unbound, need_v6):
    port = free_port()
    proxies.start("::1@%d#dns.test" % unbound.port, listen="[::1]:%d" % port, port=port)
    assert a_addrs(query_udp(port, "example.test", host="::1")) == EXAMPLE
    assert a_addrs(query_tcp(port, "example.test", host="::1")) == EXAMPLE


def test_ipv6_listen_at_form_ipv4_upstream(proxies, unbound, need_v6):
    port = free_port()
    proxies.start("127.0.0.1@%d#dns.test" % unbound.port, listen="::1@%d" % port, port=port)
    assert a_addrs(query_udp(port, "example.test", host="::1")) == EXAMPLE


def test_ipv4_listen_ipv6_upstream(proxies, unbound, need_v6):
    p = proxies.start("::1@%d#dns.test" % unbound.port)
    assert a_addrs(query_tcp(p.port, "example.test")) == EXAMPLE


# ---------------------------------------------------------------- 14. DOT_SERVER

def test_dot_server_env(proxies, unbound):
    port = free_port()
    p = proxies.start(None, env={"DOT_SERVER": "127.0.0.1@%d#dns.test" % unbound.port}, port=port)
    assert a_addrs(query_udp(p.port, "example.test")) == EXAMPLE


def test_dot_server_list(proxies, unbound):
    spec = "127.0.0.1@%d#dns.test,127.0.0.1@%d#dns.test" % (unbound.port, unbound.port)
    p = proxies.start(None, env={"DOT_SERVER": spec})
    assert a_addrs(query_udp(p.port, "example.test")) == EXAMPLE


def test_upstream_option_overrides_dot_server(proxies, unbound):
    dead = free_port()   # nothing listens there
    p = proxies.start("127.0.0.1@%d#dns.test" % unbound.port,
                      env={"DOT_SERVER": "127.0.0.1@%d#dns.test" % dead}, extra=["-t", "1500"])
    for _ in range(3):
        r = query_udp(p.port, "example.test", timeout=4)
        assert a_addrs(r) == EXAMPLE, "DOT_SERVER used although -u was given: %s" % r
    assert "connect failed" not in p.log()


def test_dot_server_unknown_ip_without_name_refused(dotproxy_bin):
    """DOT_SERVER=10.0.0.1 (no #AUTHNAME) must be refused at start-up.  Run in a
    private network namespace so that even a broken binary cannot send anything."""
    prefix = netns_prefix()
    if prefix is None:
        pytest.skip("needs root + unshare to run a non-loopback upstream spec safely")
    args = ["-l", "127.0.0.1@%d" % free_port()]
    t0 = time.monotonic()
    r = run_dotproxy(dotproxy_bin, args, env={"DOT_SERVER": "10.0.0.1"}, timeout=3,
                     cmd_prefix=prefix, check_safe=False)
    assert r.returncode is not None, "dotproxy started with DOT_SERVER=10.0.0.1:\n" + r.stderr
    assert r.returncode != 0
    assert time.monotonic() - t0 < 3
    assert "10.0.0.1" in r.stderr and "#" in r.stderr, r.stderr


def test_bad_dot_server_value(dotproxy_bin):
    r = run_dotproxy(dotproxy_bin, ["-l", "127.0.0.1@%d" % free_port()],
                     env={"DOT_SERVER": "127.0.0.1@99999#dns.test"}, timeout=3)
    assert r.returncode not in (0, None), r.stderr
    assert "99999" in r.stderr


# ---------------------------------------------------------------- 16. signals

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_exits_zero(proxies, unbound, sig):
    p = proxies.start("127.0.0.1@%d#dns.test" % unbound.port)
    assert a_addrs(query_tcp(p.port, "example.test")) == EXAMPLE  # upstream connection live
    t0 = time.monotonic()
    p.proc.send_signal(sig)
    try:
        rc = p.proc.wait(3)
    except subprocess.TimeoutExpired:
        pytest.fail("dotproxy still running 3 s after %s" % sig.name)
    assert rc == 0, "exit status %r after %s\n%s" % (rc, sig.name, p.log())
    assert time.monotonic() - t0 < 3


def test_signal_exits_zero_while_idle_and_upstream_down(proxies):
    p = proxies.start("127.0.0.1@%d#dns.test" % free_port(), extra=["-t", "1000"])
    query_udp(p.port, "example.test", timeout=3)     # SERVFAIL, upstream in backoff
    p.proc.send_signal(signal.SIGTERM)
    assert p.proc.wait(3) == 0


# ---------------------------------------------------------------- 18. empty root

def test_chroot_empty_root(proxies, unbound, pki, dotproxy_bin, tmp_path):
    """In a root holding only the binary and the CA file (no /etc, /dev, libc):
    still resolves.  Needs root for chroot(2)."""
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    root = tmp_path / "empty-root"
    root.mkdir()
    shutil.copy(dotproxy_bin, root / "dotproxy")
    shutil.copy(pki.root, root / "root.pem")
    assert sorted(os.listdir(root)) == ["dotproxy", "root.pem"]
    p = proxies.start("127.0.0.1@%d#dns.test" % unbound.port, ca="/root.pem",
                      cmd_prefix=["chroot", str(root)], binary="/dotproxy")
    assert a_addrs(query_udp(p.port, "example.test")) == EXAMPLE
    assert a_addrs(query_tcp(p.port, "example.test")) == EXAMPLE


# ---------------------------------------------------------------- logging

def test_query_names_not_logged_without_v(proxies, unbound):
    p = proxies.start("127.0.0.1@%d#dns.test" % unbound.port)
    assert a_addrs(query_udp(p.port, "privacy-canary.bench.test")) == {"192.0.2.1"}
    assert a_addrs(query_tcp(p.port, "privacy-canary2.bench.test")) == {"192.0.2.1"}
    time.sleep(0.3)
    assert "privacy-canary" not in p.log()
    assert all(l.startswith("dotproxy: ") for l in p.lines), p.log()


def test_debug_logging_names_queries(proxies, unbound):
    p = proxies.start("127.0.0.1@%d#dns.test" % unbound.port, extra=["-v"])
    assert a_addrs(query_udp(p.port, "debug-canary.bench.test")) == {"192.0.2.1"}
    assert p.wait_for("debug-canary", 2, exclude=None), p.log()
    assert any(l.startswith("dotproxy: debug: ") for l in p.lines)
