"""Upstream failures: certificate validation, unreachable upstream and
recovery, query timeout, upstream closing the connection."""

import time

import dns.message
import dns.rcode
import pytest

from helpers import (CountingRelay, a_addrs, free_port, make_query, query_tcp, query_udp,
                     tcp_connect, tcp_frame, tcp_recv_msg, wait_until)

SERVFAIL = dns.rcode.SERVFAIL


def servfail_fast(port, name, timeout_ms, fn=query_udp):
    """Query; assert SERVFAIL arrives within the proxy's timeout + 2 s."""
    t0 = time.monotonic()
    r = fn(port, name, "A", timeout=timeout_ms / 1000 + 2)
    dt = time.monotonic() - t0
    assert r.rcode() == SERVFAIL, "expected SERVFAIL for %s, got %s %s" % (
        name, dns.rcode.to_text(r.rcode()), r.answer)
    assert r.answer == []
    assert dt <= timeout_ms / 1000 + 2
    return r


def servfail_until_attempts(p, attempts, n=3, timeout_ms=1000, deadline=15):
    """Keep querying (each must get SERVFAIL fast) until the upstream has seen
    `n` connection attempts, so that a "logged once" check spans several
    failed attempts, not just one."""
    end = time.monotonic() + deadline
    i = 0
    while attempts() < n:
        assert time.monotonic() < end, "only %d upstream connection attempts in %d s" % (
            attempts(), deadline)
        servfail_fast(p.port, "example.test", timeout_ms, query_udp if i % 2 == 0 else query_tcp)
        i += 1
        time.sleep(0.25)
    servfail_fast(p.port, "example.test", timeout_ms)
    return i + 1


def settle(p, secs=0.5):
    time.sleep(secs)
    assert p.alive(), "dotproxy died:\n" + p.log()


# ---------------------------------------------------------------- 8. wrong auth name

def test_wrong_auth_name_servfail_logged_once(proxies, relay):
    relay.start()
    p = proxies.start("127.0.0.1@%d#wrong.test" % relay.port, extra=["-t", "1000"])
    servfail_until_attempts(p, lambda: relay.accepted)
    settle(p)
    assert p.count("BR_ERR_X509_BAD_SERVER_NAME") == 1, p.log()
    assert "wrong.test" in p.log()


# ---------------------------------------------------------------- 9. untrusted root

def test_untrusted_root_ca_file(proxies, relay, pki):
    relay.start()
    p = proxies.start("127.0.0.1@%d#dns.test" % relay.port, ca=pki.other_root,
                      extra=["-t", "1000"])
    servfail_until_attempts(p, lambda: relay.accepted)
    settle(p)
    assert p.count("BR_ERR_X509_NOT_TRUSTED") == 1, p.log()


def test_untrusted_without_ca_file_uses_builtin_roots(proxies, relay):
    """Without --ca-file only the compiled-in public roots are trusted: the test
    root is not among them, so no answer may come through (no trust-anything,
    no plaintext fallback)."""
    relay.start()
    p = proxies.start("127.0.0.1@%d#dns.test" % relay.port, ca=False, extra=["-t", "1000"])
    servfail_until_attempts(p, lambda: relay.accepted, n=2)
    settle(p)
    assert p.count("BR_ERR_X509_NOT_TRUSTED") == 1, p.log()


def test_untrusted_server_never_sees_queries(proxies, fake_dot, pki):
    """A server with a certificate from another root gets the handshake but
    never a query."""
    f = fake_dot(chain=pki.other_chain, key=pki.other_key)
    p = proxies.start("127.0.0.1@%d#dns.test" % f.port, extra=["-t", "1000"])
    servfail_until_attempts(p, lambda: f.connections, n=2)
    settle(p)
    assert f.queries == 0, "query sent over an unvalidated connection"
    assert p.count("BR_ERR_X509_NOT_TRUSTED") == 1, p.log()


# ---------------------------------------------------------------- 10. down, then back

def test_upstream_down_then_up(proxies, unbound):
    port = free_port()
    p = proxies.start("127.0.0.1@%d#dns.test" % port, extra=["-t", "1500"])
    # spread over ~4 s so that several connection attempts fail (backoff >= 0.5 s)
    for i in range(6):
        servfail_fast(p.port, "example.test", 1500, query_udp if i % 2 == 0 else query_tcp)
        time.sleep(0.7)
    settle(p, 0.2)
    assert p.count("connect failed") == 1, p.log()
    assert "Connection refused" in p.log()

    relay = CountingRelay(("127.0.0.1", unbound.port), port=port).start()
    try:
        def ok():
            try:
                r = query_udp(p.port, "example.test", "A", timeout=2)
            except Exception:  # noqa: BLE001
                return False
            return r.rcode() == dns.rcode.NOERROR and a_addrs(r) == {"192.0.2.10", "192.0.2.11"}
        assert wait_until(ok, 20, 0.3), "no recovery 20 s after the upstream came up:\n" + p.log()
        r = query_tcp(p.port, "back.bench.test", "A", timeout=3)
        assert a_addrs(r) == {"192.0.2.1"}
    finally:
        relay.stop()


def test_upstream_goes_away_and_returns(proxies, unbound):
    relay = CountingRelay(("127.0.0.1", unbound.port)).start()
    try:
        p = proxies.start("127.0.0.1@%d#dns.test" % relay.port, extra=["-t", "1500"])
        assert a_addrs(query_udp(p.port, "example.test")) == {"192.0.2.10", "192.0.2.11"}
        relay.stop()          # closes the live connection and refuses new ones
        time.sleep(0.3)
        for i in range(3):
            servfail_fast(p.port, "gone%d.bench.test" % i, 1500)
        assert p.alive()
        relay.start()

        def ok():
            try:
                r = query_udp(p.port, "back.bench.test", "A", timeout=2)
            except Exception:  # noqa: BLE001
                return False
            return a_addrs(r) == {"192.0.2.1"}
        assert wait_until(ok, 20, 0.3), "no recovery:\n" + p.log()
    finally:
        relay.stop()


# ---------------------------------------------------------------- 11. query timeout

@pytest.mark.parametrize("fn", [query_udp, query_tcp], ids=["udp", "tcp"])
def test_query_timeout_servfail(proxies, fake_dot, fn):
    f = fake_dot(mode="silent")
    p = proxies.start("127.0.0.1@%d#dns.test" % f.port, extra=["-t", "1000"])
    t0 = time.monotonic()
    r = fn(p.port, "slow.example", "A", timeout=6)
    dt = time.monotonic() - t0
    assert r.rcode() == SERVFAIL
    assert 0.5 <= dt <= 4.0, "SERVFAIL after %.2f s with -t 1000" % dt
    assert f.queries >= 1, "the query never reached the upstream"
    assert p.alive()


def test_query_timeout_does_not_break_later_queries(proxies, fake_dot):
    """After timeouts the proxy is still usable (here: the upstream never answers,
    so each query gets its own SERVFAIL, none is lost)."""
    f = fake_dot(mode="silent")
    p = proxies.start("127.0.0.1@%d#dns.test" % f.port, extra=["-t", "800"])
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(10) as ex:
        rs = list(ex.map(lambda i: query_udp(p.port, "t%d.example" % i, timeout=5), range(10)))
    assert all(r.rcode() == SERVFAIL for r in rs)


# ---------------------------------------------------------------- 12. upstream closes

def test_upstream_closes_after_3_answers_reconnects(proxies, fake_dot):
    f = fake_dot(close_after=3)
    p = proxies.start("127.0.0.1@%d#dns.test" % f.port, extra=["-t", "3000"])
    for i in range(3):
        r = query_udp(p.port, "a%d.example" % i, timeout=4)
        assert a_addrs(r) == {f.ANSWER_ADDR}, r
    for i in range(3, 9):
        time.sleep(0.3)   # let the proxy notice a close (the race is tested below)
        fn = query_udp if i % 2 else query_tcp
        r = fn(p.port, "a%d.example" % i, "A", timeout=4)
        assert r.rcode() == dns.rcode.NOERROR, "query %d: %s\n%s" % (i, r, p.log())
        assert a_addrs(r) == {f.ANSWER_ADDR}
    assert f.connections >= 2


def test_queries_in_flight_when_upstream_closes_are_answered(proxies, fake_dot):
    """6 queries pipelined; the upstream answers 3 and closes: the other 3 are
    resent on a new connection (RFC 7858 3.4: the client handles the close)
    rather than lost or failed."""
    f = fake_dot(close_after=3)
    p = proxies.start("127.0.0.1@%d#dns.test" % f.port, extra=["-t", "3000"])
    assert a_addrs(query_udp(p.port, "warm.example")) == {f.ANSWER_ADDR}
    time.sleep(0.2)
    s = tcp_connect(p.port, timeout=5)
    try:
        buf = b""
        for i in range(6):
            w = make_query("f%d.example" % i, "A", qid=100 + i).to_wire()
            buf += tcp_frame(w)
        s.sendall(buf)
        rs = {}
        for _ in range(6):
            r = dns.message.from_wire(tcp_recv_msg(s))
            rs[r.id] = r
    finally:
        s.close()
    assert sorted(rs) == list(range(100, 106))
    bad = {i: dns.rcode.to_text(r.rcode()) for i, r in rs.items() if r.rcode() != dns.rcode.NOERROR}
    assert not bad, "failed instead of retried: %s" % bad
    assert f.connections >= 2
