"""Basic resolution through dotproxy -> unbound (DoT): answers, ID/case
preservation, EDNS pass-through rules, UDP truncation."""

import struct
import subprocess

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from helpers import (a_addrs, make_query, query_tcp, query_udp, tcp_exchange, txt_strings,
                     udp_exchange)

EXAMPLE = {"192.0.2.10", "192.0.2.11"}


def run(cmd, timeout=15):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- 1. plain answers

def test_udp_a_query(shared_proxy):
    r = query_udp(shared_proxy.port, "example.test", "A")
    assert r.rcode() == dns.rcode.NOERROR
    assert a_addrs(r) == EXAMPLE
    assert r.flags & dns.flags.QR
    assert not r.flags & dns.flags.TC


def test_tcp_a_query(shared_proxy):
    r = query_tcp(shared_proxy.port, "example.test", "A")
    assert r.rcode() == dns.rcode.NOERROR
    assert a_addrs(r) == EXAMPLE


def test_aaaa_query(shared_proxy):
    for fn in (query_udp, query_tcp):
        r = fn(shared_proxy.port, "example.test", "AAAA")
        assert r.rcode() == dns.rcode.NOERROR
        addrs = {rd.address for rr in r.answer if rr.rdtype == dns.rdatatype.AAAA for rd in rr}
        assert addrs == {"2001:db8::10"}


def test_nxdomain_passed_through(shared_proxy):
    """An upstream NXDOMAIN must reach the client as NXDOMAIN, not SERVFAIL."""
    r = query_udp(shared_proxy.port, "nope.example.test", "A")
    assert r.rcode() == dns.rcode.NXDOMAIN


@pytest.mark.parametrize("mode", ["udp", "tcp"])
def test_dig(shared_proxy, mode):
    cmd = ["dig", "@127.0.0.1", "-p", str(shared_proxy.port), "example.test", "A", "+short",
           "+time=3", "+tries=1"]
    if mode == "tcp":
        cmd.append("+tcp")
    r = run(cmd)
    assert r.returncode == 0, r.stdout + r.stderr
    assert set(r.stdout.split()) == EXAMPLE


@pytest.mark.parametrize("mode", ["udp", "tcp"])
def test_kdig(shared_proxy, mode):
    cmd = ["kdig", "@127.0.0.1", "-p", str(shared_proxy.port), "example.test", "A", "+short",
           "+time=3", "+retry=0"]
    if mode == "tcp":
        cmd.append("+tcp")
    r = run(cmd)
    assert r.returncode == 0, r.stdout + r.stderr
    assert set(r.stdout.split()) == EXAMPLE


# ---------------------------------------------------------------- 2. ID and case

def _question_bytes(wire):
    """Raw bytes of the (single) question: name + type + class."""
    i = 12
    while wire[i] != 0:
        assert wire[i] < 64, "compressed/odd name in question"
        i += wire[i] + 1
    return wire[12:i + 5]


@pytest.mark.parametrize("qid", [0x0000, 0x1234, 0xBEEF, 0xFFFF])
@pytest.mark.parametrize("mode", ["udp", "tcp"])
def test_id_and_case_preserved(shared_proxy, qid, mode):
    q = make_query("ExAmPlE.tEsT", "A", qid=qid)
    wire = q.to_wire()
    assert b"ExAmPlE" in wire  # dnspython kept our spelling
    xchg = udp_exchange if mode == "udp" else tcp_exchange
    rw = xchg(shared_proxy.port, wire, timeout=3)
    assert rw is not None, "no answer"
    assert struct.unpack("!H", rw[:2])[0] == qid
    assert _question_bytes(rw) == _question_bytes(wire)
    r = dns.message.from_wire(rw)
    assert r.id == qid
    assert r.question[0].name.to_text() == "ExAmPlE.tEsT."
    assert r.rcode() == dns.rcode.NOERROR
    assert a_addrs(r) == EXAMPLE


def test_rd_flag_echoed(shared_proxy):
    """RD from the query is echoed (RFC 1035 4.1.1)."""
    q = make_query("example.test", "A")
    r = dns.message.from_wire(udp_exchange(shared_proxy.port, q.to_wire(), timeout=3))
    assert r.flags & dns.flags.RD
    q.flags &= ~dns.flags.RD
    r = dns.message.from_wire(udp_exchange(shared_proxy.port, q.to_wire(), timeout=3))
    assert not r.flags & dns.flags.RD


# ---------------------------------------------------------------- 3. EDNS in/out

@pytest.mark.parametrize("mode", ["udp", "tcp"])
def test_no_opt_in_no_opt_out(shared_proxy, mode):
    fn = query_udp if mode == "udp" else query_tcp
    r = fn(shared_proxy.port, "example.test", "A", use_edns=False)
    assert r.edns == -1, "response carries OPT although the query had none"
    assert a_addrs(r) == EXAMPLE


@pytest.mark.parametrize("mode", ["udp", "tcp"])
def test_opt_in_opt_out(shared_proxy, mode):
    fn = query_udp if mode == "udp" else query_tcp
    r = fn(shared_proxy.port, "example.test", "A", use_edns=True, payload=1232)
    assert r.edns == 0, "query had EDNS0 but the response has no OPT"
    assert a_addrs(r) == EXAMPLE


# ---------------------------------------------------------------- 4. truncation

BIG = "big.example.test"


FULL_TXT = sorted(c * 250 for c in "xyzab")


def _check_truncated(rw, limit, q):
    assert rw is not None, "no answer"
    assert len(rw) <= limit, "UDP answer of %d bytes exceeds the client limit %d" % (len(rw), limit)
    r = dns.message.from_wire(rw)
    assert r.id == q.id
    assert r.flags & dns.flags.TC, "answer not marked truncated"
    assert r.rcode() == dns.rcode.NOERROR
    assert len(r.question) == 1 and r.question[0].name.to_text() == BIG + "."
    assert r.question[0].rdtype == dns.rdatatype.TXT
    assert r.answer == [], "truncated answer should carry no records"
    return r


def test_udp_truncation_no_edns(shared_proxy):
    q = make_query(BIG, "TXT", use_edns=False)
    rw = udp_exchange(shared_proxy.port, q.to_wire(), timeout=3)
    r = _check_truncated(rw, 512, q)
    assert r.edns == -1


def test_udp_truncation_edns_1232(shared_proxy):
    q = make_query(BIG, "TXT", use_edns=True, payload=1232)
    rw = udp_exchange(shared_proxy.port, q.to_wire(), timeout=3)
    r = _check_truncated(rw, 1232, q)
    assert r.edns == 0


def test_udp_truncation_edns_below_512(shared_proxy):
    """An EDNS buffer size below 512 is treated as 512 (RFC 6891 6.2.3)."""
    q = make_query(BIG, "TXT", use_edns=True, payload=300)
    rw = udp_exchange(shared_proxy.port, q.to_wire(), timeout=3)
    _check_truncated(rw, 512, q)


def test_udp_edns_4096_capped_at_1232(shared_proxy):
    """A client that takes 4,096 bytes still gets at most 1,232 over UDP (DNS flag
    day 2020: no IP fragments, which get lost or spoofed): the 1.3 KB answer comes
    back with TC=1, and the client asks again over TCP (test_tcp_full_big_answer)."""
    q = make_query(BIG, "TXT", use_edns=True, payload=4096)
    rw = udp_exchange(shared_proxy.port, q.to_wire(), timeout=3)
    assert rw is not None
    r = dns.message.from_wire(rw)
    assert r.flags & dns.flags.TC, "a %d-byte answer without TC" % len(rw)
    assert len(rw) <= 1232
    assert r.edns == 0 and r.payload == 1232


@pytest.mark.parametrize("edns", [False, True])
def test_tcp_full_big_answer(shared_proxy, edns):
    q = make_query(BIG, "TXT", use_edns=edns, payload=512)
    rw = tcp_exchange(shared_proxy.port, q.to_wire(), timeout=3)
    r = dns.message.from_wire(rw)
    assert not r.flags & dns.flags.TC
    assert txt_strings(r) == FULL_TXT
    assert (r.edns == 0) == edns


def test_dig_shows_tc_flag(shared_proxy):
    r = run(["dig", "@127.0.0.1", "-p", str(shared_proxy.port), BIG, "TXT", "+notcp", "+ignore",
             "+noedns", "+time=3", "+tries=1"])
    assert r.returncode == 0, r.stdout + r.stderr
    flagline = [l for l in r.stdout.splitlines() if ";; flags:" in l]
    assert flagline, r.stdout
    assert " tc" in flagline[0].split(";")[2], r.stdout


def test_dig_retries_over_tcp_and_gets_full_answer(shared_proxy):
    r = run(["dig", "@127.0.0.1", "-p", str(shared_proxy.port), BIG, "TXT", "+time=3",
             "+tries=1"])
    assert r.returncode == 0, r.stdout + r.stderr
    for c in "xyzab":
        assert c * 250 in r.stdout
    assert "status: NOERROR" in r.stdout


# ---------------------------------------------------------------- 19. many names, one TCP connection

def test_many_names_one_tcp_connection(shared_proxy):
    from helpers import tcp_connect, tcp_recv_msg, tcp_send_msg
    s = tcp_connect(shared_proxy.port, timeout=5)
    try:
        for i in range(100):
            name = "seq%d.bench.test" % i
            q = make_query(name, "A", qid=i + 1)
            tcp_send_msg(s, q.to_wire())
            r = dns.message.from_wire(tcp_recv_msg(s))
            assert r.id == i + 1
            assert r.question[0].name.to_text() == name + "."
            assert a_addrs(r) == {"192.0.2.1"}
    finally:
        s.close()


def test_dig_keepopen_multiple_queries(shared_proxy):
    names = ["k%d.bench.test" % i for i in range(5)]
    cmd = ["dig", "@127.0.0.1", "-p", str(shared_proxy.port), "+tcp", "+keepopen", "+time=3",
           "+tries=1", "+noall", "+answer"]
    for n in names:
        cmd += [n, "A"]
    r = run(cmd)
    assert r.returncode == 0, r.stdout + r.stderr
    for n in names:
        assert any(l.startswith(n + ".") and "192.0.2.1" in l for l in r.stdout.splitlines()), \
            "%s missing in:\n%s" % (n, r.stdout)
