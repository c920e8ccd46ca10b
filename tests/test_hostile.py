"""Hostile upstreams: a DoT server that completes the TLS handshake and then misbehaves.

Each case runs twice:
  alone:      -u bad            the client gets SERVFAIL within -t plus slack, never an answer
                                from the broken stream; once the server behaves again, a later
                                query is answered (the proxy recovered, the process is alive).
  with_good:  -u bad -u good    the client gets SERVFAIL or the good upstream's correct answer,
                                never a wrong one; later queries are answered.
Wrong data is recognisable: everything the misbehaving server sends carries 203.0.113.x, while
correct answers are helpers.fake_addr_for(name) (192.0.2.K).  -t 1500 keeps the cases short.
"""

import random
import select
import socket
import ssl
import struct
import threading
import time

import dns.message
import dns.rcode
import dns.rrset
import pytest

from helpers import (a_addrs, close_quietly, fake_addr_for, free_port, make_query, query_tcp,
                     query_udp, tcp_connect, tcp_frame, tcp_recv_msg, tcp_send_msg, wait_until)

TIMEOUT_MS = 1500
SLACK_S = 1.5              # select() granularity, timers, a loaded CI machine
WRONG_PREFIX = "203.0.113."


def _answer(wire, qid=None, qname=None, addr=None):
    """An answer to the query `wire` (A record), optionally with another ID / question."""
    q = dns.message.from_wire(wire)
    if qname is not None:
        q2 = dns.message.make_query(qname, "A", use_edns=q.edns >= 0)
        q2.id = q.id
        q = q2
    r = dns.message.make_response(q)
    name = q.question[0].name
    r.answer.append(dns.rrset.from_text(name, 60, "IN", "A", addr or fake_addr_for(name)))
    if qid is not None:
        r.id = qid
    return r.to_wire()


class ScriptedDoT:
    """A TLS 1.2 DoT server (Python ssl) whose behaviour after the handshake is `mode`:

    answer              correct answers (the data of helpers.fake_addr_for)
    garbage_short       a framed 5-byte "message" (shorter than a DNS header)
    garbage_random      300 random bytes, no framing
    wrong_id            an answer with another ID (unknown to the proxy)
    other_question      the right ID, another name in the question
    long_prefix_stall   a length prefix 100 bytes larger than the message, then nothing
    long_prefix_close   the same, then the TCP connection closes (no close_notify)
    stall_mid           half an answer, then nothing
    silent              reads queries, never answers
    close_mid           half an answer, then the connection closes
    `mode` may be changed while running.  .queries counts queries read, .handshakes TLS
    handshakes completed.
    """

    def __init__(self, chain, key, mode, host="127.0.0.1"):
        self.mode = mode
        self.port = free_port()
        self.queries = 0
        self.handshakes = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._socks = []
        self._rng = random.Random(7)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(chain, key)
        ctx.set_alpn_protocols(["dot"])
        self.ctx = ctx
        self._ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._ls.bind((host, self.port))
        self._ls.listen(64)
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([self._ls], [], [], 0.1)
                if not r:
                    continue
                c, _ = self._ls.accept()
            except (OSError, ValueError):
                return
            t = threading.Thread(target=self._serve, args=(c,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, raw):
        raw.settimeout(5)
        try:
            s = self.ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        with self._lock:
            self.handshakes += 1
            self._socks.append(s)
        s.settimeout(0.2)
        buf = b""
        try:
            while not self._stop.is_set():
                try:
                    data = s.recv(65536)
                except (socket.timeout, ssl.SSLWantReadError):
                    continue
                if not data:
                    return
                buf += data
                while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                    n = struct.unpack("!H", buf[:2])[0]
                    wire, buf = buf[2:2 + n], buf[2 + n:]
                    with self._lock:
                        self.queries += 1
                    if self._respond(s, wire) == "close":
                        raw.close()          # TCP FIN, no close_notify
                        return
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            close_quietly(s)

    def _respond(self, s, wire):
        mode = self.mode
        qid = struct.unpack("!H", wire[:2])[0]
        bad = _answer(wire, addr=WRONG_PREFIX + "66")
        frame = tcp_frame
        if mode == "answer":
            s.sendall(frame(_answer(wire)))
        elif mode == "garbage_short":
            s.sendall(frame(b"\x12\x34\x81\x80\x00"))
        elif mode == "garbage_random":
            s.sendall(bytes(self._rng.getrandbits(8) for _ in range(300)))
        elif mode == "wrong_id":
            s.sendall(frame(_answer(wire, qid=qid ^ 0x5555, addr=WRONG_PREFIX + "67")))
        elif mode == "other_question":
            s.sendall(frame(_answer(wire, qname="other.test", addr=WRONG_PREFIX + "68")))
        elif mode in ("long_prefix_stall", "long_prefix_close"):
            s.sendall(struct.pack("!H", len(bad) + 100) + bad)
            if mode == "long_prefix_close":
                return "close"
        elif mode in ("stall_mid", "close_mid"):
            f = frame(bad)
            s.sendall(f[:len(f) // 2])
            if mode == "close_mid":
                return "close"
        elif mode == "silent":
            pass
        return None

    def stop(self):
        self._stop.set()
        close_quietly(self._ls)
        with self._lock:
            socks = list(self._socks)
        close_quietly(*socks)
        for t in self._threads:
            t.join(2)


MODES = ["garbage_short", "garbage_random", "wrong_id", "other_question", "long_prefix_stall",
         "long_prefix_close", "stall_mid", "silent", "close_mid"]


@pytest.fixture
def scripted(pki):
    made = []

    def make(mode):
        s = ScriptedDoT(pki.chain, pki.key, mode)
        made.append(s)
        return s
    yield make
    for s in made:
        s.stop()


def _ask(port, name, transport):
    t0 = time.monotonic()
    if transport == "udp":
        r = query_udp(port, name, timeout=TIMEOUT_MS / 1000 + 5)
    else:
        r = query_tcp(port, name, timeout=TIMEOUT_MS / 1000 + 5)
    return r, time.monotonic() - t0


def _never_wrong(r, name):
    addrs = a_addrs(r)
    assert not any(a.startswith(WRONG_PREFIX) for a in addrs), \
        "wrong answer from a broken upstream reached the client: %s" % r
    if r.rcode() == dns.rcode.NOERROR:
        assert addrs == {fake_addr_for(name)}, r
    else:
        assert r.rcode() == dns.rcode.SERVFAIL, r


@pytest.mark.parametrize("mode", MODES)
def test_hostile_upstream_alone(proxies, scripted, mode):
    bad = scripted(mode)
    p = proxies.start("127.0.0.1@%d#dns.test" % bad.port,
                      extra=["-t", str(TIMEOUT_MS), "--max-backoff", "1000", "--cache-size", "0"])
    for i, transport in enumerate(("udp", "tcp")):
        name = "q%d.hostile.test" % (10 + i)
        r, took = _ask(p.port, name, transport)
        assert r.rcode() == dns.rcode.SERVFAIL, (mode, transport, r)
        assert not r.answer, r
        assert took < TIMEOUT_MS / 1000 + SLACK_S, "%s: SERVFAIL after %.2fs" % (mode, took)
        assert p.alive(), p.log()
    assert bad.queries >= 1, "the misbehaving server never saw a query"
    # The server behaves again: a later query is answered (after the back-off).
    bad.mode = "answer"

    def answered():
        r = query_udp(p.port, "q20.hostile.test", timeout=3)
        return r.rcode() == dns.rcode.NOERROR and r
    r = wait_until(answered, 15, 0.3)
    assert r, "no answer after the upstream recovered; log:\n%s" % p.log()
    assert a_addrs(r) == {"192.0.2.20"}
    assert p.alive()


# Known proxy bugs (see the hardening report): these upstreams are never taken for failed, so
# with a good second upstream every query still goes to the bad one and gets SERVFAIL.
#   other_question: an answer to another question only fails that query (query_fail), the
#                   upstream stays preferred.
#   long_prefix_close, close_mid: EOF after the handshake is "closed by the server", a clean
#                   close even with queries in flight or half a message read: reconnect to the
#                   same upstream, send again (MAX_ATTEMPTS), SERVFAIL; no failover.
NO_FAILOVER = {"other_question", "long_prefix_close", "close_mid"}


@pytest.mark.parametrize("mode", MODES)
def test_hostile_upstream_then_good(proxies, scripted, fake_dot, mode):
    bad = scripted(mode)
    good = fake_dot(mode="answer")
    p = proxies.start(["127.0.0.1@%d#dns.test" % bad.port, "127.0.0.1@%d#dns.test" % good.port],
                      extra=["-t", str(TIMEOUT_MS), "--cache-size", "0"])
    for i, transport in enumerate(("udp", "tcp", "udp")):
        name = "q%d.hostile.test" % (30 + i)
        r, took = _ask(p.port, name, transport)
        _never_wrong(r, name)
        assert took < TIMEOUT_MS / 1000 + SLACK_S, "%s: answer after %.2fs" % (mode, took)
    assert bad.queries >= 1, "the misbehaving server never saw a query"
    # Later queries are answered correctly (by the good one, the bad one backing off).
    later = []
    for k in range(40, 45):
        name = "q%d.hostile.test" % k
        r = query_udp(p.port, name, timeout=TIMEOUT_MS / 1000 + 5)
        _never_wrong(r, name)
        later.append(r)
    r = query_tcp(p.port, "q46.hostile.test", timeout=5)
    _never_wrong(r, "q46.hostile.test")
    later.append(r)
    assert p.alive(), p.log()
    served = all(r.rcode() == dns.rcode.NOERROR for r in later)
    if mode in NO_FAILOVER and not served:
        pytest.xfail("proxy bug: no failover from an upstream that does %s" % mode)
    assert served, [r.rcode() for r in later]


def test_pipelined_answers_around_garbage_never_cross(proxies, scripted):
    """Many queries in flight on one connection when an answer with another question comes:
    that one query gets SERVFAIL, every other client gets its own answer."""
    srv = scripted("answer")
    p = proxies.start("127.0.0.1@%d#dns.test" % srv.port,
                      extra=["-t", str(TIMEOUT_MS), "--cache-size", "0"])
    assert a_addrs(query_udp(p.port, "q1.hostile.test")) == {"192.0.2.1"}
    s = tcp_connect(p.port, timeout=6)
    try:
        names = {}
        for k in range(50, 90):
            q = make_query("q%d.pipe.test" % k, qid=k)
            names[k] = "q%d.pipe.test" % k
            if k == 70:
                srv.mode = "other_question"
            tcp_send_msg(s, q.to_wire())
            if k == 70:
                time.sleep(0.3)
                srv.mode = "answer"
        got = {}
        for _ in names:
            r = dns.message.from_wire(tcp_recv_msg(s))
            got[r.id] = r
        assert set(got) == set(names)
        for k, r in got.items():
            _never_wrong(r, names[k])
        # sent after the server behaved again: all answered
        assert all(got[k].rcode() == dns.rcode.NOERROR for k in names if k > 70), got
    finally:
        s.close()
    assert p.alive()
