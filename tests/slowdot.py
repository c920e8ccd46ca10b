"""SlowDoT: a scriptable DoT server whose answers are scheduled, not serialized.

Moved here from test_review_availability.py (which imports it back) so that other modules
(test_latency.py) can share it.  Each query is answered delay(name) seconds after it
arrived, independently of the others, so one slow name never holds back the rest of a
connection (unlike helpers.FakeDoT, which answers in order, one at a time).

delay(name) -> seconds, None (never answer), or ("close", s): end the connection
    (close_notify + FIN) s seconds after this query came, without answering it (every
    query still in flight on that connection is lost with it).  name is lower case with
    the final dot.
answer(wire, srv) -> bytes or None: the answer to a raw query (default answer_for: A
    fake_addr_for(name), TTL 60).  None: no answer.
hs_delay: seconds between accept() and the handshake.
close_after: after that many answers on a connection, close_notify + FIN.
rst_on_close_notify: when the client's close_notify arrives, reset the connection
    (SO_LINGER 0), as some load balancers do.

Records: .conns (SConn per accepted connection), .names {name: queries received},
.answered {name: answers sent}, .wires [(time, raw query)].  Everything listens on
127.0.0.1 only.
"""

import heapq
import select
import socket
import ssl
import struct
import threading
import time

import dns.message
import dns.rrset
import pytest

from helpers import close_quietly, fake_addr_for, free_port, tcp_frame, wait_until

CLOSE = object()            # a scheduled close in a connection's heap of answers


def answer_for(wire, srv=None):
    """The default answer: A fake_addr_for(name) (qK.x -> 192.0.2.K), TTL 60."""
    q = dns.message.from_wire(wire)
    r = dns.message.make_response(q)
    name = q.question[0].name
    r.answer.append(dns.rrset.from_text(name, 60, "IN", "A", fake_addr_for(name)))
    return r.to_wire()


class SConn:
    def __init__(self, index, peer):
        self.index = index
        self.peer = peer
        self.accepted_at = time.monotonic()
        self.handshake_at = None
        self.queries = []           # (time, name)
        self.answers = 0
        self.end = None             # how it ended

    def __repr__(self):
        return "SConn(#%d port=%d queries=%d answers=%d end=%r)" % (
            self.index, self.peer[1], len(self.queries), self.answers, self.end)


class SlowDoT:
    """A DoT server (TLS 1.2, Python ssl over memory BIOs) whose answers are scheduled,
    not serialized: each query is answered delay(name) seconds after it arrived (None:
    never; ("close", s): the connection ends s seconds later instead).  See the module
    docstring for the other knobs and records."""

    def __init__(self, chain, key, delay=None, hs_delay=0.0, close_after=None,
                 rst_on_close_notify=False, port=None, answer=None):
        self.delay = delay or (lambda name: 0.0)
        self.answer = answer or answer_for
        self.hs_delay = hs_delay
        self.close_after = close_after
        self.rst_on_close_notify = rst_on_close_notify
        self.port = port or free_port()
        self.conns = []
        self.names = {}
        self.answered = {}
        self.wires = []
        self.errors = []            # exceptions raised by answer() (a test asserts none)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(chain, key)
        ctx.set_alpn_protocols(["dot"])
        ctx.options &= ~getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
        self.ctx = ctx
        self._ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._ls.bind(("127.0.0.1", self.port))
        self._ls.listen(256)
        self._socks = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def count(self, name):
        """Queries received for name (lower case, final dot)."""
        with self._lock:
            return self.names.get(name, 0)

    def answered_count(self, name):
        with self._lock:
            return self.answered.get(name, 0)

    def total(self):
        """Queries received, all names."""
        with self._lock:
            return sum(self.names.values())

    def answers(self):
        with self._lock:
            return sum(c.answers for c in self.conns)

    def wait_count(self, name, n, timeout):
        return wait_until(lambda: self.count(name) >= n, timeout, 0.01)

    def _accept(self):
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([self._ls], [], [], 0.1)
                if not r:
                    continue
                c, peer = self._ls.accept()
            except (OSError, ValueError):
                return
            with self._lock:
                rec = SConn(len(self.conns), peer)
                self.conns.append(rec)
                self._socks.append(c)
            t = threading.Thread(target=self._serve, args=(c, rec), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, raw, rec):
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.ctx.wrap_bio(inc, out, server_side=True)

        def flush():
            data = out.read()
            if data:
                raw.sendall(data)
        try:
            if self._stop.wait(self.hs_delay):
                return
            raw.settimeout(5)
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    flush()
                    d = raw.recv(65536)
                    if not d:
                        raise EOFError
                    inc.write(d)
            flush()
            rec.handshake_at = time.monotonic()
            rec.end = self._session(raw, tls, inc, flush, rec)
        except (OSError, ssl.SSLError, EOFError, ValueError) as e:
            rec.end = rec.end or "error %r" % (e,)
        finally:
            close_quietly(raw)

    def _close(self, raw, tls, flush):
        """close_notify, FIN, then read until the client closes too."""
        try:
            tls.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError):
            pass
        flush()
        raw.shutdown(socket.SHUT_WR)
        raw.settimeout(3)
        try:
            while raw.recv(65536):
                pass
        except OSError:
            pass

    def _session(self, raw, tls, inc, flush, rec):
        due = []                    # (when, seq, (name, answer) or CLOSE)
        seq = 0
        first = True
        buf = b""
        while not self._stop.is_set():
            now = time.monotonic()
            while due and due[0][0] <= now:
                _, _, item = heapq.heappop(due)
                if item is CLOSE:
                    self._close(raw, tls, flush)
                    return "closed by the script"
                name, ans = item
                with self._lock:    # counted before the client can see it
                    rec.answers += 1
                    self.answered[name] = self.answered.get(name, 0) + 1
                tls.write(tcp_frame(ans))
                flush()
                if self.close_after is not None and rec.answers >= self.close_after:
                    self._close(raw, tls, flush)
                    return "closed after %d answers" % rec.answers
            if not first:           # a query may have come with the client's Finished
                wait = min(0.05, max(0.0, due[0][0] - now)) if due else 0.05
                r, _, _ = select.select([raw], [], [], wait)
                if not r:
                    continue
                try:
                    d = raw.recv(65536)
                except ConnectionResetError:
                    return "reset by the client"
                if not d:
                    return "eof"
                inc.write(d)
            first = False
            while True:
                try:
                    chunk = tls.read(65536)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    chunk = b""
                if not chunk:           # the client's close_notify (read() gives b"")
                    if self.rst_on_close_notify:
                        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
                        raw.close()
                        return "reset on the client's close_notify"
                    try:
                        tls.unwrap()
                    except (ssl.SSLWantReadError, ssl.SSLError):
                        pass
                    flush()
                    return "close_notify"
                buf += chunk
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                n = struct.unpack("!H", buf[:2])[0]
                wire, buf = buf[2:2 + n], buf[2 + n:]
                name = dns.message.from_wire(wire).question[0].name.to_text().lower()
                t = time.monotonic()
                with self._lock:
                    rec.queries.append((t, name))
                    self.names[name] = self.names.get(name, 0) + 1
                    self.wires.append((t, wire))
                dl = self.delay(name)
                if dl is None:
                    continue
                seq += 1
                if isinstance(dl, tuple) and dl[0] == "close":
                    heapq.heappush(due, (t + dl[1], seq, CLOSE))
                    continue
                try:
                    ans = self.answer(wire, self)
                except Exception as e:  # noqa: BLE001 - reported by the test
                    with self._lock:
                        self.errors.append(repr(e))
                    continue
                if ans is not None:
                    heapq.heappush(due, (t + dl, seq, (name, ans)))
        return "stopped"

    def stop(self):
        self._stop.set()
        close_quietly(self._ls)
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            close_quietly(s)
        for t in self._threads:
            t.join(2)


@pytest.fixture
def slow_dot(pki):
    """Factory: make(**SlowDoT kw) -> a started SlowDoT; all stopped in teardown."""
    made = []

    def make(**kw):
        s = SlowDoT(pki.chain, pki.key, **kw)
        made.append(s)
        return s
    yield make
    for s in made:
        s.stop()
