"""The answer cache (hits, TTL countdown, expiry, min/max TTL, negative
caching, what is not cached, the key), serve-stale, forward zones over plain
DNS (routing, TCP fallback, unreachable server, spoofed answers, bad specs),
the graceful stop on SIGTERM/SIGINT, and the SIGUSR1 counters.

Upstreams are helpers.FakeDoT (qK.<anything> -> A 192.0.2.K; ttl=, aa=,
special= per-name answers; every raw query recorded), the session unbound
(through a TlsRecordRelay that counts the TLS records dotproxy sends it),
and helpers.FakePlainDNS for the forward zones (198.51.100.x data, queries
counted per transport)."""

import re
import signal
import socket
import threading
import time

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest

from helpers import (TlsRecordRelay, a_addrs, fake_addr_for, free_port, run_dotproxy,
                     udp_exchange, wait_until)
import dns.query

NOERROR = dns.rcode.NOERROR
NXDOMAIN = dns.rcode.NXDOMAIN
SERVFAIL = dns.rcode.SERVFAIL
REFUSED = dns.rcode.REFUSED
PADDING = 12


# ---------------------------------------------------------------- helpers

def spec(port):
    return "127.0.0.1@%d#dns.test" % port


def zone_arg(zone, srv):
    return ["--forward-zone", "%s=127.0.0.1@%d" % (zone, srv.port)]


def ask(p, name, rdtype="A", tcp=False, qid=None, edns=False, do=False, cd=False,
        rd=True, payload=1232, timeout=4.0):
    """One query to the proxy; returns the dns.message answer."""
    q = dns.message.make_query(name, rdtype, use_edns=0 if (edns or do) else False,
                               payload=payload, want_dnssec=do)
    if qid is not None:
        q.id = qid
    if cd:
        q.flags |= dns.flags.CD
    if not rd:
        q.flags &= ~dns.flags.RD
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=p.port, timeout=timeout)
    return dns.query.udp(q, "127.0.0.1", port=p.port, timeout=timeout,
                         ignore_unexpected=True, raise_on_truncation=False)


def seen(fake, name):
    """How many queries for `name` (any case) reached the FakeDoT."""
    want = dns.name.from_text(name)
    return sum(1 for q in fake.all_queries() if q.msg().question[0].name == want)


def upstream_msgs(fake, name):
    want = dns.name.from_text(name)
    return [q.msg() for q in fake.all_queries() if q.msg().question[0].name == want]


def min_ttl(r):
    ttls = [rr.ttl for rr in r.answer + r.authority]
    assert ttls, "no records: %s" % r
    return min(ttls)


def qname_text(r):
    return r.question[0].name.to_text(omit_final_dot=True)


def assert_a(r, name, addrs=None):
    assert r.rcode() == NOERROR, "%s: %s\n%s" % (name, dns.rcode.to_text(r.rcode()), r)
    assert qname_text(r) == name, "question %r, asked %r" % (qname_text(r), name)
    want = addrs if addrs is not None else {fake_addr_for(name)}
    assert a_addrs(r) == want, "%s: got %s, want %s" % (name, a_addrs(r), want)


STATS_RE = {
    "udp": r"queries udp=(\d+)", "tcp": r"queries udp=\d+ tcp=(\d+)",
    "hits": r"cache hits=(\d+)", "misses": r"misses=(\d+)", "stale": r"stale=(\d+)",
    "servfail": r"servfail=(\d+)", "in_flight": r"in_flight=(\d+)",
    "tcp_clients": r"tcp_clients=(\d+)",
}
UPSTREAM_RE = re.compile(r"upstream (\S+) \((\S+)\) (\S+) queries=(\d+) connects=(\d+) "
                         r"resumed=(\d+) failures=(\d+)")
ZONE_RE = re.compile(r"zone (\S+) \(([^,)\s]+)(?:, TCP)?\) queries=(\d+) tcp=(\d+) failures=(\d+)")


def stats(p, timeout=3.0):
    """SIGUSR1; waits for exactly one new "dotproxy: stats:" line and parses it."""
    key = "dotproxy: stats:"
    before = p.count(key)
    p.proc.send_signal(signal.SIGUSR1)
    assert wait_until(lambda: p.count(key) > before, timeout, 0.02), \
        "no stats line after SIGUSR1:\n" + p.log()
    time.sleep(0.1)
    assert p.count(key) == before + 1, "more than one stats line:\n" + p.log()
    line = [l for l in p.log().splitlines() if key in l][-1]
    assert line.startswith(key), line
    out = {"line": line}
    for k, rx in STATS_RE.items():
        m = re.search(rx, line)
        assert m, "%s missing from %r" % (k, line)
        out[k] = int(m.group(1))
    out["upstreams"] = {m.group(1): dict(name=m.group(2), state=m.group(3),
                                         queries=int(m.group(4)), connects=int(m.group(5)),
                                         resumed=int(m.group(6)), failures=int(m.group(7)))
                        for m in UPSTREAM_RE.finditer(line)}
    out["zones"] = {m.group(1): dict(addr=m.group(2), queries=int(m.group(3)),
                                     tcp=int(m.group(4)), failures=int(m.group(5)))
                    for m in ZONE_RE.finditer(line)}
    assert p.alive(), "dotproxy died on SIGUSR1:\n" + p.log()
    return out


def warn_lines(p):
    return [l for l in p.log().splitlines() if ": warn: " in l]


# ---------------------------------------------------------------- cache: hits

def test_cache_hit_udp_then_udp_and_tcp(proxies, fake_dot):
    """A UDP miss, then hits over UDP and TCP that never reach the upstream:
    each with the client's ID, the client's spelling of the name, AA cleared
    (the upstream set it), no OPT when the client sent none, and no Padding
    (the upstream padded its answers). A TCP miss is then a TCP hit too.
    RD is part of the key (an RD=0 answer may be a bare CNAME): an RD=0
    query is a miss of its own, and then a hit with RD echoed as 0."""
    f = fake_dot(aa=True, pad_answers=True)
    p = proxies.start(spec(f.port))
    r = ask(p, "q21.Cache.Test", qid=1001, edns=True)
    assert_a(r, "q21.Cache.Test")
    assert r.id == 1001 and seen(f, "q21.cache.test") == 1
    assert not [o for o in r.options if o.otype == PADDING], r.options

    r = ask(p, "Q21.CACHE.TEST", qid=1002)
    assert_a(r, "Q21.CACHE.TEST")
    assert r.id == 1002
    assert not r.flags & dns.flags.AA, "AA set on a cache hit"
    assert r.edns < 0, "OPT in the answer to a query without one: %s" % r
    assert seen(f, "q21.cache.test") == 1, "UDP hit reached the upstream"

    ask(p, "q21.cache.test", qid=1004, rd=False)
    assert seen(f, "q21.cache.test") == 2, "an RD=0 query was answered from an RD=1 entry"
    r = ask(p, "Q21.CACHE.TEST", qid=1005, rd=False)
    assert_a(r, "Q21.CACHE.TEST")
    assert not r.flags & dns.flags.RD, "RD not echoed as 0: %s" % dns.flags.to_text(r.flags)
    assert seen(f, "q21.cache.test") == 2, "RD=0 hit reached the upstream"

    r = ask(p, "q21.cache.TEST", tcp=True, qid=1003, edns=True)
    assert_a(r, "q21.cache.TEST")
    assert r.id == 1003 and r.flags & dns.flags.RD and not r.flags & dns.flags.AA
    assert r.edns == 0, "OPT missing for a client that sent one"
    assert not [o for o in r.options if o.otype == PADDING], "Padding in a hit: %s" % r.options
    assert seen(f, "q21.cache.test") == 2, "TCP hit after a UDP miss reached the upstream"

    assert_a(ask(p, "q22.cache.test", tcp=True, qid=7), "q22.cache.test")
    r = ask(p, "Q22.cache.test", tcp=True, qid=8)
    assert_a(r, "Q22.cache.test")
    assert r.id == 8 and seen(f, "q22.cache.test") == 1, "TCP hit reached the upstream"
    assert f.queries == 3, [q.msg().question for q in f.all_queries()]


def test_cache_ttl_counts_down(proxies, fake_dot):
    """A hit 2.2 s after the miss carries the TTL minus at least 2 (and no
    more than the original)."""
    f = fake_dot(ttl=300)
    p = proxies.start(spec(f.port))
    t1 = min_ttl(ask(p, "q23.ttl.test"))
    assert 295 <= t1 <= 300, t1
    time.sleep(2.2)
    r = ask(p, "q23.ttl.test")
    assert_a(r, "q23.ttl.test")
    t2 = min_ttl(r)
    assert t1 - 6 <= t2 <= t1 - 2, "TTL %d then %d after 2.2 s" % (t1, t2)
    assert seen(f, "q23.ttl.test") == 1


@pytest.mark.parametrize("ttl,extra", [(1, []), (300, ["--cache-max-ttl", "1"])],
                         ids=["answer-ttl-1", "cache-max-ttl-1"])
def test_cache_entry_expires(proxies, fake_dot, ttl, extra):
    """An entry lives for its TTL (here 1 s, from the answer or clamped by
    --cache-max-ttl 1): a hit right away, a refetch 1.5 s later, then a hit
    again."""
    f = fake_dot(ttl=ttl)
    p = proxies.start(spec(f.port), extra=extra)
    r = ask(p, "q24.exp.test")
    assert min_ttl(r) <= 1, r
    ask(p, "q24.exp.test")
    assert seen(f, "q24.exp.test") == 1, "no hit right after the miss"
    time.sleep(1.5)
    assert_a(ask(p, "q24.exp.test"), "q24.exp.test")
    assert seen(f, "q24.exp.test") == 2, "expired entry still served"
    ask(p, "q24.exp.test")
    assert seen(f, "q24.exp.test") == 2, "refetched answer not cached"


def test_cache_max_ttl_clamps_what_client_sees(proxies, fake_dot):
    """--cache-max-ttl 5: an answer with TTL 300 reaches the client with TTL
    <= 5, on the miss and on the hit."""
    f = fake_dot(ttl=300)
    p = proxies.start(spec(f.port), extra=["--cache-max-ttl", "5"])
    r = ask(p, "q25.max.test")
    assert_a(r, "q25.max.test")
    assert min_ttl(r) <= 5, "miss answered with TTL %d" % min_ttl(r)
    r = ask(p, "q25.max.test")
    assert 0 < min_ttl(r) <= 5 and seen(f, "q25.max.test") == 1, r


def test_cache_min_ttl_keeps_short_answers(proxies, fake_dot):
    """--cache-min-ttl 10: an answer with TTL 1 is still a hit 1.5 s later,
    with a TTL between 7 and 10."""
    f = fake_dot(ttl=1)
    p = proxies.start(spec(f.port), extra=["--cache-min-ttl", "10"])
    assert_a(ask(p, "q26.min.test"), "q26.min.test")
    time.sleep(1.5)
    r = ask(p, "q26.min.test")
    assert_a(r, "q26.min.test")
    assert seen(f, "q26.min.test") == 1, "entry with min TTL 10 expired after 1.5 s"
    assert 7 <= min_ttl(r) <= 10, min_ttl(r)


# ---------------------------------------------------------------- cache: negative answers

NEG = {
    "nx-a.test": dict(kind="nxdomain", soa=(1, 300)),     # min(SOA TTL, MINIMUM) = 1
    "nx-b.test": dict(kind="nxdomain", soa=(300, 1)),
    "nodata-a.test": dict(kind="nodata", soa=(1, 300)),
    "nx-long.test": dict(kind="nxdomain", soa=(300, 300)),
    "nx-long2.test": dict(kind="nxdomain", soa=(300, 300)),
    "nodata-long.test": dict(kind="nodata", soa=(300, 300)),
    "nx-nosoa.test": dict(kind="nxdomain"),
    "nodata-nosoa.test": dict(kind="nodata"),
}


def test_negative_caching_rfc2308(proxies, fake_dot):
    """NXDOMAIN / NODATA with a SOA are cached for min(SOA TTL, SOA MINIMUM)
    (and at most --cache-max-ttl); without a SOA they are not cached."""
    f = fake_dot(special=NEG)
    p = proxies.start(spec(f.port))
    p2 = proxies.start(spec(f.port), extra=["--cache-max-ttl", "1"])
    cached = ["nx-a.test", "nx-b.test", "nodata-a.test", "nx-long.test", "nodata-long.test"]
    for _ in range(2):
        for n in cached + ["nx-nosoa.test", "nodata-nosoa.test"]:
            r = ask(p, n)
            want = NXDOMAIN if NEG[n]["kind"] == "nxdomain" else NOERROR
            assert r.rcode() == want and not r.answer, "%s: %s" % (n, r)
            assert bool(r.authority) == ("soa" in NEG[n]), "%s: %s" % (n, r)
        ask(p2, "nx-long2.test")
    for n in cached:
        assert seen(f, n) == 1, "%s (with SOA) not cached: seen %d times" % (n, seen(f, n))
    for n in ("nx-nosoa.test", "nodata-nosoa.test"):
        assert seen(f, n) == 2, "%s (no SOA) was cached" % n
    assert seen(f, "nx-long2.test") == 1
    time.sleep(1.5)
    for n in cached:
        ask(p, n)
    ask(p2, "nx-long2.test")
    for n in ("nx-a.test", "nx-b.test", "nodata-a.test"):
        assert seen(f, n) == 2, "%s: negative TTL is not min(SOA TTL, MINIMUM) = 1" % n
    for n in ("nx-long.test", "nodata-long.test"):
        assert seen(f, n) == 1, "%s (negative TTL 300) expired after 1.5 s" % n
    assert seen(f, "nx-long2.test") == 2, "negative entry not capped by --cache-max-ttl 1"


def test_negative_caching_with_unbound(proxies, unbound, relays):
    """The session unbound: nothing.test (NXDOMAIN with the root zone's SOA)
    is cached; nx.example.test (NXDOMAIN, no SOA) and example.test TXT
    (NODATA, no SOA) are not. Upstream traffic is counted in TLS records."""
    relay = relays(("127.0.0.1", unbound.port), cls=TlsRecordRelay)
    p = proxies.start(spec(relay.port))

    def sent(name, rdtype, want):
        before = relay.app_records()
        r = ask(p, name, rdtype)
        assert r.rcode() == want and not r.answer, r
        time.sleep(0.05)
        return relay.app_records() - before

    assert sent("nothing.test", "A", NXDOMAIN) >= 1
    assert sent("nothing.test", "A", NXDOMAIN) == 0, "NXDOMAIN with SOA not cached"
    assert sent("nx.example.test", "A", NXDOMAIN) >= 1
    assert sent("nx.example.test", "A", NXDOMAIN) >= 1, "NXDOMAIN without SOA was cached"
    assert sent("example.test", "TXT", NOERROR) >= 1
    assert sent("example.test", "TXT", NOERROR) >= 1, "NODATA without SOA was cached"


# ---------------------------------------------------------------- cache: not cached, the key

def test_not_cached_servfail_refused_tc_malformed(proxies, fake_dot):
    """SERVFAIL, REFUSED, truncated and malformed answers are not cached: the
    same query again reaches the upstream again (the malformed one is
    SERVFAIL for the client)."""
    special = {"sf.test": dict(kind="servfail"), "ref.test": dict(kind="refused"),
               "tc.test": dict(kind="tc"), "bad.test": dict(kind="malformed")}
    f = fake_dot(special=special)
    p = proxies.start(spec(f.port), extra=["-t", "1500"])
    for name, want in (("sf.test", SERVFAIL), ("ref.test", REFUSED), ("tc.test", None),
                       ("bad.test", SERVFAIL)):
        counts = []
        for _ in range(2):
            try:
                r = ask(p, name, timeout=4)
            except dns.exception.Timeout:
                r = None
            if want is not None:
                assert r is not None and r.rcode() == want, "%s: %s" % (name, r)
            counts.append(seen(f, name))
        assert counts[0] >= 1 and counts[1] > counts[0], \
            "%s: second query answered from the cache (upstream saw %s)\n%s" % (
                name, counts, p.log())
    assert p.alive()


def test_cache_key_type_do_cd(proxies, fake_dot):
    """The key has the type, the DO bit and the CD bit: A then AAAA, DO=0
    then DO=1, CD=0 then CD=1 each reach the upstream; each repeated is a hit."""
    f = fake_dot()
    p = proxies.start(spec(f.port))
    n = "q31.key.test"
    assert_a(ask(p, n), n)
    r = ask(p, n, "AAAA")
    assert not a_addrs(r) and r.question[0].rdtype == dns.rdatatype.AAAA, r
    assert seen(f, n) == 2, "AAAA answered from the A entry"
    assert_a(ask(p, n), n)
    assert seen(f, n) == 2
    r = ask(p, n, do=True)
    assert_a(r, n)
    assert r.ednsflags & dns.flags.DO, "DO not set in the answer"
    assert seen(f, n) == 3, "DO=1 answered from the DO=0 entry"
    assert upstream_msgs(f, n)[-1].ednsflags & dns.flags.DO
    r = ask(p, n, do=True)
    assert r.ednsflags & dns.flags.DO and seen(f, n) == 3, "DO=1 repeated not a hit"
    assert_a(ask(p, n, cd=True), n)
    assert seen(f, n) == 4, "CD=1 answered from the CD=0 entry"
    assert upstream_msgs(f, n)[-1].flags & dns.flags.CD
    ask(p, n, cd=True)
    assert seen(f, n) == 4, "CD=1 repeated not a hit"


def test_cache_size_zero_disables(proxies, fake_dot):
    """--cache-size 0: every query reaches the upstream; no hits counted."""
    f = fake_dot()
    p = proxies.start(spec(f.port), extra=["--cache-size", "0"])
    for k in range(3):
        assert_a(ask(p, "q32.nocache.test", tcp=bool(k == 2)), "q32.nocache.test")
    assert seen(f, "q32.nocache.test") == 3
    assert stats(p)["hits"] == 0


@pytest.mark.parametrize("size", ["64k", "1m", "100000"])
def test_cache_size_values(proxies, fake_dot, size):
    """--cache-size with k / m suffix or plain bytes: the cache works."""
    f = fake_dot()
    p = proxies.start(spec(f.port), extra=["--cache-size", size])
    for _ in range(2):
        assert_a(ask(p, "q33.size.test"), "q33.size.test")
    assert seen(f, "q33.size.test") == 1


# ---------------------------------------------------------------- serve-stale

def test_serve_stale_when_upstream_down_then_refresh(proxies, fake_dot, relays):
    """--serve-stale 60 --cache-max-ttl 1: the entry expires, the upstream
    goes away (relay stopped): the expired answer is served with TTL 30
    (stats stale=1). The relay comes back: a later query reaches the
    upstream and gets a fresh TTL (<= 1)."""
    f = fake_dot()
    relay = relays(("127.0.0.1", f.port))
    p = proxies.start(spec(relay.port), extra=["--cache-max-ttl", "1", "--serve-stale", "60",
                                               "-t", "1000", "--max-backoff", "500"])
    n = "q34.stale.test"
    assert min_ttl(ask(p, n)) <= 1
    time.sleep(1.5)
    relay.stop()
    t0 = time.monotonic()
    r = ask(p, n, qid=3434, timeout=4)
    assert time.monotonic() - t0 < 2.5
    assert_a(r, n)
    assert r.id == 3434
    assert [rr.ttl for rr in r.answer] == [30], "stale answer TTL: %s" % r
    st = stats(p)
    assert st["stale"] == 1, st["line"]
    before = seen(f, n)
    relay.start()

    def fresh():
        r = ask(p, n, timeout=3)
        return r if (r.rcode() == NOERROR and min_ttl(r) <= 1 and seen(f, n) > before) else None

    r = wait_until(fresh, 8, 0.3)
    assert r, "not refreshed after the upstream came back\n" + p.log()
    assert_a(r, n)


@pytest.mark.parametrize("stale_arg,wait", [(None, 1.5), ("1", 2.6)],
                         ids=["no-serve-stale", "expired-beyond-window"])
def test_no_stale_answer_servfail(proxies, fake_dot, relays, stale_arg, wait):
    """Without --serve-stale, or with an entry expired longer ago than the
    window (--serve-stale 1, expired 1.6 s ago), a query nobody answers
    gets SERVFAIL."""
    f = fake_dot()
    relay = relays(("127.0.0.1", f.port))
    extra = ["--cache-max-ttl", "1", "-t", "1000"]
    if stale_arg:
        extra += ["--serve-stale", stale_arg]
    p = proxies.start(spec(relay.port), extra=extra)
    assert_a(ask(p, "q35.stale.test"), "q35.stale.test")
    time.sleep(wait)
    relay.stop()
    r = ask(p, "q35.stale.test", timeout=4)
    assert r.rcode() == SERVFAIL and not r.answer, r
    assert stats(p)["stale"] == 0


def test_serve_stale_needs_cache(dotproxy_bin):
    """--serve-stale with --cache-size 0 is a start-up error naming it."""
    res = run_dotproxy(dotproxy_bin, ["-l", "127.0.0.1@%d" % free_port(), "-u",
                                      "127.0.0.1@1#dns.test", "--serve-stale", "10",
                                      "--cache-size", "0"])
    assert res.returncode == 1, res
    assert "serve-stale" in res.stderr, res.stderr


# ---------------------------------------------------------------- forward zones

def test_forward_zone_routes_and_caches(proxies, fake_dot, plain_dns):
    """Names at or below `lan` go to the zone server over UDP (answer with
    the client's ID and case), others over DoT; the zone answer is cached;
    the stats line has the zone."""
    z = plain_dns("lan")
    f = fake_dot()
    p = proxies.start(spec(f.port), extra=zone_arg("lan", z) + ["-t", "2000"])
    r = ask(p, "NAS.Lan", qid=777)
    assert_a(r, "NAS.Lan", z.addrs())
    assert r.id == 777
    assert z.names() == [("udp", "nas.lan.")] and f.queries == 0
    assert z.queries[0][2][0] == "127.0.0.1"
    r = ask(p, "nas.LAN", tcp=True, qid=778)
    assert_a(r, "nas.LAN", z.addrs())
    assert r.id == 778 and z.udp == 1 and z.tcp == 0, "zone answer not cached"
    assert_a(ask(p, "lan"), "lan", z.addrs())
    assert_a(ask(p, "q3.example.test"), "q3.example.test")
    assert f.queries == 1 and z.udp == 2, z.names()
    st = stats(p)
    assert "lan" in st["zones"], st["line"]
    zs = st["zones"]["lan"]
    assert zs["addr"] == "127.0.0.1:%d" % z.port, st["line"]
    assert (zs["queries"], zs["tcp"], zs["failures"]) == (2, 0, 0), st["line"]
    assert (st["hits"], st["misses"]) == (1, 3), st["line"]


def test_forward_zone_tcp_only(proxies, fake_dot, plain_dns):
    """DOMAIN=IP@PORT,tcp: every query for the zone goes over TCP (never one UDP datagram:
    CoreDNS's force_tcp, no UDP conntrack entry behind a Kubernetes Service), with the
    client's ID and case, cached like any zone answer; the label says TCP; a zone without
    ,tcp still asks over UDP first."""
    z = plain_dns("cluster.local")
    u = plain_dns("lan")
    f = fake_dot()
    p = proxies.start(spec(f.port), extra=[
        "--forward-zone", "cluster.local=127.0.0.1@%d,tcp" % z.port,
        "--forward-zone", "lan=127.0.0.1@%d" % u.port, "-t", "2000"])
    for i in range(5):
        r = ask(p, "Svc%d.Cluster.Local" % i, qid=900 + i)
        assert_a(r, "Svc%d.Cluster.Local" % i, z.addrs())
        assert r.id == 900 + i
    assert z.udp == 0 and z.tcp == 5, z.names()
    assert_a(ask(p, "svc0.cluster.local", tcp=True), "svc0.cluster.local", z.addrs())
    assert z.tcp == 5, "zone answer not cached"
    assert_a(ask(p, "nas.lan"), "nas.lan", u.addrs())
    assert u.udp == 1 and u.tcp == 0
    st = stats(p)
    zs = st["zones"]["cluster.local"]
    assert (zs["queries"], zs["tcp"], zs["failures"]) == (5, 5, 0), st["line"]
    assert "TCP" in st["line"], st["line"]


def test_forward_zone_tcp_only_server_down(proxies, fake_dot):
    """A ,tcp zone whose server refuses connections: SERVFAIL at once (not at --timeout),
    with a log line naming the zone; the bad flag ,udp is refused at start-up."""
    port = free_port()
    f = fake_dot()
    p = proxies.start(spec(f.port), extra=[
        "--forward-zone", "cluster.local=127.0.0.1@%d,tcp" % port, "-t", "3000"])
    t = time.monotonic()
    r = ask(p, "svc.cluster.local")
    assert r.rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - t < 1.5
    assert any("cluster.local" in l and ("refused" in l.lower() or "connect" in l.lower())
               for l in p.lines), p.lines


def test_forward_zone_longest_suffix_label_aligned(proxies, fake_dot, plain_dns):
    """cluster.local -> A, svc.cluster.local -> B (given second): the longest
    matching zone wins, case-insensitively, on label boundaries only;
    xcluster.local and local go over DoT."""
    a = plain_dns("cluster.local", base=1)
    b = plain_dns("svc.cluster.local", base=100)
    f = fake_dot()
    p = proxies.start(spec(f.port), extra=zone_arg("cluster.local", a)
                      + zone_arg("svc.cluster.local", b))
    for name, srv in (("web.svc.cluster.local", b), ("svc.cluster.local", b),
                      ("Db.SVC.Cluster.LOCAL", b), ("x.xsvc.cluster.local", a),
                      ("b.cluster.local", a), ("CLUSTER.local", a)):
        assert_a(ask(p, name), name, srv.addrs())
    for name in ("xcluster.local", "q9.local"):
        assert_a(ask(p, name), name)
    assert sorted(n for _, n in b.names()) == sorted(
        ["web.svc.cluster.local.", "svc.cluster.local.", "db.svc.cluster.local."])
    assert sorted(n for _, n in a.names()) == sorted(
        ["x.xsvc.cluster.local.", "b.cluster.local.", "cluster.local."])
    assert sorted(q.msg().question[0].name.to_text().lower() for q in f.all_queries()) == \
        ["q9.local.", "xcluster.local."]


def test_forward_zone_truncated_udp_retried_over_tcp(proxies, fake_dot, plain_dns):
    """The zone server answers TC=1 over UDP (40 A records over TCP): a TCP
    client and a UDP client with EDNS 4096 get all 40 records; a UDP client
    without EDNS gets at most 512 bytes with TC set."""
    z = plain_dns("lan", n_records=40, tc_udp=True)
    f = fake_dot()
    p = proxies.start(spec(f.port), extra=zone_arg("lan", z) + ["-t", "2000"])
    r = ask(p, "t1.lan", tcp=True)
    assert_a(r, "t1.lan", z.addrs())
    assert not r.flags & dns.flags.TC
    assert ("tcp", "t1.lan.") in z.names(), z.names()
    r = ask(p, "t2.lan", edns=True, payload=4096)
    assert_a(r, "t2.lan", z.addrs())
    assert not r.flags & dns.flags.TC
    assert ("tcp", "t2.lan.") in z.names(), z.names()
    raw = udp_exchange(p.port, dns.message.make_query("t3.lan", "A", use_edns=False).to_wire(),
                       timeout=4)
    assert raw is not None, "no answer to a UDP query without EDNS"
    r = dns.message.from_wire(raw, ignore_trailing=True)
    assert len(raw) <= 512 and r.flags & dns.flags.TC, (len(raw), r)
    st = stats(p)
    assert st["zones"]["lan"]["tcp"] >= 2, st["line"]
    assert f.queries == 0


@pytest.mark.parametrize("how", ["unreachable", "silent"])
def test_forward_zone_server_down_servfail(proxies, fake_dot, plain_dns, how):
    """A zone server nobody listens for (or one that never answers): SERVFAIL
    within -t 1000; for the unreachable one, one warn line naming the zone
    for 3 queries. DoT names keep working."""
    if how == "silent":
        z = plain_dns("corp.example", silent=True)
        port = z.port
    else:
        port = free_port()
    f = fake_dot()
    p = proxies.start(spec(f.port), extra=["--forward-zone", "corp.example=127.0.0.1@%d" % port,
                                           "-t", "1000"])
    for k in range(3 if how == "unreachable" else 1):
        t0 = time.monotonic()
        r = ask(p, "h%d.corp.example" % k, timeout=4)
        dt = time.monotonic() - t0
        assert r.rcode() == SERVFAIL, r
        assert dt < 2.5, "SERVFAIL after %.2f s" % dt
    assert_a(ask(p, "q5.example.test"), "q5.example.test")
    st = stats(p)
    zs = st["zones"]["corp.example"]
    assert zs["queries"] >= 1 and st["servfail"] >= 1, st["line"]
    if how == "unreachable":
        assert zs["failures"] >= 1, st["line"]
        w = [l for l in warn_lines(p) if "corp.example" in l]
        assert len(w) == 1, "warn lines naming the zone:\n" + p.log()
    else:
        assert z.udp >= 1


def test_forward_zone_ignores_spoofed_answers(proxies, fake_dot, plain_dns):
    """Before each real answer the zone server sends bogus ones: from another
    port, with a wrong ID, with another question. Only the real one counts."""
    z = plain_dns("lan", spoof=True)
    f = fake_dot()
    p = proxies.start(spec(f.port), extra=zone_arg("lan", z) + ["-t", "2000"])
    for name in ("a.lan", "b.lan"):
        r = ask(p, name)
        assert_a(r, name, z.addrs())


@pytest.mark.parametrize("value", ["lan", "=1.2.3.4", "lan=router", "a..b=127.0.0.1"])
def test_forward_zone_bad_spec(dotproxy_bin, value):
    """A bad --forward-zone exits 1 naming the value."""
    res = run_dotproxy(dotproxy_bin, ["-l", "127.0.0.1@%d" % free_port(), "-u",
                                      "127.0.0.1@1#dns.test", "--forward-zone", value])
    assert res.returncode == 1, res
    assert value in res.stderr, res.stderr


# ---------------------------------------------------------------- graceful stop

def _bg_query(p, name, out, timeout=6):
    def run():
        t0 = time.monotonic()
        try:
            out["r"] = ask(p, name, timeout=timeout)
        except Exception as e:  # noqa: BLE001
            out["r"] = e
        out["t"] = time.monotonic()
        out["dt"] = out["t"] - t0
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_stop_finishes_in_flight(proxies, fake_dot, sig):
    """Slow upstream (1.5 s): a query, the signal 0.3 s later. New TCP
    connects are refused and new UDP queries unanswered during the drain;
    the query in flight still gets its answer; TLS closed with close_notify;
    exit 0; log says stopping on signal N and stopped."""
    f = fake_dot(delay=1.5)
    p = proxies.start(spec(f.port), extra=["-t", "4000"])
    out = {}
    t = _bg_query(p, "q41.drain.test", out)
    assert f.wait_queries(1, 3)
    time.sleep(0.3)
    p.proc.send_signal(sig)
    assert p.wait_for("stopping on signal %d" % sig, 1.0), p.log()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", p.port), timeout=1).close()
    assert udp_exchange(p.port, dns.message.make_query("q42.drain.test", "A").to_wire(),
                        timeout=0.4) is None, "UDP query answered during the drain"
    t.join(6)
    r = out.get("r")
    assert isinstance(r, dns.message.Message), "%r\n%s" % (r, p.log())
    assert_a(r, "q41.drain.test")
    assert p.proc.wait(5) == 0, p.log()
    assert f.queries == 1, "a query reached the upstream during the drain"
    c = f.conns[-1]
    assert c.closed.wait(3)
    assert c.close_kind == "close_notify", f.conns
    assert p.wait_for("stopped", 2), p.log()


def test_drain_timeout_servfails_the_rest(proxies, fake_dot):
    """--drain-timeout 500 with a 3 s upstream: the query in flight gets
    SERVFAIL about 0.5 s after SIGTERM; exit 0."""
    f = fake_dot(delay=3.0)
    p = proxies.start(spec(f.port), extra=["-t", "6000", "--drain-timeout", "500"])
    out = {}
    t = _bg_query(p, "q43.drain.test", out)
    assert f.wait_queries(1, 3)
    time.sleep(0.2)
    ts = time.monotonic()
    p.proc.send_signal(signal.SIGTERM)
    t.join(6)
    r = out.get("r")
    assert isinstance(r, dns.message.Message) and r.rcode() == SERVFAIL, "%r\n%s" % (r, p.log())
    after = out["t"] - ts
    assert 0.3 <= after <= 2.0, "SERVFAIL %.2f s after SIGTERM" % after
    assert p.proc.wait(3) == 0, p.log()
    assert p.wait_for("stopped", 2), p.log()


def test_second_signal_exits_at_once(proxies, fake_dot):
    """A second SIGTERM during the drain (default 5 s): exit 0 at once, the
    query in flight gets SERVFAIL."""
    f = fake_dot(delay=3.0)
    p = proxies.start(spec(f.port), extra=["-t", "6000"])
    out = {}
    t = _bg_query(p, "q44.drain.test", out)
    assert f.wait_queries(1, 3)
    p.proc.send_signal(signal.SIGTERM)
    assert p.wait_for("stopping on signal 15", 1.0), p.log()
    time.sleep(0.3)
    ts = time.monotonic()
    p.proc.send_signal(signal.SIGTERM)
    assert p.proc.wait(1.5) == 0, p.log()
    assert time.monotonic() - ts < 1.5
    t.join(3)
    r = out.get("r")
    assert isinstance(r, dns.message.Message) and r.rcode() == SERVFAIL, "%r\n%s" % (r, p.log())


# ---------------------------------------------------------------- counters

def test_sigusr1_counters(proxies, fake_dot):
    """-q: 3 UDP queries (one repeated) and 2 TCP queries, then SIGUSR1: one
    stats line with udp=3 tcp=2 hits=1 misses=4 stale=0 servfail=0
    in_flight=0 tcp_clients=0 and the upstream's queries=4 connects=1
    failures=0; the proxy keeps answering."""
    f = fake_dot()
    p = proxies.start(spec(f.port), extra=["-q"], wait_ready=False)
    for name in ("q51.st.test", "q52.st.test", "q51.st.test"):
        assert_a(ask(p, name), name)
    for name in ("q53.st.test", "q54.st.test"):
        assert_a(ask(p, name, tcp=True), name)

    def settled():
        st = stats(p)
        return st if st["tcp_clients"] == 0 else None
    st = wait_until(settled, 3, 0.2) or stats(p)
    line = st["line"]
    assert (st["udp"], st["tcp"]) == (3, 2), line
    assert (st["hits"], st["misses"], st["stale"]) == (1, 4, 0), line
    assert (st["servfail"], st["in_flight"], st["tcp_clients"]) == (0, 0, 0), line
    u = st["upstreams"].get("127.0.0.1:%d" % f.port)
    assert u, line
    assert u["name"] == "dns.test" and u["state"] == "ready", line
    assert (u["queries"], u["connects"], u["failures"]) == (4, 1, 0), line
    assert f.queries == 4
    assert_a(ask(p, "q55.st.test"), "q55.st.test")
    assert stats(p)["udp"] == 4
    assert p.alive()
