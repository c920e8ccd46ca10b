"""Review of the latency engine of issue 13 (coalescing, prefetch, the RFC 8767 client
timer, hedging; 6d3c077, 991b10f, 06cba92) as an attacker (a client on the LAN, an
on-path party without the key) and as a slow, flapping or lying resolver.  Each test is
a finding (it failed before its fix in dotproxy.c) or a guard of something tried that
held.  Everything stays on 127.0.0.1 (or inside a private network namespace); every
dotproxy gets an explicit loopback upstream.

Run:  /usr/bin/python3 -m pytest tests/test_review_latency.py  [--dotproxy=PATH]
"""

import json
import os
import shutil
import subprocess
import threading
import time

import pytest

import helpers
from helpers import fake_addr_for, wait_until
from scriptdot import TC, Wire, a_of, query_wire, reply, rr, txt_of
from slowdot import slow_dot  # noqa: F401 - a fixture
from test_latency import (EDE_STALE, NOERROR, SERVFAIL, WARM, ask, ask_while_busy,  # noqa: F401
                          asker, background, delays, edes, start, ttls, warm)

REFUSED = 5


def need_netns():
    if os.geteuid() != 0:
        pytest.skip("needs root for a private network namespace")
    if not (shutil.which("unshare") and shutil.which("ip")):
        pytest.skip("needs unshare(1) and ip(8)")
    if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare --net not permitted here")


# ================================================================ migrate loop
#
# upstream_suspect(A) moves A's queue (queries not yet written) to the upstream that
# upstream_pick() prefers.  When that is B, disconnected, and B's connect() fails at
# once (EHOSTUNREACH, ENETUNREACH: an unroutable upstream, a WAN that is down),
# upstream_fail(B) moves the query straight back to A (suspect, but the only one
# usable) -- onto the queue that upstream_migrate_queue(A) was emptying, which was
# then never empty again: 100 % CPU, nothing answered any more, not even localhost.
# For it, no twin may have been made of A's queries in flight (that would have sent B
# to back-off first): the pending table is full.

NETNS_MIGRATE = r"""
import json, os, socket, ssl, struct, subprocess, sys, threading, time
sys.path.insert(0, sys.argv[1])
from helpers import DotProxy, free_port
binary, pkidir = sys.argv[2], sys.argv[3]
# lo only, with a small MTU (a stalled peer stops the proxy's writes, as on a WAN);
# 127.0.0.2 is unreachable in this namespace: connect() fails at once.
subprocess.run(["ip", "link", "set", "lo", "up", "mtu", "1280"], check=True)
subprocess.run(["ip", "route", "add", "unreachable", "127.0.0.2/32", "table", "local"],
               check=True)
out = {}
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
ctx.load_cert_chain(pkidir + "/chain.pem", pkidir + "/leaf.key")
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
ls.bind(("127.0.0.1", 0))
ls.listen(16)
held = []
def stalled():
    # handshakes, then never reads again: the proxy's queries stay queued
    while True:
        c, _ = ls.accept()
        try:
            held.append(ctx.wrap_socket(c, server_side=True))
        except (OSError, ssl.SSLError):
            c.close()
threading.Thread(target=stalled, daemon=True).start()
port = ls.getsockname()[1]
p = DotProxy(binary, ["-l", "127.0.0.1@%d" % (lp := free_port()), "-c", pkidir + "/root.pem",
                      "-u", "127.0.0.1@%d#dns.test" % port,
                      "-u", "127.0.0.2@%d#dns.test" % port, "-t", "2000"], port=lp)
def query(name, qid):
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for lab in name.split("."):
        q += bytes([len(lab)]) + lab.encode()
    return q + b"\0\0\1\0\1"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
t0 = time.monotonic()
n = 0
# distinct names for 2.5 s: the table (1024) is full well before A is suspect
# (1 s: its round trip is unknown, half of --timeout) and stays full past it
while time.monotonic() - t0 < 2.5:
    for _ in range(50):
        n += 1
        try:
            s.sendto(query("f%d.flood.test" % n, n & 0xFFFF), ("127.0.0.1", lp))
        except BlockingIOError:
            pass
    try:
        while s.recv(4096):
            pass
    except BlockingIOError:
        pass
    time.sleep(0.02)
out["sent"] = n
# is the loop still turning?  localhost. is answered by dotproxy itself
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(1.0)
out["localhost"] = False
for k in range(4):
    c.sendto(query("localhost", 0x4240 + k), ("127.0.0.1", lp))
    try:
        if c.recv(4096)[:2] == struct.pack("!H", 0x4240 + k):
            out["localhost"] = True
            break
    except socket.timeout:
        pass
out["alive"] = p.alive()
p.stop(timeout=2)
out["log"] = "\n".join(p.lines[-12:])
print(json.dumps(out))
"""


def test_migrate_to_an_upstream_that_fails_at_once_does_not_spin(dotproxy_bin, pki, tmp_path):
    """Finding: endless loop in upstream_migrate_queue (see above).  The proxy must
    still answer (localhost. from itself) once A turned suspect with its queue full and
    B's connect() failed synchronously."""
    need_netns()
    script = tmp_path / "netns_migrate.py"
    script.write_text(NETNS_MIGRATE)
    run = subprocess.run(["unshare", "--net", "/usr/bin/python3", str(script), helpers.HERE,
                          dotproxy_bin, pki.dir],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["sent"] > 1024, out
    assert out["alive"], out["log"]
    assert out["localhost"], ("dotproxy stopped answering after the migrate to an "
                              "upstream that failed at once:\n%s" % out["log"])


# ================================================================ stale timer, fresh entry
#
# query_stale_timer() -> query_serve_stale() -> cache_get(stale=1): every TTL set to 30
# and EDE 3 "Stale Answer" added, whether or not the entry was refreshed meanwhile.  It
# is, whenever another leader of the same key answers first: here the older leader that
# a query would not follow (less than --timeout/2 left: query_receive makes a second).

def test_stale_timer_never_labels_a_refreshed_entry_stale(proxies, slow_dot, asker):
    """--timeout 4000 --stale-timeout 1800 --serve-stale 60, one upstream.  st.test is
    cached with TTL 1 and left to expire.  At 0 s Q1 (leader L1; the upstream takes 2.3
    s): its timer gives it the stale answer at 1.8 s, rightly.  At 2.1 s Q2: L1 has
    less than 2 s left, so Q2 leads on its own (never answered), on the stale watch.
    At 2.3 s L1's answer makes the entry fresh (TTL 300).  Q2's timer at 3.9 s must give
    it that fresh answer (TTL near 300, no EDE 3), not a 'stale' copy of it."""
    name = "st.test"
    calls = {"n": 0}
    lock = threading.Lock()

    def delay(n):
        with lock:
            calls["n"] += 1
            k = calls["n"]
        return 0.0 if k == 1 else 2.3 if k == 2 else None

    def answer(wire, srv):
        q = Wire(wire)
        return reply(q, answer=[rr(q.qname, 1 if calls["n"] == 1 else 300, "A",
                                   "192.0.2.7")])
    srv = slow_dot(delay=delay, answer=answer)
    p = start(proxies, [srv], ["-t", "4000", "--serve-stale", "60",
                               "--stale-timeout", "1800"])
    r, _ = ask(p.port, name)
    assert a_of(r) == {"192.0.2.7"} and ttls(r) == [1], r.describe()
    time.sleep(1.6)
    a = asker(p.port)
    t0 = time.monotonic()
    q1 = a.udp(query_wire(name, qid=1, edns=True), "Q1")
    a.pump(max(0.0, t0 + 2.1 - time.monotonic()))
    q2 = a.udp(query_wire(name, qid=2, edns=True), "Q2")
    assert a.collect(4.0), a.describe()
    assert ttls(q1.reply) == [30] and EDE_STALE in [c for c, _ in edes(q1.reply)], q1
    assert wait_until(lambda: srv.answered_count(name + ".") == 2, 1.0, 0.02)
    assert q2.at - t0 > 2.5, q2          # after the refresh came in
    assert a_of(q2.reply) == {"192.0.2.7"}, q2
    assert EDE_STALE not in [c for c, _ in edes(q2.reply)] and ttls(q2.reply)[0] > 250, (
        "Q2 got the entry refreshed at 2.3 s as a STALE answer: %r %r" % (
            ttls(q2.reply), edes(q2.reply)))


# ================================================================ held: the stale timer's limits

def test_stale_timer_never_serves_past_the_window_nor_another_key(proxies, slow_dot, asker):
    """Held.  --serve-stale 1 --stale-timeout 300, the upstream then takes 1.2 s.  An
    entry expired for longer than the window (TTL 1, asked 2.6 s later) is gone: the
    client waits for the upstream and gets its new data, never the old one at 0.3 s.
    An entry still in the window but of another key (cached with DO=0, asked with DO=1;
    cached with RD=1, asked with RD=0) is not this query's: no stale answer either."""
    old, keyed = "old.st.test", "key.st.test"
    seen = {}

    def answer(wire, srv):
        q = Wire(wire)
        n = seen[q.qname.lower()] = seen.get(q.qname.lower(), 0) + 1
        return reply(q, answer=[rr(q.qname, 1 if n == 1 else 60, "A", "192.0.2.%d" % n)])
    srv = slow_dot(delay=lambda n: 1.2 if srv.count(n) >= 2 else 0.0, answer=answer)
    p = start(proxies, [srv], ["--serve-stale", "1", "--stale-timeout", "300",
                               "-t", "4000"])
    t0 = time.monotonic()
    assert a_of(ask(p.port, old)[0]) == {"192.0.2.1"}
    time.sleep(max(0.0, t0 + 2.6 - time.monotonic()))
    assert a_of(ask(p.port, keyed)[0]) == {"192.0.2.1"}
    time.sleep(1.2)                 # keyed: expired 0.2 s ago, in the 1 s window
    a = asker(p.port)
    past = a.udp(query_wire(old, qid=1, edns=True), "past the window")
    do1 = a.udp(query_wire(keyed, qid=2, edns=True, do=True), "DO=1")
    rd0 = a.udp(query_wire(keyed, qid=3, edns=True, rd=False), "RD=0")
    assert a.collect(4.0), a.describe()
    for it in (past, do1, rd0):
        assert it.elapsed > 1.0, "%r: answered before the upstream did" % it
        assert "192.0.2.1" not in a_of(it.reply), it
        assert EDE_STALE not in [c for c, _ in edes(it.reply)], it


def test_stale_answers_keep_each_clients_size_id_and_spelling(proxies, slow_dot, asker):
    """Held.  A 650-byte TXT answer (TTL 1) expired; the upstream then takes 2 s;
    --stale-timeout 300.  Four clients of one key at once (one leader, three followers)
    get the stale answer each as THEY asked: their ID and spelling; no EDNS over UDP:
    TC=1 within 512 bytes and no OPT; EDNS 1232 over UDP and TCP: all three strings,
    TTL 30, EDE 3 only to those that sent an OPT."""
    name = "big.stale.test"
    n = {"k": 0}

    def answer(wire, srv):
        q = Wire(wire)
        n["k"] += 1
        return reply(q, answer=[rr(q.qname, 1, "TXT",
                                   *['"%s"' % (c * 200) for c in "abc"])])
    srv = slow_dot(delay=lambda nm: 2.0 if srv.count(nm) >= 2 else 0.0, answer=answer)
    p = start(proxies, [srv], ["--serve-stale", "60", "--stale-timeout", "300",
                               "-t", "4000"])
    a = asker(p.port)
    first = a.tcp(query_wire(name, rdtype=16, qid=9), "seed")
    assert a.collect(3.0) and first.reply.rcode == 0, a.describe()
    time.sleep(1.3)
    b = asker(p.port)
    plan = [("udp-noedns", "BIG.stale.test", "udp", dict(), True),
            ("udp-1232", "big.STALE.test", "udp", dict(edns=True, payload=1232), False),
            ("tcp-noedns", "Big.Stale.Test", "tcp", dict(), False),
            ("tcp-edns", "bIG.sTALE.tEST", "tcp", dict(edns=True), False)]
    for k, (tag, spelling, kind, kw, _) in enumerate(plan):
        (b.udp if kind == "udp" else b.tcp)(query_wire(spelling, rdtype=16,
                                                       qid=0x2200 + k, **kw), tag)
    assert b.collect(1.8), "no stale answers before the upstream's:\n" + b.describe()
    tc = {tag: want for tag, _, _, _, want in plan}
    for it in b.items:
        r, q = it.reply, it.q
        assert r.id == q.id and r.qbytes == q.qbytes and r.rcode == 0, it
        assert (r.opt is not None) == (q.opt is not None), it
        assert r.flag(TC) == tc[it.tag], it
        if tc[it.tag]:
            assert len(r.raw) <= 512 and r.answer == [], it
        else:
            assert {x.ttl for x in r.answer} == {30}, it
            assert sorted(s for x in r.answer for s in txt_of(x)) == \
                [c * 200 for c in "abc"], it
            assert (EDE_STALE in [c for c, _ in edes(r)]) == (q.opt is not None), it


# ================================================================ hedge: an error is no answer
#
# query_deliver() took the first answer of a twin pair whatever it said: a second
# upstream that answers SERVFAIL or REFUSED at once (a resolver whose ACL leaves us
# out, one whose DNSSEC validation fails, a broken one) won every hedge race, and a
# query that the first upstream was about to answer (slowly, rightly) got that error.
# Hedging must never make an answer worse than not hedging: an error from one half
# of a twin pair, while the other half is still out, is dropped; the client gets the
# other's answer (or, when it has none either, the error).

@pytest.mark.parametrize("rcode", [SERVFAIL, REFUSED], ids=["servfail", "refused"])
def test_hedge_error_does_not_beat_the_slow_good_answer(proxies, slow_dot, background,
                                                        rcode):
    """Two upstreams: the first answers everything at once but one name, which takes
    it 1.2 s; the second answers every query with `rcode` at once.  The slow name is
    hedged to the second upstream (counted), whose error comes first: the client must
    still get the first upstream's answer (NOERROR, its address), not the error."""
    name = "slow.err.test"
    first = slow_dot(delay=delays({name: 1.2}))
    second = slow_dot(answer=lambda wire, srv: reply(Wire(wire), rcode=rcode))
    p = start(proxies, [first, second])
    warm(p.port, WARM)
    it, _ = ask_while_busy(p, name, background)
    assert second.count(name + ".") == 1, "not hedged: %r" % second.names
    assert it.reply is not None, it
    assert it.reply.rcode == NOERROR and a_of(it.reply) == {fake_addr_for(name)}, (
        "the hedge's fast %s beat the first upstream's answer: %r" % (rcode, it))
    assert it.elapsed > 1.0, it
