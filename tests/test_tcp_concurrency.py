"""TCP framing and pipelining (RFC 7766), concurrency, and connection reuse
towards the upstream (one persistent TLS connection)."""

import random
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import dns.message
import dns.rcode

from helpers import (a_addrs, make_query, query_tcp, query_udp, tcp_connect, tcp_frame,
                     tcp_recv_msg, tcp_send_msg)


def test_tcp_pipelined_20_queries_one_sendall(shared_proxy):
    qs = {}
    buf = b""
    for i in range(20):
        name = "pipe%d.bench.test" % i if i % 4 else "example.test"
        q = make_query(name, "A", qid=1000 + i)
        qs[q.id] = name
        w = q.to_wire()
        buf += tcp_frame(w)
    s = tcp_connect(shared_proxy.port, timeout=5)
    try:
        s.sendall(buf)
        seen = {}
        for _ in range(20):
            r = dns.message.from_wire(tcp_recv_msg(s))
            assert r.id in qs, "answer with unknown id %d" % r.id
            assert r.id not in seen, "duplicate answer for id %d" % r.id
            seen[r.id] = r
        for qid, name in qs.items():
            r = seen[qid]
            assert r.rcode() == dns.rcode.NOERROR
            assert r.question[0].name.to_text() == name + "."
            want = {"192.0.2.10", "192.0.2.11"} if name == "example.test" else {"192.0.2.1"}
            assert a_addrs(r) == want
    finally:
        s.close()


def test_tcp_query_split_into_single_bytes(shared_proxy):
    """A framed query arriving one byte per segment is reassembled."""
    q = make_query("split.bench.test", "A", qid=4242)
    w = q.to_wire()
    data = tcp_frame(w)
    s = tcp_connect(shared_proxy.port, timeout=5)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for b in data:
            s.send(bytes([b]))
            time.sleep(0.002)
        r = dns.message.from_wire(tcp_recv_msg(s))
        assert r.id == 4242 and a_addrs(r) == {"192.0.2.1"}
    finally:
        s.close()


def test_tcp_two_messages_in_one_segment_then_more(shared_proxy):
    """Query boundaries that do not match segment boundaries."""
    ws = [make_query("seg%d.bench.test" % i, "A", qid=i + 1).to_wire() for i in range(3)]
    framed = b"".join(tcp_frame(w) for w in ws)
    cut = len(framed) - 7
    s = tcp_connect(shared_proxy.port, timeout=5)
    try:
        s.sendall(framed[:cut])
        time.sleep(0.1)
        s.sendall(framed[cut:])
        ids = {dns.message.from_wire(tcp_recv_msg(s)).id for _ in range(3)}
        assert ids == {1, 2, 3}
    finally:
        s.close()


def test_50_concurrent_clients_udp_and_tcp(shared_proxy):
    port = shared_proxy.port

    def client(t):
        errors = []
        for j in range(4):
            for proto, fn in (("udp", query_udp), ("tcp", query_tcp)):
                name = "c%d-%d-%s.bench.test" % (t, j, proto)
                try:
                    r = fn(port, name, "A", timeout=5)
                except Exception as e:  # noqa: BLE001
                    errors.append("%s: %r" % (name, e))
                    continue
                if r.rcode() != dns.rcode.NOERROR or a_addrs(r, name) != {"192.0.2.1"}:
                    errors.append("%s: rcode %s answer %s" % (name, dns.rcode.to_text(r.rcode()),
                                                              r.answer))
        return errors

    with ThreadPoolExecutor(50) as ex:
        results = list(ex.map(client, range(50)))
    errors = [e for r in results for e in r]
    assert not errors, "%d of 400 queries failed, e.g. %s" % (len(errors), errors[:5])


def test_200_queries_use_one_upstream_connection(proxies, relay):
    relay.start()
    p = proxies.start("127.0.0.1@%d#dns.test" % relay.port)
    rnd = random.Random(7)
    for i in range(200):
        fn = query_udp if rnd.random() < 0.5 else query_tcp
        name = "one%d.bench.test" % i
        r = fn(p.port, name, "A", timeout=4)
        assert a_addrs(r, name) == {"192.0.2.1"}, "query %d (%s) failed: %s" % (i, name, r)
    assert relay.accepted == 1, "upstream saw %d connections for 200 queries" % relay.accepted


def test_tcp_client_connection_stays_open_between_queries(shared_proxy):
    """The proxy keeps an idle client TCP connection open for a while (RFC 7766 6.2.3
    suggests seconds); a second query after 1 s on the same connection is answered."""
    s = tcp_connect(shared_proxy.port, timeout=5)
    try:
        tcp_send_msg(s, make_query("idle1.bench.test", "A", qid=1).to_wire())
        assert dns.message.from_wire(tcp_recv_msg(s)).id == 1
        time.sleep(1.0)
        tcp_send_msg(s, make_query("idle2.bench.test", "A", qid=2).to_wire())
        r = dns.message.from_wire(tcp_recv_msg(s))
        assert r.id == 2 and a_addrs(r) == {"192.0.2.1"}
    finally:
        s.close()
