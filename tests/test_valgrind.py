"""dotproxy under valgrind (memcheck): a representative run, 0 errors and no definite leaks.

The binary is the host build (gcc -g -O1, glibc, dynamic: $DOTPROXY_HOST, e.g. make
build/dotproxy-host, or built here from dotproxy.c and BearSSL's host library).  valgrind also
runs the static musl ./dotproxy (second case): it works, but sees no malloc there (musl is
linked in, and dotproxy allocates with mmap), so its leak check has nothing to check.

Traffic: UDP and TCP queries, pipelined TCP, a truncated answer (TC) and its TCP retry, cache
hits, malformed datagrams and frames, a REFUSED client, the upstream failing (its relay
stopped) and recovering, SIGUSR1 (stats), SIGTERM with a query in flight (drain).
"""

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time

import dns.flags
import dns.message
import dns.rcode
import pytest

import helpers
from helpers import (a_addrs, make_query, query_tcp, query_udp, tcp_connect, tcp_recv_msg,
                     tcp_send_msg, udp_exchange, wait_until)

pytestmark = pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind not installed")

EXAMPLE = {"192.0.2.10", "192.0.2.11"}


@pytest.fixture(scope="module")
def host_binary(tmp_path_factory):
    env = os.environ.get("DOTPROXY_HOST")
    if env:
        return env
    lib = os.path.join(helpers.REPO, "bearssl", "build", "host", "libbearssl.a")
    if not os.path.exists(lib) or not os.path.exists(os.path.join(helpers.REPO, "anchors.inc")):
        pytest.skip("no host BearSSL build (make)")
    out = str(tmp_path_factory.mktemp("vg") / "dotproxy-host")
    subprocess.run(["gcc", "-g", "-O1", "-std=c99", "-DDOTPROXY_BUILD_EPOCH=0",
                    "-I" + os.path.join(helpers.REPO, "bearssl", "inc"), "-o", out,
                    os.path.join(helpers.REPO, "dotproxy.c"), lib], check=True)
    return out


def _traffic(p, relay):
    port = p.port
    # UDP, TCP, cache hits
    for _ in range(3):
        assert a_addrs(query_udp(port, "example.test")) == EXAMPLE
        assert a_addrs(query_tcp(port, "example.test")) == EXAMPLE
    # pipelined TCP
    s = tcp_connect(port, timeout=10)
    try:
        for i in range(20):
            tcp_send_msg(s, make_query("p%d.bench.test" % i, qid=i).to_wire())
        ids = {dns.message.from_wire(tcp_recv_msg(s)).id for _ in range(20)}
        assert ids == set(range(20))
    finally:
        s.close()
    # truncation, then the same over TCP
    r = query_udp(port, "big.example.test", "TXT", timeout=10)
    assert r.flags & dns.flags.TC
    r = query_tcp(port, "big.example.test", "TXT", timeout=10)
    assert not r.flags & dns.flags.TC and r.answer
    # malformed: short datagram, a response, QDCOUNT 2, a short TCP frame, random bytes
    udp_exchange(port, b"\x00\x01\x02", timeout=0.3)
    resp = bytearray(make_query("x.bench.test").to_wire())
    resp[2] |= 0x80
    udp_exchange(port, bytes(resp), timeout=0.3)
    two = bytearray(make_query("y.bench.test").to_wire())
    two[5] = 2
    r = udp_exchange(port, bytes(two), timeout=5)
    assert r is not None and dns.message.from_wire(r).rcode() == dns.rcode.FORMERR
    s = tcp_connect(port)
    s.sendall(b"\x00\x05hello")
    s.close()
    s = tcp_connect(port)
    s.sendall(os.urandom(300))
    s.close()
    # the upstream fails (relay stopped) and recovers
    relay.stop()
    r = query_udp(port, "down.bench.test", timeout=10)
    assert r.rcode() == dns.rcode.SERVFAIL
    relay.start()
    r = wait_until(lambda: a_addrs(query_udp(port, "up%d.bench.test" % time.monotonic_ns(),
                                             timeout=10)) == {"192.0.2.1"}, 20, 0.5)
    assert r, "no recovery:\n%s" % p.log()
    # statistics
    p.proc.send_signal(signal.SIGUSR1)
    assert p.wait_for("queries", 10), p.log()


def _run_under_valgrind(proxies, relay, binary, tmp_path, extra_vg=()):
    log = str(tmp_path / "valgrind.log")
    prefix = ["valgrind", "--error-exitcode=99", "--leak-check=full",
              "--errors-for-leak-kinds=definite", "--track-fds=no", "--log-file=" + log] + \
        list(extra_vg)
    p = proxies.start("127.0.0.1@%d#dns.test" % relay.port, binary=binary, cmd_prefix=prefix,
                      ready_timeout=60, extra=["-t", "3000"])
    refused = proxies.start("127.0.0.1@%d#dns.test" % relay.port, binary=binary,
                            cmd_prefix=prefix[:-1] + ["--log-file=" + log + ".refused"],
                            ready_timeout=60, extra=["--allow", "10.0.0.0/8"])
    try:
        _traffic(p, relay)
        r = udp_exchange(refused.port, make_query("r.bench.test").to_wire(), timeout=10)
        assert dns.message.from_wire(r).rcode() == dns.rcode.REFUSED
        # SIGTERM with a query in flight: drained, then exit 0
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(make_query("drain.bench.test").to_wire(), ("127.0.0.1", p.port))
        time.sleep(0.05)
        p.proc.send_signal(signal.SIGTERM)
        refused.proc.send_signal(signal.SIGTERM)
        rc = p.proc.wait(60)
        rc2 = refused.proc.wait(60)
        s.close()
    finally:
        p.stop(timeout=30)
        refused.stop(timeout=30)
    reports = {}
    for path in (log, log + ".refused"):
        text = open(path).read()
        reports[path] = text
        assert "ERROR SUMMARY: 0 errors" in text, text[-4000:]
        m = re.search(r"definitely lost: ([\d,]+) bytes", text)
        assert m is None or m.group(1) == "0", text[-3000:]
    assert (rc, rc2) == (0, 0), (rc, rc2, log)
    return reports, p


def test_valgrind_host_build(proxies, relays, unbound, host_binary, tmp_path):
    relay = relays(("127.0.0.1", unbound.port))
    reports, p = _run_under_valgrind(proxies, relay, host_binary, tmp_path)
    text = reports[str(tmp_path / "valgrind.log")]
    assert "Memcheck" in text
    assert "stopped" in p.log()


def test_valgrind_static_musl_binary(proxies, relays, unbound, dotproxy_bin, tmp_path):
    if os.environ.get("DOTPROXY_SANITIZED"):
        pytest.skip("an ASan binary does not run under valgrind")
    relay = relays(("127.0.0.1", unbound.port))
    _run_under_valgrind(proxies, relay, dotproxy_bin, tmp_path)
