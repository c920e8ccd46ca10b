#!/usr/bin/python3
"""Writes the seed corpora of the fuzz harnesses into tests/fuzz/corpus/<harness>/.

Real queries and answers made with dnspython, a few specs and certificates.
The files are committed; run this again (/usr/bin/python3 tests/fuzz/make_corpus.py)
only to change them. Certificates come from tests/pki.sh in a temporary directory.
"""

import base64
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rrset

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus")


def write(harness, name, data):
    d = os.path.join(OUT, harness)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def q(name, rdtype="A", qid=0x1234, **kw):
    m = dns.message.make_query(name, rdtype, **kw)
    m.id = qid
    return m


def queries():
    out = {
        "a": q("example.com", "A", use_edns=False).to_wire(),
        "aaaa-do": q("Example.COM", "AAAA", use_edns=0, payload=1232, want_dnssec=True).to_wire(),
        "txt-4096": q("big.example.test", "TXT", use_edns=0, payload=4096).to_wire(),
        "ecs": q("q1.test", "A", use_edns=0, options=[
            dns.edns.ECSOption("192.0.2.0", 24)]).to_wire(),
        "padding": q("q2.test", "A", use_edns=0, options=[
            dns.edns.GenericOption(12, b"\0" * 40)]).to_wire(),
        "cookie": q("q3.test", "A", use_edns=0, options=[
            dns.edns.GenericOption(10, b"\1" * 8)]).to_wire(),
        "root-ns": q(".", "NS", use_edns=False).to_wire(),
        "long-name": q(".".join(["a" * 63] * 3 + ["b" * 61]), "A").to_wire(),
    }
    notify = q("example.com", "SOA", use_edns=False)
    notify.set_opcode(dns.opcode.NOTIFY)
    out["notify"] = notify.to_wire()
    resp = dns.message.make_response(q("example.com", "A", use_edns=False))
    out["response"] = resp.to_wire()
    two = bytearray(q("example.com", "A", use_edns=False).to_wire())
    two[5] = 2
    out["qdcount2"] = bytes(two) + two[12:]
    ptr = bytearray(q("example.com", "A", use_edns=False).to_wire()[:12])
    out["pointer-question"] = bytes(ptr) + b"\xc0\x0c\x00\x01\x00\x01"
    out["trailing"] = q("example.com", "A", use_edns=False).to_wire() + b"\0" * 7
    out["tsig-like"] = q("example.com", "A", use_edns=0).to_wire()[:-11] + \
        b"\x00\x00\xfa\x00\xff\x00\x00\x00\x00\x00\x00"
    # Issue #9: special-use names, EDNS errors, exact types, big queries.
    out["localhost-do"] = q("localhost", "A", use_edns=0, want_dnssec=True).to_wire()
    out["onion"] = q("x.y.onion", "AAAA", use_edns=False).to_wire()
    out["resolver-arpa"] = q("_dns.resolver.arpa", "SVCB", use_edns=0).to_wire()
    out["localhost-ch"] = q("localhost", "TXT", use_edns=False, rdclass="CH").to_wire()
    out["https-type65"] = q("Example.COM", "HTTPS", use_edns=0).to_wire()
    out["badvers"] = q("example.com", "A", use_edns=1).to_wire()
    notimp = q("example.com", "SOA", use_edns=0, want_dnssec=True)
    notimp.set_opcode(dns.opcode.NOTIFY)
    out["notimp-opt"] = notimp.to_wire()
    opt_only = bytearray(q("example.com", "A", use_edns=0).to_wire())
    out["qdcount0-opt"] = bytes(opt_only[:4]) + b"\0\0" + bytes(opt_only[6:12]) + \
        bytes(opt_only[-11:])
    tc = bytearray(q("example.com", "A", use_edns=0).to_wire())
    tc[2] |= 0x02
    out["tc-query"] = bytes(tc)
    out["big-2000"] = q("example.com", "A", use_edns=0, options=[
        dns.edns.GenericOption(65001, b"\x55" * 1950)]).to_wire(max_size=65535)
    return out


def answers():
    """Answers to the four queries of fuzz_answer.c (upstream IDs 0..3)."""
    hq = [q("example.com", "A", 0, use_edns=False),
          q("Example.COM", "AAAA", 1, use_edns=0, payload=1232, want_dnssec=True),
          q("q1.test", "A", 2, use_edns=0, payload=4096),
          q("big.example.test", "TXT", 3, use_edns=0, payload=512)]
    out = {}

    def resp(i, rrs=(), rcode=0, auth=(), pad=0, flags=0):
        r = dns.message.make_response(hq[i])
        r.set_rcode(rcode)
        for rr in rrs:
            r.answer.append(dns.rrset.from_text(*rr))
        for rr in auth:
            r.authority.append(dns.rrset.from_text(*rr))
        if pad and hq[i].edns >= 0:
            r.use_edns(0, hq[i].ednsflags, 1232, options=[dns.edns.GenericOption(12, b"\0" * pad)])
        r.flags |= flags
        return r.to_wire(max_size=65535)

    def framed(*msgs):
        return b"".join(struct.pack("!H", len(m)) + m for m in msgs)

    a0 = resp(0, [("example.com.", 300, "IN", "A", "192.0.2.1", "192.0.2.2")])
    a1 = resp(1, [("Example.COM.", 60, "IN", "AAAA", "2001:db8::1")], pad=100)
    a2 = resp(2, [("q1.test.", 30, "IN", "CNAME", "q2.test."), ("q2.test.", 30, "IN", "A", "192.0.2.2")])
    a3 = resp(3, [("big.example.test.", 60, "IN", "TXT",
                   *['"%s"' % (c * 250) for c in "xyz"])])
    nx = resp(2, rcode=dns.rcode.NXDOMAIN,
              auth=[("test.", 60, "IN", "SOA", "ns.test. admin.test. 1 3600 600 86400 30")])
    nodata = resp(0, auth=[("example.com.", 3600, "IN", "SOA", "ns.test. admin.test. 1 3600 600 86400 300")])
    sf = resp(1, rcode=dns.rcode.SERVFAIL)
    tc = resp(3, flags=dns.flags.TC)
    other = dns.message.make_response(q("other.example", "A", 0, use_edns=False))
    other.answer.append(dns.rrset.from_text("other.example.", 60, "IN", "A", "203.0.113.1"))
    out["one"] = framed(a0)
    out["all-four"] = framed(a0, a1, a2, a3)
    out["padded"] = framed(a1)
    out["nxdomain-soa"] = framed(nx)
    out["nodata-soa"] = framed(nodata)
    out["servfail"] = framed(sf)
    out["truncated"] = framed(tc)
    out["wrong-question"] = framed(other.to_wire())
    out["unknown-id"] = framed(a0[:0] + struct.pack("!H", 999) + a0[2:])
    out["short-message"] = framed(b"\0" * 5)
    out["half-length"] = framed(a0) + b"\x01"
    out["big-prefix"] = b"\xff\xff" + a0
    out["twice"] = framed(a0, a0)
    # Issue #9: the query that timed out (ID 4, never to be answered) and
    # the one that took its slot (ID 5), EDNS options to strip, EDE to
    # keep, AD, a negative TTL, glue RRsets to truncate.
    late = q("late.example", "A", 4, use_edns=0, payload=1232)
    new = q("new.example", "A", 5, use_edns=False)
    for name, m, ip in (("late-id4", late, "192.0.2.4"), ("new-id5", new, "192.0.2.5")):
        r = dns.message.make_response(m)
        r.answer.append(dns.rrset.from_text(m.question[0].name, 60, "IN", "A", ip))
        out[name] = framed(r.to_wire())
    r = dns.message.make_response(hq[1])
    r.answer.append(dns.rrset.from_text("example.com.", 60, "IN", "AAAA", "2001:db8::2"))
    r.use_edns(0, dns.flags.DO, 1232, options=[
        dns.edns.GenericOption(3, b"ns01"), dns.edns.GenericOption(10, b"\1" * 16),
        dns.edns.GenericOption(15, b"\x00\x12stale"), dns.edns.GenericOption(11, b"\0\x64"),
        dns.edns.GenericOption(12, b"\0" * 20)])
    r.flags |= dns.flags.AD | dns.flags.AA
    out["options-ede"] = framed(r.to_wire())
    r = dns.message.make_response(hq[0])
    r.answer.append(dns.rrset.from_text("example.com.", 60, "IN", "A", "192.0.2.9"))
    r.flags |= dns.flags.AD
    out["ad-no-opt"] = framed(r.to_wire())
    neg = resp(2, rcode=dns.rcode.NXDOMAIN,
               auth=[("test.", 300, "IN", "SOA", "ns.test. admin.test. 1 3600 600 86400 2"),
                     ("test.", 3600, "IN", "NSEC", "zz.test. A NS SOA RRSIG NSEC")])
    out["nxdomain-neg-ttl"] = framed(neg)
    g = dns.message.make_response(hq[3])
    g.answer.append(dns.rrset.from_text("big.example.test.", 60, "IN", "TXT", '"%s"' % ("t" * 200)))
    for i in range(30):
        g.additional.append(dns.rrset.from_text("ns%d.example.test." % i, 60, "IN", "A",
                                                "192.0.2.%d" % i, "198.51.100.%d" % i))
    out["glue-rrsets"] = framed(g.to_wire(max_size=65535))
    # Unframed: the stream part finds nothing, direct() takes it whole;
    # at 512 bytes the cut falls inside an RRset of two addresses.
    g.answer[0] = dns.rrset.from_text("big.example.test.", 60, "IN", "TXT", '"%s"' % ("t" * 210))
    out["glue-rrsets-direct"] = g.to_wire(max_size=65535)
    return out


def specs(pin):
    return {
        "upstream": b"127.0.0.1@853#dns.test",
        "upstream-v6-pins": ("[::1]@8853#dns.test^sha256/%s^pin-only" % pin).encode(),
        "upstream-known": b"1.1.1.1",
        "upstream-port-colon": b"127.0.0.1:853#dns.test",
        "zone": b"lan=192.168.1.1@53",
        "zone-v6": b"cluster.local.=[fd00::10]:5353",
        "range4": b"10.0.0.0/8",
        "range6": b"fe80::/10",
        "user": b"65534:65534",
        "size": b"256k",
        "pin": ("sha256/" + pin).encode(),
        "root": b".",
    }


def certs():
    d = tempfile.mkdtemp()
    try:
        subprocess.run(["sh", os.path.join(HERE, "..", "pki.sh"), d, "dns.test"], check=True)
        out = {}
        for name in ("leaf", "int", "root", "other-leaf"):
            der = subprocess.run(["openssl", "x509", "-in", os.path.join(d, name + ".pem"),
                                  "-outform", "DER"], check=True, capture_output=True).stdout
            out[name] = der
        pub = subprocess.run(["openssl", "x509", "-in", os.path.join(d, "leaf.pem"), "-pubkey",
                              "-noout"], check=True, capture_output=True).stdout
        spki = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                              check=True, capture_output=True).stdout
        return out, base64.b64encode(hashlib.sha256(spki).digest()).decode()
    finally:
        shutil.rmtree(d)


def http_requests():
    """What clients of --http send (a Kubernetes probe, Prometheus, curl) and what they
    should not (other methods, partial heads, another protocol, a full buffer)."""
    return {
        "get-health-kube-probe": b"GET /health HTTP/1.1\r\nHost: 10.0.0.5:8053\r\n"
                                 b"User-Agent: kube-probe/1.29\r\nAccept: */*\r\n"
                                 b"Connection: close\r\n\r\n",
        "get-ready-http10": b"GET /ready HTTP/1.0\r\n\r\n",
        "get-metrics-prometheus": b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:8053\r\n"
                                  b"User-Agent: Prometheus/2.42.0\r\nAccept: application/"
                                  b"openmetrics-text;version=1.0.0,application/openmetrics-"
                                  b"text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,"
                                  b"*/*;q=0.1\r\nAccept-Encoding: gzip\r\n"
                                  b"X-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n",
        "get-metrics-curl": b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:8053\r\n"
                            b"User-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n",
        "post-health": b"POST /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2"
                       b"\r\n\r\n{}",
        "head-health": b"HEAD /health HTTP/1.1\r\n\r\n",
        "get-unknown-path": b"GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n",
        "get-absolute-form": b"GET http://127.0.0.1:8053/health HTTP/1.1\r\n\r\n",
        "partial": b"GET /hea",
        "partial-no-blank-line": b"GET /health HTTP/1.1\r\nHost: x\r\n",
        "lf-only": b"GET /health HTTP/1.1\n\n",
        "garbage": b"hello\r\n\r\n",
        "no-version": b"GET /health\r\n\r\n",
        "http2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "tls-client-hello": bytes.fromhex("16030100a5010000a10303") + bytes(32) + b"\r\n\r\n",
        "long-header": b"GET /health HTTP/1.1\r\nX-Long: " + b"a" * 1000 + b"\r\n\r\n",
        "full-buffer": b"GET /health HTTP/1.1\r\nX: " + b"b" * 997 + b"\r\n",   # 1024
    }


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    qs = queries()
    for k, v in qs.items():
        write("fuzz_query", k, v)
    # TCP: byte 0 = address (bit 0: not allowed) and chunk seed, then frames.
    fr = lambda m: struct.pack("!H", len(m)) + m
    write("fuzz_tcp", "one", b"\x00" + fr(qs["a"]))
    write("fuzz_tcp", "pipelined", b"\x02" + b"".join(fr(v) for v in qs.values()))
    write("fuzz_tcp", "refused", b"\x01" + fr(qs["aaaa-do"]) + fr(qs["ecs"]))
    write("fuzz_tcp", "half-prefix", b"\x00\x00")
    write("fuzz_tcp", "short-frame", b"\x00" + fr(b"\0" * 5))
    write("fuzz_tcp", "long-frame", b"\x00\x10\x00" + b"\0" * 64)
    write("fuzz_tcp", "split", b"\x07" + fr(qs["long-name"]) * 3)
    write("fuzz_tcp", "local-badvers", b"\x04" + fr(qs["localhost-do"]) + fr(qs["badvers"]) +
          fr(qs["localhost-ch"]) + fr(qs["onion"]) + fr(qs["notimp-opt"]) + fr(qs["tc-query"]))
    write("fuzz_tcp", "big-frame", b"\x00" + fr(qs["big-2000"]) + fr(qs["a"]))
    for k, v in answers().items():
        write("fuzz_answer", k, v)
    der, pin = certs()
    for k, v in specs(pin).items():
        write("fuzz_specs", k, v)
    write("fuzz_cert", "leaf", b"\x00" + der["leaf"])
    write("fuzz_cert", "leaf-pin-only", b"\x01" + der["leaf"])
    write("fuzz_cert", "leaf-wrong-pin", b"\x03" + der["leaf"])
    write("fuzz_cert", "intermediate", b"\x01" + der["int"])
    write("fuzz_cert", "rsa-root", b"\x01" + der["root"])
    write("fuzz_cert", "other-leaf", b"\x00" + der["other-leaf"])
    for k, v in http_requests().items():
        write("fuzz_http", k, v)
    n = sum(len(fs) for _, _, fs in os.walk(OUT))
    print("make_corpus: %d seeds in %s" % (n, OUT))


if __name__ == "__main__":
    sys.exit(main())
