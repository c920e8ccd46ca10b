"""What goes on the wire, both ways (issue #9, /tmp/spec-issue9.md).

Upstream: the query is rebuilt, never forwarded as the client sent it: a
random ID, the client's RD and CD, AD=1, the question as spelled, exactly one
OPT (version 0, size 1232, the client's DO, only Padding over DoT, no option
at all to a forward-zone server); the client's EDNS options and any record it
put in the answer / authority / additional sections (a TSIG-like record, an
extra A) never leave the proxy.

Client: OPT only when the client sent one (size 1232, version 0, the client's
DO) with only the upstream's Extended DNS Errors, never its NSID, COOKIE,
edns-tcp-keepalive, Padding or anything else, on a miss or a hit, over UDP or
TCP; AA=0 for forwarded answers; UDP truncation that keeps the answer and
drops additional records first; the answers dotproxy makes itself (FORMERR,
NOTIMP, REFUSED, SERVFAIL, BADVERS) keep the client's OPT and DO bit; big
queries (2,000 bytes, 64 KB over TCP) are answered without losing the queries
pipelined around them.  Odd but legal upstream answers: no OPT, an OPT of
version 1, an OPT first in the additional section with records after it that
point at each other (removing options or records must not break names).

The upstream is scriptdot.ScriptedDoT (raw queries recorded and parsed by
scriptdot.Wire, which also parses what comes back); dig and kdig are used
for NSID."""

import socket
import struct

import dns.edns
import dns.message
import dns.name
import dns.rcode
import pytest

from helpers import (fake_addr_for, free_port, tcp_connect, tcp_exchange, tcp_frame, tcp_recv_msg,
                     udp_exchange)
from scriptdot import (AA, AD, CD, COOKIE, ECS, EDE, KEEPALIVE, NSID, OPT, PADDING, QR, RD, TC,
                       TSIG, Wire, a_of, dig, exchange, generic, kdig, query_wire, raw_rr,
                       reply, rr, scripted_factory, txt_of)

NOERROR = dns.rcode.NOERROR
FORMERR = dns.rcode.FORMERR
SERVFAIL = dns.rcode.SERVFAIL
NOTIMP = dns.rcode.NOTIMP
REFUSED = dns.rcode.REFUSED
BADVERS = 16


def spec(port):
    return "127.0.0.1@%d#dns.test" % port


@pytest.fixture
def scripted(pki):
    """Factory for scriptdot.ScriptedDoT: make(script, **FakeDoT kw)."""
    yield from scripted_factory(pki)


def wname(text):
    """A name in wire form (no compression)."""
    return dns.name.from_text(text).to_wire()


def no_script_errors(f):
    assert not f.errors, "the scripted upstream could not parse what it got: %s" % f.errors


def by_name(q, f):
    """qK.<anything> -> A 192.0.2.K (helpers.fake_addr_for), other types NODATA."""
    recs = [rr(q.qname, 300, "A", fake_addr_for(q.qname))] if q.qtype == 1 else []
    return reply(q, answer=recs)


def only(ws, name):
    want = name.lower().rstrip(".") + "."
    got = [w for w in ws if w.qname.lower() == want]
    assert len(got) == 1, "expected one upstream query for %s, got %d" % (name, len(got))
    return got[0]


def check_upstream_opt(w, do, padded=True, block=128):
    """Exactly one OPT: root owner, size 1232, extended RCODE 0, version 0,
    DO as given, no other flag bits; options: only one Padding of zeros
    (DoT) or none (plain DNS)."""
    opts = w.opts()
    assert len(opts) == 1, "upstream query has %d OPT records: %s" % (len(opts), w.describe())
    o = opts[0]
    assert o.name == "." and o.section == 3, "OPT owner/section: %r" % o
    assert (o.payload, o.ext_rcode, o.version, o.do, o.zbits) == (1232, 0, 0, do, 0), (
        "upstream OPT: expected size 1232, ext 0, version 0, DO=%d, Z 0; got size %d ext %d "
        "version %d DO=%d Z 0x%x" % (do, o.payload, o.ext_rcode, o.version, o.do, o.zbits))
    codes = [c for c, _ in o.options()]
    if padded:
        assert codes == [PADDING], "upstream OPT options %s, expected only Padding [12]" % codes
        assert set(o.options()[0][1]) <= {0}, "padding octets are not zero"
        assert len(w.raw) % block == 0, "upstream query is %d bytes, not a multiple of %d" % (
            len(w.raw), block)
    else:
        assert codes == [], "forward-zone query has options %s, expected none" % codes


# ---------------------------------------------------------------- the query sent upstream

C1 = bytes.fromhex("0102030405060708")


def tsig_like(name="key.evil.test"):
    """A TSIG record with a made-up MAC (dotproxy has no key; it must drop it)."""
    rdata = (wname("hmac-sha256.") + struct.pack("!HIH", 0, 1700000000, 300)
             + struct.pack("!H", 32) + b"\xee" * 32 + struct.pack("!HHH", 0x1234, 0, 0))
    return raw_rr(name, TSIG, 255, 0, rdata)


def messy_query(qid=0x1234):
    """RD, CD, Z set; OPT size 4096, DO, with NSID, ECS, COOKIE, keepalive,
    Padding and an unknown option; an A in the answer section, an NS in the
    authority section, an A before the OPT and a TSIG after it."""
    opts = [(NSID, b""), (ECS, b"\x00\x01\x18\x00\x01\x02\x03"), (COOKIE, C1),
            (KEEPALIVE, b""), (PADDING, b"\x00" * 20), (65001, b"private-option")]
    return query_wire(
        "MiXeD.Wire.TEST", qid=qid, rd=True, cd=True, z=True, edns=True, payload=4096, do=True,
        options=opts,
        extra_answer=raw_rr("ans.evil.test", 1, 1, 60, socket.inet_aton("6.6.6.6")),
        extra_authority=raw_rr("evil.test", 2, 1, 60, wname("ns.evil.test.")),
        extra_additional=raw_rr("glue.evil.test", 1, 1, 60, socket.inet_aton("6.6.6.7")),
        tail=tsig_like(), an=1, ns=1, ar_extra=2)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_upstream_query_is_rebuilt(proxies, scripted, tcp):
    """A client query with RD, CD and Z set, an OPT (size 4096, DO) carrying
    NSID, ECS, COOKIE, keepalive, its own Padding and an unknown option, plus
    an A record in the answer section, an NS in the authority section, an A
    and a TSIG-like record in the additional section. The upstream gets: a
    fresh ID (not the client's), flags RD|AD|CD only (opcode 0, Z 0),
    counts 1/0/0/1, the question byte for byte (case kept), one OPT (1232,
    version 0, DO=1, only Padding, 128-byte blocks), nothing of the client's
    records. The client gets its ID, its question and the answer."""
    f = scripted(by_name)
    p = proxies.start(spec(f.port))
    q = messy_query()
    r = exchange(p.port, q, tcp=tcp)
    cq = Wire(q)
    assert r.rcode == NOERROR and a_of(r) == {"192.0.2.99"}, r.describe()
    assert r.id == 0x1234 and r.qbytes == cq.qbytes and r.flag(RD), r.describe()
    w = only(f.wires(), "mixed.wire.test")
    assert w.id != 0x1234, "the client's ID went upstream"
    assert w.flags == RD | AD | CD, (
        "upstream flags 0x%04x, expected RD|AD|CD = 0x%04x (opcode 0, Z 0, AD always 1): %s"
        % (w.flags, RD | AD | CD, w.describe()))
    assert w.counts == (1, 0, 0, 1), "upstream counts QD/AN/NS/AR %s, expected (1, 0, 0, 1)" % (
        w.counts,)
    assert w.qbytes == cq.qbytes, "question changed: %r -> %r" % (cq.qbytes, w.qbytes)
    check_upstream_opt(w, do=True)
    assert not w.trailing, "trailing bytes upstream"
    for bad in (b"evil", C1, b"private-option", b"\xee" * 32):
        assert bad not in w.raw, "client bytes %r reached the upstream: %s" % (bad, w.describe())
    no_script_errors(f)


def test_upstream_query_for_plain_client(proxies, scripted):
    """A client without OPT, RD=0, CD=0, AD=0: the upstream gets flags AD
    only (RD=0, CD=0 as the client), and an OPT with DO=0, size 1232,
    version 0, only Padding. The client gets no OPT, RD=0."""
    f = scripted(by_name)
    p = proxies.start(spec(f.port))
    r = exchange(p.port, query_wire("q7.plain.test", rd=False, qid=7))
    assert a_of(r) == {"192.0.2.7"} and r.opt is None and not r.flag(RD), r.describe()
    w = only(f.wires(), "q7.plain.test")
    assert w.flags == AD, "upstream flags 0x%04x, expected AD only (0x0020): %s" % (
        w.flags, w.describe())
    assert w.counts == (1, 0, 0, 1), w.describe()
    check_upstream_opt(w, do=False)
    no_script_errors(f)


def test_upstream_ids_are_random(proxies, scripted):
    """48 queries in a row (each answered before the next) on one upstream
    connection: every one of the 16 ID bits takes both values (a counter, or
    a slot number XOR a per-connection key, keeps the low bits fixed), and
    the upstream ID is the client's at most once."""
    f = scripted(by_name)
    p = proxies.start(spec(f.port))
    for k in range(48):
        r = exchange(p.port, query_wire("q%d.ids.test" % k, qid=2000 + k))
        assert r.id == 2000 + k and a_of(r) == {"192.0.2.%d" % k}, r.describe()
    ws = f.wires()
    assert len(ws) == 48 and f.connections == 1, (len(ws), f.conns)
    ids = [w.id for w in ws]
    fixed = [b for b in range(16) if len({(i >> b) & 1 for i in ids}) == 1]
    assert not fixed, "ID bits %s never change over 48 upstream IDs: %s" % (
        fixed, ["%04x" % i for i in ids])
    same = sum(1 for k, w in enumerate(ws) if w.id == 2000 + int(w.qname[1:].split(".")[0]))
    assert same <= 1, "%d upstream IDs were the client's" % same
    no_script_errors(f)


def test_forward_zone_query_rebuilt_without_options(proxies, scripted, plain_dns):
    """A forward-zone server (plain DNS) gets the rebuilt query too: the
    client's COOKIE / ECS / NSID / unknown option and extra records dropped,
    one OPT with size 1232, version 0, the client's DO and no options at all
    (not even Padding), AD=1, the client's CD."""
    z = plain_dns("lan")
    f = scripted(by_name)
    p = proxies.start(spec(f.port), extra=["--forward-zone", "lan=127.0.0.1@%d" % z.port,
                                           "-t", "2000"])
    opts = [(NSID, b""), (ECS, b"\x00\x01\x18\x00\x01\x02\x03"), (COOKIE, C1),
            (65001, b"private-option")]
    q = query_wire("NaS.lan", qid=0x5151, cd=True, edns=True, payload=4096, do=True,
                   options=opts, extra_additional=raw_rr("glue.evil.test", 1, 1, 60,
                                                         socket.inet_aton("6.6.6.7")),
                   ar_extra=1)
    r = exchange(p.port, q)
    assert r.rcode == NOERROR and a_of(r) == z.addrs() and r.id == 0x5151, r.describe()
    r = exchange(p.port, query_wire("printer.lan", qid=0x5152))
    assert r.rcode == NOERROR and r.opt is None, r.describe()
    assert [t for t, _, _ in z.queries] == ["udp", "udp"], z.names()
    for (_, raw, _), do, cd in zip(z.queries, (True, False), (True, False)):
        w = Wire(raw)
        assert w.counts == (1, 0, 0, 1), "zone query counts %s: %s" % (w.counts, w.describe())
        assert w.flags == RD | AD | (CD if cd else 0), \
            "zone query flags 0x%04x: %s" % (w.flags, w.describe())
        check_upstream_opt(w, do=do, padded=False)
        for bad in (b"evil", C1, b"private-option"):
            assert bad not in w.raw, "client bytes %r reached the zone server" % bad
    assert f.queries == 0


# ---------------------------------------------------------------- what clients get back

EDE_DATA = struct.pack("!H", 3) + b"from upstream"


def chatty_script(q, f):
    """An upstream that puts everything in its OPT: NSID, a COOKIE, a
    keepalive, Padding, an unknown option and an EDE (3, "from upstream");
    AA=1, size 4096."""
    opts = [generic(NSID, b"upstream-nsid"), generic(COOKIE, C1 + b"S" * 16),
            generic(KEEPALIVE, b"\x00\x64"), generic(65002, b"upstream-private"),
            generic(EDE, EDE_DATA), generic(PADDING, b"\x00" * 24)]
    recs = [rr(q.qname, 300, "A", fake_addr_for(q.qname))] if q.qtype == 1 else []
    return reply(q, answer=recs, options=opts, aa=True, payload=4096)


def test_answer_opt_only_ede(proxies, scripted):
    """The upstream's OPT has NSID, COOKIE, keepalive, Padding, an unknown
    option and an EDE, with size 4096, and AA=1. Every client with an OPT,
    over UDP and TCP, on a miss and on a hit, gets an OPT with only the EDE
    (same bytes), size 1232, version 0 and its own DO bit, and AA=0; a
    client without OPT gets no OPT."""
    f = scripted(chatty_script)
    p = proxies.start(spec(f.port))
    steps = [("q1.ede.test", False, True, False, "UDP miss"),
             ("q1.ede.test", True, True, False, "TCP hit"),
             ("q1.ede.test", False, True, False, "UDP hit"),
             ("q2.ede.test", True, True, False, "TCP miss"),
             ("q2.ede.test", False, True, False, "UDP hit"),
             ("q3.ede.test", False, True, True, "UDP miss DO=1"),
             ("q3.ede.test", True, True, True, "TCP hit DO=1"),
             ("q1.ede.test", False, False, False, "UDP hit, no OPT"),
             ("q4.ede.test", True, False, False, "TCP miss, no OPT")]
    for name, tcp, edns, do, what in steps:
        r = exchange(p.port, query_wire(name, edns=edns, do=do), tcp=tcp)
        assert r.rcode == NOERROR and a_of(r) == {fake_addr_for(name)}, "%s: %s" % (
            what, r.describe())
        assert not r.flag(AA), "%s: AA=1 on a forwarded answer: %s" % (what, r.describe())
        if not edns:
            assert r.opts() == [], "%s: OPT for a client that sent none: %s" % (
                what, r.describe())
            continue
        assert len(r.opts()) == 1, "%s: %s" % (what, r.describe())
        assert r.option_codes() == [EDE], (
            "%s: client got options %s, expected only EDE [15] (never NSID 3, COOKIE 10, "
            "keepalive 11, Padding 12, unknown): %s" % (what, r.option_codes(), r.describe()))
        assert r.options(EDE) == [EDE_DATA], "%s: EDE changed: %r" % (what, r.options(EDE))
        o = r.opt
        assert (o.payload, o.version, o.do) == (1232, 0, do), (
            "%s: answer OPT size %d version %d DO=%d, expected 1232 0 %d"
            % (what, o.payload, o.version, o.do, do))
    assert {w.qname.lower() for w in f.wires()} == {"q%d.ede.test." % k for k in (1, 2, 3, 4)}
    no_script_errors(f)


def test_nsid_with_dig_and_kdig(proxies, scripted):
    """dig +nsid (which sends its own cookie too) and kdig +nsid +cookie over
    TCP: the upstream never gets an NSID or COOKIE option; the upstream's
    NSID, COOKIE and keepalive options appear in neither output (miss and
    hit); its EDE does."""
    f = scripted(chatty_script)
    p = proxies.start(spec(f.port))
    outs = [("dig miss", "192.0.2.5", dig(p.port, "q5.nsid.test", "+nsid")),
            ("dig hit", "192.0.2.5", dig(p.port, "q5.nsid.test", "+nsid", "+tcp")),
            ("kdig hit", "192.0.2.5", kdig(p.port, "q5.nsid.test", "+nsid", "+cookie")),
            ("kdig miss", "192.0.2.6", kdig(p.port, "q6.nsid.test", "+nsid", "+cookie", "+tcp"))]
    for what, addr, out in outs:
        assert addr in out and "NOERROR" in out, "%s: expected %s:\n%s" % (what, addr, out)
        for bad in ("NSID", "upstream-nsid", "COOKIE:", "KEEPALIVE", "Option (11)",
                    "OPT=65002", "Option (65002)", "upstream-private"):
            assert bad not in out, "%s shows %r (an upstream option relayed):\n%s" % (
                what, bad, out)
        assert "EDE: 3" in out, "%s: the upstream's EDE is missing:\n%s" % (what, out)
    got = sorted({c for w in f.wires() for o in w.opts() for c, _ in o.options()})
    assert got == [PADDING], "upstream got options %s (NSID 3 / COOKIE 10 forwarded?)" % got
    no_script_errors(f)


# ---------------------------------------------------------------- EDNS version

def test_badvers_answered_locally_never_forwarded_nor_cached(proxies, scripted):
    """An EDNS version 1 query (DO=1), over UDP and TCP, before and after the
    same question was cached by a version 0 client: BADVERS (extended RCODE
    16: OPT extended-RCODE byte 1, header RCODE 0), OPT version 0 with DO=1,
    the question echoed, no records; the upstream only ever sees the one
    version 0 query."""
    f = scripted(by_name)
    p = proxies.start(spec(f.port))
    n = "q9.BadVers.test"

    def badvers(tcp, what):
        q = query_wire(n, edns=True, version=1, do=True, qid=0x0bad)
        r = exchange(p.port, q, tcp=tcp)
        assert r.rcode == BADVERS, "%s: expected BADVERS (16), got rcode %d: %s" % (
            what, r.rcode, r.describe())
        assert r.opt is not None, "%s: BADVERS without an OPT: %s" % (what, r.describe())
        assert r.flags & 0xF == 0 and r.opt.ext_rcode == 1, r.describe()
        assert r.opt.version == 0 and r.opt.do, "%s: OPT %s" % (what, r.describe())
        assert r.id == 0x0bad and r.qbytes == Wire(q).qbytes, r.describe()
        assert r.counts[1:3] == (0, 0) and not r.additional, r.describe()

    badvers(False, "UDP, nothing cached")
    badvers(True, "TCP, nothing cached")
    assert f.queries == 0, "an EDNS version 1 query reached the upstream"
    r = exchange(p.port, query_wire(n, edns=True, do=True))
    assert r.rcode == NOERROR and a_of(r) == {"192.0.2.9"}, r.describe()
    badvers(False, "UDP, cached")
    badvers(True, "TCP, cached")
    assert f.queries == 1, "upstream queries: %d, expected the version 0 one only" % f.queries
    no_script_errors(f)


# ---------------------------------------------------------------- UDP truncation

BIG_TXT = "x" * 80


def trunc_script(q, f):
    name = q.qname.lower()
    zone = "trunc.test."
    if name.startswith("addl."):
        return reply(q, answer=[rr(q.qname, 300, "A", "192.0.2.30")],
                     authority=[rr(zone, 300, "NS", "ns." + zone)],
                     additional=[rr("g%d.%s" % (i, zone), 300, "TXT", '"%02d%s"' % (i, BIG_TXT))
                                 for i in range(20)])
    if name.startswith("ans."):
        return reply(q, answer=[rr(q.qname, 300, "TXT", *['"%02d%s"' % (i, BIG_TXT)
                                                          for i in range(8)])])
    if name.startswith("auth."):
        return reply(q, answer=[rr(q.qname, 300, "A", "192.0.2.31")],
                     authority=[rr(zone, 300, "NS", *["%d%s.%s" % (i, "n" * 60, zone)
                                                      for i in range(8)])])
    return reply(q, rcode=dns.rcode.REFUSED)


ONE_ADDL = len(wname("g10.trunc.test.")) + 10 + 1 + 82   # one record, uncompressed


def test_truncation_drops_additional_first(proxies, scripted):
    """The answer (one A) and authority (one NS) fit, the 20 additional TXT
    records (~2 KB) do not: a UDP client without EDNS (512) and one with
    EDNS 1232 get TC=0, the A and the NS, as many additional records as fit
    (at least one, fewer than 20, each one of the upstream's, no room left
    for one more), the OPT kept for the EDNS client; over TCP all 20."""
    f = scripted(trunc_script)
    p = proxies.start(spec(f.port))
    n = "addl.trunc.test"
    upstream_txt = {"%02d%s" % (i, BIG_TXT) for i in range(20)}
    for tcp, edns, limit, what in ((False, False, 512, "UDP 512 (miss)"),
                                   (False, True, 1232, "UDP EDNS 1232"),
                                   (True, True, None, "TCP"),
                                   (False, False, 512, "UDP 512 (hit)")):
        r = exchange(p.port, query_wire(n, edns=edns, payload=1232), tcp=tcp)
        extra = r.additional
        info = "%s: %s, %d additional records" % (what, r.describe(), len(extra))
        assert r.rcode == NOERROR and not r.flag(TC), "expected TC=0: " + info
        assert a_of(r) == {"192.0.2.30"} and len(r.answer) == 1, "answer lost: " + info
        assert [a.rtype for a in r.authority] == [2], "authority lost: " + info
        assert (r.opt is not None) == edns, "OPT kept iff the client sent one: " + info
        for a in extra:
            assert a.rtype == 16 and txt_of(a)[0] in upstream_txt, "%r: %s" % (a, info)
        if limit is None:
            assert len(extra) == 20, info
            continue
        assert len(r.raw) <= limit, "%d bytes for a %d-byte client: %s" % (len(r.raw), limit,
                                                                            info)
        assert 1 <= len(extra) < 20, "expected as many additional records as fit: " + info
        assert limit - len(r.raw) < ONE_ADDL, (
            "%d bytes left unused, room for another %d-byte record: %s"
            % (limit - len(r.raw), ONE_ADDL, info))
    assert len(f.asked(n)) == 1
    no_script_errors(f)


def test_truncation_tc_when_answer_or_authority_does_not_fit(proxies, scripted):
    """Already right before #9 (kept as a guard): when the answer section
    (8 TXT, ~800 bytes) or the authority section (8 long NS) does not fit in
    512 bytes: TC=1 with the header and the question only (plus the OPT for
    an EDNS client asking with size 512); a client with EDNS 1232 gets the
    whole answer with TC=0."""
    f = scripted(trunc_script)
    p = proxies.start(spec(f.port))
    for n in ("ans.trunc.test", "auth.trunc.test"):
        for edns, payload in ((False, 512), (True, 512)):
            q = query_wire(n, edns=edns, payload=payload, do=edns)
            r = exchange(p.port, q)
            info = "%s, %s: %s" % (n, "EDNS 512" if edns else "no EDNS", r.describe())
            assert r.flag(TC) and len(r.raw) <= 512, "expected TC=1: " + info
            assert r.counts[:3] == (1, 0, 0) and r.qbytes == Wire(q).qbytes, info
            assert (r.opt is not None) == edns and r.counts[3] == int(edns), info
            if edns:
                assert r.opt.do, "DO lost in the truncated answer: " + info
        r = exchange(p.port, query_wire(n, edns=True, payload=1232))
        assert not r.flag(TC) and r.answer, "%s, EDNS 1232: %s" % (n, r.describe())
    no_script_errors(f)


# ---------------------------------------------------------------- local answers

def _local_case(proxies, scripted, kind):
    """(proxy, query builder(edns, do)) for one kind of local answer."""
    if kind == "refused":
        f = scripted(by_name)
        p = proxies.start(spec(f.port), extra=["--allow", "10.0.0.0/8"])
    elif kind == "servfail":
        p = proxies.start(spec(free_port()), extra=["-t", "1500"])
    else:
        f = scripted(by_name)
        p = proxies.start(spec(f.port))

    def build(edns, do, qid):
        name = "q1.%s.test" % kind
        if kind == "formerr":
            return query_wire(name, qdcount=2, edns=edns, do=do, qid=qid)
        if kind == "notimp":
            return query_wire(name, opcode=2, edns=edns, do=do, qid=qid)
        return query_wire(name, edns=edns, do=do, qid=qid)
    return p, build


LOCAL = [("formerr", FORMERR), ("notimp", NOTIMP), ("refused", REFUSED), ("servfail", SERVFAIL)]


@pytest.mark.parametrize("kind,rcode", LOCAL, ids=[k for k, _ in LOCAL])
def test_local_answers_keep_opt_and_do(proxies, scripted, kind, rcode):
    """FORMERR (QDCOUNT=2), NOTIMP (opcode 2, STATUS), REFUSED (client outside
    --allow 10.0.0.0/8) and SERVFAIL (nothing listens upstream) to a client
    that sent an OPT with DO=1, over UDP and TCP: the answer has one OPT,
    version 0, size 1232, extended RCODE 0, DO=1 (RFC 6891 6.1.1, RFC 3225
    3), and the client's ID."""
    p, build = _local_case(proxies, scripted, kind)
    for tcp in (False, True):
        r = exchange(p.port, build(True, True, 0x4321), tcp=tcp, timeout=4)
        what = "%s over %s" % (kind, "TCP" if tcp else "UDP")
        assert r.rcode == rcode and r.id == 0x4321, "%s: %s" % (what, r.describe())
        assert len(r.opts()) == 1, "%s: expected the client's OPT back: %s" % (what,
                                                                               r.describe())
        o = r.opt
        assert (o.version, o.payload, o.ext_rcode, o.do) == (0, 1232, 0, True), (
            "%s: OPT version %d size %d ext %d DO=%d, expected 0 1232 0 1"
            % (what, o.version, o.payload, o.ext_rcode, o.do))


@pytest.mark.parametrize("kind,rcode", LOCAL, ids=[k for k, _ in LOCAL])
def test_local_answers_without_client_opt(proxies, scripted, kind, rcode):
    """Already right before #9 (a guard): the same local answers to a client
    without OPT have no OPT."""
    p, build = _local_case(proxies, scripted, kind)
    r = exchange(p.port, build(False, False, 0x4322), timeout=4)
    assert r.rcode == rcode and r.id == 0x4322 and r.opts() == [], r.describe()


def test_formerr_for_malformed_opt_has_no_opt(proxies, scripted):
    """Already right before #9 (a guard): a query with two OPT records gets
    FORMERR without an OPT (the OPT itself is malformed)."""
    f = scripted(by_name)
    p = proxies.start(spec(f.port))
    second = b"\x00" + struct.pack("!HHIH", OPT, 1232, 0x8000, 0)
    q = query_wire("two-opts.test", edns=True, do=True, tail=second, ar_extra=1)
    for tcp in (False, True):
        r = exchange(p.port, q, tcp=tcp)
        assert r.rcode == FORMERR and r.opts() == [], r.describe()
    assert f.queries == 0


# ---------------------------------------------------------------- big queries

def sized_query(name, size, qid, edns=True):
    """A query of exactly `size` bytes: an unknown option (65001) fills it."""
    base = len(query_wire(name, qid=qid, edns=True, options=[(65001, b"")]))
    assert size >= base, (size, base)
    return query_wire(name, qid=qid, edns=True, options=[(65001, b"\xab" * (size - base))])


def test_big_tcp_queries_pipelined(proxies, scripted):
    """One TCP connection, one write: a small query, a 2,000-byte query, a
    small one, a 65,535-byte query, a small one. All five are answered with
    their own data (no reset, nothing lost), and what reached the upstream
    is the rebuilt, small query (only Padding)."""
    f = scripted(by_name)
    p = proxies.start(spec(f.port), extra=["-t", "3000"])
    qs = [query_wire("q1.big.test", qid=1), sized_query("q2.big.test", 2000, 2),
          query_wire("q3.big.test", qid=3, edns=True), sized_query("q4.big.test", 65535, 4),
          query_wire("q5.big.test", qid=5)]
    assert [len(q) for q in qs][1::2] == [2000, 65535]
    s = tcp_connect(p.port, timeout=5)
    got = {}
    try:
        s.sendall(b"".join(tcp_frame(q) for q in qs))
        while len(got) < 5:
            try:
                r = Wire(tcp_recv_msg(s))
            except (EOFError, OSError) as e:
                raise AssertionError("connection lost after answers %s: %r" % (sorted(got), e))
            got[r.id] = r
    finally:
        s.close()
    for k in range(1, 6):
        r = got[k]
        assert r.rcode == NOERROR and a_of(r) == {"192.0.2.%d" % k}, "query %d (%d bytes): %s" % (
            k, len(qs[k - 1]), r.describe())
    for w in f.wires():
        assert len(w.raw) <= 256 and [c for o in w.opts() for c, _ in o.options()] == [PADDING], \
            "upstream got %s" % w.describe()
    no_script_errors(f)


def test_malformed_tcp_frame_keeps_connection(proxies, scripted):
    """Already right before #9 (a guard for the new framing code): pipelined
    on one connection, a query, a 20-byte frame with a broken question
    (FORMERR, ID 0x7777), a query; then, later, a fourth query on the same
    connection. The three queries are answered and the broken one gets
    FORMERR: a frame with a header never costs the connection."""
    f = scripted(by_name)
    p = proxies.start(spec(f.port), extra=["-t", "3000"])
    junk = struct.pack("!HHHHHH", 0x7777, 0x0100, 1, 0, 0, 0) + b"\xff\xff\xff\x00\x00\x01\x00\x01"
    s = tcp_connect(p.port, timeout=5)
    got = {}
    try:
        s.sendall(tcp_frame(query_wire("q11.frames.test", qid=11)) + tcp_frame(junk)
                  + tcp_frame(query_wire("q12.frames.test", qid=12)))
        for later in (None, 13):
            if later:
                s.sendall(tcp_frame(query_wire("q13.frames.test", qid=13)))
            want = {11, 12, 0x7777} | ({13} if later else set())
            while not want <= set(got):
                try:
                    r = Wire(tcp_recv_msg(s))
                except (EOFError, OSError) as e:
                    raise AssertionError("connection lost after answers %s: %r"
                                         % (sorted(got), e))
                got[r.id] = r
    finally:
        s.close()
    for k in (11, 12, 13):
        assert a_of(got[k]) == {"192.0.2.%d" % k}, got[k].describe()
    assert got[0x7777].rcode == FORMERR, got[0x7777].describe()


def test_short_tcp_frame_closes(proxies, scripted):
    """Already right before #9 (a guard; the spec keeps it): a frame shorter
    than a DNS header (3 bytes: no ID to answer) closes the connection; a
    new connection is served."""
    f = scripted(by_name)
    p = proxies.start(spec(f.port), extra=["-t", "3000"])
    s = tcp_connect(p.port, timeout=3)
    try:
        s.sendall(tcp_frame(b"\x01\x02\x03"))
        try:
            data = s.recv(100)
        except ConnectionResetError:
            data = b""
        assert data == b"", "expected the connection closed, got %r" % data
    finally:
        s.close()
    r = exchange(p.port, query_wire("q15.frames.test"), tcp=True)
    assert a_of(r) == {"192.0.2.15"}, r.describe()


def test_big_udp_queries(proxies, scripted):
    """Over UDP a 2,000-byte and a 4,096-byte query are answered (not
    FORMERR); a 4,097-byte and a 5,000-byte datagram get TC=1 with the
    client's ID and question and no records, so the client retries over
    TCP."""
    f = scripted(by_name)
    p = proxies.start(spec(f.port), extra=["-t", "3000"])
    for k, size in ((21, 2000), (22, 4096)):
        q = sized_query("q%d.udp.test" % k, size, k)
        assert len(q) == size
        r = exchange(p.port, q)
        assert r.rcode == NOERROR and a_of(r) == {"192.0.2.%d" % k}, (
            "%d-byte UDP query: expected the answer, got %s" % (size, r.describe()))
    for k, size in ((23, 4097), (24, 5000)):
        q = sized_query("q%d.udp.test" % k, size, k)
        r = exchange(p.port, q)
        assert r.flag(TC) and r.id == k and r.qbytes == Wire(q).qbytes, (
            "%d-byte UDP datagram: expected TC=1 with the question, got %s" % (size, r.describe()))
        assert r.counts[1:3] == (0, 0) and not r.additional, r.describe()
    no_script_errors(f)


# ---------------------------------------------------------------- odd but legal upstream OPTs

def odd_opt_script(q, f):
    """noopt.*: an answer without OPT (a server that dropped EDNS);
    v1.*: an OPT with version 1 and every Z flag bit set."""
    n = q.qname.lower()
    if n.startswith("noopt."):
        return reply(q, answer=[rr(q.qname, 300, "A", "192.0.2.41")], opt=False)
    w = bytearray(reply(q, answer=[rr(q.qname, 300, "A", "192.0.2.42")], opt=True,
                        options=[generic(EDE, EDE_DATA)]))
    opt = Wire(bytes(w)).opt
    at = len(w) - len(opt.raw)          # the OPT is last: name, type, class, ext, ver, flags
    w[at + 6] = 1
    w[at + 7] |= 0x7F
    w[at + 8] = 0xFF
    return bytes(w)


def test_answer_opt_when_upstream_sent_none(proxies, scripted):
    """The client's OPT does not depend on the upstream's ("present if and
    only if the client's query had one"): an upstream answer without OPT
    still gives a client that sent one (DO=1) an OPT with size 1232,
    version 0, DO=1 (miss over UDP, hit over TCP); a client without OPT
    gets none."""
    f = scripted(odd_opt_script)
    p = proxies.start(spec(f.port))
    for tcp, what in ((False, "miss"), (True, "hit")):
        r = exchange(p.port, query_wire("noopt.odd.test", do=True), tcp=tcp)
        assert a_of(r) == {"192.0.2.41"}, r.describe()
        assert r.opt is not None, ("client sent an OPT, the upstream answered without one "
                                   "(%s): expected an OPT anyway: %s" % (what, r.describe()))
        assert (r.opt.payload, r.opt.version, r.opt.do) == (1232, 0, True), r.describe()
    r = exchange(p.port, query_wire("noopt.odd.test"))
    assert a_of(r) == {"192.0.2.41"} and r.opts() == [], r.describe()
    no_script_errors(f)


def test_answer_opt_version_is_0(proxies, scripted):
    """An upstream OPT with version 1 (and every Z flag bit set) reaches the
    client as an OPT of version 0, size 1232, the client's DO (0), its EDE
    kept; miss over UDP, hit over TCP."""
    f = scripted(odd_opt_script)
    p = proxies.start(spec(f.port))
    for tcp in (False, True):
        r = exchange(p.port, query_wire("v1.odd.test", edns=True), tcp=tcp)
        assert a_of(r) == {"192.0.2.42"} and r.opt is not None, r.describe()
        assert r.opt.version == 0, "upstream OPT version %d relayed: %s" % (r.opt.version,
                                                                             r.describe())
        assert (r.opt.payload, r.opt.do) == (1232, False), r.describe()
        assert r.options(EDE) == [EDE_DATA], r.describe()
    no_script_errors(f)


GLUE = "ns1.glue.example."


def opt_first_script(q, f):
    """An additional section that starts with the OPT (NSID + Padding: both
    must go), then an A for ns1.glue.example. (name written out), an AAAA
    and 12 TXT records whose owners are compression pointers to it: legal
    (RFC 6891 puts no order on the OPT), and every removal before them
    moves what the pointers point at."""
    m = dns.message.Message(id=q.id)
    m.flags = QR | (q.flags & (RD | CD)) | 0x0080
    m.find_rrset(m.question, dns.name.from_text(q.qname), q.qclass, q.qtype, create=True,
                 force_unique=True)
    m.answer.append(rr(q.qname, 300, "NS", GLUE))
    w = m.to_wire()
    options = (struct.pack("!HH", NSID, 13) + b"upstream-nsid" + struct.pack("!HH", PADDING, 40)
               + b"\x00" * 40)
    ttl = 0x8000 if q.opt is not None and q.opt.do else 0
    opt = b"\x00" + struct.pack("!HHIH", OPT, 1232, ttl, len(options)) + options
    a_at = len(w) + len(opt)
    ptr = struct.pack("!H", 0xC000 | a_at)
    recs = (wname(GLUE) + struct.pack("!HHIH", 1, 1, 300, 4) + socket.inet_aton("192.0.2.53")
            + ptr + struct.pack("!HHIH", 28, 1, 300, 16) + bytes(15) + b"\x01")
    for i in range(12):
        txt = ("%02d" % i + BIG_TXT).encode()
        recs += ptr + struct.pack("!HHIH", 16, 1, 300, len(txt) + 1) + bytes([len(txt)]) + txt
    w = bytearray(w + opt + recs)
    struct.pack_into("!H", w, 10, 1 + 2 + 12)
    return bytes(w)


def test_answer_with_a_leading_opt_is_refused_not_garbled(proxies, scripted):
    """The upstream's OPT comes first in the additional section and the
    records after it point (compression) at each other. Cutting the OPT's
    options (NSID, Padding), the whole OPT (a client without one), or the
    records that do not fit would move what those pointers point at, and
    a client would get wrong names or a malformed message. dotproxy's rule
    (a documented decision: every real server puts the OPT last) is that an
    answer whose OPT is not its last record is malformed: the client gets
    SERVFAIL - never a garbled answer - and the proxy says so in its log;
    such an answer is not cached (a second query reaches the upstream)."""
    f = scripted(opt_first_script)
    p = proxies.start(spec(f.port), extra=["-t", "1500"])
    for tcp, edns, what in ((False, True, "UDP EDNS 1232"), (False, False, "UDP, no OPT (512)"),
                            (True, True, "TCP EDNS"), (True, False, "TCP no OPT")):
        q = query_wire("glue.test", edns=edns, payload=1232)
        raw = tcp_exchange(p.port, q) if tcp else udp_exchange(p.port, q, timeout=3)
        assert raw is not None, "%s: no answer" % what
        r = Wire(raw)
        assert r.rcode == dns.rcode.SERVFAIL and not r.answer and not r.additional, \
            "%s: want SERVFAIL without records, got %s %s" % (what, r.describe(), r.rrs)
    assert f.queries >= 4, "a refused answer was cached: %d upstream queries" % f.queries
    assert p.wait_for("malformed", 3), "no log line says the answer was malformed:\n" + p.log()
    no_script_errors(f)
