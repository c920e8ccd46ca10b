"""Malformed input must get FORMERR or no answer, never a crash or a stuck
connection; after each case the proxy still answers a valid query."""

import random
import socket
import struct
import time

import dns.message
import dns.rcode
import pytest

from helpers import (a_addrs, make_query, query_tcp, query_udp, tcp_connect, tcp_frame,
                     udp_exchange)

FORMERR = dns.rcode.FORMERR


def hdr(qid=0x4d4d, flags=0x0100, qd=1, an=0, ns=0, ar=0):
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def qname(*labels):
    out = b""
    for l in labels:
        l = l if isinstance(l, bytes) else l.encode()
        out += bytes([len(l)]) + l
    return out + b"\x00"


TYPE_A_IN = struct.pack("!HH", 1, 1)


def assert_still_works(proxy):
    assert proxy.alive(), "dotproxy died:\n" + proxy.log()
    r = query_udp(proxy.port, "example.test", "A", timeout=3)
    assert a_addrs(r) == {"192.0.2.10", "192.0.2.11"}
    r = query_tcp(proxy.port, "still.bench.test", "A", timeout=3)
    assert a_addrs(r) == {"192.0.2.1"}


def assert_formerr_or_nothing(rw, qid=None):
    if rw is None:
        return
    assert len(rw) >= 12, "reply shorter than a header: %r" % rw
    rid, flags = struct.unpack("!HH", rw[:4])
    assert flags & 0x8000, "reply without QR"
    assert flags & 0xF == FORMERR, "expected FORMERR or no answer, got rcode %d" % (flags & 0xF)
    if qid is not None:
        assert rid == qid


# ---------------------------------------------------------------- UDP

UDP_CASES = {
    "empty": b"",
    "1-byte": b"\x12",
    "11-bytes": hdr()[:11],
    "header-only-qd1": hdr(),
    "qdcount-0": hdr(qd=0),
    "qdcount-2": hdr(qd=2) + qname("example", "test") + TYPE_A_IN + qname("a", "test") + TYPE_A_IN,
    "label-64": hdr() + qname(b"a" * 64, "test") + TYPE_A_IN,
    "name-over-255": hdr() + qname(*([b"b" * 63] * 5)) + TYPE_A_IN,
    "pointer-loop": hdr() + b"\xc0\x0c" + TYPE_A_IN,
    "pointer-2-loop": hdr() + b"\x01a\xc0\x0c" + TYPE_A_IN,
    "pointer-past-end": hdr() + b"\xc0\xff" + TYPE_A_IN,
    "label-past-end": hdr() + b"\x3fabc",
    "no-type-class": hdr() + qname("example", "test"),
    "half-type": hdr() + qname("example", "test") + b"\x00",
    "reserved-label-type": hdr() + b"\x80abc\x00" + TYPE_A_IN,
}


@pytest.mark.parametrize("case", sorted(UDP_CASES))
def test_udp_malformed(proxy, case):
    wire = UDP_CASES[case]
    rw = udp_exchange(proxy.port, wire, timeout=0.7)
    assert_formerr_or_nothing(rw, 0x4d4d if len(wire) >= 2 else None)
    assert_still_works(proxy)


def test_udp_response_as_query_is_dropped(proxy):
    q = make_query("example.test", "A", qid=777)
    resp = dns.message.make_response(q)
    rw = udp_exchange(proxy.port, resp.to_wire(), timeout=0.5)
    assert rw is None, "the proxy answered a response (QR=1): reflection loop risk"
    assert_still_works(proxy)


def test_udp_random_garbage_burst(proxy):
    rnd = random.Random(1234)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i in range(300):
            n = rnd.choice([0, 1, 5, 12, 13, 17, 30, 64, 300, 512, 1500, 4000])
            data = bytes(rnd.getrandbits(8) for _ in range(n))
            if n >= 12 and i % 3 == 0:  # plausible header so the parser goes deeper
                data = hdr(qid=i, qd=1) + data[12:]
            s.sendto(data, ("127.0.0.1", proxy.port))
        time.sleep(0.5)
    finally:
        s.close()
    assert_still_works(proxy)


# ---------------------------------------------------------------- TCP

def closed_or_formerr(s, timeout=5.0):
    """The garbage connection must be closed by the proxy or answered with FORMERR."""
    s.settimeout(timeout)
    try:
        data = s.recv(65537)
    except socket.timeout:
        pytest.fail("garbage TCP connection neither closed nor answered within %.0f s" % timeout)
    except ConnectionResetError:
        return "reset"
    if data == b"":
        return "closed"
    assert len(data) >= 14, "odd reply %r" % data
    (n,) = struct.unpack("!H", data[:2])
    assert_formerr_or_nothing(data[2:2 + n])
    return "formerr"


TCP_EXPECT_CLOSE = {
    "framed-5-bytes": b"\x00\x05hello",
    "length-0": b"\x00\x00",
    "framed-label-64": None,   # built below
    "framed-qdcount-0": None,
    "framed-pointer-loop": None,
}


TCP_EXPECT_CLOSE["framed-label-64"] = tcp_frame(hdr() + qname(b"a" * 64, "test") + TYPE_A_IN)
TCP_EXPECT_CLOSE["framed-qdcount-0"] = tcp_frame(hdr(qd=0))
TCP_EXPECT_CLOSE["framed-pointer-loop"] = tcp_frame(hdr() + b"\xc0\x0c" + TYPE_A_IN)


@pytest.mark.parametrize("case", sorted(TCP_EXPECT_CLOSE))
def test_tcp_garbage_closed_or_formerr(proxy, case):
    s = tcp_connect(proxy.port)
    try:
        s.sendall(TCP_EXPECT_CLOSE[case])
        closed_or_formerr(s)
    finally:
        s.close()
    assert_still_works(proxy)


TCP_SEND_AND_CLOSE = {
    "length-65535-then-close": b"\xff\xff" + b"\x00" * 100,
    "half-message-then-close": tcp_frame(make_query("example.test", "A").to_wire())[:15],
    "one-length-byte-then-close": b"\x00",
    "http-then-close": b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
    "response-then-close": tcp_frame(dns.message.make_response(make_query("x.test")).to_wire()),
}


@pytest.mark.parametrize("case", sorted(TCP_SEND_AND_CLOSE))
def test_tcp_send_then_close(proxy, case):
    s = tcp_connect(proxy.port)
    s.sendall(TCP_SEND_AND_CLOSE[case])
    s.close()
    time.sleep(0.2)
    assert_still_works(proxy)


def test_tcp_reset_with_query_in_flight(proxy):
    """Client sends a query and resets the connection before the answer: the
    late answer must not crash the proxy or go to another client."""
    for i in range(5):
        s = tcp_connect(proxy.port)
        s.sendall(tcp_frame(make_query("rst%d.bench.test" % i, "A").to_wire()))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    time.sleep(0.3)
    assert_still_works(proxy)


def test_idle_half_open_tcp_connections_do_not_block_others(proxy):
    """20 connections holding half a query do not stop other clients."""
    held = []
    try:
        for _ in range(20):
            s = tcp_connect(proxy.port)
            s.sendall(b"\x00\x40" + b"\x00" * 10)
            held.append(s)
        assert_still_works(proxy)
    finally:
        for s in held:
            s.close()
    assert_still_works(proxy)
