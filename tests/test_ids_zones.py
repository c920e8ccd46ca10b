"""Issue #9, seen from an attacker: upstream query IDs, forward-zone queries
(RFC 5452), special-use names and numeric options.

  IDs        every query on a DoT connection gets a fresh random 16-bit ID
             (not a counter, not a slot number, not the client's), never one
             still in use on that connection: a timed-out query keeps its ID
             reserved, so its late answer can never be taken for a newer
             query's.  An answer with a known ID and another question is
             dropped (warn, rate-limited), the query keeps waiting for its
             real answer, and nobody fails over because of it.
  zones      each forward-zone query leaves from its own connected UDP socket
             (a random source port) with a random ID; forged answers (another
             port, a wrong ID, another question, a flood of guessed IDs at the
             port a previous query used) never reach the client.
  names      localhost., invalid., onion., resolver.arpa. (and below) are
             answered by dotproxy itself, never forwarded, over UDP and TCP,
             whatever --forward-zone says.
  numbers    every numeric option rejects a value that overflows 32 or 64 bits
             (wrapping to a valid one) with exit 1 and a message naming it,
             before binding anything.

The DoT upstream here is ScriptedDoT (below): a TLS 1.2 server whose answer to
each query is a Python function, that records, per connection, each query's ID
and which queries are still unanswered when a new one arrives.  Good answers
carry helpers.fake_addr_for(name) (192.0.2.K for qK.*); anything forged or late
carries 203.0.113.x, so a wrong delivery shows.
"""

import collections
import random
import select
import socket
import ssl
import struct
import subprocess
import threading
import time

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from helpers import (a_addrs, close_quietly, fake_addr_for, free_port, run_dotproxy,
                     tcp_connect, tcp_frame, tcp_recv_msg, wait_until)

NOERROR = dns.rcode.NOERROR
NXDOMAIN = dns.rcode.NXDOMAIN
SERVFAIL = dns.rcode.SERVFAIL
REFUSED = dns.rcode.REFUSED
WRONG = "203.0.113."


def spec(port):
    return "127.0.0.1@%d#dns.test" % port


def warn_lines(p):
    return [l for l in p.log().splitlines() if ": warn: " in l]


# ---------------------------------------------------------------- raw DNS

def parse_question(wire):
    """(lower-case name with the final dot, qtype, qclass, offset past the question)."""
    off = 12
    labels = []
    while True:
        n = wire[off]
        if n == 0:
            off += 1
            break
        labels.append(wire[off + 1:off + 1 + n].decode("ascii", "replace"))
        off += 1 + n
    qtype, qclass = struct.unpack("!HH", wire[off:off + 4])
    return ".".join(labels).lower() + ".", qtype, qclass, off + 4


def encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def build_answer(wire, addr=None, qid=None, qname=None, ttl=60):
    """A raw answer to the query `wire`: the question copied byte for byte
    (or `qname`'s, for an answer to another question), one A record (`addr`,
    default fake_addr_for(name)) for an A/IN question, an OPT (no options)
    when the query had an additional record, the query's ID unless `qid`."""
    name, qtype, qclass, qend = parse_question(wire)
    flags = 0x8000 | (struct.unpack("!H", wire[2:4])[0] & 0x7910) | 0x0080
    if qname is None:
        question = wire[12:qend]
    else:
        name = qname
        question = encode_name(qname) + struct.pack("!HH", qtype, qclass)
    body = b""
    an = 0
    if qtype == 1 and qclass == 1:
        body = (b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, ttl, 4)
                + socket.inet_aton(addr or fake_addr_for(name)))
        an = 1
    ar = 1 if struct.unpack("!H", wire[10:12])[0] else 0
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0) if ar else b""
    hdr = struct.pack("!HHHHHH", struct.unpack("!H", wire[:2])[0] if qid is None else qid,
                      flags, 1, an, 0, ar)
    return hdr + question + body + opt


# ---------------------------------------------------------------- scripted DoT upstream

class UpQuery:
    """One query as the scripted upstream received it."""

    __slots__ = ("t", "id", "name", "wire", "answered")

    def __init__(self, t, qid, name, wire):
        self.t, self.id, self.name, self.wire = t, qid, name, wire
        self.answered = False

    def __repr__(self):
        return "UpQuery(id=%#06x, %s)" % (self.id, self.name)


class UpConn:
    """One connection to the scripted upstream: its queries in arrival order,
    the queries still unanswered (by ID), and every query that arrived with
    the ID of an earlier query that had not been answered yet (.reused)."""

    def __init__(self, index, sock):
        self.index = index
        self.sock = sock
        self.queries = []
        self.open = collections.defaultdict(list)   # id -> unanswered UpQuery list
        self.reused = []                             # (new UpQuery, earlier UpQuery)
        self.held = []                               # for handlers that batch answers
        self.lock = threading.RLock()
        self.closed = threading.Event()

    @property
    def ids(self):
        with self.lock:
            return [q.id for q in self.queries]

    def _arrived(self, q):
        with self.lock:
            earlier = self.open.get(q.id)
            if earlier:
                self.reused.append((q, earlier[0]))
            self.open[q.id].append(q)
            self.queries.append(q)

    def send_raw(self, wire):
        """Frames and sends a message (an injected one: answers nothing)."""
        with self.lock:
            try:
                self.sock.sendall(tcp_frame(wire))
            except (OSError, ssl.SSLError, ValueError):
                pass

    def answer(self, q, wire=None, **kw):
        """Sends the real answer to q (or `wire`); q counts as answered from
        before the bytes leave, so the proxy cannot be faster than the record."""
        out = wire if wire is not None else build_answer(q.wire, **kw)
        with self.lock:
            if not q.answered:
                q.answered = True
                self.open[q.id].remove(q)
            self.send_raw(out)


class ScriptedDoT:
    """A DoT server (TLS 1.2, ALPN dot) whose answers are scripted.

    handler(conn, q): called for each query, in the connection's reader
    thread; the default answers it at once (conn.answer(q)).
    idle(conn): called when nothing arrived for 20 ms (to flush held answers).
    Records: .conns (UpConn), .queries (count)."""

    def __init__(self, chain, key, handler=None, idle=None):
        self.handler = handler or (lambda conn, q: conn.answer(q))
        self.idle = idle
        self.port = free_port()
        self.conns = []
        self.queries = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(chain, key)
        ctx.set_alpn_protocols(["dot"])
        self.ctx = ctx
        self._ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._ls.bind(("127.0.0.1", self.port))
        self._ls.listen(64)
        self._socks = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def all_queries(self):
        with self._lock:
            conns = list(self.conns)
        return [q for c in conns for q in c.queries]

    def _accept(self):
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([self._ls], [], [], 0.1)
                if not r:
                    continue
                raw, _ = self._ls.accept()
            except (OSError, ValueError):
                return
            t = threading.Thread(target=self._serve, args=(raw,), daemon=True)
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
            conn = UpConn(len(self.conns), s)
            self.conns.append(conn)
            self._socks.append(s)
        s.settimeout(0.02)
        buf = b""
        try:
            while not self._stop.is_set():
                try:
                    with conn.lock:
                        data = s.recv(65536)
                except (socket.timeout, ssl.SSLWantReadError):
                    if self.idle:
                        self.idle(conn)
                    time.sleep(0.001)    # let other threads take conn.lock
                    continue
                if not data:
                    return
                buf += data
                while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                    n = struct.unpack("!H", buf[:2])[0]
                    wire, buf = buf[2:2 + n], buf[2 + n:]
                    q = UpQuery(time.monotonic(), struct.unpack("!H", wire[:2])[0],
                                parse_question(wire)[0], wire)
                    conn._arrived(q)
                    with self._lock:
                        self.queries += 1
                    self.handler(conn, q)
        except (OSError, ssl.SSLError, ValueError, IndexError, struct.error):
            pass
        finally:
            conn.closed.set()
            close_quietly(s)

    def stop(self):
        self._stop.set()
        close_quietly(self._ls)
        with self._lock:
            socks = list(self._socks)
        close_quietly(*socks)
        for t in self._threads:
            t.join(2)


@pytest.fixture
def scripted(pki):
    made = []

    def make(**kw):
        s = ScriptedDoT(pki.chain, pki.key, **kw)
        made.append(s)
        return s
    yield make
    for s in made:
        s.stop()


def ask(port, name, rdtype="A", tcp=False, qid=None, timeout=4.0, rdclass="IN", edns=False):
    q = dns.message.make_query(name, rdtype, rdclass=rdclass, use_edns=0 if edns else False)
    if qid is not None:
        q.id = qid
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=port, timeout=timeout)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout, ignore_unexpected=True,
                         raise_on_truncation=False)


def assert_good(r, name, what=""):
    """NOERROR with exactly the data the good upstream gives `name`."""
    assert not any(a.startswith(WRONG) for a in a_addrs(r)), \
        "%s%s: a forged / late answer reached the client: %s" % (what, name, r)
    assert r.rcode() == NOERROR and a_addrs(r) == {fake_addr_for(name)}, \
        "%s%s: expected NOERROR A %s, got %s %s\n%s" % (
            what, name, fake_addr_for(name), dns.rcode.to_text(r.rcode()), a_addrs(r), r)


# ---------------------------------------------------------------- IDs: randomness, reuse

def chi_square(values, bins):
    counts = collections.Counter(values)
    e = len(values) / bins
    return sum((counts.get(b, 0) - e) ** 2 / e for b in range(bins))


def test_upstream_ids_random_on_one_connection(proxies, scripted):
    """2,000 queries (distinct names, 200 pipelined at a time over one TCP
    client, client IDs 0..1999) on one DoT connection whose server holds
    answers and sends them in shuffled bursts, so dozens are in flight at
    once. The upstream IDs look random: >= 1,900 distinct of 2,000 (random:
    ~1,970), the low 10 bits take >= 700 values (random: ~880; today's
    ((gen << 10) | slot) ^ key: as many as slots in use, 64), consecutive
    differences are not a few repeating steps
    (a counter, counter ^ key), each bit is set in 40-60 % of IDs, the low
    and high bytes pass a chi-square test (bound 500 for 255 d.o.f., ~11
    sigma), the IDs are not the client's (nor its ID ^ a key) and no ID is
    sent while an earlier query with that ID is still unanswered."""
    rng = random.Random(9)

    def handler(conn, q):
        with conn.lock:
            conn.held.append(q)
            if len(conn.held) >= 64:
                flush(conn)

    def flush(conn):
        with conn.lock:
            held, conn.held = conn.held, []
            rng.shuffle(held)
            for q in held:
                conn.answer(q)

    srv = scripted(handler=handler, idle=flush)
    p = proxies.start(spec(srv.port), extra=["-t", "8000"])
    n, batch = 2000, 200
    client_id = {}
    s = tcp_connect(p.port, timeout=10)
    try:
        for b in range(0, n, batch):
            buf = b""
            for i in range(b, b + batch):
                name = "q%d.ids.test" % (1000 + i)
                q = dns.message.make_query(name, "A", use_edns=False)
                q.id = i
                client_id[name + "."] = i
                buf += tcp_frame(q.to_wire())
            s.sendall(buf)
            for _ in range(batch):
                r = dns.message.from_wire(tcp_recv_msg(s))
                assert_good(r, r.question[0].name.to_text(omit_final_dot=True))
                assert r.id == client_id[r.question[0].name.to_text().lower()], r
    finally:
        s.close()
    assert len(srv.conns) == 1, "expected one upstream connection, got %d" % len(srv.conns)
    c = srv.conns[0]
    ups = [(q.id, client_id[q.name]) for q in c.queries]
    ids = [u for u, _ in ups]
    assert len(ids) == n, "upstream saw %d queries, expected %d" % (len(ids), n)
    assert not c.reused, "IDs reused while an earlier query with them was unanswered: %s" % (
        c.reused[:10],)
    info = "first IDs: %s" % " ".join("%04x" % i for i in ids[:40])
    distinct = len(set(ids))
    assert distinct >= 1900, "only %d distinct IDs in %d (random: ~1970); %s" % (
        distinct, n, info)
    low10 = len({i & 0x3FF for i in ids})
    assert low10 >= 700, "the low 10 bits take only %d values in %d IDs (random: ~880): " \
        "slot-based IDs; %s" % (low10, n, info)
    diffs = [(b - a) & 0xFFFF for a, b in zip(ids, ids[1:])]
    steps = len(set(diffs))
    assert steps >= 1800, "consecutive IDs differ by only %d distinct steps (random: ~1970): " \
        "a counter; %s" % (steps, info)
    for bit in range(16):
        ones = sum(1 for i in ids if i >> bit & 1)
        assert 0.4 * n <= ones <= 0.6 * n, "bit %d set in %d of %d IDs; %s" % (bit, ones, n, info)
    for what, vals in (("low byte", [i & 0xFF for i in ids]), ("high byte", [i >> 8 for i in ids])):
        chi = chi_square(vals, 256)
        assert chi < 500, "chi-square of the %s: %.0f (random: ~255 +- 23); %s" % (what, chi, info)
    same = sum(1 for u, cid in ups if u == cid)
    assert same <= 2, "%d upstream IDs equal the client's ID (random: ~0.03)" % same
    xor = len({u ^ cid for u, cid in ups})
    sub = len({(u - cid) & 0xFFFF for u, cid in ups})
    assert xor >= 1900 and sub >= 1900, \
        "upstream ID derived from the client's: %d distinct ID^client, %d distinct ID-client" % (
            xor, sub)


def test_late_answer_never_reaches_a_newer_query(proxies, scripted):
    """-t 1000 --cache-size 0. The upstream holds the answer to q7.late.test
    (data 203.0.113.66) past the timeout: the client gets SERVFAIL (other
    queries answered meanwhile keep the connection busy). Then q7.late.test
    is asked 80 more times on the same connection; the moment one of them
    carries the timed-out query's ID (today: 64 reuses of the slot later),
    the upstream releases the late answer first and the real one 0.2 s
    later. The held answer is released at the end in any case. Expected:
    no newer query ever carries the timed-out ID (it stays reserved), every
    client gets 192.0.2.7, never 203.0.113.66; the upstream is not taken
    for broken: one connection all along, no warn line about a question,
    and a query after the release is answered on that same connection."""
    state = {"late": None}

    def handler(conn, q):
        late = state["late"]
        if q.name == "q7.late.test." and late is None and state.get("hold"):
            state["late"] = (conn, q)           # never answered in time
            return
        if late is not None and late[0] is conn and q.id == late[1].id and \
                not late[1].answered:
            conn.answer(late[1], addr=WRONG + "66")     # the late answer, at the worst moment
            state["released_on"] = q
            time.sleep(0.2)
        conn.answer(q)

    srv = scripted(handler=handler)
    p = proxies.start(spec(srv.port), extra=["-t", "1000", "--cache-size", "0"])
    assert_good(ask(p.port, "q1.late.test"), "q1.late.test")
    state["hold"] = True
    out = {}

    def timed_out():
        t0 = time.monotonic()
        out["r"] = ask(p.port, "q7.late.test", timeout=4)
        out["dt"] = time.monotonic() - t0
    t = threading.Thread(target=timed_out)
    t.start()
    assert wait_until(lambda: state["late"] is not None, 3, 0.01), "held query never arrived"
    k = 0
    while t.is_alive():                          # keep the connection busy meanwhile
        k += 1
        assert_good(ask(p.port, "q%d.busy.test" % (100 + k)), "q%d.busy.test" % (100 + k))
        time.sleep(0.1)
    t.join()
    assert out["r"].rcode() == SERVFAIL and not out["r"].answer, \
        "expected SERVFAIL for the held query, got %s" % out["r"]
    assert 0.8 <= out["dt"] <= 2.5, "SERVFAIL after %.2f s with -t 1000" % out["dt"]
    late_conn, late_q = state["late"]
    for i in range(80):
        r = ask(p.port, "q7.late.test", timeout=4)
        assert_good(r, "q7.late.test", "query %d after the timeout: " % (i + 1))
    reused = [q for q in late_conn.queries if q.id == late_q.id and q is not late_q]
    assert not reused, "the timed-out query's ID %#06x was given to %d newer queries on the " \
        "same connection (first: query released on %r)" % (
            late_q.id, len(reused), state.get("released_on"))
    if not late_q.answered:
        late_conn.answer(late_q, addr=WRONG + "66")
    time.sleep(0.3)
    assert p.alive(), p.log()
    assert_good(ask(p.port, "q8.late.test"), "q8.late.test", "after the late answer: ")
    assert len(srv.conns) == 1, "the late answer made dotproxy reconnect: %d connections\n%s" % (
        len(srv.conns), p.log())
    assert srv.conns[0].queries[-1].name == "q8.late.test.", srv.conns[0].queries[-3:]
    bad = [l for l in warn_lines(p) if "question" in l]
    assert not bad, "a late answer was taken for an answer to another question:\n" + "\n".join(bad)


def pipelined(port, names, first_id=0):
    """Sends the queries for `names` in one TCP segment to the proxy, returns
    the answers by name."""
    s = tcp_connect(port, timeout=8)
    try:
        buf = b""
        for k, name in enumerate(names):
            q = dns.message.make_query(name, "A", use_edns=False)
            q.id = (first_id + k) & 0xFFFF
            buf += tcp_frame(q.to_wire())
        s.sendall(buf)
        out = {}
        for _ in names:
            r = dns.message.from_wire(tcp_recv_msg(s))
            out[r.question[0].name.to_text(omit_final_dot=True)] = r
        return out
    finally:
        s.close()


def test_timed_out_ids_stay_reserved(proxies, scripted):
    """-t 1000 --cache-size 0. 480 queries (UDP) that the upstream never
    answers time out (SERVFAIL; answered queries keep the connection busy
    meanwhile). Then 2,060 more queries on the same connection: 70 rounds of
    8 pipelined (a slot-based ID comes back after 64 reuses of a slot), then
    1,500 in batches of 60. None of them carries the ID of a timed-out query
    (random IDs that forgot the 480 would hit one ~15 times). All answered
    correctly, one connection all along."""
    def handler(conn, q):
        if not q.name.endswith(".hold.test."):
            conn.answer(q)

    srv = scripted(handler=handler)
    p = proxies.start(spec(srv.port), extra=["-t", "1000", "--cache-size", "0"])
    assert_good(ask(p.port, "q1.rsv.test"), "q1.rsv.test")
    held = 480
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", 0))
        try:        # 480 SERVFAILs arrive at once: room for them (FORCE: as root)
            u.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 1 << 22)
        except OSError:
            u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        u.setblocking(False)
        for i in range(held):
            q = dns.message.make_query("h%d.hold.test" % i, "A", use_edns=False)
            q.id = i
            u.sendto(q.to_wire(), ("127.0.0.1", p.port))
        got = {}
        t0 = time.monotonic()
        k = 0

        def seen_held():
            return sum(1 for q in srv.all_queries() if q.name.endswith(".hold.test."))
        while time.monotonic() < t0 + 4 and (time.monotonic() < t0 + 1.2 or
                                             len(got) < seen_held()):
            k += 1
            name = "q%d.busy.test" % (2000 + k)
            assert_good(ask(p.port, name), name)       # progress on the connection
            time.sleep(0.05)
            while True:
                try:
                    r = dns.message.from_wire(u.recv(4096))
                except BlockingIOError:
                    break
                got[r.id] = r.rcode()
    finally:
        u.close()
    c = srv.conns[0]
    reserved = {q.id for q in c.queries if q.name.endswith(".hold.test.")}
    # loopback UDP may drop a few of the 480 datagrams: what counts is what reached the upstream
    assert len(reserved) >= 400, "only %d of %d held queries reached the upstream" % (
        len(reserved), held)
    assert len(got) >= 0.9 * len(reserved) and set(got.values()) == {SERVFAIL}, \
        "expected %d SERVFAIL, got %d answers: %s" % (len(reserved), len(got),
                                                      collections.Counter(got.values()))
    n = 0
    for rnd in range(70):
        names = ["q%d.after.test" % (3000 + n + j) for j in range(8)]
        for name, r in pipelined(p.port, names, first_id=n).items():
            assert_good(r, name)
        n += 8
    for b in range(25):
        names = ["q%d.after.test" % (3000 + n + j) for j in range(60)]
        for name, r in pipelined(p.port, names, first_id=n).items():
            assert_good(r, name)
        n += 60
    assert len(srv.conns) == 1, "reconnected: %d connections; the reservation is per " \
        "connection and cannot be judged\n%s" % (len(srv.conns), p.log())
    after = [q for q in c.queries if q.name.endswith(".after.test.")]
    assert len(after) == n, "upstream saw %d of %d queries" % (len(after), n)
    again = [q for q in after if q.id in reserved]
    assert not again, "%d queries after the timeouts got the ID of a timed-out query " \
        "(still reserved: its late answer could be taken for theirs): %s" % (
            len(again), again[:8])


def mismatch_handler(mismatch_names, follow=True, delay=0.3):
    """Answers normally, except names in mismatch_names: first an answer with
    the query's ID and the question other.test (203.0.113.68), then (follow)
    the real answer `delay` s later."""
    def handler(conn, q):
        if q.name.rstrip(".") in mismatch_names:
            conn.send_raw(build_answer(q.wire, addr=WRONG + "68", qname="other.test"))
            if not follow:
                return
            time.sleep(delay)
        conn.answer(q)
    return handler


def test_answer_to_another_question_dropped_query_waits(proxies, scripted):
    """-t 2000, one upstream. For q31/q32/q33.mm.test the upstream first sends
    an answer with the query's ID and the question other.test, then the real
    one 0.3 s later: each client (UDP, TCP, UDP) gets the real answer, not
    SERVFAIL; exactly one warn line for the three (rate-limited, naming the
    upstream). For q34.mm.test nothing follows the forged answer: SERVFAIL,
    but only at the timeout (>= 1.6 s), not at once. The connection keeps
    serving."""
    names = {"q31.mm.test", "q32.mm.test", "q33.mm.test", "q34.mm.test"}
    srv = scripted(handler=mismatch_handler(names - {"q34.mm.test"}))
    p = proxies.start(spec(srv.port), extra=["-t", "2000", "--cache-size", "0"])
    assert_good(ask(p.port, "q30.mm.test"), "q30.mm.test")
    for name, tcp in (("q31.mm.test", False), ("q32.mm.test", True), ("q33.mm.test", False)):
        t0 = time.monotonic()
        r = ask(p.port, name, tcp=tcp)
        dt = time.monotonic() - t0
        assert_good(r, name, "answer after a forged one (tcp=%s): " % tcp)
        assert dt < 1.5, "%s answered after %.2f s" % (name, dt)
    warns = warn_lines(p)
    assert len(warns) == 1, "expected one (rate-limited) warn line for 3 answers to another " \
        "question, got %d:\n%s" % (len(warns), p.log())
    assert str(srv.port) in warns[0], "the warn line does not name the upstream: %s" % warns[0]
    srv.handler = mismatch_handler({"q34.mm.test"}, follow=False)
    t0 = time.monotonic()
    r = ask(p.port, "q34.mm.test", timeout=5)
    dt = time.monotonic() - t0
    assert r.rcode() == SERVFAIL and not r.answer, "expected SERVFAIL, got %s" % r
    assert dt >= 1.6, "SERVFAIL %.2f s after a forged answer: the query must wait for -t " \
        "2000 (an attacker's one packet must not end it)" % dt
    assert_good(ask(p.port, "q35.mm.test"), "q35.mm.test", "after the forged answers: ")
    assert p.alive()


def test_answer_to_another_question_no_failover(proxies, scripted, fake_dot):
    """Two upstreams (-u A -u B), -t 2000: A answers q41..q43.fo.test first
    with the query's ID and another question, then correctly 0.3 s later.
    Every client gets a right answer (A's, or B's when the silence on A made
    dotproxy ask B too: a hedge, README "Slow is not dead"), and an answer to
    another question does not mark A as failed (else one forged packet would
    move all traffic): A stays preferred and on its one connection, and
    q44..q46, asked afterwards, all go to A and none to B."""
    names = {"q41.fo.test", "q42.fo.test", "q43.fo.test"}
    a = scripted(handler=mismatch_handler(names))
    b = fake_dot()
    p = proxies.start([spec(a.port), spec(b.port)], extra=["-t", "2000", "--cache-size", "0"])
    assert_good(ask(p.port, "q40.fo.test"), "q40.fo.test")
    for k, name in enumerate(sorted(names)):
        r = ask(p.port, name, tcp=bool(k == 1))
        assert_good(r, name, "with a second upstream: ")
    time.sleep(0.5)                 # A's real answers are in: no longer suspect
    b_before = b.queries
    for k in (44, 45, 46):
        assert_good(ask(p.port, "q%d.fo.test" % k), "q%d.fo.test" % k)
    got_a = sorted({q.name for q in a.all_queries()})
    assert b.queries == b_before, "failover to the second upstream after an answer to " \
        "another question: B saw %d more queries (A saw %s)\n%s" % (
            b.queries - b_before, got_a, p.log())
    assert {"q44.fo.test.", "q45.fo.test.", "q46.fo.test."} <= set(got_a), got_a
    assert not [l for l in p.log().splitlines() if "no answer" in l or "failed" in l], p.log()
    assert len(a.conns) == 1, "A was reconnected: %d connections\n%s" % (len(a.conns), p.log())


def test_answer_with_unknown_id_dropped(proxies, scripted):
    """An answer with an ID no query has (the real ID ^ 0x5555, 203.0.113.67)
    before the real one: dropped quietly (no warn line), the real answer is
    delivered, no reconnect."""
    def handler(conn, q):
        if q.name.startswith("q51."):
            conn.send_raw(build_answer(q.wire, addr=WRONG + "67", qid=q.id ^ 0x5555))
            time.sleep(0.2)
        conn.answer(q)

    srv = scripted(handler=handler)
    p = proxies.start(spec(srv.port), extra=["-t", "2000"])
    assert_good(ask(p.port, "q50.uid.test"), "q50.uid.test")
    assert_good(ask(p.port, "q51.uid.test"), "q51.uid.test")
    assert_good(ask(p.port, "q52.uid.test", tcp=True), "q52.uid.test")
    assert len(srv.conns) == 1, srv.conns
    assert not warn_lines(p), "warn line for an answer with an unknown ID:\n" + p.log()


# ---------------------------------------------------------------- forward zones (RFC 5452)

def zone_arg(zone, port):
    return ["--forward-zone", "%s=127.0.0.1@%d" % (zone, port)]


def test_forward_zone_source_ports_and_ids_random(proxies, fake_dot, plain_dns):
    """100 queries (distinct names) for z.test, a FakePlainDNS zone: they
    leave from >= 50 distinct source ports (random: ~100; today: one port
    for the life of the process) with >= 90 distinct IDs whose low 10 bits
    take >= 80 values (random: ~95) and whose consecutive differences are
    not a few steps (a counter). All answered with the zone's data."""
    z = plain_dns("z.test")
    f = fake_dot()
    p = proxies.start(spec(f.port), extra=zone_arg("z.test", z.port) + ["-t", "2000"])
    for k in range(100):
        r = ask(p.port, "h%d.z.test" % k)
        assert r.rcode() == NOERROR and a_addrs(r) == z.addrs(), r
    assert f.queries == 0
    q = [(src, struct.unpack("!H", w[:2])[0]) for t, w, src in z.queries if t == "udp"]
    assert len(q) == 100, "the zone server saw %d UDP queries" % len(q)
    ports = [src[1] for src, _ in q]
    ids = [i for _, i in q]
    info = "ports %s...; IDs %s..." % (sorted(set(ports))[:10],
                                       " ".join("%04x" % i for i in ids[:20]))
    assert all(src[0] == "127.0.0.1" for src, _ in q)
    assert len(set(ports)) >= 50, "100 zone queries came from %d source port(s): %s" % (
        len(set(ports)), info)
    assert len(set(ids)) >= 90, "only %d distinct IDs in 100 zone queries: %s" % (
        len(set(ids)), info)
    assert len({i & 0x3FF for i in ids}) >= 80, \
        "low 10 bits of zone IDs take %d values: %s" % (len({i & 0x3FF for i in ids}), info)
    steps = len({(b - a) & 0xFFFF for a, b in zip(ids, ids[1:])})
    assert steps >= 90, "consecutive zone IDs differ by %d distinct steps: %s" % (steps, info)


def test_forward_zone_spoofed_answers_never_delivered(proxies, fake_dot, plain_dns):
    """FakePlainDNS in spoof mode: before each real answer, one with the right
    ID and question from another port (the socket is connected: never read),
    one with a wrong ID, one with another question (all 203.0.113.x). 20
    queries over UDP and TCP clients: every one gets the zone's real data."""
    z = plain_dns("z.test", spoof=True)
    f = fake_dot()
    p = proxies.start(spec(f.port), extra=zone_arg("z.test", z.port) + ["-t", "2000"])
    for k in range(20):
        r = ask(p.port, "s%d.z.test" % k, tcp=bool(k % 2))
        assert not any(a.startswith(WRONG) for a in a_addrs(r)), \
            "a spoofed zone answer reached the client: %s" % r
        assert r.rcode() == NOERROR and a_addrs(r) == z.addrs(), \
            "s%d.z.test: expected %s, got %s" % (k, z.addrs(), r)
    assert z.udp == 20


class ZoneServer:
    """A UDP zone server whose handler(sock, wire, src) runs for each query."""

    def __init__(self, handler):
        self.handler = handler
        self.port = free_port()
        self.seen = []                  # (src port, id, name)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", self.port))
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self):
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([self.sock], [], [], 0.1)
                if not r:
                    continue
                wire, src = self.sock.recvfrom(65535)
            except (OSError, ValueError):
                return
            try:
                self.seen.append((src[1], struct.unpack("!H", wire[:2])[0],
                                  parse_question(wire)[0]))
                self.handler(self.sock, wire, src)
            except (OSError, IndexError, struct.error):
                pass

    def stop(self):
        self._stop.set()
        self._t.join(2)
        close_quietly(self.sock)


def zone_data(wire, addr):
    """A zone answer: the question copied, one A record `addr`."""
    return build_answer(wire, addr=addr)


def test_forward_zone_blind_flood_at_predicted_port(proxies, fake_dot):
    """An off-path attacker against a forward zone: it asks h1..h3.z.test
    itself and learns the source port and ID of each zone query (here: from
    the zone server's side). For h4.z.test it floods, with the zone server's
    own address and port as source (what a spoofer forges), 64 answers to
    h4's question (203.0.113.99) at the port the previous query used, with
    IDs ((k << 10) | (previous ID & 0x3FF)) for k in 0..63 (today's ID: a
    6-bit generation over a fixed slot ^ key), before the real answer
    (0.2 s later). The client gets the real data, 198.51.100.4."""
    def handler(sock, wire, src):
        name = parse_question(wire)[0]
        k = int(name.split(".")[0][1:])
        if name == "h4.z.test.":
            prev_port, prev_id, _ = zs.seen[-2]
            for g in range(64):
                sock.sendto(build_answer(wire, addr=WRONG + "99",
                                         qid=(g << 10) | (prev_id & 0x3FF)),
                            ("127.0.0.1", prev_port))
            time.sleep(0.2)
        sock.sendto(zone_data(wire, "198.51.100.%d" % k), src)

    zs = ZoneServer(handler)
    try:
        f = fake_dot()
        p = proxies.start(spec(f.port), extra=zone_arg("z.test", zs.port) + ["-t", "2000"])
        for k in (1, 2, 3):
            r = ask(p.port, "h%d.z.test" % k)
            assert a_addrs(r) == {"198.51.100.%d" % k}, r
        r = ask(p.port, "h4.z.test")
        assert not any(a.startswith(WRONG) for a in a_addrs(r)), \
            "a blind flood of 64 forged answers at the previous source port was accepted " \
            "(zone queries seen: %s): %s" % (zs.seen, r)
        assert r.rcode() == NOERROR and a_addrs(r) == {"198.51.100.4"}, r
    finally:
        zs.stop()


# ---------------------------------------------------------------- special-use names

SOA_RDATA = "localhost. nobody.invalid. 1 3600 1200 604800 10800"


def check_soa(r, zone):
    soas = [rr for rr in r.authority if rr.rdtype == dns.rdatatype.SOA]
    assert len(soas) == 1, "expected one SOA in the authority section, got %s" % r
    rr = soas[0]
    assert rr.name.to_text().lower() == zone and rr.ttl == 10800 and \
        [rd.to_text() for rd in rr] == [SOA_RDATA], \
        "expected '%s 10800 IN SOA %s', got '%s'" % (zone, SOA_RDATA, rr.to_text())


# (name, type, rcode, expected answer data or None, SOA zone or None)
SPECIAL = [
    ("localhost", "A", NOERROR, "127.0.0.1", None),
    ("LocalHost", "AAAA", NOERROR, "::1", None),
    ("sub.localhost", "A", NOERROR, "127.0.0.1", None),
    ("a.b.Sub.LOCALHOST", "AAAA", NOERROR, "::1", None),
    ("localhost", "MX", NOERROR, None, "localhost."),
    ("sub.localhost", "TXT", NOERROR, None, "localhost."),
    ("foo.invalid", "A", NXDOMAIN, None, "invalid."),
    ("invalid", "AAAA", NXDOMAIN, None, "invalid."),
    ("x.onion", "A", NXDOMAIN, None, "onion."),
    ("onion", "A", NXDOMAIN, None, "onion."),
    ("_dns.resolver.arpa", "SVCB", NOERROR, None, "resolver.arpa."),
    ("resolver.arpa", "A", NOERROR, None, "resolver.arpa."),
]


def special_proxy(proxies, fake_dot, plain_dns):
    """A proxy whose forward zones try to capture localhost and resolver.arpa."""
    f = fake_dot()
    zl = plain_dns("localhost")
    zr = plain_dns("resolver.arpa")
    zi = plain_dns("invalid")
    p = proxies.start(spec(f.port), extra=zone_arg("localhost", zl.port)
                      + zone_arg("resolver.arpa", zr.port) + zone_arg("invalid", zi.port)
                      + ["-t", "2000"])
    return p, f, (zl, zr, zi)


def assert_local(r, name, rdtype, rcode, data, soa, qid):
    what = "%s %s: " % (name, rdtype)
    assert r.id == qid, what + "ID %d, asked with %d" % (r.id, qid)
    assert r.rcode() == rcode, what + "expected %s, got %s\n%s" % (
        dns.rcode.to_text(rcode), dns.rcode.to_text(r.rcode()), r)
    assert r.question and r.question[0].name.to_text(omit_final_dot=True) == name, \
        what + "question %s (the client's spelling expected)" % r.question
    assert r.flags & dns.flags.AA, what + "AA not set on a local answer: %s" % r
    if data is not None:
        got = [(rr.ttl, rd.to_text()) for rr in r.answer for rd in rr]
        assert got == [(10800, data)], what + "expected [%r] with TTL 10800, got %r" % (data, got)
        assert r.answer[0].name.to_text().lower() == name.lower() + "."
    else:
        assert not r.answer, what + "expected no answer records: %s" % r
    if soa:
        check_soa(r, soa)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_special_use_names_answered_locally(proxies, fake_dot, plain_dns, tcp):
    """localhost. and below: A 127.0.0.1 / AAAA ::1 (TTL 10800, AA=1), other
    types NODATA with the localhost. SOA; invalid., onion. and below:
    NXDOMAIN with their SOA; resolver.arpa. (SVCB for _dns.resolver.arpa.,
    RFC 9462): NODATA with its SOA. Asked twice each (no cache hit counts),
    with the client's ID and spelling back. --forward-zone localhost,
    resolver.arpa and invalid do not capture them: neither the DoT upstream
    nor any zone server sees a single query."""
    p, f, zones = special_proxy(proxies, fake_dot, plain_dns)
    for rnd in range(2):
        for k, (name, rdtype, rcode, data, soa) in enumerate(SPECIAL):
            qid = 4000 + 100 * rnd + k
            r = ask(p.port, name, rdtype, tcp=tcp, qid=qid)
            assert_local(r, name, rdtype, rcode, data, soa, qid)
    leaked = [q.msg().question[0].to_text() for q in f.all_queries()]
    for z in zones:
        leaked += ["zone %s: %s" % (z.zone, n) for _, n in z.names()]
    assert not leaked, "special-use names were forwarded: %s" % leaked


def test_special_use_names_edns_and_other_classes(proxies, fake_dot, plain_dns):
    """A local answer to a query with an OPT carries an OPT (and the data);
    class CH for names in these zones (localhost, foo.invalid, x.onion,
    resolver.arpa) is REFUSED; nothing is forwarded."""
    p, f, zones = special_proxy(proxies, fake_dot, plain_dns)
    r = ask(p.port, "localhost", "A", edns=True, qid=77)
    assert_local(r, "localhost", "A", NOERROR, "127.0.0.1", None, 77)
    assert r.edns == 0, "no OPT in the answer to a query with one: %s" % r
    for k, name in enumerate(("localhost", "sub.localhost", "foo.invalid", "x.onion",
                              "resolver.arpa")):
        for tcp in (False, True):
            r = ask(p.port, name, "A", rdclass="CH", tcp=tcp, qid=300 + k)
            assert r.id == 300 + k and r.rcode() == REFUSED and not r.answer, \
                "%s CH A (tcp=%s): expected REFUSED, got %s\n%s" % (
                    name, tcp, dns.rcode.to_text(r.rcode()), r)
    leaked = [q.msg().question[0].to_text() for q in f.all_queries()]
    for z in zones:
        leaked += [n for _, n in z.names()]
    assert not leaked, "special-use names were forwarded: %s" % leaked


def test_special_use_lookalikes_forwarded(proxies, fake_dot, plain_dns):
    """Names that only look like the special zones are forwarded as usual
    (label-aligned matching): q61.localhostx, q62.xlocalhost, q63.invalid.test,
    q64.onion.test, q65.resolver.arpa.test, q66.arpa, q67.xresolver.arpa."""
    f = fake_dot()
    p = proxies.start(spec(f.port), extra=["-t", "2000"])
    names = ["q61.localhostx", "q62.xlocalhost", "q63.invalid.test", "q64.onion.test",
             "q65.resolver.arpa.test", "q66.arpa", "q67.xresolver.arpa"]
    for name in names:
        assert_good(ask(p.port, name), name)
    assert f.queries == len(names), f.queries


def dig(port, *args):
    cmd = ["dig", "@127.0.0.1", "-p", str(port), "+tries=1", "+time=3"] + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
    return r.stdout + r.stderr


def test_special_use_names_with_dig(proxies, fake_dot, plain_dns):
    """dig @127.0.0.1 -p PORT localhost (and AAAA over TCP, foo.invalid,
    _dns.resolver.arpa SVCB): status and data as specified, flag aa, nothing
    forwarded."""
    p, f, zones = special_proxy(proxies, fake_dot, plain_dns)
    out = dig(p.port, "localhost")
    assert "status: NOERROR" in out and "flags:" in out and \
        " aa" in out.split("flags:", 1)[1].split(";", 1)[0], "expected NOERROR, flag aa:\n" + out
    out = dig(p.port, "localhost", "+short")
    assert out.split() == ["127.0.0.1"], "dig localhost +short: expected 127.0.0.1, got %r" % out
    out = dig(p.port, "+tcp", "Sub.LocalHost", "AAAA", "+short")
    assert out.split() == ["::1"], "dig +tcp Sub.LocalHost AAAA: expected ::1, got %r" % out
    out = dig(p.port, "foo.invalid")
    assert "status: NXDOMAIN" in out and "nobody.invalid." in out, out
    out = dig(p.port, "_dns.resolver.arpa", "TYPE64")
    assert "status: NOERROR" in out and "ANSWER: 0" in out and "resolver.arpa." in out, out
    assert f.queries == 0 and not any(z.names() for z in zones), \
        "dig's queries were forwarded: %s" % [q.msg().question for q in f.all_queries()]


# ---------------------------------------------------------------- numbers

TWO32 = 1 << 32
TWO64 = 1 << 64
# value that overflows and, truncated to 32 or 64 bits, would be a valid one
NUMBERS = [
    ("--user", "4294967296"),                   # 2^32 -> uid 0 on 32-bit
    ("--user", "0:4294967296"),                 # gid 2^32 -> 0
    ("--user", "4294967296:0"),
    ("--user", str(TWO64)),                     # 2^64 -> 0 on 64-bit
    ("--user", "65534:%d" % (TWO64 + 65534)),
    ("--timeout", "4294967297"),                # -> 1: out of range even when wrapped
    ("--timeout", str(TWO32 + 1000)),           # -> 1000
    ("--timeout", str(TWO64 + 1000)),
    ("--idle-timeout", "18446744073709551617"),
    ("--idle-timeout", str(TWO32 + 5000)),
    ("--cache-size", "4294967296k"),
    ("--cache-size", "%dk" % (TWO32 + 64)),      # -> 64k
    ("--cache-size", str(TWO64 + 65536)),
    ("--cache-size", "%dm" % (TWO32 + 1)),
    ("--padding", "4294967424"),                # 2^32 + 128 -> 128
    ("--padding", "18446744073709551617"),
    ("--serve-stale", "99999999999999999999"),
    ("--serve-stale", str(TWO32 + 60)),
    ("--drain-timeout", str(TWO32 + 500)),
    ("--drain-timeout", str(TWO64 + 500)),
    ("--max-backoff", str(TWO32 + 1000)),
    ("--max-backoff", str(TWO64 + 1000)),
    ("--cache-min-ttl", str(TWO32 + 10)),
    ("--cache-min-ttl", str(TWO64 + 10)),
    ("--cache-max-ttl", str(TWO32 + 60)),
    ("--cache-max-ttl", str(TWO64 + 60)),
]


def number_args(opt, value):
    return ["-l", "127.0.0.1@%d" % free_port(), "-u", "127.0.0.1@1#dns.test", opt, value]


def check_rejected(res, value, what):
    assert res.returncode == 1, "%s: expected exit 1, got %r\nstderr: %s" % (
        what, res.returncode, res.stderr)
    assert value in res.stderr, "%s: the message does not name %s: %r" % (
        what, value, res.stderr)
    assert "ready" not in res.stderr and "running as" not in res.stderr, \
        "%s: started before rejecting the value: %r" % (what, res.stderr)


@pytest.mark.parametrize("opt,value", NUMBERS, ids=["%s=%s" % nv for nv in NUMBERS])
def test_numeric_option_overflow_rejected(dotproxy_bin, opt, value):
    """An overflowing value (one that wraps to a valid number on 32 or 64
    bits) exits 1 with "bad OPT 'VALUE'" before anything is bound."""
    res = run_dotproxy(dotproxy_bin, number_args(opt, value))
    check_rejected(res, value, "%s %s" % (opt, value))
    assert "bad %s '%s'" % (opt, value) in res.stderr, res.stderr


PORT_OVERFLOW = "4294967349"        # 53 + 2^32
PORT_OVERFLOW64 = str(TWO64 + 853)
PORTS = [
    (["-l", "127.0.0.1@" + PORT_OVERFLOW], PORT_OVERFLOW),
    (["-l", "[::1]:" + PORT_OVERFLOW], PORT_OVERFLOW),
    (["-l", "127.0.0.1:" + PORT_OVERFLOW], PORT_OVERFLOW),
    (["-u", "127.0.0.1@%s#dns.test" % PORT_OVERFLOW], PORT_OVERFLOW),
    (["-u", "127.0.0.1@%s#dns.test" % PORT_OVERFLOW64], PORT_OVERFLOW64),
    (["--forward-zone", "z.test=127.0.0.1@" + PORT_OVERFLOW], PORT_OVERFLOW),
]


@pytest.mark.parametrize("args,value", PORTS, ids=[" ".join(a) for a, _ in PORTS])
def test_port_overflow_rejected(dotproxy_bin, args, value):
    """A listen, upstream or zone port of 53 + 2^32 (or 853 + 2^64) is
    rejected, exit 1, naming it; never taken for port 53 / 853."""
    base = []
    if args[0] != "-l":
        base += ["-l", "127.0.0.1@%d" % free_port()]
    if args[0] != "-u":
        base += ["-u", "127.0.0.1@1#dns.test"]
    res = run_dotproxy(dotproxy_bin, base + args)
    check_rejected(res, value, " ".join(args))
