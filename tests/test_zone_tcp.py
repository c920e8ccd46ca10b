"""Forward zones over TCP only (--forward-zone DOMAIN=IP[@PORT],tcp, commit fcdc0b1) against a
zone server that attacks or flaps (tests/zonefake.py): one that accepts and never answers,
answers slowly or a byte at a time, answers another ID or another question, sends a huge or
a zero length, floods 64 KiB frames, closes or resets, refuses, and one that switches
between these under load. What must hold: every client gets an answer or SERVFAIL, within
--timeout, never a wrong answer; nothing wrong is cached; at most 64 connections at once,
SERVFAIL at once beyond; the other zones and the DoT upstream unaffected; nothing leaks (after
the storm, 64 queries at once are answered again).

All on 127.0.0.1: dotproxy's DoT upstream is the session's unbound, the zone servers are
threads of this process."""

import concurrent.futures
import signal
import time

import dns.message
import dns.query
import dns.rcode
import pytest

import helpers
from helpers import a_addrs
from netns import Netns, log_of, need_netns, wait_for
from test_restart import status
from zonefake import ZoneServer

ZONE_ADDR = {"198.51.100.1"}
EXAMPLE = {"192.0.2.10", "192.0.2.11"}
TIMEOUT_MS = 1500


@pytest.fixture
def zone():
    made = []

    def make(mode="answer", **kw):
        z = ZoneServer("z.test", mode=mode, **kw)
        made.append(z)
        return z
    yield make
    for z in made:
        z.stop()


def start(proxies, unbound, z, extra=()):
    return proxies.start("127.0.0.1@%d#dns.test" % unbound.port, extra=[
        "--forward-zone", "z.test=127.0.0.1@%d,tcp" % z.port, "-t", str(TIMEOUT_MS)]
        + list(extra))


def ask(p, name, tcp=False, timeout=5.0):
    """(outcome, seconds): outcome is "ok" (NOERROR, the zone's address), "servfail",
    "wrong" (any other answer) or "none" (no answer in `timeout`)."""
    q = helpers.make_query(name)
    t = time.monotonic()
    try:
        if tcp:
            r = dns.query.tcp(q, "127.0.0.1", port=p.port, timeout=timeout)
        else:
            r = dns.query.udp(q, "127.0.0.1", port=p.port, timeout=timeout)
    except (OSError, EOFError, dns.exception.Timeout):
        return "none", time.monotonic() - t
    dt = time.monotonic() - t
    if r.rcode() == dns.rcode.SERVFAIL and not r.answer:
        return "servfail", dt
    want = EXAMPLE if name == "example.test" else ZONE_ADDR
    if r.rcode() == dns.rcode.NOERROR and a_addrs(r) == want:
        return "ok", dt
    return "wrong", dt


def many(p, names, tcp=False, workers=40):
    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        return list(ex.map(lambda n: ask(p, n, tcp=tcp), names))


@pytest.mark.parametrize("mode,quick", [
    ("silent", False), ("huge", False), ("close", True), ("reset", True), ("zero", True),
    ("wrong_id", True), ("wrong_q", True), ("flood", True), ("refuse", True)])
def test_bad_zone_server_gets_servfail(proxies, unbound, zone, mode, quick):
    """Each misbehaviour: SERVFAIL within --timeout (at once where the server showed its
    hand: a close, a reset, a wrong answer, a refusal), never a wrong answer, never silence;
    nothing cached from it (the same name once the server behaves is asked again and gets
    the right answer); no UDP to a ,tcp zone; the DoT path answers meanwhile; dotproxy
    survives."""
    z = zone(mode, huge_bytes=1000)
    p = start(proxies, unbound, z)
    for i in range(3):
        out, dt = ask(p, "n%d.z.test" % i, tcp=bool(i % 2))
        assert out == "servfail", (mode, out, p.log())
        assert dt < TIMEOUT_MS / 1000.0 + 1.5, (mode, dt)
        if quick:
            assert dt < TIMEOUT_MS / 1000.0 - 0.3, (mode, dt)
    assert ask(p, "example.test")[0] == "ok"
    z.set_mode("answer")
    assert ask(p, "n0.z.test")[0] == "ok", p.log()
    if mode == "wrong_q":   # the other question it answered is not cached either
        z.set_mode("silent")
        assert ask(p, "other.z.test")[0] == "servfail"
    assert z.udp_queries == 0
    assert p.alive()
    assert any("z.test" in line and "TCP" in line for line in p.lines), p.log()


@pytest.mark.parametrize("mode,delay,want", [("delay", 0.8, "ok"), ("drip", 0.02, "ok"),
                                             ("delay", 3.0, "servfail"),
                                             ("drip", 0.2, "servfail")])
def test_slow_zone_server(proxies, unbound, zone, mode, delay, want):
    """An answer that comes whole after 0.8 s, or a byte every 20 ms, within --timeout
    (1.5 s): taken. After 3 s, or a byte every 200 ms: SERVFAIL at --timeout, not later."""
    z = zone(mode, delay=delay)
    p = start(proxies, unbound, z)
    out, dt = ask(p, "slow.z.test")
    assert out == want, (out, dt, p.log())
    assert dt < TIMEOUT_MS / 1000.0 + 1.0


def test_silent_server_holds_64_connections_then_servfail_at_once(proxies, unbound, zone):
    """A server that accepts and never answers: at most 64 connections to it; the queries
    beyond get SERVFAIL at once; the DoT path and the cache answer meanwhile; once those 64
    time out, the slots are free again: 64 queries at once to the server, now answering,
    all get their answer."""
    z = zone("silent")
    p = start(proxies, unbound, z)
    assert ask(p, "example.test")[0] == "ok"     # cached now
    t = time.monotonic()
    res = many(p, ["h%d.z.test" % i for i in range(100)], workers=100)
    outs = [o for o, _ in res]
    assert outs.count("servfail") == 100, outs
    fast = sum(1 for o, dt in res if dt < 0.7)
    assert fast >= 30, sorted(round(dt, 2) for _, dt in res)
    assert z.max_open <= 64, z.max_open
    assert time.monotonic() - t < TIMEOUT_MS / 1000.0 + 3
    assert any("64 forward-zone TCP queries in flight" in line for line in p.lines), p.log()
    # the slots came back
    z.set_mode("answer")
    time.sleep(0.3)
    res = many(p, ["b%d.z.test" % i for i in range(64)], workers=64)
    assert [o for o, _ in res].count("ok") == 64, res
    assert p.alive()


def test_silent_zone_does_not_starve_the_dot_path(proxies, unbound, zone):
    """While 64 connections hang on the silent zone server, queries over DoT (new names,
    not cached) are answered at once."""
    z = zone("silent")
    p = start(proxies, unbound, z)
    with concurrent.futures.ThreadPoolExecutor(70) as ex:
        hung = [ex.submit(ask, p, "s%d.z.test" % i) for i in range(70)]
        assert helpers.wait_until(lambda: z.open >= 60, 3, 0.02), z.open
        for i in range(20):
            q = helpers.make_query("d%d.bench.test" % i)
            t = time.monotonic()
            r = (dns.query.tcp if i % 2 else dns.query.udp)(q, "127.0.0.1", port=p.port,
                                                            timeout=3)
            dt = time.monotonic() - t
            assert a_addrs(r) == {"192.0.2.1"} and dt < 1.0, (r, dt)
        outs = [h.result()[0] for h in hung]
    assert set(outs) == {"servfail"}, outs


def test_flapping_zone_server(proxies, unbound, zone):
    """A zone server that changes its behaviour every 150 ms (answers, refuses, resets,
    stays silent, answers slowly, another ID) under a load of 20 clients for 4 s: every
    query gets the right answer or SERVFAIL, never a wrong answer, never silence past
    --timeout; once it answers for good, so does dotproxy, with all slots free."""
    z = zone("answer", delay=0.3)
    p = start(proxies, unbound, z)
    modes = ["answer", "refuse", "reset", "silent", "delay", "wrong_id", "answer", "close"]
    stop = time.monotonic() + 4.0
    results = []

    def client(k):
        i = 0
        while time.monotonic() < stop:
            i += 1
            results.append(ask(p, "f%d-%d.z.test" % (k, i), tcp=bool(k % 3 == 0)))

    with concurrent.futures.ThreadPoolExecutor(21) as ex:
        futs = [ex.submit(client, k) for k in range(20)]
        j = 0
        while time.monotonic() < stop:
            z.set_mode(modes[j % len(modes)])
            j += 1
            time.sleep(0.15)
        z.set_mode("answer")
        for f in futs:
            f.result()
    outs = [o for o, _ in results]
    print({o: outs.count(o) for o in set(outs)}, "flips:", j)
    assert "wrong" not in outs and "none" not in outs
    assert outs.count("ok") > 0 and outs.count("servfail") > 0
    assert max(dt for _, dt in results) < TIMEOUT_MS / 1000.0 + 1.5
    time.sleep(TIMEOUT_MS / 1000.0)
    res = many(p, ["after%d.z.test" % i for i in range(64)], workers=64)
    assert [o for o, _ in res].count("ok") == 64, res
    assert p.alive()


def test_zone_tcp_ports_do_not_run_out(tmp_path, dotproxy_bin, pki):
    """In a network namespace whose local port range is 60 ports wide, the zone server on
    10.96.0.10 (a Service address, not loopback): 150 zone queries one after the other, each
    a new name, all answered (a stand-in for 28,232 ports and 470 queries a second).  Before
    the fix (fcdc0b1) each connection, closed by dotproxy first, left a TIME_WAIT socket for
    60 s: query 61 failed; now a zone connection closes with a reset (SO_LINGER 0)."""
    need_netns()
    ns = Netns(tmp=tmp_path)
    z = None
    try:
        ns.run(["ip", "addr", "add", "10.96.0.10/32", "dev", "lo"])
        ns.run(["sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40059"])
        z = ns.call(lambda: ZoneServer("z.test", host="10.96.0.10", port=53))
        fake = ns.call(lambda: helpers.FakeDoT(chain=pki.chain, key=pki.key, port=853))
        p = ns.popen([dotproxy_bin, "-l", "127.0.0.1@53", "-u", "127.0.0.1@853#dns.test",
                      "-c", pki.root, "--http", "127.0.0.1@9253", "-t", "1500",
                      "--forward-zone", "z.test=10.96.0.10@53,tcp"], "p")
        assert wait_for(lambda: status(ns, 9253, "/ready") == 200, 20), log_of(p)

        def run():
            outs = []
            for i in range(150):
                r = dns.query.udp(helpers.make_query("p%d.z.test" % i), "127.0.0.1", port=53,
                                  timeout=3)
                outs.append("ok" if a_addrs(r) == ZONE_ADDR else dns.rcode.to_text(r.rcode()))
            return outs
        outs = ns.call(run)
        first_bad = next((i for i, o in enumerate(outs) if o != "ok"), None)
        print("first failure at query", first_bad, {o: outs.count(o) for o in set(outs)})
        assert outs.count("ok") == 150, (first_bad, log_of(p))
        p.send_signal(signal.SIGTERM)
        p.wait(10)
        fake.stop()
    finally:
        if z is not None:
            z.stop()
        ns.close()
