"""Cache integrity and cross-client leaks, tried the way an attacker would
(issue #9, /tmp/spec-issue9.md "Cache" and "What a client gets back").

One client fills the cache; another must not get what the first one's query
shaped: a NODATA for TYPE97 served for HTTPS (type 65: 'A' and 'a' when the
type bytes are case-folded with the name), class 97 data for class 65, an
RD=0 referral for an RD=1 client (and back), an AD=0 answer for a client
that asked for AD (and an AD=1 answer for one that did not), a client's
DNS COOKIE / Client Subnet / private options echoed by the upstream, a
negative answer that lives longer than the SOA MINIMUM.

The upstream is scriptdot.ScriptedDoT: it answers from a per-test script (by
type, class, RD, AD, DO or EDNS option) and records every raw query, so the
tests also see what reached it.  Real clients (dig, kdig) are used for the
cookie and Client Subnet cases."""

import time

import dns.edns
import dns.rcode
import pytest

from scriptdot import (AD, COOKIE, ECS, PADDING, RD, a_of, dig, exchange, generic, kdig,
                       query_wire, reply, rr, scripted_factory, soa, txt_of)

NOERROR = dns.rcode.NOERROR
NXDOMAIN = dns.rcode.NXDOMAIN


def spec(port):
    return "127.0.0.1@%d#dns.test" % port


@pytest.fixture
def scripted(pki):
    """Factory for scriptdot.ScriptedDoT: make(script, **FakeDoT kw)."""
    yield from scripted_factory(pki)


def no_script_errors(f):
    assert not f.errors, "the scripted upstream could not parse what it got: %s" % f.errors


def upstream_options(f):
    """Every EDNS option code the upstream received, over all queries."""
    return sorted({c for w in f.wires() for o in w.opts() for c, _ in o.options()})


# ---------------------------------------------------------------- type and class bytes

def test_qtype_65_and_97_are_different_keys(proxies, scripted):
    """The upstream answers TYPE97 with NODATA (SOA) and HTTPS (type 65) with
    an HTTPS record. A client caches the TYPE97 NODATA; another asks HTTPS
    for the same name (other case): it must get the upstream's HTTPS answer,
    not the cached NODATA (the type bytes 0x0061 'a' and 0x0041 'A' must not
    be case-folded with the name). Both stay cached under their own key, and
    the other order (HTTPS first) does not serve HTTPS to TYPE97."""
    def script(q, f):
        if q.qtype == 97:
            return reply(q, authority=[soa("fold.test.", 300, 300)])
        if q.qtype == 65:
            return reply(q, answer=[rr(q.qname, 300, "HTTPS", '1 . alpn="h2"')])
        return reply(q, rcode=dns.rcode.REFUSED)
    f = scripted(script)
    p = proxies.start(spec(f.port))

    for first, second, name in ((97, 65, "a.fold.test"), (65, 97, "b.fold.test")):
        got = {}
        for qtype, spelled in ((first, name), (second, name.upper()), (first, name.upper()),
                               (second, name)):
            r = exchange(p.port, query_wire(spelled, qtype))
            got.setdefault(qtype, []).append(r)
        for qtype, rs in got.items():
            for r in rs:
                assert r.rcode == NOERROR and r.qtype == qtype, r.describe()
                types = [a.rtype for a in r.answer]
                if qtype == 65:
                    assert types == [65], (
                        "HTTPS query for %s (%s asked first): expected the upstream's HTTPS "
                        "record, got answer types %s (the TYPE97 NODATA from the cache?): %s"
                        % (name, first, types, r.describe()))
                else:
                    assert types == [] and [a.rtype for a in r.authority] == [6], (
                        "TYPE97 query for %s (%s asked first): expected NODATA with a SOA, got "
                        "answer types %s: %s" % (name, first, types, r.describe()))
        for qtype in (65, 97):
            n = len(f.asked(name, qtype))
            assert n == 1, "%s type %d reached the upstream %d times (expected once: one miss, "\
                "then hits under its own key)" % (name, qtype, n)
    no_script_errors(f)


def test_qclass_65_and_97_are_different_keys(proxies, scripted):
    """The upstream answers TXT "class-N" in the class N it was asked. Class
    97 then class 65 for the same name (and the reverse for another name):
    each client gets its own class's data; the class bytes are part of the
    key, compared exactly."""
    def script(q, f):
        return reply(q, answer=[rr(q.qname, 300, "TXT", '"class-%d"' % q.qclass,
                                   rdclass=q.qclass)])
    f = scripted(script)
    p = proxies.start(spec(f.port))
    for first, second, name in ((97, 65, "a.cls.test"), (65, 97, "b.cls.test")):
        for qclass, spelled in ((first, name), (second, name.upper()), (first, name.upper()),
                                (second, name)):
            r = exchange(p.port, query_wire(spelled, 16, rdclass=qclass))
            data = [txt_of(a) for a in r.answer if a.rtype == 16]
            assert r.rcode == NOERROR and data == [["class-%d" % qclass]], (
                "TXT class %d for %s (class %d asked first): expected [['class-%d']], got %s: %s"
                % (qclass, spelled, first, qclass, data, r.describe()))
        for qclass in (65, 97):
            n = len(f.asked(name, 16, qclass))
            assert n == 1, "%s class %d reached the upstream %d times, expected once" % (
                name, qclass, n)
    no_script_errors(f)


# ---------------------------------------------------------------- EDNS options of one client

C1 = bytes.fromhex("0102030405060708")
C2 = bytes.fromhex("a1a2a3a4a5a6a7a8")
SERVER_COOKIE = b"S" * 16


def cookie_echo_script(q, f):
    """Like a server with cookies: the client cookie it got + its own."""
    opts = [generic(COOKIE, d[:8] + SERVER_COOKIE) for c, d in (q.opt.options() if q.opt else [])
            if c == COOKIE]
    return reply(q, answer=[rr(q.qname, 300, "A", "192.0.2.10")], options=opts)


def test_cookie_not_forwarded_not_returned_to_others(proxies, scripted):
    """Client A sends a DNS COOKIE (option 10) over UDP; client B, with its
    own cookie, over TCP, and client C without one, over UDP, then ask the
    same name (cache hits). The upstream, which echoes a client cookie like
    a real server, never gets a cookie option (nor A's cookie bytes); no
    client gets a COOKIE option back; B and C never see A's cookie."""
    f = scripted(cookie_echo_script)
    p = proxies.start(spec(f.port))
    ra = exchange(p.port, query_wire("ck.test", edns=True, options=[(COOKIE, C1)], qid=1))
    rb = exchange(p.port, query_wire("ck.test", edns=True, options=[(COOKIE, C2)], qid=2),
                  tcp=True)
    rc = exchange(p.port, query_wire("ck.test", edns=True, qid=3))
    for who, r in (("B", rb), ("C", rc)):
        leaked = C1 in r.raw
        assert not leaked, "client A's cookie reached client %s: %s" % (who, r.describe())
    for who, r in (("A", ra), ("B", rb), ("C", rc)):
        assert r.rcode == NOERROR and a_of(r) == {"192.0.2.10"}, r.describe()
        assert COOKIE not in r.option_codes(), \
            "client %s got a COOKIE option, expected none: %s" % (who, r.describe())
    assert COOKIE not in upstream_options(f), \
        "a client's COOKIE was forwarded: upstream got options %s" % upstream_options(f)
    assert not [w for w in f.wires() if C1 in w.raw or C2 in w.raw], \
        "a client cookie's bytes reached the upstream"
    no_script_errors(f)


def test_cookie_with_dig_and_kdig(proxies, scripted):
    """dig +cookie=0102030405060708 fills the cache; dig +cookie=a1a2... and
    kdig +cookie over TCP then ask the same name: nobody's output has a
    COOKIE line, A's cookie appears in no other output, and the upstream
    got no cookie option."""
    f = scripted(cookie_echo_script)
    p = proxies.start(spec(f.port))
    outs = [dig(p.port, "ck2.test", "+cookie=" + C1.hex()),
            dig(p.port, "ck2.test", "+cookie=" + C2.hex()),
            kdig(p.port, "ck2.test", "+cookie", "+tcp")]
    for i, out in enumerate(outs):
        leaked = i > 0 and C1.hex() in out.lower()
        assert not leaked, "the first dig's cookie reached client %d:\n%s" % (i, out)
    for i, out in enumerate(outs):
        assert "NOERROR" in out and "192.0.2.10" in out, "client %d:\n%s" % (i, out)
        assert "COOKIE:" not in out, "client %d got a COOKIE option back:\n%s" % (i, out)
    assert COOKIE not in upstream_options(f), \
        "a client's COOKIE was forwarded: upstream got options %s" % upstream_options(f)
    no_script_errors(f)


def ecs_script(q, f):
    """An ECS-aware upstream: with a Client Subnet it answers 198.51.100.24
    (and echoes the option with scope 24), without one 192.0.2.99."""
    ecs = [d for c, d in (q.opt.options() if q.opt else []) if c == ECS]
    if ecs:
        d = ecs[0]
        return reply(q, answer=[rr(q.qname, 300, "A", "198.51.100.24")],
                     options=[generic(ECS, d[:3] + b"\x18" + d[4:])])
    return reply(q, answer=[rr(q.qname, 300, "A", "192.0.2.99")])


def test_client_subnet_not_forwarded_and_does_not_shape_cache(proxies, scripted):
    """dig +subnet=1.2.3.0/24 asks first, then a plain dig and a Python client
    with its own subnet (5.6.7.0/24) ask the same name: the upstream never
    gets option 8 (nor the subnet's bytes); every client gets the answer for
    no subnet (192.0.2.99), never the one shaped for 1.2.3.0/24, and no
    CLIENT-SUBNET option."""
    f = scripted(ecs_script)
    p = proxies.start(spec(f.port))
    out1 = dig(p.port, "ecs.test", "+subnet=1.2.3.0/24", "+nocookie")
    out2 = dig(p.port, "ecs.test", "+nocookie")
    ecs2 = b"\x00\x01\x18\x00" + bytes([5, 6, 7])
    r3 = exchange(p.port, query_wire("ecs.test", edns=True, options=[(ECS, ecs2)]), tcp=True)
    for i, out in enumerate((out1, out2)):
        assert "198.51.100.24" not in out, \
            "dig %d got the answer the upstream shaped for 1.2.3.0/24:\n%s" % (i, out)
        assert "192.0.2.99" in out and "NOERROR" in out, "dig %d:\n%s" % (i, out)
        assert "CLIENT-SUBNET" not in out, "dig %d got a Client Subnet option:\n%s" % (i, out)
    assert a_of(r3) == {"192.0.2.99"}, "client with 5.6.7.0/24 got %s" % r3.describe()
    assert ECS not in r3.option_codes(), r3.describe()
    assert ECS not in upstream_options(f), \
        "Client Subnet was forwarded: upstream got options %s" % upstream_options(f)
    assert len(f.asked("ecs.test")) == 1, \
        "expected one upstream query (then hits), got %d" % len(f.asked("ecs.test"))
    no_script_errors(f)


def test_private_options_never_reach_other_clients(proxies, scripted):
    """A careless upstream echoes every option it gets. Client A sends NSID,
    Client Subnet, COOKIE, edns-tcp-keepalive, its own Padding and an
    unknown option 65001 carrying a secret: the upstream gets only Padding,
    A gets no option back, and client B (TCP, a cache hit) sees none of
    A's bytes."""
    def script(q, f):
        opts = [generic(c, d) for c, d in (q.opt.options() if q.opt else []) if c != PADDING]
        return reply(q, answer=[rr(q.qname, 300, "A", "192.0.2.20")], options=opts)
    f = scripted(script)
    p = proxies.start(spec(f.port))
    secret = b"secret-of-client-A"
    opts_a = [(3, b""), (ECS, b"\x00\x01\x18\x00\x0a\x01\x02"), (COOKIE, C1), (11, b""),
              (PADDING, b"\x00" * 16), (65001, secret)]
    ra = exchange(p.port, query_wire("opts.test", edns=True, options=opts_a))
    rb = exchange(p.port, query_wire("opts.test", edns=True, options=[(65001, b"B")]), tcp=True)
    leaked = secret in rb.raw or C1 in rb.raw
    assert not leaked, "client A's options reached client B: %s" % rb.describe()
    for who, r in (("A", ra), ("B", rb)):
        assert a_of(r) == {"192.0.2.20"}, r.describe()
        assert r.option_codes() == [], \
            "client %s got options %s back, expected none" % (who, r.option_codes())
    assert upstream_options(f) == [PADDING], \
        "upstream got options %s, expected only Padding (12)" % upstream_options(f)
    assert not [w for w in f.wires() if secret in w.raw], "A's secret option reached the upstream"
    no_script_errors(f)


# ---------------------------------------------------------------- RD

def rd_script(q, f):
    """RD=1: the full chain (CNAME + A); RD=0: the bare CNAME."""
    target = "target." + q.qname
    recs = [rr(q.qname, 300, "CNAME", target)]
    if q.flag(RD):
        recs.append(rr(target, 300, "A", "192.0.2.77"))
    return reply(q, answer=recs)


@pytest.mark.parametrize("first_rd", [0, 1], ids=["rd0-first", "rd1-first"])
def test_rd0_and_rd1_answers_kept_apart(proxies, scripted, first_rd):
    """The upstream answers an RD=0 query with the bare CNAME and an RD=1 one
    with the full chain. Whichever fills the cache first, the other kind of
    client gets the upstream's answer to its own RD bit (RD is in the key),
    with RD echoed; each kind repeated is a hit."""
    f = scripted(rd_script)
    p = proxies.start(spec(f.port))
    name = "rd%d.test" % first_rd
    for rd in (first_rd, 1 - first_rd, first_rd, 1 - first_rd):
        r = exchange(p.port, query_wire(name, rd=bool(rd)), tcp=bool(rd))
        types = [a.rtype for a in r.answer]
        want = [5, 1] if rd else [5]
        assert r.rcode == NOERROR and types == want, (
            "RD=%d client (RD=%d asked first): expected answer types %s, got %s: %s"
            % (rd, first_rd, want, types, r.describe()))
        assert r.flag(RD) == bool(rd), "RD not echoed: %s" % r.describe()
    got = sorted(int(w.flag(RD)) for w in f.asked(name))
    assert got == [0, 1], "upstream got RD bits %s, expected one RD=0 and one RD=1 query" % got
    no_script_errors(f)


# ---------------------------------------------------------------- AD

def ad_script(q, f):
    """A validating upstream: AD=1 when the query had AD=1 or DO=1 (RFC
    6840 5.7), except for names under insecure.test (never AD)."""
    ad = (q.flag(AD) or (q.opt is not None and q.opt.do)) and "insecure" not in q.qname.lower()
    return reply(q, answer=[rr(q.qname, 300, "A", "192.0.2.55")], ad=ad)


def test_ad_shown_to_ad_and_do_clients_after_a_plain_client(proxies, scripted):
    """An AD=0, DO=0 client fills the cache: it gets AD=0. Then an AD=1 client
    (a cache hit) must get AD=1 (the upstream was asked with AD=1, and the
    cache keeps the upstream's AD), an AD=0 EDNS DO=0 client AD=0, and a
    DO=1 client (its own key) AD=1 with DO=1. The upstream only ever gets
    AD=1 queries. An answer the upstream did not mark AD is never AD."""
    f = scripted(ad_script)
    p = proxies.start(spec(f.port))
    n = "ad1.test"
    r = exchange(p.port, query_wire(n, qid=1))
    assert not r.flag(AD), "AD=0 DO=0 client got AD=1: %s" % r.describe()
    r = exchange(p.port, query_wire(n, ad=True, qid=2))
    assert r.flag(AD), ("AD=1 client, after an AD=0 client filled the cache, got AD=0 "
                        "(expected the upstream's AD=1): %s" % r.describe())
    r = exchange(p.port, query_wire(n, edns=True, qid=3), tcp=True)
    assert not r.flag(AD), "AD=0 DO=0 EDNS client got AD=1: %s" % r.describe()
    r = exchange(p.port, query_wire(n, do=True, qid=4))
    assert r.flag(AD) and r.opt is not None and r.opt.do, \
        "DO=1 client: expected AD=1 and DO=1: %s" % r.describe()
    assert len(f.asked(n)) == 2, "expected 2 upstream queries (DO=0, DO=1), got %d" % len(
        f.asked(n))
    flags = [w.flag(AD) for w in f.asked(n)]
    assert all(flags), "upstream queries had AD bits %s, expected all AD=1" % flags
    r = exchange(p.port, query_wire("insecure.test", ad=True))
    assert a_of(r) == {"192.0.2.55"} and not r.flag(AD), \
        "the upstream said AD=0, the client got AD=1: %s" % r.describe()
    no_script_errors(f)


def test_ad_hidden_from_plain_clients_after_an_ad_client(proxies, scripted):
    """An AD=1 client fills the cache (it gets AD=1); then an AD=0, DO=0
    client, over UDP and TCP, must get AD=0 (RFC 6840 5.7: AD only for
    those who asked with AD or DO)."""
    f = scripted(ad_script)
    p = proxies.start(spec(f.port))
    r = exchange(p.port, query_wire("ad2.test", ad=True))
    assert r.flag(AD), "AD=1 client got AD=0 from an AD=1 upstream answer: %s" % r.describe()
    for tcp in (False, True):
        r = exchange(p.port, query_wire("ad2.test"), tcp=tcp)
        assert a_of(r) == {"192.0.2.55"}, r.describe()
        assert not r.flag(AD), ("AD=0 DO=0 client (%s), after an AD=1 client filled the "
                                "cache, got AD=1: %s" % ("TCP" if tcp else "UDP", r.describe()))
    assert len(f.asked("ad2.test")) == 1, "AD must not be in the key: %d upstream queries" % len(
        f.asked("ad2.test"))
    no_script_errors(f)


# ---------------------------------------------------------------- negative TTL

def neg_script(q, f):
    """NXDOMAIN under nx.test, NODATA under nodata.test; SOA TTL 300 and
    MINIMUM 2, plus an NSEC with TTL 300 in the authority section."""
    zone = "neg.test."
    nsec = rr(q.qname, 300, "NSEC", "z.%s A NS SOA" % zone)
    if "nodata" in q.qname.lower():
        return reply(q, authority=[soa(zone, 300, 2), nsec])
    return reply(q, authority=[soa(zone, 300, 2), nsec], rcode=NXDOMAIN)


def neg_ttls(r):
    return [(a.rtype, a.ttl) for a in r.answer + r.authority + r.additional]


def test_negative_answer_ttl_is_soa_minimum_and_counts_down(proxies, scripted):
    """NXDOMAIN and NODATA with SOA TTL 300, MINIMUM 2 (and an NSEC with TTL
    300): the first client already sees every record with TTL 2 (not 300);
    a cache hit 1.1 s later sees TTL <= 1 without an upstream query; after
    2.3 s the entry has expired (a new upstream query). The DO=1 client's
    OPT survives the TTL rewriting (DO=1, version 0, extended RCODE 0)."""
    f = scripted(neg_script)
    p = proxies.start(spec(f.port))
    cases = (("x.nx.neg.test", NXDOMAIN), ("x.nodata.neg.test", NOERROR))
    t0 = time.monotonic()
    for name, rc in cases:
        r = exchange(p.port, query_wire(name, do=True))
        assert r.rcode == rc and not r.answer, r.describe()
        ttls = neg_ttls(r)
        assert len(ttls) == 2 and all(1 <= t <= 2 for _, t in ttls), (
            "%s, first answer: expected SOA and NSEC with TTL 2 = min(SOA TTL 300, MINIMUM 2), "
            "got (type, TTL) %s" % (name, ttls))
        assert r.opt is not None and r.opt.do and r.opt.version == 0 and r.opt.ext_rcode == 0, \
            "the OPT was damaged: %s" % r.describe()
    time.sleep(max(0.0, t0 + 1.1 - time.monotonic()))
    for name, rc in cases:
        r = exchange(p.port, query_wire(name, do=True), tcp=True)
        ttls = neg_ttls(r)
        assert r.rcode == rc and ttls and all(t <= 1 for _, t in ttls), (
            "%s, cache hit after 1.1 s: expected TTLs <= 1, got %s" % (name, ttls))
        assert len(f.asked(name)) == 1, "%s: no cache hit after 1.1 s" % name
        assert r.opt is not None and r.opt.do, r.describe()
    time.sleep(max(0.0, t0 + 2.4 - time.monotonic()))
    for name, rc in cases:
        r = exchange(p.port, query_wire(name, do=True))
        assert r.rcode == rc, r.describe()
        assert len(f.asked(name)) == 2, (
            "%s: still served from the cache 2.4 s later (negative TTL must be 2 s); "
            "upstream queries: %d" % (name, len(f.asked(name))))
        assert all(1 <= t <= 2 for _, t in neg_ttls(r)), neg_ttls(r)
    no_script_errors(f)


def test_negative_ttl_capped_at_3600(proxies, scripted):
    """NXDOMAIN with SOA TTL 7200 and MINIMUM 7200: the client sees TTL 3600
    (the negative cap), not 7200, on the miss and on the hit, and the second
    query is a hit."""
    def script(q, f):
        return reply(q, authority=[soa("cap.test.", 7200, 7200)], rcode=NXDOMAIN)
    f = scripted(script)
    p = proxies.start(spec(f.port))
    for tcp in (False, True):
        r = exchange(p.port, query_wire("x.cap.test"), tcp=tcp)
        ttls = neg_ttls(r)
        assert r.rcode == NXDOMAIN and ttls and all(3595 <= t <= 3600 for _, t in ttls), (
            "expected the SOA with TTL 3600 (negative answers are capped at 3600 s), got %s"
            % ttls)
    assert len(f.asked("x.cap.test")) == 1
    no_script_errors(f)
