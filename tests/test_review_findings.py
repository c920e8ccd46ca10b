"""Proof-of-concept tests for the findings of a security review of the issue #9
rewrite of dotproxy.c (an attacker on the upstream path, a hostile or flapping
resolver, hostile clients).

Every test asserts the SECURE behaviour, so it FAILS while the bug it names is
still there.  All traffic stays on 127.0.0.1 (the upstreams are local fake
servers; dotproxy always gets an explicit loopback -u and -l).

Findings covered, most severe first (test name in brackets):
  1. close_notify during the handshake is taken for an orderly close: no backoff,
     no failover, an immediate reconnect storm (thousands of connections a
     second) for as long as a query waits
     [test_close_notify_during_handshake_backs_off_and_fails_over].
  2. A TLS session saved while certificates were checked against the build
     time (clock behind) is still resumed after the clock is set, so the
     certificate is never checked against the real time; sessions never age
     [test_session_from_clock_behind_not_resumed_after_clock_set].
  3. An upstream answer of 65,525..65,535 bytes without an OPT grows past 65,535
     when dotproxy adds its OPT: the TCP length prefix wraps and the client's
     stream is desynchronised (the tail of the answer is read as further frames)
     [test_tcp_answer_never_longer_than_65535].
  4. The TC=1 form of a UDP answer keeps the upstream's whole OPT: a big Extended
     DNS Error makes it larger than the client's EDNS size (up to ~64 KB)
     [test_udp_tc_answer_within_client_size_despite_big_ede].
  5. Trailing bytes after the last record of an answer without an OPT: the OPT
     dotproxy appends lands after the junk; the client gets a bogus additional
     record and no OPT, or SERVFAIL, and the entry is cached
     [test_answer_with_trailing_bytes_and_no_opt].
  6. A connected upstream that sends bytes but no answer (here: answers with
     unknown IDs) is never taken for stalled: queries time out one by one, no
     failover [test_upstream_sending_only_junk_is_failed_over].
  7. An oversized UDP datagram (> 4,096 bytes) from a client outside --allow gets
     a TC=1 answer instead of REFUSED: the ACL is not applied on that path
     [test_oversized_udp_from_outside_allow_is_refused].
"""

import os
import shutil
import socket
import struct
import subprocess
import threading
import time

import dns.rcode
import pytest

import helpers
from helpers import (a_addrs, close_quietly, fake_addr_for, free_port, query_udp, recv_exact,
                     tcp_connect, tcp_frame, udp_exchange)
from scriptdot import (TC, Wire, a_of, exchange, query_wire, reply, rr, scripted_factory)

SERVFAIL = dns.rcode.SERVFAIL


def spec(port):
    return "127.0.0.1@%d#dns.test" % port


@pytest.fixture
def scripted(pki):
    yield from scripted_factory(pki)


# ---------------------------------------------------------------- 1. close_notify mid-handshake

class CloseNotifyServer:
    """A TCP server that answers every ClientHello with a plaintext TLS alert
    close_notify (warning, 0) and closes: what an on-path attacker (no key
    needed) or a broken/flapping resolver can do. Counts connections."""

    def __init__(self):
        self.port = free_port()
        self.accepted = 0
        self._stop = threading.Event()
        self._ls = socket.socket()
        self._ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._ls.bind(("127.0.0.1", self.port))
        self._ls.listen(512)
        self._ls.settimeout(0.1)
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self):
        while not self._stop.is_set():
            try:
                c, _ = self._ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted += 1
            try:
                c.settimeout(1)
                c.recv(4096)                                   # the ClientHello
                c.sendall(bytes([21, 3, 3, 0, 2, 1, 0]))       # alert: warning close_notify
                c.recv(4096)                                   # the client's close_notify
            except OSError:
                pass
            close_quietly(c)

    def stop(self):
        self._stop.set()
        self._t.join(2)
        close_quietly(self._ls)


@pytest.fixture
def close_notify_server():
    s = CloseNotifyServer()
    yield s
    s.stop()


def test_close_notify_during_handshake_backs_off_and_fails_over(proxies, fake_dot,
                                                                 close_notify_server):
    """The first upstream answers each ClientHello with close_notify (no key, no
    certificate: any on-path attacker can send it; so can a resolver that is
    going down).  BearSSL ends the engine with BR_ERR_OK; upstream_pump() takes
    that for an orderly close (upstream_server_closed -> upstream_closed), which
    is neither a failure (no backoff, no warn line, no failover) and, with a
    query queued, reconnects AT ONCE: a reconnect storm for as long as the query
    waits, and the good second upstream is never used.
    Secure: a handshake that does not complete is a failure like any other (the
    upstream backs off, the query goes to the next upstream and is answered, a
    warn line names the upstream), and the first upstream sees a handful of
    connections, not thousands."""
    good = fake_dot()
    bad = close_notify_server
    p = proxies.start([spec(bad.port), spec(good.port)], extra=["-t", "2000"])
    before = bad.accepted
    t0 = time.monotonic()
    got = None
    try:
        r = udp_exchange(p.port, query_wire("q7.storm.test"), timeout=3)
        got = Wire(r) if r else None
    finally:
        elapsed = time.monotonic() - t0
    n = bad.accepted - before
    assert n < 50, ("%d connections to the close_notify upstream in %.1f s for one query: "
                    "a handshake ended by close_notify is not a failure (no backoff)" % (n, elapsed))
    assert got is not None and a_of(got) == {fake_addr_for("q7.storm.test")}, (
        "the query was not answered by the good second upstream (no failover): %s"
        % (got.describe() if got else "no answer"))
    assert p.wait_for("upstream 127.0.0.1:%d" % bad.port, 1), (
        "no log line names the upstream whose handshakes fail:\n" + p.log())


# ---------------------------------------------------------------- 3. TCP length prefix wraps

def big_answer_no_opt(q, total):
    """An answer to Wire q of exactly `total` bytes, without an OPT: TXT records
    (the data any domain owner controls) for the asked name."""
    hdr_q = 12 + len(q.qbytes)
    recs, an = b"", 0
    rec_fixed = 2 + 10 + 1          # pointer, type..rdlength, one string length byte
    left = total - hdr_q
    while left > 0:
        n = min(255, left - rec_fixed)
        if n < 0:
            raise ValueError("cannot pad to %d" % total)
        if left - (rec_fixed + n) in range(1, rec_fixed):
            n -= rec_fixed           # leave room for one more whole record
        data = bytes([n]) + b"A" * n
        recs += b"\xc0\x0c" + struct.pack("!HHIH", 16, 1, 300, len(data)) + data
        an += 1
        left -= rec_fixed + n
    flags = 0x8000 | (q.flags & 0x0110) | 0x0080
    w = struct.pack("!HHHHHH", q.id, flags, 1, an, 0, 0) + q.qbytes + recs
    assert len(w) == total, len(w)
    return w


def test_tcp_answer_never_longer_than_65535(proxies, scripted):
    """The upstream answers with 65,530 bytes and no OPT (a server that drops
    EDNS; or a forward-zone server).  The client asked over TCP with an OPT, so
    dns_prepare_answer() appends one (query_deliver's buffer is MSG_MAX_BYTES +
    DNS_OPT_BYTES, cap = sizeof msg): 65,541 bytes, and client_send_frame()
    writes put16(65541) = 5 as the length prefix, then all 65,541 bytes.  The
    client reads a 5-byte "message" and then the answer's own bytes (TXT data
    chosen by whoever owns the name) as further frames: a framing desync that
    lets answer content pose as answers to the client's other queries.
    Secure: the frame's length prefix equals the length of a whole, parseable
    DNS message with the client's ID (e.g. no OPT added when it would not fit,
    or SERVFAIL/TC), and nothing follows it."""
    def script(q, f):
        if q.qname.lower().startswith("big."):
            return big_answer_no_opt(q, 65530)
        return reply(q, answer=[rr(q.qname, 60, "A", "192.0.2.1")])
    f = scripted(script)
    p = proxies.start(spec(f.port), extra=["-t", "3000"])
    s = tcp_connect(p.port, timeout=5)
    try:
        s.sendall(tcp_frame(query_wire("big.wrap.test", qid=0x4242, edns=True, payload=1232)))
        (n,) = struct.unpack("!H", recv_exact(s, 2))
        body = recv_exact(s, n)
        assert n >= 12, ("length prefix %d: the answer's length wrapped past 65,535 "
                         "(its bytes follow as garbage frames)" % n)
        w = Wire(body)
        assert w.id == 0x4242, w.describe()
        s.settimeout(1.0)
        try:
            extra = s.recv(65536)
        except socket.timeout:
            extra = b""
        assert extra == b"", ("%d bytes after the answer frame: the client would parse them "
                              "as more answers" % len(extra))
    finally:
        close_quietly(s)
    assert not f.errors, f.errors


# ---------------------------------------------------------------- 5. trailing junk, no OPT

def test_answer_with_trailing_bytes_and_no_opt(proxies, scripted):
    """An upstream answer without OPT followed by 3 stray bytes (legal to ignore:
    RFC 1035 parsers stop after the counted records).  dns_prepare_answer()
    appends its OPT at `len`, i.e. AFTER the stray bytes, and bumps ARCOUNT; the
    counted "additional record" now starts in the junk.  With these 3 zero bytes
    the client gets an additional record of TYPE 0 made of the junk and the first
    bytes of dotproxy's OPT, and no OPT although it sent one; other junk makes the
    message malformed (SERVFAIL); either way the entry is cached (the TTL was
    taken before).  Secure: the stray bytes are dropped (len = s.end before the
    OPT is added) and the client gets the A record with an OPT."""
    def script(q, f):
        return reply(q, answer=[rr(q.qname, 300, "A", "192.0.2.77")], opt=False) + b"\x00\x00\x00"
    f = scripted(script)
    p = proxies.start(spec(f.port), extra=["-t", "1500"])
    for tcp in (False, True):
        r = exchange(p.port, query_wire("junk.tail.test", edns=True), tcp=tcp)
        assert r.rcode == 0 and a_of(r) == {"192.0.2.77"}, (
            "answer with 3 trailing bytes and no OPT: %s" % r.describe())
        assert r.opt is not None and r.trailing == b"", r.describe()
    assert not f.errors, f.errors


# ---------------------------------------------------------------- 4. UDP size vs the OPT

def test_udp_tc_answer_within_client_size_despite_big_ede(proxies, scripted):
    """The upstream's answer does not fit the client's UDP size (EDNS 1232) and
    its OPT carries a 1,500-byte Extended DNS Error (EXTRA-TEXT is free text;
    resolvers put names and reasons in it).  dns_truncate() takes the TC=1 path
    and keeps the whole OPT (`memcpy(m + w, opt, optlen)`): the "minimal" TC
    answer is header + question + 1,500 bytes of EDE, larger than the 1,232
    bytes the client takes (and than what dotproxy now caps UDP answers at:
    the cap added to dns_parse_query during this review only bounds the
    limit, not what the TC form carries).  An EDE of 60 KB gives a 60 KB
    datagram.  Secure: every UDP answer fits the client's size (EDE options
    that do not fit are dropped)."""
    from scriptdot import EDE, generic

    def script(q, f):
        recs = [rr(q.qname, 60, "TXT", *['"%s"' % ("%03d" % i + "x" * 200) for i in range(20)])]
        return reply(q, answer=recs, opt=True,
                     options=[generic(EDE, b"\x00\x16" + b"e" * 1500)])
    f = scripted(script)
    p = proxies.start(spec(f.port), extra=["-t", "3000"])
    raw = udp_exchange(p.port, query_wire("bigede.udp.test", qid=0x5151, rdtype=16, edns=True,
                                          payload=1232), timeout=4)
    assert raw is not None, "no UDP answer"
    w = Wire(raw)
    assert w.id == 0x5151 and w.flag(TC), w.describe()
    assert len(raw) <= 1232, ("TC=1 answer of %d bytes to a client that takes 1,232: %s"
                              % (len(raw), w.describe()))
    assert not f.errors, f.errors


# ---------------------------------------------------------------- 7. ACL on oversized datagrams

def test_oversized_udp_from_outside_allow_is_refused(proxies, fake_dot):
    """--allow 10.0.0.0/8 (so 127.0.0.1 is outside it).  A normal query from
    127.0.0.1 gets REFUSED; a 5,000-byte datagram goes through
    query_receive_oversized(), which never calls acl_allowed(), and gets a
    TC=1 answer, inviting the client to TCP, where it is refused.  Small, and
    no amplification (the answer is shorter than the query), but the access
    list is not applied on that path.  Secure: REFUSED there too (or nothing)."""
    f = fake_dot()
    p = proxies.start(spec(f.port), extra=["--allow", "10.0.0.0/8"])
    r = Wire(udp_exchange(p.port, query_wire("q1.acl.test", qid=1), timeout=3))
    assert r.rcode == dns.rcode.REFUSED, r.describe()
    pad = b"\x00" * 5000
    q = query_wire("q2.acl.test", qid=2, edns=True, extra_additional=b"", tail=b"")
    raw = udp_exchange(p.port, q + pad, timeout=3)
    if raw is not None:
        w = Wire(raw)
        assert w.rcode == dns.rcode.REFUSED and not w.flag(TC), (
            "a client outside --allow got an answer other than REFUSED: %s" % w.describe())


# ---------------------------------------------------------------- 6. bytes are not answers

def test_upstream_sending_only_junk_is_failed_over(proxies, scripted, fake_dot):
    """The first upstream completes its handshake and then answers every query
    with a message whose ID is unknown (a broken resolver, or one that lost
    track of its IDs), repeatedly.  Each such message counts as progress
    (upstream_on_readable sets progress_ms on any bytes), so the connection is
    never taken for stalled, the upstream is never marked as failed, and every
    query times out with SERVFAIL while a good second upstream sits idle.
    Secure: a connection that delivers no answer to any query for the stall
    time is dead (progress = an answer matched, not bytes read), and later
    queries are answered by the second upstream."""
    def script(q, f):
        w = bytearray(reply(q, answer=[rr(q.qname, 60, "A", "6.6.6.6")]))
        struct.pack_into("!H", w, 0, q.id ^ 0x8001)         # never the asked ID
        return bytes(w)

    junk = scripted(script)
    good = fake_dot()
    p = proxies.start([spec(junk.port), spec(good.port)], extra=["-t", "1500"])

    stop = threading.Event()

    def keep_asking():
        # queries keep arriving, as on any network: each one makes the junk
        # upstream send a junk message, which keeps the connection "alive"
        i = 0
        while not stop.is_set():
            udp_exchange(p.port, query_wire("bg%d.junk.test" % i), timeout=0.3)
            i += 1
    t = threading.Thread(target=keep_asking, daemon=True)
    t.start()
    try:
        time.sleep(4.0)
        answered = 0
        for k in range(5):
            raw = udp_exchange(p.port, query_wire("q%d.junk.test" % (20 + k)), timeout=2)
            if raw is not None and a_of(Wire(raw)) == {fake_addr_for("q%d.x" % (20 + k))}:
                answered += 1
    finally:
        stop.set()
        t.join(3)
    assert answered >= 3, ("after 4 s of answers with unknown IDs from the first upstream, "
                           "only %d of 5 queries were answered by the good second upstream "
                           "(no failover)" % answered)


# ---------------------------------------------------------------- 2. sessions outlive the clock rule

TIME_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
/* time(): the number in $REVIEW_FAKE_TIME_FILE when it is not 0, else the real time */
time_t time(time_t *t)
{
	static time_t (*real)(time_t *);
	const char *path = getenv("REVIEW_FAKE_TIME_FILE");
	long long v = 0;
	time_t r;
	FILE *f;

	if (!real)
		real = (time_t (*)(time_t *))dlsym(RTLD_NEXT, "time");
	if (path && (f = fopen(path, "r")) != NULL) {
		if (fscanf(f, "%lld", &v) != 1)
			v = 0;
		fclose(f);
	}
	r = v ? (time_t)v : real(NULL);
	if (t)
		*t = r;
	return r;
}
"""


@pytest.fixture(scope="module")
def clock_kit(tmp_path_factory):
    """A glibc build of dotproxy with DOTPROXY_BUILD_EPOCH = now + 30 days (so the real
    clock is 'behind' and certificates are checked against the build time), and an
    LD_PRELOAD shim whose time() can be moved by writing a file."""
    gcc = shutil.which("gcc")
    host_lib = os.path.join(helpers.REPO, "bearssl", "build", "host", "libbearssl.a")
    if not gcc or not os.path.exists(host_lib):
        pytest.skip("needs gcc and the host BearSSL build (make)")
    d = tmp_path_factory.mktemp("clockkit")
    shim_c = d / "timeshim.c"
    shim_c.write_text(TIME_SHIM)
    shim = str(d / "timeshim.so")
    subprocess.run([gcc, "-shared", "-fPIC", "-O1", "-o", shim, str(shim_c), "-ldl"], check=True)
    binary = str(d / "dotproxy-epoch-plus30d")
    epoch = int(time.time()) + 30 * 86400
    subprocess.run([gcc, "-O1", "-std=c99", '-DDOTPROXY_VERSION="review-clock"',
                    "-DDOTPROXY_BUILD_EPOCH=%d" % epoch,
                    "-I" + os.path.join(helpers.REPO, "bearssl", "inc"), "-o", binary,
                    os.path.join(helpers.REPO, "dotproxy.c"), host_lib], check=True)

    class K:
        pass
    K.shim, K.binary, K.dir = shim, binary, str(d)
    return K


def test_session_from_clock_behind_not_resumed_after_clock_set(proxies, fake_dot, clock_kit,
                                                               tmp_path):
    """Boot with the clock behind the build time: the test leaf (valid 365 days) is
    checked against the build time (now + 30 days) and accepted, and the session is
    saved.  Then the clock is set, to now + 400 days: the leaf has expired, and a full
    handshake is refused (BR_ERR_X509_EXPIRED; trust_set_time logs "system clock
    set").  But upstream_connect() still offers the saved session, the server resumes
    it, no certificate is looked at, and the answer is taken: whoever held that
    expired certificate's key at boot (the very case the clock rule warns about: "a
    certificate that expired before the build" is refused, one that expired since is
    not) stays trusted for as long as it keeps resuming, i.e. forever (sessions never
    age; the same holds with a correct clock for a session made before the
    certificate expired).  Secure: when the clock goes from behind to set (and,
    better, after a bounded session age) the saved session is forgotten, so the next
    connection does a full handshake and the expired certificate is refused: the
    second query gets SERVFAIL and the server sees no resumption."""
    fake = fake_dot()
    clock = tmp_path / "faketime"
    clock.write_text("0\n")                      # real time: behind the build time
    env = {"LD_PRELOAD": clock_kit.shim, "REVIEW_FAKE_TIME_FILE": str(clock)}
    p = proxies.start(spec(fake.port), binary=clock_kit.binary, env=env,
                      extra=["-t", "1500", "--idle-timeout", "300"])
    assert a_addrs(query_udp(p.port, "q31.clock.test")) == {"192.0.2.31"}, p.log()
    assert p.wait_for("system clock is before", 2), p.log()
    # the idle close (300 ms), then the clock is set: 400 days from now
    assert helpers.wait_until(lambda: fake.conns and fake.conns[0].closed.is_set(), 5), \
        fake.conns
    clock.write_text("%d\n" % (int(time.time()) + 400 * 86400))
    r = query_udp(p.port, "q32.clock.test", timeout=5)
    reused = [c.session_reused for c in fake.conns]
    assert r.rcode() == SERVFAIL and not a_addrs(r), (
        "after the clock was set (the leaf has expired by it), the query was answered over "
        "a resumed session from the clock-behind boot: connections %r\n%s" % (reused, p.log()))
    # later handshakes: full ones (False) or refused by the proxy (None), never resumed
    assert True not in reused[1:], reused
