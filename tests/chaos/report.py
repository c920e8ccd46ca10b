#!/usr/bin/env python3
"""Turn one chaos run (tests/chaos/run.sh) into the "Chaos run" section of bench/RESULTS.md.

usage: report.py WORKDIR RESULTS_MD

Reads WORKDIR/meta (key=value lines) and, per configuration C, WORKDIR/C/queries.txt (one line
per query, from load.c), samples.txt (CPU and RSS of the server every second), relay-A.log and
relay-B.log (connections and faults, from relay.c), server.log (time-stamped). Replaces the
section between the chaos markers of RESULTS_MD (appends it if there is none; the rest of the
file is kept), and prints the section.

Exit status: 1 if ./dotproxy (not CHAOS_OLD) gave a wrong answer or left a query unanswered in
any of its configurations, else 0.
"""
import bisect
import os
import re
import sys

BEGIN = "<!-- chaos: begin (written by make chaos, tests/chaos/run.sh; keep these markers) -->"
END = "<!-- chaos: end -->"

# A reconnection (TCP + TLS handshake with certificate chain checks) is allowed this much CPU in
# the "CPU" goal, on top of the calm phase's CPU per query. A full handshake costs dotproxy about
# 1 ms here (ECDHE P-256, an ECDSA and an RSA-2048 verification); 2 ms leaves room for the
# peers' heavier TLS stacks.
RECONNECT_ALLOWANCE_US = 2000
CPU_SLACK = 1.10          # and 10 % for the noise of a shared machine
RSS_SLACK = 1.10          # peak within 10 % of the value after the first minute
SLOW_MARGIN_MS = 100      # a query is "in" a fault window if it overlaps it give or take this


def load_meta(path):
    m = {}
    for line in open(path):
        line = line.rstrip("\n")
        if "=" in line:
            k, v = line.split("=", 1)
            m[k] = v
    return m


class Q:
    __slots__ = ("seq", "proto", "type", "t", "out", "lat", "rcode", "detail")


def load_queries(path):
    qs, summary = [], {}
    for line in open(path):
        if line.startswith("#"):
            for kv in line[1:].split():
                k, v = kv.split("=")
                summary[k] = int(v)
            continue
        f = line.split()
        q = Q()
        q.seq, q.proto, q.type = int(f[0]), f[1], f[2]
        q.t, q.out, q.lat, q.rcode, q.detail = float(f[3]), f[4], float(f[5]), int(f[6]), f[7]
        qs.append(q)
    return qs, summary


def load_samples(path):
    out = []
    if os.path.exists(path):
        for line in open(path):
            f = line.split()
            if len(f) == 7:
                out.append(tuple(int(x) for x in f))
    return out          # (t_ms, cpu_ns, ticks, rss_kb, hwm_kb, sent, done)


LOGRE = re.compile(r"^(\d+\.\d+) (\S+) (.*)$")


def load_relay(path):
    """Returns (windows, instants, opens, lines): windows [kind, start_ms, end_ms, params],
    instantaneous faults [kind, t_ms, params], connection opens [t_ms], all lines (t_ms, text)."""
    windows, instants, opens, lines = [], [], [], []
    if not os.path.exists(path):
        return windows, instants, opens, lines
    open_w = {}
    for raw in open(path):
        m = LOGRE.match(raw.rstrip("\n"))
        if not m:
            continue
        t = float(m.group(1)) * 1000
        text = m.group(3)
        lines.append((t, text))
        kv = dict(x.split("=", 1) for x in text.split() if "=" in x)
        if "fault" in kv:
            k = kv["fault"]
            if kv.get("phase") == "start":
                w = [k, t, t + int(kv.get("dur_ms", 0)), kv]
                windows.append(w)
                open_w[k] = w
            elif kv.get("phase") == "end":
                if k in open_w:
                    open_w.pop(k)[2] = t
            else:
                instants.append([k, t, kv])
        elif "conn" in kv and " open" in text:
            opens.append(t)
    return windows, instants, opens, lines


def pct(a, b):
    return 100.0 * a / b if b else 0.0


def fmt_int(n):
    return f"{n:,}"


def quantile(sorted_vals, p):
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(p * len(sorted_vals) + 0.999999) - 1))
    return sorted_vals[k]


def mark(ok):
    return "**PASS**" if ok else "**FAIL**"


def label(meta, c):
    kind, nup = meta["kind_" + c], meta["nup_" + c]
    name = {"dotproxy": "dotproxy", "kresd": "Knot Resolver", "unbound": "unbound"}[kind]
    if c.startswith("dotproxy_old"):
        name = "dotproxy (old: " + os.path.basename(meta["bin_" + c]) + ")"
    return f"{name}, {nup} upstream{'s' if nup != '1' else ''}"


def analyse(work, meta, c):
    tmo = int(meta["timeout_ms"])
    t0 = float(meta["t0_" + c])
    fstart = float(meta["fault_start_" + c])
    fend = float(meta["fault_end_" + c])
    lend = float(meta["load_end_" + c])
    nup = int(meta["nup_" + c])
    qs, summary = load_queries(os.path.join(work, c, "queries.txt"))
    samples = load_samples(os.path.join(work, c, "samples.txt"))
    wa, ia, opens_a, lines_a = load_relay(os.path.join(work, c, "relay-A.log"))
    _, _, opens_b, lines_b = load_relay(os.path.join(work, c, "relay-B.log"))
    r = {"c": c, "label": label(meta, c), "nup": nup, "kind": meta["kind_" + c],
         "status": meta.get("status_" + c, "?"), "summary": summary}

    chaos = [q for q in qs if q.t >= fstart]
    calmq = [q for q in qs if q.t < fstart]
    r["n"] = len(qs)
    r["n_calm"], r["n_chaos"] = len(calmq), len(chaos)
    for o in ("ok", "servfail", "wrong", "none"):
        r[o] = sum(1 for q in qs if q.out == o)
        r[o + "_calm"] = sum(1 for q in calmq if q.out == o)
        r[o + "_chaos"] = sum(1 for q in chaos if q.out == o)
    r["wrong_total"] = r["wrong"] + summary.get("strays", 0)
    r["wrong_details"] = {}
    for q in qs:
        if q.out == "wrong":
            r["wrong_details"][q.detail] = r["wrong_details"].get(q.detail, 0) + 1
    r["none_details"] = {}
    for q in qs:
        if q.out == "none":
            r["none_details"][q.detail] = r["none_details"].get(q.detail, 0) + 1
    late_limit = tmo + 100
    answered = [q for q in qs if q.out != "none"]
    r["late"] = sum(1 for q in answered if q.lat > late_limit)
    r["late_ok"] = sum(1 for q in answered if q.lat > late_limit and q.out == "ok")
    r["late_tcp"] = sum(1 for q in answered if q.lat > late_limit and q.proto == "t")
    r["max_lat"] = max((q.lat for q in answered), default=0.0)
    okl = sorted(q.lat for q in qs if q.out == "ok")
    okl_calm = sorted(q.lat for q in calmq if q.out == "ok")
    r["p50"], r["p99"] = quantile(okl, 0.5), quantile(okl, 0.99)
    r["p50_calm"], r["p99_calm"] = quantile(okl_calm, 0.5), quantile(okl_calm, 0.99)
    r["udp"] = sum(1 for q in qs if q.proto == "u")
    r["tcp"] = r["n"] - r["udp"]

    # Fault windows of relay A. "Unreachable": refuse, down. "Unresponsive": stall, and delay
    # windows whose delay leaves no time to answer within the timeout.
    unreach = [w for w in wa if w[0] in ("refuse", "down")]
    slow = [w for w in wa if w[0] == "stall" or (w[0] == "delay" and int(w[3].get("delay_ms", 0)) + SLOW_MARGIN_MS >= tmo)]

    def overlaps(q, ws):
        a = q.t - SLOW_MARGIN_MS
        b = q.t + max(q.lat, 0) + SLOW_MARGIN_MS
        return any(w[1] <= b and a <= w[2] for w in ws)

    sf_unreach = sf_slow = 0
    sf_other = []
    for q in qs:
        if q.out != "servfail":
            continue
        if overlaps(q, unreach):
            sf_unreach += 1
        elif overlaps(q, slow):
            sf_slow += 1
        else:
            sf_other.append(q)
    r["sf_unreach"], r["sf_slow"], r["sf_other"] = sf_unreach, sf_slow, len(sf_other)

    # Recovery: after each outage (refuse, down, stall, delay) ends, how long until every query
    # is answered right again: send time of the last query not answered right, sent after the
    # end and over before the next fault, minus the end (0 if none). Judged only when the next
    # fault is at least 1.5 s later.
    events = sorted([w[1] for w in wa] + [i[1] for i in ia])
    ts = [q.t for q in qs]
    rec = []
    for w in sorted(wa, key=lambda w: w[1]):
        if w[0] not in ("refuse", "down", "stall", "delay"):
            continue
        e = w[2]
        k = bisect.bisect_right(events, e)
        nxt = events[k] if k < len(events) else lend
        if nxt - e < 1500:
            rec.append((w[0], e, None))
            continue
        lo, hi = bisect.bisect_left(ts, e), bisect.bisect_left(ts, nxt)
        last_bad = None
        for q in qs[lo:hi]:
            # Only queries over before the next fault (in flight when it hits: its business).
            if q.out != "ok" and q.t + (q.lat if q.lat >= 0 else tmo) < nxt:
                last_bad = q.t
        rec.append((w[0], e, 0.0 if last_bad is None else last_bad - e))
    r["recovery"] = rec
    judged = [x[2] for x in rec if x[2] is not None]
    r["recovery_max"] = max(judged) if judged else None
    r["recovery_judged"], r["recovery_skipped"] = len(judged), len(rec) - len(judged)

    # Faults injected (relay A).
    fc = {}
    for w in wa:
        fc[w[0]] = fc.get(w[0], 0) + 1
    for i in ia:
        fc[i[0]] = fc.get(i[0], 0) + 1
    r["faults"] = fc
    r["windows"], r["instants"] = wa, ia
    r["conns"] = len([t for t in opens_a + opens_b if t >= fstart])
    r["conns_calm"] = len([t for t in opens_a + opens_b if t < fstart])

    # RSS: baseline at min(60 s, a third of the run) after the start; peak of the samples after.
    r["rss"] = None
    if samples:
        total = (lend - t0) / 1000.0
        bt = t0 + 1000 * min(60.0, total / 3.0)
        after = [s for s in samples if s[0] >= bt and s[3] > 0]
        if after:
            base = after[0][3]
            peak = max(s[3] for s in after)
            peak_at = (min(s[0] for s in after if s[3] == peak) - t0) / 1000.0
            r["rss"] = {"base": base, "peak": peak, "first": samples[0][3], "last": samples[-1][3],
                        "hwm": samples[-1][4], "base_at": (after[0][0] - t0) / 1000.0, "peak_at": peak_at,
                        "ok": peak <= RSS_SLACK * base}

    # CPU per query: calm phase vs faulty phase (schedstat nanoseconds of every thread).
    r["cpu"] = None
    if len(samples) >= 3:
        def at(t):
            return min(samples, key=lambda s: abs(s[0] - t))
        s0, s1, s2 = samples[0], at(fstart), samples[-1]
        n_calm = sum(1 for q in qs if s0[0] <= q.t < s1[0])
        n_chaos = sum(1 for q in qs if q.t >= s1[0])
        if n_calm and n_chaos:
            calm_us = (s1[1] - s0[1]) / 1000.0 / n_calm
            chaos_us = (s2[1] - s1[1]) / 1000.0 / n_chaos
            conns = len([t for t in opens_a + opens_b if t >= s1[0]])
            allowed = calm_us * CPU_SLACK + conns * RECONNECT_ALLOWANCE_US / n_chaos
            extra = (s2[1] - s1[1]) / 1000.0 - calm_us * n_chaos
            r["cpu"] = {"calm": calm_us, "chaos": chaos_us, "conns": conns, "allowed": allowed,
                        "per_conn": extra / conns if conns else None, "ok": chaos_us <= allowed}

    # Incidents: the queries that went wrong (wrong, none, SERVFAIL outside any outage, late),
    # grouped into episodes 2 s apart, with the relay log around each.
    # With two upstreams every SERVFAIL is one too many (relay B never fails).
    sfo = set(id(q) for q in sf_other)
    why_sf = {}
    for q in qs:
        if q.out == "servfail":
            why_sf[id(q)] = ("otherwise" if id(q) in sfo else
                             "unreachable" if overlaps(q, unreach) else "unresponsive")
    bad = [q for q in qs if q.out in ("wrong", "none") or id(q) in sfo or
           (nup == 2 and q.out == "servfail") or (q.out != "none" and q.lat > late_limit)]
    eps = []
    for q in bad:
        if eps and q.t - eps[-1]["end"] <= 2000:
            e = eps[-1]
        else:
            e = {"start": q.t, "end": q.t, "kinds": {}}
            eps.append(e)
        e["end"] = q.t
        if q.out in ("wrong", "none"):
            what = q.out + "(" + q.detail + ")"
        elif q.out == "servfail" and (nup == 2 or id(q) in sfo):
            what = "SERVFAIL(" + why_sf[id(q)] + ")"
        else:
            what = "late-" + q.out
        what += "/" + ("UDP" if q.proto == "u" else "TCP")
        e["kinds"][what] = e["kinds"].get(what, 0) + 1
    r["episodes"] = eps
    r["relay_lines"] = sorted(lines_a + [(t, "[B] " + x) for t, x in lines_b])
    r["server_lines"] = []
    sl = os.path.join(work, c, "server.log")
    if os.path.exists(sl):
        for raw in open(sl, errors="replace"):
            m = re.match(r"^(\d+\.\d+) (.*)$", raw.rstrip("\n"))
            if m:
                r["server_lines"].append((float(m.group(1)) * 1000, m.group(2)))
    r["t0"] = t0
    r["fstart"] = fstart
    return r


def goal_cells(meta, r):
    tmo = int(meta["timeout_ms"])
    cells = {}
    cells["wrong"] = f"{fmt_int(r['wrong_total'])} {mark(r['wrong_total'] == 0)}"
    cells["none"] = f"{fmt_int(r['none'])} {mark(r['none'] == 0)}"
    cells["late"] = f"{fmt_int(r['late'])} (max {r['max_lat']:.0f} ms) {mark(r['late'] == 0)}"
    if r["nup"] == 2:
        pc = pct(r["ok_chaos"], r["n_chaos"])
        ok = pc >= 99.99 and r["servfail"] == 0
        cells["two"] = f"{pc:.3f} % correct, {fmt_int(r['servfail'])} SERVFAIL {mark(ok)}"
        cells["flap"] = "—"
    else:
        cells["two"] = "—"
        rm = r["recovery_max"]
        rtxt = "n/a" if rm is None else f"{rm / 1000:.1f} s"
        ok = r["sf_other"] == 0 and (rm is None or rm <= 1000)
        cells["flap"] = (f"SERVFAIL: {fmt_int(r['sf_unreach'])} unreachable, {fmt_int(r['sf_slow'])} "
                         f"unresponsive, **{fmt_int(r['sf_other'])} otherwise**; recovery max {rtxt} "
                         f"{mark(ok)}")
    if r["rss"]:
        x = r["rss"]
        cells["rss"] = (f"{x['base'] / 1024:.2f} MB at {x['base_at']:.0f} s → peak {x['peak'] / 1024:.2f} MB "
                        f"at {x['peak_at']:.0f} s ({pct(x['peak'] - x['base'], x['base']):+.0f} %) {mark(x['ok'])}")
    else:
        cells["rss"] = "not measured"
    if r["cpu"]:
        x = r["cpu"]
        cells["cpu"] = (f"{x['calm']:.1f} → {x['chaos']:.1f} µs/query, {x['conns']} connections "
                        f"(allowed {x['allowed']:.1f}) {mark(x['ok'])}")
    else:
        cells["cpu"] = "not measured"
    return cells


def rel(r, t):
    return (t - r["t0"]) / 1000.0


def render(meta, rs):
    tmo = int(meta["timeout_ms"])
    out = []
    p = out.append
    p(BEGIN)
    p("## Chaos run (make chaos)")
    p("")
    p("Generated by `make chaos` (tests/chaos/run.sh); see bench/README.md, \"Chaos run\". Each server and")
    p("configuration got the same load and the same faults (same schedule, relative to its own start):")
    p("")
    p(f"- date: {meta['date']}; machine: {meta['nproc']} CPUs, {meta['cpu']}, {meta['kernel']} (load average at the end: {meta['load']})")
    p(f"- load per configuration: {fmt_int(int(meta['qps']))} queries/s for {meta['calm']} s without faults, then "
      f"{meta['secs']} s with faults; {meta['udp_percent']} % UDP (4 sockets), the rest over 4 pipelined TCP "
      f"connections; every name new (`qN.bench`: no cache helps), 70 % A, 20 % AAAA, 10 % TXT, each answer "
      f"checked against the upstream's data; no answer within {int(meta['wait_ms']) / 1000:.0f} s = not answered")
    p(f"- upstream: {meta['upstream']}, DoT on 127.0.0.1, behind the relay `tests/chaos/relay.c` (TLS records "
      f"passed through, not decrypted)")
    p(f"- faults on relay A (the first or only upstream), seed {meta['seed']}, one every {int(meta['gap_ms']) / 1000:.1f} s "
      f"on average (quiet gap uniform in [½, 1½] of that), drawn from: {meta['faults'].replace(',', ', ')}; "
      f"relay B (the second upstream) is healthy")
    p(f"- timeout: dotproxy `--timeout {tmo}`; unbound `discard-timeout: {tmo}` (it drops a query it could not "
      f"answer in time: that counts as not answered); Knot Resolver has no such setting (10 s, built in)")
    p(f"- side by side: {'each server' + chr(39) + 's configurations at once, one server after the other' if meta.get('parallel') == 'server' else 'all configurations at once'}")
    for r in rs:
        p(f"- {r['label']}: {meta['version_' + r['c']]}" + ("" if r["status"] == "alive" else f" — **process {r['status']} during the run**"))
    p("")
    p("### Goals")
    p("")
    cols = [r["label"] for r in rs]
    p("| goal | " + " | ".join(cols) + " |")
    p("|---|" + "---|" * len(cols))
    cells = [goal_cells(meta, r) for r in rs]
    rows = [
        ("wrong answers: 0", "wrong"),
        ("queries not answered at all: 0", "none"),
        (f"answers later than --timeout + 100 ms ({tmo + 100} ms): 0", "late"),
        ("two upstreams, one failing at random: ≥ 99.99 % correct answers, no SERVFAIL while the other is healthy", "two"),
        ("one upstream, flapping: SERVFAIL only while it is really unreachable; recovery within 1 s of it coming back", "flap"),
        ("resident memory: flat, peak within 10 % of the value after the first minute", "rss"),
        ("CPU: no higher per query than without faults, plus the cost of reconnecting", "cpu"),
    ]
    for title, key in rows:
        p(f"| {title} | " + " | ".join(c[key] for c in cells) + " |")
    p("")
    p("How each figure is read:")
    p("")
    p("- **wrong answers**: answers whose ID, question, flags, RCODE (not NOERROR/SERVFAIL) or records do not match, plus answers to no query of ours.")
    p(f"- **later than {tmo + 100} ms**: any answer (right, SERVFAIL or wrong) that came later; \"max\" is the slowest answer.")
    p("- **two upstreams**: correct answers among the queries sent once faults began; relay B never fails, so every SERVFAIL counts.")
    p(f"- **flapping**: each SERVFAIL is attributed from relay A's log: *unreachable* if the query overlaps (±{SLOW_MARGIN_MS} ms) a refuse "
      f"or down window, *unresponsive* if it overlaps a stall or a delay of at least the timeout − {SLOW_MARGIN_MS} ms, *otherwise* "
      "(after a reset, a cut record, a close after N answers, a short delay, or no fault at all) it should not have happened. "
      "Recovery: after each refuse/down/stall/delay ends, the send time of the last query not answered right before the next "
      "fault, minus the end (episodes followed by another fault within 1.5 s are not judged).")
    p("- **resident memory**: VmRSS every second; the baseline is the value at min(60 s, a third of the run) after the start.")
    p(f"- **CPU**: the server's CPU time (schedstat, all threads) per query sent, without faults → with faults; allowed: "
      f"{CPU_SLACK:.2f} × the fault-free figure + {RECONNECT_ALLOWANCE_US / 1000:.0f} ms per upstream connection the relays accepted.")
    p("")
    p("### Outcomes")
    p("")
    p("| configuration | queries | correct | SERVFAIL | not answered | wrong | p50 / p99 ms (correct, no faults) | p50 / p99 ms (correct, all) | upstream connections (no faults / faults) |")
    p("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rs:
        def f2(x):
            return "—" if x is None else f"{x:.1f}"
        p(f"| {r['label']} | {fmt_int(r['n'])} | {fmt_int(r['ok'])} ({pct(r['ok'], r['n']):.2f} %) | {fmt_int(r['servfail'])} "
          f"| {fmt_int(r['none'])} | {fmt_int(r['wrong_total'])} | {f2(r['p50_calm'])} / {f2(r['p99_calm'])} "
          f"| {f2(r['p50'])} / {f2(r['p99'])} | {r['conns_calm']} / {r['conns']} |")
    p("")
    notes = []
    for r in rs:
        bits = []
        if r["none_details"]:
            bits.append("not answered: " + ", ".join(f"{k} {fmt_int(v)}" for k, v in sorted(r["none_details"].items())))
        if r["wrong_details"]:
            bits.append("wrong: " + ", ".join(f"{k} {fmt_int(v)}" for k, v in sorted(r["wrong_details"].items())))
        s = r["summary"]
        if s.get("strays"):
            bits.append(f"answers to no query: {s['strays']}")
        if s.get("duplicates"):
            bits.append(f"duplicate answers: {s['duplicates']}")
        if s.get("late_after_wait"):
            bits.append(f"answers after the client gave up: {s['late_after_wait']}")
        if r["late"]:
            bits.append(f"late answers: {fmt_int(r['late'] - r['late_tcp'])} over UDP, {fmt_int(r['late_tcp'])} over TCP "
                        f"({fmt_int(r['late_ok'])} of them correct)")
        if r["none_calm"] or r["servfail_calm"] or r["wrong_calm"]:
            bits.append(f"before the faults began: {r['servfail_calm']} SERVFAIL, {r['none_calm']} not answered, {r['wrong_calm']} wrong")
        if bits:
            notes.append(f"- {r['label']}: " + "; ".join(bits))
    if notes:
        p("Details (`timeout`: nothing within the client's wait; `tcp-closed-by-server` / `tcp-reset`: the server closed or reset the client's TCP connection with the query in flight):")
        p("")
        out.extend(notes)
        p("")
    # The fault schedule (the same for every configuration; shown from the first one).
    r0 = rs[0]
    fl = []
    for w in r0["windows"]:
        extra = ""
        if w[0] == "delay":
            extra = f", answers held {w[3].get('delay_ms')} ms"
        if w[0] == "close_after":
            extra = f", N = {w[3].get('n')}"
        fl.append((w[1], f"{rel(r0, w[1]):.1f}–{rel(r0, w[2]):.1f} s {w[0]}{extra}"))
    for i in r0["instants"]:
        fl.append((i[1], f"{rel(r0, i[1]):.1f} s {i[0]}"))
    fl.sort()
    counts = ", ".join(f"{k} {v}" for k, v in sorted(r0["faults"].items()))
    p(f"Faults injected ({counts}; times from the start of the load, faults from {rel(r0, r0['fstart']):.0f} s): " + "; ".join(x[1] for x in fl) + ".")
    p("")
    # Incidents for dotproxy.
    for r in rs:
        if r["kind"] != "dotproxy" or not r["episodes"]:
            continue
        p(f"#### {r['label']}: what went wrong ({len(r['episodes'])} episode{'s' if len(r['episodes']) != 1 else ''}; up to 6 shown)")
        p("")
        for e in r["episodes"][:6]:
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(e["kinds"].items()))
            p(f"- queries sent {rel(r, e['start']):.3f}–{rel(r, e['end']):.3f} s: {kinds}")
            lo, hi = e["start"] - 2500, e["end"] + 2000
            ls = [(t, "relay " + ("B " + x[4:] if x.startswith("[B] ") else "A " + x)) for t, x in r["relay_lines"] if lo <= t <= hi]
            ls += [(t, "server " + x) for t, x in r["server_lines"] if lo <= t <= hi]
            ls.sort()
            if len(ls) > 16:        # keep faults and the server's lines, thin out connection lines
                keep = [x for x in ls if " conn=" not in x[1]]
                conn = [x for x in ls if " conn=" in x[1]]
                room = max(4, 16 - len(keep))
                shown = sorted(keep + conn[:room])
                omitted = len(ls) - len(shown)
                ls = shown
            else:
                omitted = 0
            if ls:
                p("")
                p("  ```")
                for t, x in ls:
                    p(f"  {rel(r, t):8.3f} {x}")
                if omitted:
                    p(f"  ({omitted} more connection lines of the relays)")
                p("  ```")
        p("")
    p(END)
    return "\n".join(out) + "\n"


def main():
    work, results = sys.argv[1], sys.argv[2]
    meta = load_meta(os.path.join(work, "meta"))
    configs = meta["configs"].split()
    rs = [analyse(work, meta, c) for c in configs]
    section = render(meta, rs)
    old = open(results).read() if os.path.exists(results) else ""
    if BEGIN in old and END in old:
        a = old.index(BEGIN)
        b = old.index(END) + len(END)
        new = old[:a] + section.rstrip("\n") + old[b:]
    else:
        new = old + ("\n" if old and not old.endswith("\n\n") else "") + section
    tmp = results + ".tmp"
    with open(tmp, "w") as f:
        f.write(new)
    os.replace(tmp, results)
    sys.stdout.write(section)
    fail = False
    for r in rs:
        if r["kind"] == "dotproxy" and not r["c"].startswith("dotproxy_old"):
            if r["wrong_total"] or r["none"] or r["status"] != "alive":
                fail = True
    sys.exit(1 if fail else 0)


if __name__ == "__main__":
    main()
