"""The upstream engine: pipelining with out-of-order answers, batching into
TLS records, EDNS padding, ALPN, session resumption, idle timeout, failover
between upstreams, stalled upstreams, all upstreams down, the in-flight bound,
and the options that control them.

The scripted upstream is helpers.FakeDoT: it answers `qK.<anything>` with
A 192.0.2.K, so a query matched to the wrong answer shows, and records every
connection (helpers.FakeConn: session_reused, ALPN, raw queries, how it was
closed)."""

import socket
import ssl
import threading
import time

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import pytest

from helpers import (TlsRecordRelay, a_addrs, fake_addr_for, free_port, make_query, query_tcp,
                     query_udp, run_dotproxy, tcp_connect, tcp_frame, tcp_recv_msg, tcp_send_msg,
                     wait_until)

NOERROR = dns.rcode.NOERROR
SERVFAIL = dns.rcode.SERVFAIL
PADDING = dns.edns.PADDING    # option code 12


# ---------------------------------------------------------------- helpers

def spec(port):
    return "127.0.0.1@%d#dns.test" % port


def label(port):
    """How dotproxy names an upstream in its log: "127.0.0.1:PORT (dns.test)"."""
    return "127.0.0.1:%d " % port


def warn_lines(p):
    return [l for l in p.log().splitlines() if ": warn: " in l]


def assert_answer(r, name, client_id=None):
    """NOERROR, the question asked (case included) and the A data FakeDoT
    derives from the name."""
    assert r.rcode() == NOERROR, "%s: %s %s" % (name, dns.rcode.to_text(r.rcode()), r)
    assert [q.name.to_text(omit_final_dot=True) for q in r.question] == [name], r.question
    assert a_addrs(r) == {fake_addr_for(name)}, "%s got %s" % (name, a_addrs(r))
    if client_id is not None:
        assert r.id == client_id


def upstream_query(fake, name):
    """The (last) raw query the fake received for `name` (case-insensitive)."""
    want = dns.name.from_text(name)
    hits = [q for q in fake.all_queries() if q.msg().question[0].name == want]
    assert hits, "the upstream never saw %s (saw %d queries)" % (name, fake.queries)
    return hits[-1]


def opt_options(msg, code):
    return [o for o in msg.options if o.otype == code]


def timed(fn, *a, **kw):
    t0 = time.monotonic()
    r = fn(*a, **kw)
    return r, time.monotonic() - t0


# ---------------------------------------------------------------- 0. the fake itself

def tls_client_ctx(pki):
    ctx = ssl.create_default_context(cafile=pki.root)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["dot"])
    return ctx


def tls_client(port, ctx, session=None):
    raw = socket.create_connection(("127.0.0.1", port), timeout=3)
    s = ctx.wrap_socket(raw, server_hostname="dns.test", session=session)
    s.settimeout(3)
    return s


def test_fake_dot_records_and_modes(fake_dot, relays, pki):
    """FakeDoT (checked with a Python TLS client, through a TlsRecordRelay):
    reverse_batch, name-derived A data, question case kept, OPT echoed with
    padding, ALPN / session_reused / close kind recorded per connection."""
    f = fake_dot(reverse_batch=4, pad_answers=True)
    relay = relays(("127.0.0.1", f.port), cls=TlsRecordRelay)
    ctx = tls_client_ctx(pki)
    s = tls_client(relay.port, ctx)
    buf = b""
    for k in range(4):
        w = make_query("Q%d.BeNch" % k, qid=70 + k, use_edns=bool(k % 2)).to_wire()
        buf += tcp_frame(w)
    s.sendall(buf)
    got = [dns.message.from_wire(tcp_recv_msg(s)) for _ in range(4)]
    assert [r.id for r in got] == [73, 72, 71, 70]
    for r in got:
        k = r.id - 70
        assert str(r.question[0].name) == "Q%d.BeNch." % k
        assert a_addrs(r) == {"192.0.2.%d" % k}
        assert (r.edns == 0) == bool(k % 2)
        assert bool(opt_options(r, PADDING)) == bool(k % 2)
    sess = s.session
    s.unwrap()
    s.close()
    assert relay.app_records() == 1      # the 4 queries went in one record
    s = tls_client(f.port, ctx, session=sess)
    tcp_send_msg(s, make_query("q300.x").to_wire())
    s.close()                            # no close_notify
    assert f.wait_queries(5, 3)
    assert wait_until(lambda: all(c.closed.is_set() for c in f.conns), 3, 0.05)
    c0, c1 = f.conns
    assert (c0.session_reused, c1.session_reused) == (False, True)
    assert c0.alpn == c1.alpn == "dot"
    assert c0.close_kind == "close_notify" and c1.close_kind == "eof", f.conns
    assert c0.ids == [70, 71, 72, 73] and len(c1.ids) == 1
    assert fake_addr_for("q300.x") == "10.0.1.44" and fake_addr_for("a0.example") == "192.0.2.99"


# ---------------------------------------------------------------- 1. pipelining

def test_pipelined_answers_in_reverse_order_udp(proxies, fake_dot):
    """10 UDP clients at once, all with the same client-side ID 4242; the
    upstream holds the 10 queries and answers them in reverse: each client
    gets its own answer, over a single upstream connection, and the 10
    queries carried 10 distinct upstream IDs."""
    f = fake_dot(reverse_batch=10)
    p = proxies.start(spec(f.port), extra=["-t", "4000"])
    results = {}
    barrier = threading.Barrier(10)

    def one(k):
        barrier.wait(5)
        try:
            results[k] = query_udp(p.port, "q%d.bench" % k, timeout=6, qid=4242)
        except Exception as e:  # noqa: BLE001
            results[k] = e

    ts = [threading.Thread(target=one, args=(k,)) for k in range(1, 11)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    for k in range(1, 11):
        r = results.get(k)
        assert not isinstance(r, Exception) and r is not None, "q%d: %r\n%s" % (k, r, p.log())
        assert_answer(r, "q%d.bench" % k, 4242)
    assert f.connections == 1, f.conns
    ids = f.conns[0].ids
    assert len(ids) == 10 and len(set(ids)) == 10, "upstream IDs not distinct: %s" % ids


def test_pipelined_answers_in_reverse_order_tcp(proxies, fake_dot):
    """One TCP client pipelines 10 framed queries; the upstream answers them
    in reverse order; every answer carries its query's client ID, name and data."""
    f = fake_dot(reverse_batch=10)
    p = proxies.start(spec(f.port), extra=["-t", "4000"])
    s = tcp_connect(p.port, timeout=6)
    try:
        buf = b""
        for k in range(20, 30):
            w = make_query("q%d.bench" % k, qid=500 + k).to_wire()
            buf += tcp_frame(w)
        s.sendall(buf)
        got = {}
        for _ in range(10):
            r = dns.message.from_wire(tcp_recv_msg(s))
            got[r.id] = r
    finally:
        s.close()
    assert sorted(got) == [500 + k for k in range(20, 30)]
    for k in range(20, 30):
        assert_answer(got[500 + k], "q%d.bench" % k)
    assert f.connections == 1, f.conns
    assert len(set(f.conns[0].ids)) == 10, f.conns[0].ids


# ---------------------------------------------------------------- 2. batching

def test_queries_arriving_together_share_tls_records(proxies, fake_dot, relays):
    """20 queries sent in one TCP segment to the proxy go upstream in fewer
    than 20 TLS application-data records (counted by a relay that parses the
    record headers between the proxy and the fake)."""
    f = fake_dot()
    relay = relays(("127.0.0.1", f.port), cls=TlsRecordRelay)
    p = proxies.start(spec(relay.port), extra=["-t", "4000"])
    assert_answer(query_udp(p.port, "q1.bench"), "q1.bench")
    before = relay.app_records()
    s = tcp_connect(p.port, timeout=5)
    try:
        buf = b""
        for k in range(20):
            w = make_query("q%d.batch" % (100 + k), qid=k).to_wire()
            buf += tcp_frame(w)
        s.sendall(buf)
        got = [dns.message.from_wire(tcp_recv_msg(s)) for _ in range(20)]
    finally:
        s.close()
    assert sorted(r.id for r in got) == list(range(20))
    for r in got:
        assert_answer(r, "q%d.batch" % (100 + r.id))
    used = relay.app_records() - before
    assert f.queries == 21 and relay.accepted == 1
    assert 1 <= used < 20, "20 queries took %d TLS records" % used


# ---------------------------------------------------------------- 3. padding

def check_padded(q, block):
    """q: a FakeQuery. Its message is a multiple of `block` long and carries
    exactly one Padding option, made of zero octets (RFC 7830 4)."""
    m = q.msg()
    assert len(q.wire) % block == 0, "upstream query is %d bytes (block %d)" % (len(q.wire), block)
    assert m.edns == 0, "no OPT in the upstream query"
    pads = opt_options(m, PADDING)
    assert len(pads) == 1, m.options
    assert set(pads[0].to_wire()) <= {0}, "padding octets are not zero"
    return m


@pytest.mark.parametrize("fn", [query_udp, query_tcp], ids=["udp", "tcp"])
def test_padding_query_without_opt(proxies, fake_dot, fn):
    """A query without OPT goes upstream with an OPT carrying Padding, length a
    multiple of 128, DO clear; the client's answer has no OPT."""
    f = fake_dot(pad_answers=True)
    p = proxies.start(spec(f.port), extra=["-t", "3000"])
    r = fn(p.port, "q5.bench", "A", use_edns=False)
    assert_answer(r, "q5.bench")
    assert r.edns == -1, "OPT in the answer to a client that sent none: %s" % r
    m = check_padded(upstream_query(f, "q5.bench"), 128)
    assert not m.ednsflags & dns.flags.DO


@pytest.mark.parametrize("fn", [query_udp, query_tcp], ids=["udp", "tcp"])
def test_padding_query_with_opt_keeps_payload_and_do(proxies, fake_dot, fn):
    """A query with OPT (payload 1232, DO) keeps both upstream and is padded;
    the answer keeps an OPT but not the Padding the upstream put in it."""
    f = fake_dot(pad_answers=True)
    p = proxies.start(spec(f.port), extra=["-t", "3000"])
    q = make_query("q6.bench", use_edns=True, payload=1232)
    q.want_dnssec(True)
    if fn is query_udp:
        r = dns.query.udp(q, "127.0.0.1", port=p.port, timeout=3, ignore_unexpected=True)
    else:
        r = dns.query.tcp(q, "127.0.0.1", port=p.port, timeout=3)
    assert_answer(r, "q6.bench")
    assert r.edns == 0, "the answer lost its OPT"
    assert not opt_options(r, PADDING), "padding from the upstream reached the client: %s" % r.options
    m = check_padded(upstream_query(f, "q6.bench"), 128)
    assert m.payload == 1232
    assert m.ednsflags & dns.flags.DO, "DO bit lost upstream"


def test_padding_long_name_and_case(proxies, fake_dot):
    """A 200-odd byte name in mixed case: padded to a multiple of 128 (>= 256),
    and the answer's question is the client's, case included."""
    f = fake_dot()
    p = proxies.start(spec(f.port), extra=["-t", "3000"])
    name = "Q9." + ".".join(["AbCdEfGhIj" * 5] * 4) + ".BeNch"
    r = query_udp(p.port, name)
    assert_answer(r, name)
    assert r.question[0].name.to_wire() == dns.name.from_text(name).to_wire(), "case changed"
    q = upstream_query(f, name)
    check_padded(q, 128)
    assert len(q.wire) >= 256


def test_padding_client_already_padded(proxies, fake_dot):
    """A client that pads its own query (100 octets): upstream there is still
    exactly one Padding option and the length is a multiple of 128."""
    f = fake_dot()
    p = proxies.start(spec(f.port), extra=["-t", "3000"])
    q = dns.message.make_query("q62.bench", "A", use_edns=0, payload=1232,
                               options=[dns.edns.GenericOption(PADDING, b"\0" * 100)])
    r = dns.query.udp(q, "127.0.0.1", port=p.port, timeout=3, ignore_unexpected=True)
    assert_answer(r, "q62.bench")
    assert not opt_options(r, PADDING)
    check_padded(upstream_query(f, "q62.bench"), 128)


@pytest.mark.parametrize("block", [16, 256, 1024])
def test_padding_block_option(proxies, fake_dot, block):
    f = fake_dot()
    p = proxies.start(spec(f.port), extra=["-t", "3000", "--padding", str(block)])
    assert_answer(query_udp(p.port, "q7.bench"), "q7.bench")
    assert_answer(query_tcp(p.port, "q8.bench", use_edns=True), "q8.bench")
    check_padded(upstream_query(f, "q7.bench"), block)
    check_padded(upstream_query(f, "q8.bench"), block)


def test_padding_off_sends_the_question_and_our_opt(proxies, fake_dot):
    """--padding 0: the upstream gets the client's question (its spelling, RD
    and CD), AD=1, and one OPT of ours without options (size 1232, version 0,
    the client's DO bit): no Padding, and nothing else the client sent (here a
    Padding option and an EDNS size of 1400)."""
    f = fake_dot()
    p = proxies.start(spec(f.port), extra=["-t", "3000", "--padding", "0"])
    plain = make_query("q10.Bench", use_edns=False)
    edns = make_query("q11.bench", use_edns=True, payload=1400)
    edns.use_edns(0, dns.flags.DO, 1400, options=[dns.edns.GenericOption(PADDING, b"\0" * 20)])
    edns.flags |= dns.flags.CD
    for q, fn in ((plain, dns.query.udp), (edns, dns.query.tcp)):
        kw = {"ignore_unexpected": True} if fn is dns.query.udp else {}
        r = fn(q, "127.0.0.1", port=p.port, timeout=3, **kw)
        name = q.question[0].name.to_text(omit_final_dot=True)
        assert_answer(r, name)
        up = upstream_query(f, name.lower()).msg()
        assert up.question[0].name.to_text(omit_final_dot=True) == name, up.question
        assert up.flags & dns.flags.AD, "AD=1 not sent: %s" % dns.flags.to_text(up.flags)
        assert (up.flags & (dns.flags.RD | dns.flags.CD)) == \
            (q.flags & (dns.flags.RD | dns.flags.CD)), dns.flags.to_text(up.flags)
        assert up.edns == 0 and up.payload == 1232 and not up.options, \
            "want one OPT (1232, no options): %s" % up
        assert bool(up.ednsflags & dns.flags.DO) == bool(q.ednsflags & dns.flags.DO)
        assert len(up.additional) == 0 and len(up.answer) == 0 and len(up.authority) == 0


@pytest.mark.parametrize("fn", [query_udp, query_tcp], ids=["udp", "tcp"])
def test_padding_with_unbound(proxy, fn):
    """The real upstream accepts padded queries (it pads its answers to padded
    queries itself): answers are right, with and without EDNS, and no padding
    reaches the client."""
    r = fn(proxy.port, "example.test", "A", use_edns=False)
    assert r.rcode() == NOERROR and a_addrs(r) == {"192.0.2.10", "192.0.2.11"}
    assert r.edns == -1
    r = fn(proxy.port, "pad.bench.test", "A", use_edns=True)
    assert r.rcode() == NOERROR and a_addrs(r) == {"192.0.2.1"}
    assert r.edns == 0 and not opt_options(r, PADDING), r.options
    # 1.3 KB: over UDP it is TC=1 (UDP answers stop at 1232 bytes), so over TCP
    r = query_tcp(proxy.port, "big.example.test", "TXT", use_edns=True, payload=4096)
    assert r.rcode() == NOERROR and len(r.answer[0]) == 2
    assert not opt_options(r, PADDING)


# ---------------------------------------------------------------- 4. ALPN

def test_alpn_dot(proxies, fake_dot):
    f = fake_dot()
    p = proxies.start(spec(f.port), extra=["-t", "3000"])
    assert_answer(query_udp(p.port, "q12.bench"), "q12.bench")
    assert f.conns[0].alpn == "dot", f.conns


# ---------------------------------------------------------------- 5. session resumption

def test_session_resumed_after_server_close(proxies, fake_dot):
    """The server closes after each answer: the next connection resumes the
    TLS session (session ID) of the previous one."""
    f = fake_dot(close_after=1)
    p = proxies.start(spec(f.port), extra=["-t", "3000"])
    for k in (13, 14, 15):
        assert_answer(query_udp(p.port, "q%d.bench" % k), "q%d.bench" % k)
        assert f.conns[-1].closed.wait(3)
    assert f.connections == 3, f.conns
    assert [c.session_reused for c in f.conns] == [False, True, True], f.conns


def test_session_resumed_after_idle_close(proxies, fake_dot):
    f = fake_dot()
    p = proxies.start(spec(f.port), extra=["-t", "3000", "--idle-timeout", "300"])
    assert_answer(query_udp(p.port, "q16.bench"), "q16.bench")
    assert f.conns[0].closed.wait(5), "idle connection not closed:\n" + p.log()
    assert_answer(query_udp(p.port, "q17.bench"), "q17.bench")
    assert f.connections == 2
    assert [c.session_reused for c in f.conns] == [False, True], f.conns


# ---------------------------------------------------------------- 6. idle timeout

def test_idle_timeout_closes_with_close_notify(proxies, fake_dot):
    """--idle-timeout 500: the proxy closes the idle connection itself, after
    roughly 0.5 s, with a TLS close_notify; the next query opens a new one."""
    f = fake_dot()
    p = proxies.start(spec(f.port), extra=["-t", "3000", "--idle-timeout", "500"])
    assert_answer(query_udp(p.port, "q18.bench"), "q18.bench")
    t_answer = time.monotonic()
    assert f.conns[0].closed.wait(6), "idle connection still open after 6 s:\n" + p.log()
    idle = f.conns[0].closed_at - t_answer
    assert 0.3 <= idle <= 4.0, "closed after %.2f s idle with --idle-timeout 500" % idle
    assert f.conns[0].close_kind == "close_notify", f.conns
    assert_answer(query_tcp(p.port, "q19.bench"), "q19.bench")
    assert f.connections == 2
    assert not warn_lines(p), p.log()


def test_default_idle_timeout_keeps_connection(proxies, fake_dot):
    """By default (9 s) a connection idle for 1.5 s is kept and reused."""
    f = fake_dot()
    p = proxies.start(spec(f.port), extra=["-t", "3000"])
    assert_answer(query_udp(p.port, "q20.bench"), "q20.bench")
    time.sleep(1.5)
    assert not f.conns[0].closed.is_set(), f.conns
    assert_answer(query_udp(p.port, "q21.bench"), "q21.bench")
    assert f.connections == 1


def test_server_close_is_normal(proxies, fake_dot):
    """The server closing after every answer is not an error: every query is
    answered on a new connection and nothing is logged at warn level."""
    f = fake_dot(close_after=1)
    p = proxies.start(spec(f.port), extra=["-t", "3000"])
    for k in range(22, 26):
        fn = query_udp if k % 2 else query_tcp
        assert_answer(fn(p.port, "q%d.bench" % k, "A"), "q%d.bench" % k)
        assert f.conns[-1].closed.wait(3)
        time.sleep(0.1)
    assert f.connections == 4
    assert not warn_lines(p), p.log()


# ---------------------------------------------------------------- 7. failover

@pytest.mark.parametrize("how", ["options", "env"])
def test_failover_to_second_and_back(proxies, fake_dot, relays, how):
    """A (a relay in front of fake A, not listening yet) is preferred, B works:
    queries are answered from B; A's failure is logged once; when A's relay
    starts, A is used again within ~15 s (--max-backoff 2000) and
    'connected again' is logged."""
    fa, fb = fake_dot(), fake_dot()
    ra = relays(("127.0.0.1", fa.port), start=False)
    extra = ["-t", "3000", "--max-backoff", "2000"]
    if how == "options":
        p = proxies.start([spec(ra.port), spec(fb.port)], extra=extra)
    else:
        p = proxies.start(None, extra=extra,
                          env={"DOT_SERVER": "%s,%s" % (spec(ra.port), spec(fb.port))})
    r, dt = timed(query_udp, p.port, "q30.bench", timeout=5)
    assert_answer(r, "q30.bench")
    assert dt < 3.0, "first query took %.2f s" % dt
    for k in range(31, 41):
        fn = query_udp if k % 2 else query_tcp
        r, dt = timed(fn, p.port, "q%d.bench" % k, "A", timeout=5)
        assert_answer(r, "q%d.bench" % k)
        assert dt < 3.0, "q%d took %.2f s" % (k, dt)
        time.sleep(0.1)
    assert fa.queries == 0 and fb.queries == 11, (fa.queries, fb.queries)
    a_warns = [l for l in warn_lines(p) if label(ra.port) in l]
    assert len(a_warns) == 1, p.log()
    assert "connect failed" in a_warns[0] or "refused" in a_warns[0], a_warns

    ra.start()
    k = 41
    deadline = time.monotonic() + 15
    while fa.queries == 0:
        assert time.monotonic() < deadline, "A not used again 15 s after it came back:\n" + p.log()
        r = query_udp(p.port, "q%d.bench" % k, timeout=5)
        assert_answer(r, "q%d.bench" % k)
        k += 1
        time.sleep(0.2)
    assert p.wait_for("connected again", 2), p.log()
    back = [l for l in p.log().splitlines() if "connected again" in l]
    assert len(back) == 1 and ": info: " in back[0] and label(ra.port) in back[0], back
    # A is preferred again: the next queries all go there
    a0, b0 = fa.queries, fb.queries
    for j in range(5):
        assert_answer(query_udp(p.port, "q%d.bench" % (100 + j)), "q%d.bench" % (100 + j))
    assert (fa.queries - a0, fb.queries - b0) == (5, 0)
    assert len([l for l in warn_lines(p) if label(ra.port) in l]) == 1, p.log()


def test_backoff_doubles_up_to_max(proxies, fake_dot):
    """A reads the ClientHello and closes (FakeDoT mode "reject"), B works,
    --max-backoff 2000, a query every 0.1 s for 6.5 s: A is tried again after
    0.5 s, 1 s, 2 s, 2 s... (not every 0.5 s, not never), every query is
    answered from B, and A's failure is logged once."""
    fb = fake_dot()
    ra = fake_dot(mode="reject")
    p = proxies.start([spec(ra.port), spec(fb.port)], extra=["-t", "3000", "--max-backoff", "2000"])
    end = time.monotonic() + 6.5
    k = 0
    while time.monotonic() < end:
        assert_answer(query_udp(p.port, "q%d.bench" % (k % 256), timeout=5), "q%d.bench" % (k % 256))
        k += 1
        time.sleep(0.1)
    t = [c.accepted_at for c in ra.conns]
    gaps = [round(b - a, 2) for a, b in zip(t, t[1:])]
    info = "attempts at A: %d, gaps %s\n%s" % (len(t), gaps, p.log())
    assert 3 <= len(t) <= 8, info
    assert gaps[0] >= 0.3 and max(gaps) >= 1.5, info       # it grows ...
    assert max(gaps) <= 3.0, info                          # ... up to --max-backoff
    a_warns = [l for l in warn_lines(p) if label(ra.port) in l]
    assert len(a_warns) == 1, info


# ---------------------------------------------------------------- 8. stalled upstream

def test_stalled_upstream_marked_down(proxies, fake_dot):
    """A accepts TLS and never answers, B works, -t 2000: every query is
    answered from B within the timeout (the first one after about 1 s: half
    the timeout, at least 1 s); the log says 'no answer' for A once, and A,
    which never answered anything, is not reported as 'connected again'."""
    fa, fb = fake_dot(mode="silent"), fake_dot()
    p = proxies.start([spec(fa.port), spec(fb.port)], extra=["-t", "2000", "--max-backoff", "2000"])
    times = []
    for k in range(50, 58):
        fn = query_udp if k % 2 else query_tcp
        r, dt = timed(fn, p.port, "q%d.bench" % k, "A", timeout=5)
        assert_answer(r, "q%d.bench" % k)
        assert dt < 2.5, "q%d answered after %.2f s with -t 2000\n%s" % (k, dt, p.log())
        times.append(round(dt, 2))
        time.sleep(0.3)
    assert 0.7 <= times[0], "first query answered after %.2f s: was it ever sent to A?" % times[0]
    assert fa.queries >= 1, "A never got a query"
    assert fb.answers >= 8
    a_lines = [l for l in p.log().splitlines() if label(fa.port) in l]
    stalls = [l for l in warn_lines(p) if "no answer" in l and label(fa.port) in l]
    assert stalls, p.log()
    assert len(stalls) == 1, "A's stall logged %d times (A connections: %d, query times %s):\n%s" % (
        len(stalls), fa.connections, times, "\n".join(a_lines))
    assert not [l for l in a_lines if "connected again" in l], \
        "A never answered but is reported as back:\n" + "\n".join(a_lines)


# ---------------------------------------------------------------- 10. all down

def test_all_upstreams_down_servfail_fast_without_log_flood(proxies):
    """Nothing listens at A or B: 50 queries over ~3 s (several back-off
    rounds with --max-backoff 1000) all get SERVFAIL well within -t 3000; the
    log holds a handful of warn lines, one of them 'no upstream'."""
    pa, pb = free_port(), free_port()
    p = proxies.start([spec(pa), spec(pb)], extra=["-t", "3000", "--max-backoff", "1000"])
    slow = []
    for i in range(50):
        fn = query_udp if i % 2 == 0 else query_tcp
        r, dt = timed(fn, p.port, "q%d.down" % i, "A", timeout=5)
        assert r.rcode() == SERVFAIL, r
        if dt > 1.0:
            slow.append((i, round(dt, 2)))
        time.sleep(0.05)
    assert not slow, "slow SERVFAILs (query, s): %s\n%s" % (slow, p.log())
    time.sleep(0.3)
    w = warn_lines(p)
    assert len(w) <= 5, "\n".join(w)
    assert sum("no upstream" in l for l in w) == 1, "\n".join(w)
    assert p.alive()


# ---------------------------------------------------------------- 11. in-flight bound

def test_inflight_bound(proxies, fake_dot):
    """A is silent, B works, -t 5000. 1,200 UDP queries fired from one socket:
    at most 1,024 can be in flight, so the rest (about 176) get SERVFAIL at
    once, long before the stall detection (2.5 s) or the timeout; afterwards
    the proxy is alive and answers."""
    fa, fb = fake_dot(mode="silent"), fake_dot()
    p = proxies.start([spec(fa.port), spec(fb.port)], extra=["-t", "5000"])
    n = 1200
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("127.0.0.1", 0))
    replies = {}
    stop = threading.Event()

    def reader():
        s.settimeout(0.1)
        while not stop.is_set():
            try:
                data, _ = s.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            m = dns.message.from_wire(data)
            replies.setdefault(m.id, (time.monotonic(), m.rcode()))

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        t0 = time.monotonic()
        for i in range(n):
            s.sendto(make_query("q%d.flood" % (1000 + i), qid=i).to_wire(), ("127.0.0.1", p.port))
            if i % 20 == 19:
                time.sleep(0.002)     # let the proxy drain its socket buffer
        sent = time.monotonic()
        fa.wait_queries(1024, 1.0)
        time.sleep(0.3)
        fast = {i: rc for i, (ts, rc) in list(replies.items()) if ts - t0 < 2.0}
        fast_servfail = sum(1 for rc in fast.values() if rc == SERVFAIL)
        at_a, at_b = fa.queries, fb.queries
        # the proxy read at_a + len(fast) of the n datagrams (loopback UDP may drop some)
        info = "sent in %.2f s; A got %d, B %d; %d fast replies (%d SERVFAIL)\n%s" % (
            sent - t0, at_a, at_b, len(fast), fast_servfail, p.log())
        print(info.split("\n")[0])
        assert sent - t0 < 1.5, info
        assert at_a == 1024, "expected exactly 1024 queries in flight at A: " + info
        assert at_b == 0, info
        assert fast_servfail == len(fast), "fast answers that are not SERVFAIL: " + info
        assert fast_servfail >= 50, info
        # every query is eventually answered (B or SERVFAIL), in bounded time
        wait_until(lambda: len(replies) >= at_a + len(fast), 8, 0.2)
        assert len(replies) >= at_a + len(fast), "%d answered: %s" % (len(replies), info)
    finally:
        stop.set()
        t.join(2)
        s.close()
    assert p.alive(), p.log()
    assert_answer(query_udp(p.port, "q60.bench", timeout=6), "q60.bench")
    assert any("in flight" in l for l in warn_lines(p)), p.log()


# ---------------------------------------------------------------- 12. options

def base_args(port):
    return ["-l", "127.0.0.1@%d" % free_port(), "-u", spec(port)]


def test_help_lists_engine_options(dotproxy_bin):
    r = run_dotproxy(dotproxy_bin, base_args(free_port()) + ["--help"])
    assert r.returncode == 0
    for opt in ("--idle-timeout", "--padding", "--max-backoff"):
        assert opt in r.stdout, r.stdout
    assert "9000" in r.stdout and "10000" in r.stdout and "128" in r.stdout


@pytest.mark.parametrize("opt,value", [
    ("--padding", "7"), ("--padding", "15"), ("--padding", "1025"), ("--padding", "abc"),
    ("--padding", "-128"), ("--idle-timeout", "0"), ("--idle-timeout", "abc"),
    ("--max-backoff", "abc"), ("--max-backoff", "-1"),
])
def test_engine_option_bad_value(dotproxy_bin, opt, value):
    r = run_dotproxy(dotproxy_bin, base_args(free_port()) + [opt, value])
    assert r.returncode not in (0, None), "dotproxy accepted %s %s: %r" % (opt, value, r)
    assert value in r.stderr, r.stderr
    if opt == "--padding" and value.isdigit():
        assert "16" in r.stderr and "1024" in r.stderr, r.stderr


@pytest.mark.parametrize("extra", [
    ["--padding", "0"], ["--padding", "16"], ["--padding", "1024"],
    ["--idle-timeout", "100"], ["--max-backoff", "500"], ["--max-backoff=2000", "--idle-timeout=100"],
], ids=lambda e: " ".join(e))
def test_engine_option_good_value(proxies, fake_dot, extra):
    f = fake_dot()
    p = proxies.start(spec(f.port), extra=["-t", "3000"] + extra)
    assert_answer(query_udp(p.port, "q61.bench"), "q61.bench")
