"""Observability: /health, /ready and /metrics (--http), --probe, Extended DNS Errors
(RFC 8914), the service manager's protocols (sd_notify, socket activation, journald's level
prefixes) and --syslog.

Real clients and parsers wherever there is one: prometheus_client's text parser and
`promtool check metrics` for /metrics, http.client for the endpoints, dig, kdig and dnspython
for the EDEs, systemd-socket-activate for socket activation. Upstreams are helpers.FakeDoT /
scriptdot.ScriptedDoT, forward zones helpers.FakePlainDNS. Everything stays on 127.0.0.0/8
(the --syslog and default-port --probe tests run in private mount / network namespaces and
skip without root or unshare; promtool and prometheus_client skip when not installed).
"""

import collections
import http.client
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

import helpers
from helpers import (FakeDoT, check_safe_args, free_port, proxy_env, run_dotproxy,
                     udp_exchange, wait_until)
from scriptdot import (EDE, Wire, dig, generic, kdig, query_wire, reply, rr, scripted_factory,
                       soa)

NOERROR = dns.rcode.NOERROR
NXDOMAIN = dns.rcode.NXDOMAIN
SERVFAIL = dns.rcode.SERVFAIL
REFUSED = dns.rcode.REFUSED
FORMERR = dns.rcode.FORMERR

LOCAL_TEXT = "special-use name, answered locally (RFC 6761)"


# ---------------------------------------------------------------- helpers

def spec(port):
    return "127.0.0.1@%d#dns.test" % port


def label(port):
    """How dotproxy names an upstream in its logs, /ready and EDE texts."""
    return "127.0.0.1:%d (dns.test)" % port


@pytest.fixture
def scripted(pki):
    yield from scripted_factory(pki)


def start(proxies, upstream, extra=(), **kw):
    """dotproxy with --http on a port of its own (p.http)."""
    hp = free_port()
    p = proxies.start(upstream, extra=["--http", str(hp)] + list(extra), **kw)
    p.http = hp
    return p


def get(port, path, method="GET", timeout=2.0):
    """One request with http.client: (status, headers, body text)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode()
    finally:
        c.close()


def raw_http(port, data, timeout=2.0):
    """Sends bytes, reads until the server closes: the raw response."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
    finally:
        s.close()


def ask(port, name, rdtype="A", tcp=False, edns=True, source=None, timeout=3.0):
    q = dns.message.make_query(name, rdtype, use_edns=0 if edns else False)
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=port, timeout=timeout, source=source)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout, source=source,
                         ignore_unexpected=True)


def edes(r):
    """The Extended DNS Errors of a dnspython answer: [(code, text)]."""
    return [(o.code, o.text) for o in r.options if o.otype == dns.edns.EDE]


def bg(fn, *a, **kw):
    """Runs fn in a thread; returns (thread, out) with out["r"] its result or exception."""
    out = {}

    def run():
        try:
            out["r"] = fn(*a, **kw)
        except Exception as e:  # noqa: BLE001 - the test looks at it
            out["r"] = e
        out["t"] = time.monotonic()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


# ---------------------------------------------------------------- /metrics

def scrape(p):
    """GET /metrics: (raw text, {(sample name, frozenset(labels)): value}, families)."""
    parser = pytest.importorskip("prometheus_client.parser",
                                 reason="python3-prometheus-client is not installed")
    st, hdr, body = get(p.http, "/metrics")
    assert st == 200, body
    assert hdr["content-type"].startswith("text/plain; version=0.0.4"), hdr
    assert int(hdr["content-length"]) == len(body.encode())
    fams = list(parser.text_string_to_metric_families(body))
    vals = {}
    for f in fams:
        for s in f.samples:
            vals[(s.name, frozenset(s.labels.items()))] = s.value
    return body, vals, fams


def val(vals, metric, **labels):
    key = (metric, frozenset(labels.items()))
    assert key in vals, "no sample %s%r in /metrics: %s" % (
        metric, labels, sorted(k[0] for k in vals))
    return vals[key]


def metric_family(line, hist):
    """The metric a line of the text format belongs to (HELP / TYPE / sample)."""
    if line.startswith("#"):
        return line.split()[2]
    name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
    for suf in ("_bucket", "_sum", "_count"):
        if name.endswith(suf) and name[:-len(suf)] in hist:
            return name[:-len(suf)]
    return name


STATS_RE = {
    "udp": r"queries udp=(\d+)", "tcp": r" tcp=(\d+);", "hits": r"hits=(\d+)",
    "misses": r"misses=(\d+)", "stale": r"stale=(\d+)", "entries": r"entries=(\d+)",
    "evictions": r"evictions=(\d+)", "servfail": r"servfail=(\d+)",
    "refused": r"refused=(\d+)", "local": r"local=(\d+)", "hedged": r"hedged=(\d+)",
    "coalesced": r"coalesced=(\d+)", "prefetches": r"prefetches=(\d+)",
    "hedges_capped": r"hedges_capped=(\d+)",
    "in_flight": r"in_flight=(\d+)", "tcp_clients": r"tcp_clients=(\d+)",
}
UPSTREAM_RE = re.compile(r"upstream (\S+) \((\S+)\) (\S+) queries=(\d+) connects=(\d+) "
                         r"resumed=(\d+) failures=(\d+)")
ZONE_RE = re.compile(r"zone (\S+) \(([^,)\s]+)(?:, TCP)?\) queries=(\d+) tcp=(\d+) failures=(\d+)")


def stats_line(p, timeout=3.0):
    """SIGUSR1: the new "dotproxy: stats:" line."""
    key = "dotproxy: stats:"
    before = p.count(key)
    p.proc.send_signal(signal.SIGUSR1)
    assert wait_until(lambda: p.count(key) > before, timeout, 0.02), p.log()
    return [l for l in p.log().splitlines() if key in l][-1]


def parse_stats(line):
    out = {}
    for k, rx in STATS_RE.items():
        m = re.search(rx, line)
        assert m, "%s missing from %r" % (k, line)
        out[k] = int(m.group(1))
    out["upstreams"] = {m.group(1): tuple(int(m.group(i)) for i in (4, 5, 6, 7))
                        for m in UPSTREAM_RE.finditer(line)}
    out["zones"] = {m.group(1): tuple(int(m.group(i)) for i in (3, 4, 5))
                    for m in ZONE_RE.finditer(line)}
    return out


def dotproxy_version(binary):
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"(\d+\.\d+\.\d+\S*)", out)
    assert m, out
    return m.group(1)


def test_metrics_count_the_traffic(proxies, fake_dot, plain_dns, dotproxy_bin):
    """9 UDP and 2 TCP queries of every kind (cache misses and hits, a special-use name, a
    FORMERR, a response sent as a query, a client outside --allow, a forward zone), parsed
    with prometheus_client: every counter says what was sent; the latency histogram counts
    the 10 answers, cumulatively; the upstream connected twice (its server closes after two
    answers) and resumed once; build_info and start_time. Then a TCP client that stays and a
    query that waits on a silent zone show in the gauges, and its SERVFAIL in the counters;
    the SIGUSR1 line says the same numbers."""
    f = fake_dot(close_after=2)
    corp = plain_dns("corp.test")
    hold = plain_dns("hold.test", silent=True)
    t0 = time.time()
    p = start(proxies, spec(f.port), extra=[
        "--allow", "127.0.0.1/32", "-t", "1500",
        "--forward-zone", "corp.test=127.0.0.1@%d" % corp.port,
        "--forward-zone", "hold.test=127.0.0.1@%d" % hold.port])
    t1 = time.time()
    port = p.port
    _, v, _ = scrape(p)
    assert val(v, "dotproxy_queries_total", transport="udp") == 0
    assert val(v, "dotproxy_upstream_up", upstream="127.0.0.1:%d" % f.port,
               name="dns.test") == 0

    assert ask(port, "q1.m.test").rcode() == NOERROR                   # miss
    assert ask(port, "q2.m.test").rcode() == NOERROR                   # miss
    assert wait_until(lambda: f.conns and f.conns[0].closed.is_set(), 3, 0.02)
    assert ask(port, "q1.m.test").rcode() == NOERROR                   # hit
    r = ask(port, "localhost")                                         # local
    assert r.rcode() == NOERROR and r.answer
    w = Wire(udp_exchange(port, query_wire("q9.m.test", qdcount=0, qid=9)))
    assert w.rcode == FORMERR                                          # FORMERR
    resp = bytearray(query_wire("q8.m.test", qid=8))
    resp[2] |= 0x80
    assert udp_exchange(port, bytes(resp), timeout=0.3) is None       # dropped
    r = ask(port, "q7.m.test", source="127.0.0.2")                     # REFUSED
    assert r.rcode() == REFUSED
    assert ask(port, "q1.corp.test").rcode() == NOERROR                # zone, miss
    assert ask(port, "q1.corp.test").rcode() == NOERROR                # zone, hit
    assert ask(port, "q3.m.test", tcp=True).rcode() == NOERROR         # miss, resumed
    assert ask(port, "q3.m.test", tcp=True).rcode() == NOERROR         # hit
    assert f.queries == 3 and corp.udp == 1

    up = dict(upstream="127.0.0.1:%d" % f.port, name="dns.test")

    def settled():
        _, v, _ = scrape(p)
        return v if val(v, "dotproxy_tcp_clients") == 0 else None
    v = wait_until(settled, 3, 0.1)
    assert v, "the TCP clients did not go away"
    want = {
        ("dotproxy_queries_total", "udp"): 9, ("dotproxy_queries_total", "tcp"): 2,
        ("dotproxy_cache_hits_total", None): 3, ("dotproxy_cache_misses_total", None): 4,
        ("dotproxy_cache_stale_total", None): 0, ("dotproxy_cache_evictions_total", None): 0,
        ("dotproxy_cache_entries", None): 4, ("dotproxy_refused_total", None): 1,
        ("dotproxy_dropped_total", None): 1, ("dotproxy_local_total", None): 1,
        ("dotproxy_hedged_total", None): 0, ("dotproxy_coalesced_total", None): 0,
        ("dotproxy_prefetches_total", None): 0, ("dotproxy_queries_in_flight", None): 0,
        ("dotproxy_tcp_clients", None): 0,
    }
    got = {k: val(v, k[0], **({"transport": k[1]} if k[1] else {})) for k in want}
    assert got == want
    rcodes = {k: val(v, "dotproxy_responses_total", rcode=k) for k in
              ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "other")}
    assert rcodes == {"NOERROR": 8, "FORMERR": 1, "SERVFAIL": 0, "NXDOMAIN": 0, "NOTIMP": 0,
                      "REFUSED": 1, "other": 0}
    # the histogram: one observation per answer sent, buckets cumulative
    buckets = sorted(((float(dict(k[1])["le"]), x) for k, x in v.items()
                      if k[0] == "dotproxy_request_duration_seconds_bucket"))
    assert len(buckets) == 13 and buckets[-1][0] == float("inf")
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), buckets
    assert buckets[-1][1] == val(v, "dotproxy_request_duration_seconds_count") == 10
    assert sum(rcodes.values()) == 10
    assert 0 <= val(v, "dotproxy_request_duration_seconds_sum") < 10
    # the upstream: 3 queries, 2 connections (the second resumed), no failure, up
    assert (val(v, "dotproxy_upstream_queries_total", **up),
            val(v, "dotproxy_upstream_connects_total", **up),
            val(v, "dotproxy_upstream_resumptions_total", **up),
            val(v, "dotproxy_upstream_failures_total", **up),
            val(v, "dotproxy_upstream_up", **up)) == (3, 2, 1, 0, 1)
    assert [c.session_reused for c in f.conns] == [False, True]
    assert 0 <= val(v, "dotproxy_upstream_rtt_seconds", **up) < 1.5
    zones = {z: tuple(val(v, "dotproxy_zone_%s_total" % k, zone=z)
                      for k in ("queries", "tcp", "failures"))
             for z in ("corp.test", "hold.test")}
    assert zones == {"corp.test": (1, 0, 0), "hold.test": (0, 0, 0)}
    assert val(v, "dotproxy_build_info", version=dotproxy_version(dotproxy_bin),
               bearssl="0.6") == 1
    assert t0 - 1 <= val(v, "dotproxy_start_time_seconds") <= t1 + 1

    # the gauges: a TCP client that stays, a query that waits on a silent zone
    c = socket.create_connection(("127.0.0.1", port), timeout=3)
    hq = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        hq.settimeout(4)
        hq.sendto(dns.message.make_query("q1.hold.test", "A", use_edns=0).to_wire(),
                  ("127.0.0.1", port))
        assert wait_until(lambda: hold.udp == 1, 2, 0.02)

        def busy():
            _, v, _ = scrape(p)
            return v if val(v, "dotproxy_tcp_clients") == 1 else None
        v = wait_until(busy, 2, 0.05)
        assert v, "the TCP client does not show"
        assert val(v, "dotproxy_queries_in_flight") == 1
        sf = dns.message.from_wire(hq.recvfrom(4096)[0])
    finally:
        c.close()
        hq.close()
    assert sf.rcode() == SERVFAIL
    assert edes(sf) == [(22, "forward zone hold.test (127.0.0.1:%d): no answer in time"
                         % hold.port)]
    v = wait_until(settled, 3, 0.1)
    assert v
    assert val(v, "dotproxy_queries_in_flight") == 0
    assert val(v, "dotproxy_queries_total", transport="udp") == 10
    assert val(v, "dotproxy_responses_total", rcode="SERVFAIL") == 1
    assert val(v, "dotproxy_request_duration_seconds_count") == 11
    assert val(v, "dotproxy_zone_failures_total", zone="hold.test") == 1
    assert val(v, "dotproxy_zone_queries_total", zone="hold.test") == 1

    # the SIGUSR1 line: the same numbers
    st = parse_stats(stats_line(p))
    _, v, _ = scrape(p)
    assert st["udp"] == val(v, "dotproxy_queries_total", transport="udp")
    assert st["tcp"] == val(v, "dotproxy_queries_total", transport="tcp")
    for k, m in (("hits", "cache_hits_total"), ("misses", "cache_misses_total"),
                 ("stale", "cache_stale_total"), ("entries", "cache_entries"),
                 ("evictions", "cache_evictions_total"), ("refused", "refused_total"),
                 ("local", "local_total"), ("hedged", "hedged_total"),
                 ("coalesced", "coalesced_total"), ("prefetches", "prefetches_total"),
                 ("hedges_capped", "hedges_capped_total"),
                 ("in_flight", "queries_in_flight"), ("tcp_clients", "tcp_clients")):
        assert st[k] == val(v, "dotproxy_" + m), k
    assert st["servfail"] == val(v, "dotproxy_responses_total", rcode="SERVFAIL") == 1
    assert st["upstreams"] == {"127.0.0.1:%d" % f.port: tuple(
        val(v, "dotproxy_upstream_%s_total" % k, **up)
        for k in ("queries", "connects", "resumptions", "failures"))}
    assert st["upstreams"]["127.0.0.1:%d" % f.port] == (3, 2, 1, 0)
    assert st["zones"] == {"corp.test": (1, 0, 0), "hold.test": (1, 0, 1)}
    assert p.alive()


def test_sigusr1_line_has_every_counter(proxies, fake_dot):
    """README: "SIGUSR1 writes the same counters on one line of stderr". Every counter of
    /metrics without labels has its number in the line: dropped_total too."""
    f = fake_dot()
    p = start(proxies, spec(f.port))
    resp = bytearray(query_wire("q8.m.test", qid=8))
    resp[2] |= 0x80
    assert udp_exchange(p.port, bytes(resp), timeout=0.3) is None
    body, v, _ = scrape(p)
    assert val(v, "dotproxy_dropped_total") == 1
    line = stats_line(p)
    plain = re.findall(r"^dotproxy_(\w+)_total (\d+)$", body, re.M)
    assert plain
    missing = [n for n, _ in plain
               if not re.search(r"\b(%s|%s)=\d+" % (n, re.sub(r"^cache_", "", n)), line)]
    assert not missing, "counters of /metrics not in the SIGUSR1 line %r: %s" % (line, missing)


def test_metrics_format(proxies, fake_dot, plain_dns):
    """The text format (0.0.4) with two upstreams and two zones: every name dotproxy_,
    counters _total, a HELP and a TYPE for each, every metric's lines one group (the format's
    rule: prometheus_client's parser otherwise files the samples as untyped metrics of their
    own), `promtool check metrics` clean."""
    f1, f2 = fake_dot(), fake_dot()
    z1, z2 = plain_dns("a.test"), plain_dns("b.test")
    p = start(proxies, [spec(f1.port), spec(f2.port)], extra=[
        "--forward-zone", "a.test=127.0.0.1@%d" % z1.port,
        "--forward-zone", "b.test=127.0.0.1@%d" % z2.port])
    assert ask(p.port, "q1.x.test").rcode() == NOERROR
    body, v, fams = scrape(p)
    assert body.endswith("\n")
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", body, re.M))
    helps = dict(re.findall(r"^# HELP (\S+) (.+)$", body, re.M))
    assert set(types) == set(helps), set(types) ^ set(helps)
    assert len(types) == len(re.findall(r"^# TYPE ", body, re.M)), "a TYPE line twice"
    assert set(types.values()) <= {"counter", "gauge", "histogram"}
    for name, t in types.items():
        assert name.startswith("dotproxy_"), name
        assert name.endswith("_total") == (t == "counter"), (name, t)
        assert helps[name].strip(), name
    hist = {n for n, t in types.items() if t == "histogram"}
    samples = [l for l in body.splitlines() if l and not l.startswith("#")]
    for l in samples:
        assert metric_family(l, hist) in types, "a sample without a TYPE: %r" % l
    assert sum(1 for l in samples if l.startswith("dotproxy_upstream_up{")) == 2
    assert sum(1 for l in samples if l.startswith("dotproxy_zone_queries_total{")) == 2
    # one group per metric: once its lines end, the metric does not come back
    order = []
    for l in body.splitlines():
        m = metric_family(l, hist)
        if order and order[-1] == m:
            continue
        order.append(m)
    again = [m for m, n in collections.Counter(order).items() if n > 1]
    assert not again, "metrics whose lines are not one group: %s" % again
    # what prometheus_client makes of it: each metric once, with its type
    names = collections.Counter(f.name for f in fams)
    assert all(n == 1 for n in names.values()), names
    assert not [f.name for f in fams if f.type in ("untyped", "unknown")]
    ftype = {f.name: f.type for f in fams}
    assert ftype["dotproxy_upstream_up"] == "gauge"
    assert ftype["dotproxy_upstream_queries"] == "counter"
    assert ftype["dotproxy_zone_queries"] == "counter"
    assert ftype["dotproxy_request_duration_seconds"] == "histogram"


def test_metrics_promtool(proxies, fake_dot, plain_dns):
    """promtool check metrics (Prometheus' own parser and linter) finds nothing to say."""
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    f1, f2 = fake_dot(), fake_dot()
    z = plain_dns("a.test")
    p = start(proxies, [spec(f1.port), spec(f2.port)],
              extra=["--forward-zone", "a.test=127.0.0.1@%d" % z.port])
    assert ask(p.port, "q1.x.test").rcode() == NOERROR
    st, _, body = get(p.http, "/metrics")
    assert st == 200
    r = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


# ---------------------------------------------------------------- /health

def test_health_frozen_process(proxies, fake_dot):
    """/health is 200 while the loop turns. A SIGSTOPped dotproxy: the kernel still completes
    TCP handshakes on its DNS port (a tcpSocket probe is fooled) and on the HTTP port, but
    /health gets no answer in 2 s; after SIGCONT the waiting request is answered, and new
    ones too."""
    f = fake_dot()
    p = start(proxies, spec(f.port))
    st, hdr, body = get(p.http, "/health")
    assert (st, body) == (200, "ok\n")
    assert hdr["connection"] == "close" and hdr["cache-control"] == "no-store"
    pid = p.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        s = socket.create_connection(("127.0.0.1", p.http), timeout=1)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        s.settimeout(2.0)
        t = time.monotonic()
        with pytest.raises(socket.timeout):
            s.recv(100)
        assert time.monotonic() - t >= 1.9
        d = socket.create_connection(("127.0.0.1", p.port), timeout=1)
        d.close()
    finally:
        os.kill(pid, signal.SIGCONT)
    s.settimeout(2.0)
    out = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        out += chunk
    s.close()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nok\n"), out
    assert get(p.http, "/health")[0] == 200


def test_health_and_ready_during_drain(proxies, fake_dot):
    """SIGTERM with a query held by a slow upstream (--drain-timeout 5000): /ready turns 503
    at once ("draining"), /health stays 200 while the query is finished; exit 0."""
    f = fake_dot(delay=1.5)
    p = start(proxies, spec(f.port), extra=["-t", "6000", "--drain-timeout", "5000"])
    t, out = bg(ask, p.port, "q5.drain.test", timeout=6)
    assert f.wait_queries(1, 3)
    st, _, body = get(p.http, "/ready")
    assert (st, body) == (200, "ready\n")
    p.proc.send_signal(signal.SIGTERM)
    assert p.wait_for("stopping on signal 15", 1.0), p.log()
    st, _, body = get(p.http, "/ready")
    assert (st, body) == (503, "draining: stopping on a signal\n")
    st, _, body = get(p.http, "/health")
    assert (st, body) == (200, "ok\n")
    assert "r" not in out, "the held query was answered before the upstream answered"
    t.join(5)
    assert isinstance(out.get("r"), dns.message.Message) and out["r"].rcode() == NOERROR, out
    assert p.proc.wait(5) == 0, p.log()


# ---------------------------------------------------------------- /ready

def test_ready_probes_the_upstream(proxies, fake_dot):
    """No query yet: /ready is 503 and says why; it starts a connection (". NS"), and a
    /ready a moment later is 200. The probe is no client's query: no answer counted."""
    f = fake_dot()
    p = start(proxies, spec(f.port))
    st, hdr, body = get(p.http, "/ready")
    assert (st, body) == (503, "no upstream verified yet: connecting to %s\n" % label(f.port))
    assert hdr["content-type"] == "text/plain"

    def ready():
        return get(p.http, "/ready")[0] == 200
    assert wait_until(ready, 3, 0.05), p.log()
    assert get(p.http, "/ready")[2] == "ready\n"
    assert f.wait_queries(1, 2)
    probe = f.all_queries()[0].msg()
    assert probe.question[0].name.to_text() == "." and probe.question[0].rdtype == 2
    _, v, _ = scrape(p)
    assert val(v, "dotproxy_upstream_up", upstream="127.0.0.1:%d" % f.port,
               name="dns.test") == 1
    assert val(v, "dotproxy_request_duration_seconds_count") == 0
    assert val(v, "dotproxy_queries_total", transport="udp") == 0


def test_ready_bad_certificate(proxies, fake_dot, pki):
    """An upstream whose certificate chains to another root: /ready stays 503 with one line
    naming the upstream and BearSSL's error; /metrics has it down with failures; a query gets
    SERVFAIL with EDE 23 (Network Error) naming it (dnspython, dig, kdig)."""
    f = fake_dot(chain=pki.other_chain, key=pki.other_key)
    p = start(proxies, spec(f.port))
    assert get(p.http, "/ready")[0] == 503

    def failed():
        st, _, body = get(p.http, "/ready")
        return body if st == 503 and "BR_ERR" in body else None
    body = wait_until(failed, 3, 0.05)
    assert body, p.log()
    assert body.count("\n") == 1 and body.endswith("\n")
    assert body.startswith("upstream %s: " % label(f.port)), body
    assert "BR_ERR_X509_NOT_TRUSTED" in body, body
    _, v, _ = scrape(p)
    up = dict(upstream="127.0.0.1:%d" % f.port, name="dns.test")
    assert val(v, "dotproxy_upstream_up", **up) == 0
    assert val(v, "dotproxy_upstream_failures_total", **up) >= 1
    assert val(v, "dotproxy_upstream_connects_total", **up) >= 1

    name = "secret-host.corp.example"
    r = ask(p.port, name)
    assert r.rcode() == SERVFAIL
    (code, text), = edes(r)
    assert code == 23, edes(r)
    assert text.startswith("upstream %s: " % label(f.port)) and \
        "BR_ERR_X509_NOT_TRUSTED" in text, text
    assert "secret" not in text.lower()
    out = dig(p.port, name)
    assert "status: SERVFAIL" in out and re.search(
        r"; EDE: 23 \(Network Error\): \(upstream 127\.0\.0\.1:%d \(dns\.test\): .*"
        r"BR_ERR_X509_NOT_TRUSTED.*\)" % f.port, out), out
    out = kdig(p.port, name, "+edns")
    assert re.search(r";; EDE: 23 \(Network Error\): 'upstream 127\.0\.0\.1:%d .*"
                     r"BR_ERR_X509_NOT_TRUSTED" % f.port, out), out


def test_http_methods_paths_garbage(proxies, fake_dot):
    """405 (with Allow: GET) for POST and HEAD, 404 for other paths, 400 for what is not an
    HTTP/1.x request line (or a head that does not end in 1 KiB); HTTP/1.0 is served."""
    f = fake_dot()
    p = start(proxies, spec(f.port))
    st, hdr, body = get(p.http, "/health", method="POST")
    assert (st, hdr.get("allow"), body) == (405, "GET", "GET only\n")
    assert get(p.http, "/metrics", method="HEAD")[0] == 405
    st, _, body = get(p.http, "/nope")
    assert (st, body) == (404, "/health, /ready or /metrics\n")
    assert get(p.http, "/health/")[0] == 404
    assert get(p.http, "/")[0] == 404
    for junk in (b"hello\r\n\r\n", b"GET /health\r\n\r\n", b"GET /health HTTP/2.0\r\n\r\n",
                 b"\r\n\r\n", b"GET  /health HTTP/1.1\r\n\r\n", b"x" * 1024):
        out = raw_http(p.http, junk)
        assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n"), (junk[:40], out)
        assert out.endswith(b"\r\n\r\nbad request\n")
    # more than the 1 KiB buffer: the 400 goes out, but the close with unread bytes is a
    # reset, which may overtake it
    try:
        out = raw_http(p.http, b"GET /" + b"x" * 2000 + b" HTTP/1.1\r\n\r\n")
        assert out == b"" or out.startswith(b"HTTP/1.1 400 Bad Request\r\n"), out
    except ConnectionResetError:
        pass
    out = raw_http(p.http, b"GET /health HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"ok\n"), out
    assert p.alive()
    assert get(p.http, "/health")[0] == 200


def test_http_slowloris_and_connection_limit(proxies, fake_dot):
    """A client that sends half a request does not hold up others and is closed after 5 s.
    With 4 such clients every slot is taken: a fifth connection is closed unanswered at
    once, and dotproxy goes on (a new request is served once the slots free up)."""
    f = fake_dot()
    p = start(proxies, spec(f.port))
    slow = socket.create_connection(("127.0.0.1", p.http), timeout=3)
    t_slow = time.monotonic()
    slow.sendall(b"GET /hea")
    for _ in range(3):
        t = time.monotonic()
        assert get(p.http, "/health", timeout=1)[0] == 200
        assert time.monotonic() - t < 0.5
    idle = [socket.create_connection(("127.0.0.1", p.http), timeout=3) for _ in range(3)]
    time.sleep(0.3)                      # accepted: the 4 slots are taken
    fifth = socket.create_connection(("127.0.0.1", p.http), timeout=3)
    t = time.monotonic()
    try:
        fifth.sendall(b"GET /health HTTP/1.1\r\n\r\n")
        fifth.settimeout(2)
        got = fifth.recv(100)
    except ConnectionResetError:
        got = b""
    assert got == b"" and time.monotonic() - t < 1.0, got
    fifth.close()
    assert p.alive()
    slow.settimeout(8)
    assert slow.recv(100) == b""
    held = time.monotonic() - t_slow
    assert 4.5 <= held <= 7.0, "the half request was held %.1f s" % held
    for s in idle:
        s.settimeout(3)
        assert s.recv(100) == b""
        s.close()
    slow.close()
    assert get(p.http, "/health")[0] == 200


# ---------------------------------------------------------------- --probe

def probe(binary, *args, timeout=5):
    t = time.monotonic()
    r = run_dotproxy(binary, list(args), timeout=timeout, check_safe=False)
    return r.returncode, time.monotonic() - t, r.stderr


def test_probe(proxies, dotproxy_bin):
    """--probe IP@PORT, --probe=IP@PORT and IPv4:PORT: exit 0 at once against a running
    dotproxy (which answers localhost. itself: its upstream need not work); 1 at once when
    nothing listens; 1 after about a second against a frozen one."""
    p = proxies.start(spec(free_port()))
    for args in (["--probe", "127.0.0.1@%d" % p.port], ["--probe=127.0.0.1@%d" % p.port],
                 ["--probe", "127.0.0.1:%d" % p.port]):
        rc, dt, err = probe(dotproxy_bin, *args)
        assert rc == 0 and dt < 1.0, (args, rc, dt, err)
    rc, dt, err = probe(dotproxy_bin, "--probe", "127.0.0.1@%d" % free_port())
    assert rc == 1 and dt < 1.5, (rc, dt, err)
    assert "--probe: no answer from 127.0.0.1@" in err, err
    os.kill(p.proc.pid, signal.SIGSTOP)
    try:
        rc, dt, err = probe(dotproxy_bin, "--probe", "127.0.0.1@%d" % p.port)
    finally:
        os.kill(p.proc.pid, signal.SIGCONT)
    assert rc == 1 and 0.9 <= dt < 2.0, (rc, dt, err)
    rc, _, err = probe(dotproxy_bin, "--probe", "not-an-address")
    assert rc == 1 and "bad --probe 'not-an-address'" in err, err
    assert probe(dotproxy_bin, "--probe", "127.0.0.1@%d" % p.port)[0] == 0


def test_http_and_probe_ipv6(proxies, dotproxy_bin, have_ipv6):
    """The --listen forms on ::1: --http [::1]:PORT serves, --probe [::1]:PORT and
    --probe ::1@PORT get their answer."""
    if not have_ipv6:
        pytest.skip("no IPv6 on this host")
    port, hp = free_port(), free_port()
    p = proxies.start(spec(free_port()), listen="[::1]:%d" % port, port=port,
                      extra=["--http", "[::1]:%d" % hp])
    assert p.wait_for("on http://[::1]:%d" % hp, 1), p.log()
    c = http.client.HTTPConnection("::1", hp, timeout=2)
    c.request("GET", "/health")
    r = c.getresponse()
    assert (r.status, r.read()) == (200, b"ok\n")
    c.close()
    for a in ("[::1]:%d" % port, "::1@%d" % port):
        rc, dt, err = probe(dotproxy_bin, "--probe", a)
        assert rc == 0 and dt < 1.0, (a, rc, err)


def test_probe_default_port(dotproxy_bin, tmp_path):
    """The default forms, `--probe` and `--probe 127.0.0.1` (port 53), in a private network
    namespace (its own loopback) where a dotproxy listens on 127.0.0.1@53."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("needs root, unshare and ip (a private network namespace)")
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -n is not allowed here")
    args = ["-l", "127.0.0.1@53", "-u", "127.0.0.1@1#dns.test"]
    check_safe_args(args, {})
    log = tmp_path / "dotproxy.log"
    script = r'''
ip link set lo up || exit 77
"$0" "$@" 2>"$LOG" &
pid=$!
i=0
until grep -q ready "$LOG"; do i=$((i+1)); [ $i -gt 50 ] && break; sleep 0.1; done
"$0" --probe; echo "bare=$?"
"$0" --probe 127.0.0.1; echo "ip=$?"
"$0" --probe 127.0.0.1@54; echo "other=$?"
kill $pid; wait $pid; echo "stopped=$?"
'''
    r = subprocess.run(["unshare", "-n", "sh", "-c", script, dotproxy_bin] + args,
                       capture_output=True, text=True, timeout=20,
                       env=proxy_env({"LOG": str(log)}))
    if r.returncode == 77:
        pytest.skip("cannot bring up lo in the namespace: " + r.stderr)
    res = dict(re.findall(r"^(\w+)=(\d+)$", r.stdout, re.M))
    assert res == {"bare": "0", "ip": "0", "other": "1", "stopped": "0"}, \
        (r.stdout, r.stderr, log.read_text())


# ---------------------------------------------------------------- EDE (RFC 8914)

def no_ede_without_edns(port, name, rcode, **kw):
    """A client without EDNS gets no OPT, so no EDE (dnspython, dig +noedns, kdig)."""
    r = ask(port, name, edns=False, **kw)
    assert r.rcode() == rcode and r.edns < 0 and not r.options, r
    out = dig(port, name, "+noedns")
    assert "EDE" not in out and "OPT PSEUDOSECTION" not in out, out
    out = kdig(port, name)
    assert "EDE" not in out and "EDNS PSEUDOSECTION" not in out, out


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_ede_unreachable(proxies, fake_dot, kind):
    """SERVFAIL because no upstream answered: EDE 22 (No Reachable Authority) or 23 (Network
    Error), the text naming the upstream, never the name asked. "refused": nothing listens
    on the upstream's port; "silent": it completes handshakes and never answers (-t 400:
    "no answer from upstream ... in 400 ms")."""
    if kind == "refused":
        uport = free_port()
    else:
        uport = fake_dot(mode="silent").port
    p = proxies.start(spec(uport), extra=["-t", "400"])
    name = "private-name-77.corp.example"
    r = ask(p.port, name)
    assert r.rcode() == SERVFAIL
    (code, text), = edes(r)
    assert code in (22, 23), (code, text)
    assert label(uport) in text and "private" not in text and "corp" not in text, text
    if kind == "silent":
        assert (code, text) == (22, "no answer from upstream %s in 400 ms" % label(uport))
    else:
        assert text.startswith("upstream %s: connect failed: " % label(uport)), text
    out = dig(p.port, name)
    assert "status: SERVFAIL" in out and re.search(
        r"; EDE: 2[23] \((No Reachable Authority|Network Error)\): \((no answer from )?"
        r"upstream 127\.0\.0\.1:%d \(dns\.test\)" % uport, out), out
    out = kdig(p.port, name, "+edns")
    assert re.search(r";; EDE: 2[23] \(.*\): '.*upstream 127\.0\.0\.1:%d" % uport, out), out
    no_ede_without_edns(p.port, name, SERVFAIL)


def test_ede_refused_by_allow(proxies, fake_dot):
    """A client outside --allow: REFUSED with EDE 18 (Prohibited) and its text over TCP;
    over UDP only as much of it as keeps the answer no larger than the query (a forged
    source gains nothing: test_refused_no_larger_than_the_query): dig's query carries a
    12-byte cookie, room for the code without the text; a bare EDNS query has room for
    neither.  Nothing for a client without EDNS."""
    f = fake_dot()
    p = proxies.start(spec(f.port), extra=["--allow", "127.0.0.1/32"])
    r = ask(p.port, "q1.acl.test", tcp=True, source="127.0.0.2")
    assert r.rcode() == REFUSED and edes(r) == [(18, "not in --allow")], r
    r = ask(p.port, "q1.acl.test", tcp=False, source="127.0.0.2")
    assert r.rcode() == REFUSED and edes(r) == [], r
    out = dig(p.port, "q1.acl.test", "-b", "127.0.0.2")
    assert "status: REFUSED" in out and "; EDE: 18 (Prohibited)" in out, out
    assert "not in --allow" not in out, out
    out = dig(p.port, "q1.acl.test", "-b", "127.0.0.2", "+tcp")
    assert "status: REFUSED" in out and "; EDE: 18 (Prohibited): (not in --allow)" in out, out
    out = kdig(p.port, "q1.acl.test", "-b", "127.0.0.2", "+edns", "+tcp")
    assert ";; EDE: 18 (Prohibited): 'not in --allow'" in out, out
    r = ask(p.port, "q1.acl.test", edns=False, source="127.0.0.2")
    assert r.rcode() == REFUSED and r.edns < 0
    assert ask(p.port, "q1.acl.test").rcode() == NOERROR
    assert f.queries == 1


def test_refused_no_larger_than_the_query(proxies, fake_dot):
    """query_receive's promise for a client outside --allow: "REFUSED (RFC 8906 3.1.5), small
    and no larger than the query, whatever else it is" (no amplifier towards a spoofed
    source). A plain EDNS query (a bare OPT) gets an answer that is no longer."""
    f = fake_dot()
    p = proxies.start(spec(f.port), extra=["--allow", "127.0.0.1/32"])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.2", 0))
        s.settimeout(2)
        for q in (query_wire("q1.acl.test", edns=True), query_wire("a", edns=True),
                  query_wire("q1.acl.test")):
            s.sendto(q, ("127.0.0.1", p.port))
            a = s.recv(4096)
            assert Wire(a).rcode == REFUSED
            assert len(a) <= len(q), "REFUSED of %d bytes to a query of %d" % (len(a), len(q))
    finally:
        s.close()


def test_ede_stale_answer(proxies, fake_dot):
    """--serve-stale with the upstream gone: the expired answer, TTL 30, EDE 3 (Stale
    Answer); none for a client without EDNS."""
    f = fake_dot(ttl=1)
    p = proxies.start(spec(f.port), extra=["--cache-max-ttl", "1", "--serve-stale", "60",
                                           "-t", "1000", "--max-backoff", "60000"])
    name = "q7.stale.test"
    r = ask(p.port, name)
    assert r.rcode() == NOERROR and not edes(r)
    time.sleep(1.3)
    f.stop()
    r = ask(p.port, name)
    assert r.rcode() == NOERROR and [rr.ttl for rr in r.answer] == [30], r
    assert edes(r) == [(3, None)] or edes(r) == [(3, "")], edes(r)
    out = dig(p.port, name)
    assert "; EDE: 3 (Stale Answer)" in out and "192.0.2.7" in out, out
    out = kdig(p.port, name, "+edns")
    assert ";; EDE: 3 (Stale Answer)" in out, out
    r = ask(p.port, name, edns=False)
    assert r.rcode() == NOERROR and r.edns < 0 and r.answer
    assert parse_stats(stats_line(p))["stale"] == 4


def test_ede_special_use_names(proxies, fake_dot):
    """Names dotproxy answers itself (RFC 6761): EDE 0 (Other) with a fixed text; another
    class than IN there: REFUSED, EDE 21 (Not Supported)."""
    f = fake_dot()
    p = proxies.start(spec(f.port))
    r = ask(p.port, "localhost")
    assert r.rcode() == NOERROR and edes(r) == [(0, LOCAL_TEXT)]
    r = ask(p.port, "some.name.invalid", tcp=True)
    assert r.rcode() == NXDOMAIN and edes(r) == [(0, LOCAL_TEXT)]
    q = dns.message.make_query("localhost", "A", rdclass="CH", use_edns=0)
    r = dns.query.udp(q, "127.0.0.1", port=p.port, timeout=3)
    assert r.rcode() == REFUSED and edes(r) == [(21, "special-use name: class IN only")]
    out = dig(p.port, "localhost")
    assert "; EDE: 0 (Other): (%s)" % LOCAL_TEXT in out, out
    out = kdig(p.port, "x.onion", "+edns")
    assert ";; EDE: 0 (Other): '%s'" % LOCAL_TEXT in out, out
    no_ede_without_edns(p.port, "localhost", NOERROR)
    assert f.queries == 0


def test_ede_from_upstream_passed_on(proxies, scripted):
    """An EDE the upstream sends reaches the client (and again from the cache); the other
    options of its OPT (NSID, Padding) do not; a client without EDNS gets none."""
    def script(q, fk):
        if q.qname.lower().startswith("blocked."):
            return reply(q, rcode=NXDOMAIN, authority=[soa("ads.test.", 60, 60)], options=[
                generic(3, b"upstream-nsid"), dns.edns.EDEOption(15, "blocked by policy"),
                generic(12, b"\0" * 8)])
        if q.qname.lower().startswith("filtered."):
            return reply(q, answer=[rr(q.qname, 60, "A", "192.0.2.1")],
                         options=[dns.edns.EDEOption(17)])
        return reply(q, answer=[rr(q.qname, 60, "A", "192.0.2.99")] if q.qtype == 1 else [])

    f = scripted(script)
    p = proxies.start(spec(f.port))
    for _ in range(2):                  # the second from the cache
        r = ask(p.port, "blocked.ads.test")
        assert r.rcode() == NXDOMAIN and edes(r) == [(15, "blocked by policy")], r
        assert [o.otype for o in r.options] == [EDE], r.options
    assert len(f.asked("blocked.ads.test")) == 1
    r = ask(p.port, "filtered.ads.test", tcp=True)
    assert r.rcode() == NOERROR and [c for c, _ in edes(r)] == [17], r
    out = dig(p.port, "blocked.ads.test")
    assert "; EDE: 15 (Blocked): (blocked by policy)" in out and "NSID" not in out, out
    out = kdig(p.port, "blocked.ads.test", "+edns")
    assert ";; EDE: 15 (Blocked): 'blocked by policy'" in out, out
    no_ede_without_edns(p.port, "blocked.ads.test", NXDOMAIN)
    assert not f.errors, f.errors


# ---------------------------------------------------------------- systemd: sd_notify

class Notify:
    """A unix datagram socket for NOTIFY_SOCKET (a path, or "@name" abstract); every
    datagram kept with its arrival time."""

    def __init__(self, abstract=False):
        self.dir = tempfile.mkdtemp(prefix="dpn-")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            self.name = "@dotproxy-test-%d-%s" % (os.getpid(), secrets.token_hex(4))
            self.sock.bind("\0" + self.name[1:])
        else:
            self.name = os.path.join(self.dir, "notify")
            self.sock.bind(self.name)
        self.msgs = []
        self._cv = threading.Condition()
        self._stop = False
        self.sock.settimeout(0.1)
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._cv:
                self.msgs.append((time.monotonic(), data.decode()))
                self._cv.notify_all()

    def texts(self):
        with self._cv:
            return [m for _, m in self.msgs]

    def wait(self, pred, timeout):
        """The first datagram for which pred(text) is true, or None."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for t, m in self.msgs:
                    if pred(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(min(left, 0.1))

    def count(self, text, since=0.0, until=float("inf")):
        with self._cv:
            return sum(1 for t, m in self.msgs if m == text and since <= t < until)

    def close(self):
        self._stop = True
        self._t.join(1)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify():
    made = []

    def make(**kw):
        n = Notify(**kw)
        made.append(n)
        return n
    yield make
    for n in made:
        n.close()


class Launched:
    """dotproxy started without waiting for its "ready" line (like helpers.DotProxy
    otherwise: .proc, .lines, .wait_for, .log, .stop, .count)."""

    def __init__(self, binary, args, env=None, cmd_prefix=(), stderr=None, pass_fds=()):
        env = proxy_env(env)
        check_safe_args(args, env)
        self.args = args
        self.lines = []
        self._cv = threading.Condition()
        self.proc = subprocess.Popen(list(cmd_prefix) + [binary] + list(args),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=stderr or subprocess.PIPE, env=env,
                                     pass_fds=pass_fds)
        self._reader = None
        if stderr is None:
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()

    _read = helpers.DotProxy._read
    wait_for = helpers.DotProxy.wait_for
    count = helpers.DotProxy.count
    log = helpers.DotProxy.log
    alive = helpers.DotProxy.alive

    def stop(self, sig=signal.SIGTERM, timeout=3.0):
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._reader:
            self._reader.join(2)
        return self.proc.returncode


@pytest.fixture
def launched():
    made = []

    def make(*a, **kw):
        p = Launched(*a, **kw)
        made.append(p)
        return p
    yield make
    for p in made:
        p.stop()


def test_notify_ready_status_stopping(launched, notify, fake_dot, dotproxy_bin, pki):
    """NOTIFY_SOCKET: READY=1 once listening (a TCP connect and a query work the moment it
    comes), STATUS= as the upstream goes up, down (stopped) and up again (restarted),
    STOPPING=1 on SIGTERM; no WATCHDOG=1 without WATCHDOG_USEC."""
    n = notify()
    f = fake_dot()
    port = free_port()
    p = launched(dotproxy_bin, ["-l", "127.0.0.1@%d" % port, "-u", spec(f.port), "-c", pki.root,
                                "-t", "1000", "--max-backoff", "60000"],
                 env={"NOTIFY_SOCKET": n.name})
    first = n.wait(lambda m: True, 5)
    assert first == "READY=1\nSTATUS=listening; 1 upstream, none verified yet", \
        (first, p.log())
    socket.create_connection(("127.0.0.1", port), timeout=1).close()
    r = udp_exchange(port, dns.message.make_query("localhost", "A").to_wire(), timeout=1)
    assert r is not None and dns.message.from_wire(r).rcode() == NOERROR
    assert ask(port, "q1.sd.test").rcode() == NOERROR
    assert n.wait(lambda m: m == "STATUS=1 of 1 upstream up", 2), n.texts()
    f.stop()
    assert ask(port, "q2.sd.test").rcode() == SERVFAIL
    assert n.wait(lambda m: m == "STATUS=0 of 1 upstream up", 2), n.texts()
    f2 = FakeDoT(pki.chain, pki.key, port=f.port)
    try:
        p.proc.send_signal(signal.SIGHUP)        # try again now, not after the back-off
        assert p.wait_for("SIGHUP", 2)

        def up_again():
            return ask(port, "q3.sd.test").rcode() == NOERROR
        assert wait_until(up_again, 5, 0.2), p.log()
        assert wait_until(lambda: n.texts().count("STATUS=1 of 1 upstream up") == 2, 2), \
            n.texts()
        p.proc.send_signal(signal.SIGTERM)
        assert n.wait(lambda m: m.startswith("STOPPING=1"), 3), n.texts()
        assert p.proc.wait(5) == 0, p.log()
    finally:
        f2.stop()
    texts = n.texts()
    assert "STOPPING=1\nSTATUS=draining: 0 queries in flight" in texts, texts
    assert not [m for m in texts if "WATCHDOG" in m], texts
    assert texts[0].startswith("READY=1") and sum("READY=1" in m for m in texts) == 1


def test_notify_watchdog(launched, notify, dotproxy_bin):
    """WATCHDOG_USEC=400000 (WATCHDOG_PID its own): WATCHDOG=1 about every 200 ms from the
    loop, none while it is stopped; WATCHDOG_PID of another process: none at all."""
    n = notify()
    port = free_port()
    args = ["-l", "127.0.0.1@%d" % port, "-u", "127.0.0.1@%d#dns.test" % free_port()]
    p = launched(dotproxy_bin, args, env={"NOTIFY_SOCKET": n.name, "WATCHDOG_USEC": "400000"},
                 cmd_prefix=["sh", "-c", 'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$@"', "sh"])
    assert n.wait(lambda m: m.startswith("READY=1"), 5), p.log()
    t0 = time.monotonic()
    time.sleep(2.0)
    k = n.count("WATCHDOG=1", t0, t0 + 2.0)
    assert 6 <= k <= 14, "%d WATCHDOG=1 in 2 s" % k
    with n._cv:
        times = [t for t, m in n.msgs if m == "WATCHDOG=1" and t >= t0]
    gaps = sorted(b - a for a, b in zip(times, times[1:]))
    assert 0.1 <= gaps[len(gaps) // 2] <= 0.3, gaps
    os.kill(p.proc.pid, signal.SIGSTOP)
    ts = time.monotonic()
    time.sleep(0.8)
    tc = time.monotonic()
    os.kill(p.proc.pid, signal.SIGCONT)
    assert n.count("WATCHDOG=1", ts + 0.05, tc) == 0
    assert wait_until(lambda: n.count("WATCHDOG=1", tc) > 0, 1, 0.05)
    assert p.stop() == 0

    n2 = notify()
    p2 = launched(dotproxy_bin, ["-l", "127.0.0.1@%d" % free_port()] + args[2:],
                  env={"NOTIFY_SOCKET": n2.name, "WATCHDOG_USEC": "400000",
                       "WATCHDOG_PID": "1"})
    assert n2.wait(lambda m: m.startswith("READY=1"), 5), p2.log()
    time.sleep(0.8)
    assert n2.count("WATCHDOG=1") == 0, n2.texts()


def test_notify_abstract_socket(launched, notify, dotproxy_bin):
    """NOTIFY_SOCKET=@name (the abstract namespace, as systemd sets it in containers)."""
    n = notify(abstract=True)
    port = free_port()
    p = launched(dotproxy_bin, ["-l", "127.0.0.1@%d" % port,
                                "-u", "127.0.0.1@%d#dns.test" % free_port()],
                 env={"NOTIFY_SOCKET": n.name})
    assert n.wait(lambda m: m.startswith("READY=1\n"), 5), p.log()
    p.proc.send_signal(signal.SIGTERM)
    assert n.wait(lambda m: m.startswith("STOPPING=1\n"), 3), n.texts()
    assert p.proc.wait(3) == 0


def test_notify_socket_missing(proxies):
    """A NOTIFY_SOCKET that is not there: a warning naming it, and dotproxy serves."""
    p = proxies.start(spec(free_port()), env={"NOTIFY_SOCKET": "/nonexistent/notify"})
    assert p.wait_for("NOTIFY_SOCKET /nonexistent/notify", 1), p.log()
    assert ask(p.port, "localhost").rcode() == NOERROR


# ---------------------------------------------------------------- systemd: socket activation

LAUNCHER = r'''
import os, sys
fds = [int(a) for a in sys.argv[1:3]]
high = [os.dup(fd) for fd in fds]          # out of the way of 3 and 4
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.set_inheritable(3 + i, True)        # dup2 onto itself keeps close-on-exec
for fd in set(fds + high) - {3, 4}:
    os.close(fd)
os.environ["LISTEN_FDS"] = "2"
os.environ["LISTEN_PID"] = sys.argv[3] if sys.argv[3] != "self" else str(os.getpid())
os.execv(sys.argv[4], sys.argv[4:])
'''


def socket_inodes(port):
    """{inode: "udp"|"tcp"} of the sockets bound to 127.0.0.1:port (TCP: listening)."""
    out = {}
    hexaddr = "0100007F:%04X" % port
    for proto in ("udp", "tcp"):
        with open("/proc/net/" + proto) as f:
            for line in f.readlines()[1:]:
                c = line.split()
                if c[1] == hexaddr and (proto == "udp" or c[3] == "0A"):
                    out[int(c[9])] = proto
    return out


def fd_inode(pid, fd):
    m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink("/proc/%d/fd/%d" % (pid, fd)))
    return int(m.group(1)) if m else None


@pytest.mark.parametrize("how", ["systemd-socket-activate", "launcher"])
def test_socket_activation(launched, fake_dot, dotproxy_bin, pki, how):
    """LISTEN_FDS / LISTEN_PID with a datagram and a stream socket on one loopback address,
    from systemd-socket-activate (two of them nested: the outer gives the datagram socket,
    the inner adds the stream one and passes both on; it starts dotproxy at the first
    query, which then waits in the socket) or from the test itself (a launcher that sets
    LISTEN_PID to its own pid and execs; stream socket first). Queries are answered over
    both; --listen is not used; descriptors 3 and 4 stay the sockets given."""
    f = fake_dot()
    port, ignored = free_port(), free_port()
    args = ["-l", "127.0.0.1@%d" % ignored, "-u", spec(f.port), "-c", pki.root]
    socks = []
    if how == "systemd-socket-activate":
        sa = shutil.which("systemd-socket-activate")
        if not sa:
            pytest.skip("systemd-socket-activate is not installed")
        prefix = [sa, "-d", "-l", "127.0.0.1:%d" % port, sa, "-l", "127.0.0.1:%d" % port]
        p = launched(dotproxy_bin, args, cmd_prefix=prefix)
    else:
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        socks = [t, u]
        t.bind(("127.0.0.1", port))
        t.listen(16)
        u.bind(("127.0.0.1", port))
        prefix = [sys.executable, "-c", LAUNCHER, str(t.fileno()), str(u.fileno()), "self"]
        p = launched(dotproxy_bin, args, cmd_prefix=prefix, pass_fds=(t.fileno(), u.fileno()))
    try:
        def first():                       # the first query may start dotproxy
            try:
                return ask(port, "q1.sa.test", timeout=0.5)
            except (dns.exception.Timeout, OSError):
                return None
        r = wait_until(first, 5, 0.1)
        assert r is not None and r.rcode() == NOERROR, p.log()
        assert p.wait_for("listening on 2 sockets from the service manager", 2), p.log()
        assert ask(port, "q2.sa.test", tcp=True).rcode() == NOERROR
        assert ask(port, "localhost", tcp=True).rcode() == NOERROR
        assert ask(port, "localhost").rcode() == NOERROR
        assert udp_exchange(ignored, query_wire("localhost"), timeout=0.3) is None
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", ignored), timeout=1)
        assert "listening on 127.0.0.1:%d" % ignored not in p.log()
        kinds = socket_inodes(port)
        assert sorted(kinds.values()) == ["tcp", "udp"], kinds
        given = {fd_inode(p.proc.pid, 3), fd_inode(p.proc.pid, 4)}
        assert given == set(kinds), (given, kinds)
        if socks:
            assert given == {os.fstat(s.fileno()).st_ino for s in socks}
        assert p.stop() == 0, p.log()
    finally:
        for s in socks:
            s.close()


def test_socket_activation_other_pid(launched, dotproxy_bin, pki):
    """LISTEN_PID of another process: the sockets are not dotproxy's (closed), --listen is
    used."""
    port, lport = free_port(), free_port()
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        t.bind(("127.0.0.1", port))
        t.listen(16)
        u.bind(("127.0.0.1", port))
        prefix = [sys.executable, "-c", LAUNCHER, str(t.fileno()), str(u.fileno()), "1"]
        p = launched(dotproxy_bin, ["-l", "127.0.0.1@%d" % lport,
                                    "-u", "127.0.0.1@%d#dns.test" % free_port()],
                     cmd_prefix=prefix, pass_fds=(t.fileno(), u.fileno()))
        assert p.wait_for("ready", 5), p.log()
        assert "from the service manager" not in p.log()
        assert ask(lport, "localhost").rcode() == NOERROR
        ours = {os.fstat(s.fileno()).st_ino for s in (t, u)}
        fds = {int(x): fd_inode(p.proc.pid, int(x)) for x in os.listdir("/proc/%d/fd" %
                                                                         p.proc.pid)}
        assert not ours & set(fds.values()), fds
    finally:
        t.close()
        u.close()


# ---------------------------------------------------------------- logs

LEVEL = {"error": 3, "fatal": 3, "warn": 4, "info": 6, "debug": 7}
PREFIXED = re.compile(r"^<(\d)>dotproxy: (error|fatal|warn|info|debug): ")


def run_logged(binary, args, env, actions, journal=True):
    """dotproxy with stderr on a pipe of the test's, JOURNAL_STREAM naming that pipe (or
    another one): runs actions(proc, port) then SIGTERM; returns the stderr lines."""
    r, w = os.pipe()
    st = os.fstat(w)
    env = dict(env)
    env["JOURNAL_STREAM"] = "%d:%d" % (st.st_dev, st.st_ino + (0 if journal else 1))
    check_safe_args(args, proxy_env(env))
    p = subprocess.Popen([binary] + args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=w, env=proxy_env(env))
    os.close(w)
    chunks = []
    t = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(r, 65536), b"")),
                         daemon=True)
    t.start()
    try:
        actions(p)
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        t.join(3)
        os.close(r)
    return b"".join(chunks).decode().splitlines()


def test_journal_prefixes_by_level(dotproxy_bin, fake_dot, pki):
    """JOURNAL_STREAM names stderr: every line starts with <N> by its level (<4> warn, <6>
    info, <7> debug; <3> for a fatal error); naming another stream, or none: no prefix."""
    dead = free_port()
    port = free_port()
    args = ["-v", "-l", "127.0.0.1@%d" % port, "-u", spec(dead), "-t", "500"]

    def traffic(p):
        assert wait_until(lambda: helpers.wait_tcp_listening("127.0.0.1", port, 0.2), 5)
        ask(port, "q1.log.test")
        ask(port, "localhost")

    lines = run_logged(dotproxy_bin, args, {}, traffic)
    assert lines
    bad = [l for l in lines if not PREFIXED.match(l)]
    assert not bad, bad
    for l in lines:
        m = PREFIXED.match(l)
        assert int(m.group(1)) == LEVEL[m.group(2)], l
    levels = {int(PREFIXED.match(l).group(1)) for l in lines}
    assert {4, 6, 7} <= levels, lines
    # a fatal error after start-up: <3>
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    try:
        lines = run_logged(dotproxy_bin, ["-l", "127.0.0.1@%d" % busy.getsockname()[1],
                                          "-u", spec(dead)], {}, lambda p: p.wait(5))
    finally:
        busy.close()
    assert [l for l in lines if l.startswith("<3>dotproxy: fatal: cannot listen on")], lines
    assert all(PREFIXED.match(l) for l in lines), lines
    # another stream than stderr: no prefix
    lines = run_logged(dotproxy_bin, args, {}, traffic, journal=False)
    assert lines and all(l.startswith("dotproxy: ") for l in lines), lines
    # none at all: no prefix
    p = helpers.DotProxy(dotproxy_bin, args[1:], port=port)
    p.stop()
    assert all(l.startswith("dotproxy: ") for l in p.lines), p.lines


def test_journal_prefix_on_the_stats_line(dotproxy_bin):
    """Under systemd the SIGUSR1 line is a line of stderr like the others: with its <6>."""
    port = free_port()
    args = ["-l", "127.0.0.1@%d" % port, "-u", spec(free_port())]

    def usr1(p):
        assert wait_until(lambda: helpers.wait_tcp_listening("127.0.0.1", port, 0.2), 5)
        p.send_signal(signal.SIGUSR1)
        time.sleep(0.3)
    lines = run_logged(dotproxy_bin, args, {}, usr1)
    stats = [l for l in lines if "stats:" in l]
    assert len(stats) == 1, lines
    assert stats[0].startswith("<6>dotproxy: "), stats[0]


def test_journal_prefix_on_option_errors(dotproxy_bin):
    """Under systemd a bad option (in DOTPROXY_OPTS, say) is fatal: its line says so (<3>),
    or journald files it at the default priority, info."""
    lines = run_logged(dotproxy_bin, ["--timeout", "5", "-l", "127.0.0.1@%d" % free_port(),
                                      "-u", spec(free_port())], {}, lambda p: p.wait(5))
    assert lines and lines[0].startswith("<3>dotproxy: fatal: bad --timeout"), lines


def unshare_mount_ok():
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("mount"):
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


SYSLOG_WRAP = 'mount --bind "$1" /dev || exit 77; shift; exec "$@"'


def syslog_run(binary, args, devdir, actions):
    """dotproxy --syslog in a private mount namespace whose /dev is devdir."""
    check_safe_args(args, {})
    p = subprocess.Popen(["unshare", "-m", "sh", "-c", SYSLOG_WRAP, "sh", devdir, binary]
                         + args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=proxy_env())
    try:
        actions(p)
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            err = p.communicate(timeout=5)[1]
        except subprocess.TimeoutExpired:
            p.kill()
            err = p.communicate()[1]
    if p.returncode == 77:
        pytest.skip("cannot bind-mount over /dev here: " + err.decode())
    return p.returncode, err.decode()


@pytest.fixture
def syslog_dev():
    """A directory to bind over /dev, with a unix datagram socket as its "log"."""
    if not unshare_mount_ok():
        pytest.skip("needs root and unshare -m (a private mount namespace)")
    d = tempfile.mkdtemp(prefix="dpl-")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(os.path.join(d, "log"))
    s.settimeout(0.2)
    yield d, s
    s.close()
    shutil.rmtree(d, ignore_errors=True)


def drain(s, until, pred=None):
    out = []
    end = time.monotonic() + until
    while time.monotonic() < end:
        try:
            out.append(s.recv(4096).decode())
        except socket.timeout:
            continue
        if pred and pred(out):
            break
    return out


def test_syslog(syslog_dev, dotproxy_bin):
    """--syslog: each line to /dev/log as "<PRI>dotproxy: LEVEL: ..." with facility daemon
    (<30> info, <28> warn, <31> debug), nothing on stderr."""
    d, s = syslog_dev
    port = free_port()
    got = []

    def act(p):
        got.extend(drain(s, 5, lambda o: any("ready:" in m for m in o)))
        ask(port, "q1.log.test", timeout=2)
        got.extend(drain(s, 0.5))
    rc, err = syslog_run(dotproxy_bin, ["--syslog", "-v", "-l", "127.0.0.1@%d" % port, "-u",
                                        spec(free_port()), "-t", "500"], d, act)
    got.extend(drain(s, 0.3))
    assert rc == 0, err
    assert err == "", err
    assert any(m.startswith("<30>dotproxy: info: ready: ") for m in got), got
    assert any(m.startswith("<28>dotproxy: warn: upstream ") for m in got), got
    assert any(m.startswith("<31>dotproxy: debug: ") for m in got), got
    pri = {"info": 30, "warn": 28, "debug": 31, "error": 27}
    for m in got:
        mm = re.match(r"^<(\d+)>dotproxy: (\w+): ", m)
        assert mm and int(mm.group(1)) == pri[mm.group(2)], m
        assert not m.endswith("\n")


def test_syslog_gets_the_stats_line(syslog_dev, dotproxy_bin):
    """--syslog: the SIGUSR1 line goes to the system logger too (<30>), not to stderr (which
    procd files as daemon.err)."""
    d, s = syslog_dev
    port = free_port()
    got = []

    def act(p):
        got.extend(drain(s, 5, lambda o: any("ready:" in m for m in o)))
        p.send_signal(signal.SIGUSR1)
        got.extend(drain(s, 0.5))
    rc, err = syslog_run(dotproxy_bin, ["--syslog", "-l", "127.0.0.1@%d" % port, "-u",
                                        spec(free_port())], d, act)
    assert rc == 0
    assert [m for m in got if m.startswith("<30>dotproxy: stats: ")], (got, err)
    assert "stats:" not in err, err


def test_syslog_missing_falls_back_to_stderr(dotproxy_bin):
    """--syslog without /dev/log: a warning, then the lines on stderr."""
    if not unshare_mount_ok():
        pytest.skip("needs root and unshare -m (a private mount namespace)")
    d = tempfile.mkdtemp(prefix="dpe-")
    port = free_port()
    try:
        def act(p):
            assert helpers.wait_tcp_listening("127.0.0.1", port, 5)
        rc, err = syslog_run(dotproxy_bin, ["--syslog", "-l", "127.0.0.1@%d" % port, "-u",
                                            spec(free_port())], d, act)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert rc == 0, err
    lines = err.splitlines()
    assert lines[0].startswith("dotproxy: warn: --syslog: /dev/log: "), lines
    assert "logging to stderr" in lines[0]
    assert any("dotproxy: info: ready: " in l for l in lines), lines
