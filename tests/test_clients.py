"""Hostile clients: slowloris, too many TCP connections, a pipelining client, a UDP garbage
flood, access control (--allow), privilege drop (--user, --chroot), no query names in logs.

Every load here is bounded in count and time.  The upstream is helpers.FakeDoT (answers
qK.x -> 192.0.2.K) unless said otherwise.
"""

import os
import random
import re
import socket
import time

import dns.exception
import dns.message
import dns.rcode
import pytest

import helpers
from helpers import (a_addrs, free_port, make_query, query_tcp, query_udp, run_dotproxy,
                     tcp_connect, tcp_frame, tcp_recv_msg, tcp_send_msg, udp_exchange)

SANITIZED = bool(os.environ.get("DOTPROXY_SANITIZED"))


def _spec(fake):
    return "127.0.0.1@%d#dns.test" % fake.port


def _closed_by_peer(s):
    """True if the proxy closed the connection (EOF or reset), False if still open."""
    try:
        s.setblocking(False)
        data = s.recv(65536)
        return data == b""
    except BlockingIOError:
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True
    finally:
        s.setblocking(True)


# ---------------------------------------------------------------- slowloris

def test_slowloris_closed_while_others_served(proxies, fake_dot):
    """50 connections that each send half a length prefix are closed 5 s after that byte
    (CLIENT_FRAME_MS, checked at least once a second); queries are answered throughout."""
    fake = fake_dot()
    p = proxies.start(_spec(fake), extra=["--cache-size", "0"])
    socks = []
    for _ in range(50):
        s = tcp_connect(p.port)
        s.sendall(b"\x00")
        socks.append(s)
    t0 = time.monotonic()
    closed_at = {}
    k = 0
    while time.monotonic() - t0 < 9 and len(closed_at) < len(socks):
        k += 1
        name = "q%d.slow.test" % (k % 200 + 1)
        ask = query_udp if k % 2 else query_tcp
        r = ask(p.port, name, timeout=3)
        assert a_addrs(r) == {"192.0.2.%d" % (k % 200 + 1)}, "not served during the attack"
        for i, s in enumerate(socks):
            if i not in closed_at and _closed_by_peer(s):
                closed_at[i] = time.monotonic() - t0
        time.sleep(0.2)
    for s in socks:
        s.close()
    assert len(closed_at) == 50, "%d of 50 slow connections still open after 9 s" % (
        50 - len(closed_at))
    assert min(closed_at.values()) > 3.5, "closed before the 5 s frame limit: %r" % (
        sorted(closed_at.values())[:3],)
    assert max(closed_at.values()) < 8.0, sorted(closed_at.values())[-3:]
    assert k >= 10
    assert p.alive()


# ---------------------------------------------------------------- connection limit

def test_more_tcp_connections_than_the_limit(proxies, fake_dot):
    """300 connections against a limit of 128: idle ones are closed to make room, or new ones
    refused; the proxy keeps running, every answer it sends is right, and a new client is
    served afterwards."""
    fake = fake_dot()
    p = proxies.start(_spec(fake))
    socks = []
    answered = wrong = 0
    try:
        for i in range(300):
            try:
                s = tcp_connect(p.port, timeout=3)
            except OSError:
                continue
            socks.append(s)
            if i % 2:
                k = i % 250 + 1
                try:
                    tcp_send_msg(s, make_query("q%d.conn.test" % k, qid=i).to_wire())
                    r = dns.message.from_wire(tcp_recv_msg(s))
                    if r.id == i and a_addrs(r) == {"192.0.2.%d" % k}:
                        answered += 1
                    else:
                        wrong += 1
                except (OSError, EOFError):
                    pass            # closed to make room for a newer one
        time.sleep(0.5)
        closed = sum(1 for s in socks if _closed_by_peer(s))
    finally:
        for s in socks:
            s.close()
    assert wrong == 0
    assert answered >= 100, answered
    assert closed >= 300 - 128 - 5, "only %d of %d connections closed" % (closed, len(socks))
    assert p.alive(), p.log()
    assert a_addrs(query_tcp(p.port, "q251.conn.test")) == {"192.0.2.251"}
    assert a_addrs(query_udp(p.port, "q252.conn.test")) == {"192.0.2.252"}


# ---------------------------------------------------------------- per-client in-flight limit

def test_pipelining_client_limited_to_64_in_flight(proxies, fake_dot):
    """One TCP client pipelines 200 queries to an upstream that holds them: the proxy stops
    reading at 64 in flight (MAX_INFLIGHT_PER_CLIENT; the rest wait in the socket), so only
    about 64 reach the upstream.  The upstream then answers new queries but never the held
    ones: those get SERVFAIL at the -t 4000 timeout (a lone upstream that is only slow must
    not lose its answers to a reconnect), the client's next frames are read, and every one
    of the 200 gets an answer - each of the others with its own data."""
    fake = fake_dot(mode="silent")
    p = proxies.start(_spec(fake), extra=["--cache-size", "0", "-t", "4000"])
    s = tcp_connect(p.port, timeout=30)
    try:
        out = b""
        for i in range(200):
            w = make_query("q%d.pipe.test" % (i % 250 + 1), qid=i).to_wire()
            out += tcp_frame(w)
        s.sendall(out)
        assert fake.wait_queries(64, 1.5), fake.queries
        time.sleep(0.5)             # the stall timeout (-t / 2) is 2 s
        held = fake.queries
        fake.mode = "answer"
        got = {}
        while len(got) < 200:
            r = dns.message.from_wire(tcp_recv_msg(s))
            got[r.id] = r
    finally:
        s.close()
    # The limit stops the next read; the frames of the read that crossed it are all taken
    # (a 1028-byte read holds up to 73 minimal 14-byte frames): at most 63 + 73 in flight.
    # (Reported: the documented limit is 64.)
    assert 64 <= held <= 63 + (2 + 1024 + 2) // 14, "%d queries of one client read" % held
    assert held < 200
    assert sorted(got) == list(range(200))
    failed = [i for i, r in got.items() if r.rcode() == dns.rcode.SERVFAIL]
    assert len(failed) <= held, "%d SERVFAILs, %d queries held" % (len(failed), held)
    for i, r in got.items():
        if i not in failed:
            assert a_addrs(r) == {"192.0.2.%d" % (i % 250 + 1)}, (i, r)
    assert p.alive()


def test_pipelining_client_kept_while_proxy_holds_its_next_frame(proxies, fake_dot):
    """Known proxy bug: with 64 queries in flight the proxy stops reading the client, but a
    partial frame it already read keeps its CLIENT_FRAME_MS (5 s, anti-slowloris) clock
    running; when the upstream takes longer than that (-t up to 60 s is allowed), the client
    is closed as "too slow to send a query" and the answers in flight are lost."""
    fake = fake_dot(mode="silent")
    p = proxies.start(_spec(fake), extra=["--cache-size", "0", "-t", "12000"])
    s = tcp_connect(p.port, timeout=30)
    try:
        out = b""
        for i in range(100):
            w = make_query("q%d.pipe.test" % (i + 1), qid=i).to_wire()
            out += tcp_frame(w)
        s.sendall(out)
        assert fake.wait_queries(64, 2), fake.queries
        time.sleep(5.5)                 # past CLIENT_FRAME_MS, before the 6 s stall timeout
        fake.mode = "answer"
        got = {}
        try:
            while len(got) < 100:
                r = dns.message.from_wire(tcp_recv_msg(s))
                got[r.id] = r
        except (ConnectionResetError, EOFError) as e:
            pytest.xfail("proxy bug: pipelining client closed while the proxy held its next "
                         "frame (%r after %d answers)" % (e, len(got)))
    finally:
        s.close()
    assert sorted(got) == list(range(100))
    assert p.alive()


# ---------------------------------------------------------------- UDP garbage flood

RSS_BOUND_KB = 4096     # the static binary: about 350 KB idle (see dotproxy.c's overview)


def _vm(pid, field):
    with open("/proc/%d/status" % pid) as f:
        m = re.search(r"^%s:\s+(\d+) kB" % field, f.read(), re.M)
    return int(m.group(1))


def test_udp_garbage_flood_bounded_memory(proxies, fake_dot):
    """20,000 random datagrams (1-600 bytes; a tenth of them with a query-like header) in at
    most ~20 s: peak RSS (VmHWM) stays under RSS_BOUND_KB and real queries are answered during
    and after the flood."""
    fake = fake_dot()
    p = proxies.start(_spec(fake))
    rng = random.Random(1234)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setblocking(False)
    served_during = 0
    deadline = time.monotonic() + 20
    sent = 0
    try:
        for i in range(20000):
            if time.monotonic() > deadline:
                break
            n = rng.randint(1, 600)
            d = bytearray(rng.getrandbits(8) for _ in range(n))
            if i % 10 == 0 and n >= 12:
                d[2] &= 0x07        # not a response, opcode QUERY
                d[4:6] = b"\x00\x01"
            try:
                tx.sendto(bytes(d), ("127.0.0.1", p.port))
                sent += 1
            except BlockingIOError:
                time.sleep(0.001)
            if i % 2000 == 1999:
                for _ in range(3):      # UDP: the flood may crowd one out
                    try:
                        r = query_udp(p.port, "q%d.flood.test" % (i // 2000 + 1), timeout=1)
                    except dns.exception.Timeout:
                        continue
                    assert a_addrs(r) == {"192.0.2.%d" % (i // 2000 + 1)}
                    served_during += 1
                    break
    finally:
        tx.close()
    assert sent >= 10000, sent
    assert served_during >= 8, served_during
    assert p.alive(), p.log()
    assert a_addrs(query_udp(p.port, "q99.flood.test")) == {"192.0.2.99"}
    assert a_addrs(query_tcp(p.port, "q98.flood.test")) == {"192.0.2.98"}
    hwm = _vm(p.proc.pid, "VmHWM")
    print("dotproxy VmHWM after the flood: %d kB" % hwm)
    if not SANITIZED:           # ASan's shadow memory is not the proxy's
        assert hwm < RSS_BOUND_KB, "peak RSS %d kB" % hwm


# ---------------------------------------------------------------- --allow

def _raw_query(name, qid=4242):
    return make_query(name, qid=qid).to_wire()


def _check_refused(wire, name, qid=4242):
    r = dns.message.from_wire(wire)
    assert r.rcode() == dns.rcode.REFUSED, r
    assert r.id == qid
    assert str(r.question[0].name).rstrip(".") == name
    assert not r.answer


def test_allow_excludes_loopback_refused(proxies, fake_dot):
    fake = fake_dot()
    p = proxies.start(_spec(fake), extra=["--allow", "10.0.0.0/8"])
    _check_refused(udp_exchange(p.port, _raw_query("q1.acl.test")), "q1.acl.test")
    _check_refused(helpers.tcp_exchange(p.port, _raw_query("q2.acl.test")), "q2.acl.test")
    time.sleep(0.2)
    assert fake.queries == 0


def test_allow_loopback_answered(proxies, fake_dot):
    fake = fake_dot()
    p = proxies.start(_spec(fake), extra=["--allow", "127.0.0.0/8"])
    assert a_addrs(query_udp(p.port, "q3.acl.test")) == {"192.0.2.3"}
    assert a_addrs(query_tcp(p.port, "q4.acl.test")) == {"192.0.2.4"}


def test_allow_everything_ipv4_and_ipv6(proxies, fake_dot, have_ipv6):
    fake = fake_dot()
    port = free_port()
    listen = ["127.0.0.1@%d" % port] + (["[::1]@%d" % port] if have_ipv6 else [])
    p = proxies.start(_spec(fake), port=port, listen=listen,
                      extra=["--allow", "0.0.0.0/0", "--allow", "::/0"])
    assert a_addrs(query_udp(port, "q5.acl.test")) == {"192.0.2.5"}
    assert a_addrs(query_tcp(port, "q6.acl.test")) == {"192.0.2.6"}
    if have_ipv6:
        assert a_addrs(query_udp(port, "q7.acl.test", host="::1")) == {"192.0.2.7"}
        assert a_addrs(query_tcp(port, "q8.acl.test", host="::1")) == {"192.0.2.8"}


def test_allow_ipv4_only_refuses_ipv6(proxies, fake_dot, have_ipv6):
    if not have_ipv6:
        pytest.skip("no IPv6 loopback")
    fake = fake_dot()
    port = free_port()
    p = proxies.start(_spec(fake), port=port, listen=["127.0.0.1@%d" % port, "[::1]@%d" % port],
                      extra=["--allow", "0.0.0.0/0"])
    assert a_addrs(query_udp(port, "q9.acl.test")) == {"192.0.2.9"}
    _check_refused(udp_exchange(port, _raw_query("q10.acl.test"), host="::1"), "q10.acl.test")


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "::/129", "10.0.0/8", "example.com/8", "10.0.0.0/",
                                 "/8", "10.0.0.0/-1"])
def test_bad_allow_exits_1(dotproxy_bin, fake_dot, bad):
    fake = fake_dot()
    r = run_dotproxy(dotproxy_bin, ["-l", "127.0.0.1@%d" % free_port(), "-u", _spec(fake),
                                    "--allow", bad])
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert bad in r.stderr and "--allow" in r.stderr, r.stderr


# ---------------------------------------------------------------- privilege drop

def _status(pid):
    with open("/proc/%d/status" % pid) as f:
        return f.read()


def test_user_and_chroot_drop_privileges(proxies, fake_dot, pki, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("--user and --chroot need root")
    fake = fake_dot()
    empty = tmp_path / "empty"
    empty.mkdir()
    os.chmod(empty, 0o755)
    p = proxies.start(_spec(fake), extra=["--user", "65534:65534", "--chroot", str(empty)])
    st = _status(p.proc.pid)
    assert re.search(r"^Uid:\s+65534\s+65534\s+65534\s+65534$", st, re.M), st
    assert re.search(r"^Gid:\s+65534\s+65534\s+65534\s+65534$", st, re.M), st
    assert re.search(r"^Groups:\s*$", st, re.M), st
    assert os.readlink("/proc/%d/root" % p.proc.pid) == str(empty)
    assert a_addrs(query_udp(p.port, "q11.priv.test")) == {"192.0.2.11"}
    assert a_addrs(query_tcp(p.port, "q12.priv.test")) == {"192.0.2.12"}
    assert os.listdir(empty) == []
    assert p.stop() == 0


def test_chroot_nonexistent_exits_1(dotproxy_bin, fake_dot):
    if os.geteuid() != 0:
        pytest.skip("--chroot needs root")
    fake = fake_dot()
    r = run_dotproxy(dotproxy_bin, ["-l", "127.0.0.1@%d" % free_port(), "-u", _spec(fake),
                                    "--chroot", "/nonexistent-dotproxy-test"])
    assert r.returncode == 1, r.stderr
    assert "/nonexistent-dotproxy-test" in r.stderr, r.stderr


def test_user_as_non_root_exits_1(dotproxy_bin, fake_dot, pki, tmp_path):
    if os.geteuid() != 0:
        prefix = []
    elif os.path.exists("/usr/bin/setpriv"):
        prefix = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    else:
        pytest.skip("needs setpriv to run as a non-root user")
    fake = fake_dot()
    r = run_dotproxy(dotproxy_bin, ["-l", "127.0.0.1@%d" % free_port(), "-u", _spec(fake),
                                    "--user", "1234:1234"], cmd_prefix=prefix)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "cannot drop privileges" in r.stderr, r.stderr


@pytest.mark.parametrize("bad", ["bob", "65534:bob", "-1", "1:2:3", ""])
def test_bad_user_exits_1(dotproxy_bin, fake_dot, bad):
    fake = fake_dot()
    r = run_dotproxy(dotproxy_bin, ["-l", "127.0.0.1@%d" % free_port(), "-u", _spec(fake),
                                    "--user", bad])
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "--user" in r.stderr, r.stderr


# ---------------------------------------------------------------- no query names in logs

def test_query_names_not_logged_on_any_path(proxies, fake_dot):
    """Without -v: forwarded, cache hit, SERVFAIL (upstream down), malformed and REFUSED
    queries leave no name in the log."""
    fake = fake_dot()
    p = proxies.start(_spec(fake))
    assert a_addrs(query_udp(p.port, "q1.canary-fwd.test")) == {"192.0.2.1"}
    assert a_addrs(query_tcp(p.port, "q1.canary-fwd.test")) == {"192.0.2.1"}   # cache hit
    assert fake.queries == 1
    refusing = proxies.start(_spec(fake), extra=["--allow", "10.0.0.0/8"])
    _check_refused(udp_exchange(refusing.port, _raw_query("canary-refused.test")),
                   "canary-refused.test")
    down = proxies.start("127.0.0.1@%d#dns.test" % free_port(), extra=["-t", "500"])
    r = query_udp(down.port, "canary-down.test", timeout=4)
    assert r.rcode() == dns.rcode.SERVFAIL
    bad = bytearray(_raw_query("canary-bad.test"))
    bad[5] = 2                                          # QDCOUNT 2: FORMERR
    assert udp_exchange(p.port, bytes(bad)) is not None
    time.sleep(0.3)
    for proxy in (p, refusing, down):
        assert "canary" not in proxy.log(), proxy.log()


# ---------------------------------------------------------------- trailing bytes

def test_query_with_trailing_bytes_forwarded_well_formed(proxies, fake_dot):
    """Known proxy bug (tests/fuzz/regress/fuzz_query-pad-trailing-bytes): a query with bytes
    after its last record is accepted, and padding appends the OPT record after those bytes,
    so the upstream gets a malformed query (ARCOUNT 1, junk where the OPT should be)."""
    fake = fake_dot()
    p = proxies.start(_spec(fake), extra=["-t", "1500"])
    r = udp_exchange(p.port, _raw_query("q5.trailing.test") + b"\0" * 7, timeout=5)
    assert r is not None
    r = dns.message.from_wire(r)
    assert r.rcode() in (dns.rcode.NOERROR, dns.rcode.SERVFAIL, dns.rcode.FORMERR), r
    assert not any(a != "192.0.2.5" for a in a_addrs(r))
    assert fake.wait_queries(1, 3)
    malformed = 0
    for q in fake.all_queries():
        try:
            dns.message.from_wire(q.wire)
        except dns.exception.DNSException:
            malformed += 1
    assert p.alive()
    if malformed:
        pytest.xfail("proxy bug: padded query with trailing bytes reaches the upstream "
                     "malformed (%d of %d)" % (malformed, len(fake.all_queries())))
    assert r.rcode() in (dns.rcode.NOERROR, dns.rcode.FORMERR), r
