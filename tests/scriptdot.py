"""Tools for the attacker-minded tests of test_poison.py and test_wire.py.

ScriptedDoT: a helpers.FakeDoT whose answers come from a script (a function
of the parsed query), so an upstream can answer differently per type, class,
RD / AD / DO bit or EDNS option, and put any option in its OPT.

Wire: a strict parser of raw DNS messages that keeps everything dnspython
hides or refuses (several OPT records, a TSIG without a key, the exact
question bytes, unknown EDNS options in order, the flag bits one by one).

reply(): builds a raw answer to a Wire query (dnspython renders it; the
question is then copied byte for byte from the query, case included).

dig() / kdig(): run the real clients against a loopback port and return their
output.  Everything here talks to 127.0.0.1 only.
"""

import socket
import struct
import subprocess
import threading

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from helpers import FakeDoT, tcp_exchange, udp_exchange

# EDNS option codes
NSID = 3
ECS = 8
COOKIE = 10
KEEPALIVE = 11
PADDING = 12
EDE = 15

OPT = 41
TSIG = 250

# header flag bits (16-bit flags word)
QR, AA, TC, RD, RA, Z, AD, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0040, 0x0020, 0x0010


# ---------------------------------------------------------------- parsing

def read_name(raw, off):
    """(text with final dot, original case; offset past the name). Follows
    compression pointers (backwards only, so no loop)."""
    labels = []
    end = None
    limit = off
    hops = 0
    while True:
        if off >= len(raw):
            raise ValueError("name runs past the message at %d" % off)
        n = raw[off]
        if n & 0xC0 == 0xC0:
            if off + 2 > len(raw):
                raise ValueError("truncated pointer at %d" % off)
            ptr = struct.unpack("!H", raw[off:off + 2])[0] & 0x3FFF
            if end is None:
                end = off + 2
            if ptr >= limit or hops > 64:
                raise ValueError("bad compression pointer %d at %d" % (ptr, off))
            limit = ptr
            off = ptr
            hops += 1
            continue
        if n > 63:
            raise ValueError("bad label type 0x%02x at %d" % (n, off))
        off += 1
        if n == 0:
            break
        labels.append(raw[off:off + n].decode("latin-1"))
        off += n
    return ".".join(labels) + ".", (end if end is not None else off)


class RR:
    """One resource record of a Wire: section 1 answer, 2 authority, 3 additional."""

    def __init__(self, section, name, rtype, rclass, ttl, rdata, raw):
        self.section, self.name, self.rtype, self.rclass = section, name, rtype, rclass
        self.ttl, self.rdata, self.raw = ttl, rdata, raw

    # OPT fields (RFC 6891 6.1.3)
    @property
    def payload(self):
        return self.rclass

    @property
    def ext_rcode(self):
        return self.ttl >> 24

    @property
    def version(self):
        return (self.ttl >> 16) & 0xFF

    @property
    def do(self):
        return bool(self.ttl & 0x8000)

    @property
    def zbits(self):
        return self.ttl & 0x7FFF

    def options(self):
        """[(code, data)] of an OPT record, in order."""
        out, o = [], 0
        while o < len(self.rdata):
            if o + 4 > len(self.rdata):
                raise ValueError("option header overruns the OPT")
            code, n = struct.unpack("!HH", self.rdata[o:o + 4])
            if o + 4 + n > len(self.rdata):
                raise ValueError("option %d overruns the OPT" % code)
            out.append((code, self.rdata[o + 4:o + 4 + n]))
            o += 4 + n
        return out

    def __repr__(self):
        return "RR(sec=%d %s %s %s ttl=%d rdlen=%d)" % (
            self.section, self.name, dns.rdatatype.to_text(self.rtype),
            self.rclass, self.ttl, len(self.rdata))


class Wire:
    """A raw DNS message, parsed strictly (ValueError if it is malformed)."""

    def __init__(self, raw):
        self.raw = bytes(raw)
        if len(raw) < 12:
            raise ValueError("shorter than a header: %d bytes" % len(raw))
        self.id, self.flags, qd, an, ns, ar = struct.unpack("!HHHHHH", raw[:12])
        self.counts = (qd, an, ns, ar)
        off = 12
        self.questions = []
        for _ in range(qd):
            name, off2 = read_name(raw, off)
            if off2 + 4 > len(raw):
                raise ValueError("question runs past the message")
            qtype, qclass = struct.unpack("!HH", raw[off2:off2 + 4])
            self.questions.append((name, qtype, qclass, raw[off:off2 + 4]))
            off = off2 + 4
        self.qend = off
        self.rrs = []
        for sec, n in ((1, an), (2, ns), (3, ar)):
            for _ in range(n):
                start = off
                name, off = read_name(raw, off)
                if off + 10 > len(raw):
                    raise ValueError("record header runs past the message")
                rtype, rclass, ttl, rdlen = struct.unpack("!HHIH", raw[off:off + 10])
                if off + 10 + rdlen > len(raw):
                    raise ValueError("rdata runs past the message")
                self.rrs.append(RR(sec, name, rtype, rclass, ttl, raw[off + 10:off + 10 + rdlen],
                                   raw[start:off + 10 + rdlen]))
                off += 10 + rdlen
        self.end = off
        self.trailing = raw[off:]

    # header
    def flag(self, bit):
        return bool(self.flags & bit)

    @property
    def opcode(self):
        return (self.flags >> 11) & 0xF

    @property
    def rcode(self):
        """The full RCODE (extended bits from the OPT, if there is one)."""
        opt = self.opts()
        return (self.flags & 0xF) | ((opt[0].ext_rcode << 4) if len(opt) == 1 else 0)

    # question
    @property
    def qname(self):
        return self.questions[0][0]

    @property
    def qtype(self):
        return self.questions[0][1]

    @property
    def qclass(self):
        return self.questions[0][2]

    @property
    def qbytes(self):
        return self.questions[0][3]

    # sections
    def section(self, sec, rtype=None):
        return [r for r in self.rrs if r.section == sec and (rtype is None or r.rtype == rtype)]

    @property
    def answer(self):
        return self.section(1)

    @property
    def authority(self):
        return self.section(2)

    @property
    def additional(self):
        """Additional records, OPT excluded."""
        return [r for r in self.section(3) if r.rtype != OPT]

    def opts(self):
        return [r for r in self.rrs if r.rtype == OPT]

    @property
    def opt(self):
        o = self.opts()
        assert len(o) <= 1, "%d OPT records in one message" % len(o)
        return o[0] if o else None

    def option_codes(self):
        return [c for c, _ in self.opt.options()] if self.opt else []

    def options(self, code):
        return [d for c, d in self.opt.options() if c == code] if self.opt else []

    def describe(self):
        """One line for assertion messages."""
        flags = [n for n, b in (("qr", QR), ("aa", AA), ("tc", TC), ("rd", RD), ("ra", RA),
                                ("z", Z), ("ad", AD), ("cd", CD)) if self.flags & b]
        opt = self.opt
        o = ("opt(size=%d v=%d do=%d ext=%d opts=%s)" % (opt.payload, opt.version, opt.do,
                                                         opt.ext_rcode, [c for c, _ in opt.options()])
             if opt else "no-opt")
        q = ("%s/%d/%d" % (self.qname, self.qtype, self.qclass)) if self.questions else "-"
        return "id=%d %s rcode=%d q=%s counts=%s %s len=%d" % (
            self.id, "|".join(flags), self.rcode, q, self.counts, o, len(self.raw))


# ---------------------------------------------------------------- building answers

def rr(name, ttl, rdtype, *texts, rdclass="IN"):
    """An RRset from text: rr("a.test", 60, "A", "192.0.2.1")."""
    return dns.rrset.from_text(name, ttl, rdclass, rdtype, *texts)


def soa(zone, ttl, minimum):
    return rr(zone, ttl, "SOA", "ns.%s admin.%s 1 3600 600 86400 %d" % (zone, zone, minimum))


def reply(q, answer=(), authority=(), additional=(), rcode=0, ad=False, aa=False, tc=False,
          opt=None, payload=1232, options=(), do=None, ra=True):
    """The raw answer to Wire `q`.  opt=None: an OPT when the query had one;
    True / False: always / never.  do=None: echo the query's DO bit.
    options: dns.edns.Option objects, in order.  The header echoes ID,
    opcode, RD and CD; the question is the query's bytes."""
    qname = dns.name.from_text(q.qname)
    m = dns.message.Message(id=q.id)
    m.flags = QR | (q.flags & (RD | CD)) | (RA if ra else 0) | (AD if ad else 0) \
        | (AA if aa else 0) | (TC if tc else 0)
    m.find_rrset(m.question, qname, q.qclass, q.qtype, create=True, force_unique=True)
    for sec, rrsets in ((m.answer, answer), (m.authority, authority),
                        (m.additional, additional)):
        for s in rrsets:
            sec.append(s)
    want_opt = (q.opt is not None) if opt is None else opt
    if want_opt:
        if do is None:
            do = bool(q.opt and q.opt.do)
        m.use_edns(0, dns.flags.DO if do else 0, payload, options=list(options))
    m.set_rcode(rcode)
    w = m.to_wire(max_size=65535)
    # the question exactly as asked (same length: only the case can differ)
    qlen = len(q.qbytes)
    assert dns.name.from_wire(w, 12)[1] + 4 == qlen
    return w[:12] + q.qbytes + w[12 + qlen:]


def generic(code, data):
    return dns.edns.GenericOption(code, data)


# ---------------------------------------------------------------- the scripted upstream

class ScriptedDoT(FakeDoT):
    """FakeDoT whose answers come from script(query: Wire, fake) -> bytes
    (or None: no answer). The default script answers A with 192.0.2.99.
    .errors: exceptions raised by the script (a test should assert it is empty).
    .wires(): every query received, as Wire, in order of arrival."""

    def __init__(self, chain, key, script=None, **kw):
        super().__init__(chain, key, **kw)
        self.script = script
        self.errors = []
        self._elock = threading.Lock()

    def build_answer(self, wire):
        try:
            q = Wire(wire)
            if self.script is None:
                recs = [rr(q.qname, 60, "A", "192.0.2.99")] if q.qtype == 1 else []
                return reply(q, answer=recs)
            return self.script(q, self)
        except Exception as e:  # noqa: BLE001 - reported by the test
            with self._elock:
                self.errors.append(repr(e))
            return None

    def wires(self):
        return [Wire(q.wire) for q in self.all_queries()]

    def asked(self, name, qtype=None, qclass=None):
        """The queries received for `name` (case-insensitive), optionally one type / class."""
        want = dns.name.from_text(name)
        return [w for w in self.wires()
                if dns.name.from_text(w.qname) == want
                and (qtype is None or w.qtype == qtype)
                and (qclass is None or w.qclass == qclass)]


# ---------------------------------------------------------------- client messages

def query_wire(name, rdtype=1, rdclass=1, qid=0x1234, rd=True, cd=False, ad=False, z=False,
               edns=None, payload=1232, do=False, version=0, options=(), opcode=0,
               extra_answer=b"", extra_authority=b"", extra_additional=b"", tail=b"",
               an=0, ns=0, ar_extra=0, qdcount=None):
    """A raw query, built by hand so that it can carry anything.
    edns: None/False for no OPT, True for one; options: [(code, bytes)].
    extra_*: raw records appended to the sections (counts an / ns /
    ar_extra); the OPT comes after the extra additional records, then
    `tail` (records counted in ar_extra too: a TSIG goes last)."""
    flags = (opcode << 11) | (RD if rd else 0) | (CD if cd else 0) | (AD if ad else 0) \
        | (Z if z else 0)
    question = dns.name.from_text(name).to_wire() + struct.pack("!HH", rdtype, rdclass)
    opt = b""
    if edns or do or options or version:
        rdata = b"".join(struct.pack("!HH", c, len(d)) + d for c, d in options)
        ttl = (version << 16) | (0x8000 if do else 0)
        opt = b"\x00" + struct.pack("!HHIH", OPT, payload, ttl, len(rdata)) + rdata
    ar = ar_extra + (1 if opt else 0)
    qd = 1 if qdcount is None else qdcount
    hdr = struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)
    qs = question * (qd if qdcount is not None else 1)
    return hdr + qs + extra_answer + extra_authority + extra_additional + opt + tail


def raw_rr(name, rtype, rclass, ttl, rdata):
    return dns.name.from_text(name).to_wire() + struct.pack("!HHIH", rtype, rclass, ttl,
                                                            len(rdata)) + rdata


# ---------------------------------------------------------------- real clients

def run_client(cmd, timeout=10):
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=timeout)
    return p.stdout.decode("utf-8", "replace")


def dig(port, name, *opts, rdtype="A"):
    """dig @127.0.0.1 -p PORT (one try, 3 s, no ~/.digrc); returns its output."""
    return run_client(["dig", "-r", "@127.0.0.1", "-p", str(port), "+tries=1", "+time=3"]
                      + list(opts) + [name, rdtype])


def kdig(port, name, *opts, rdtype="A"):
    """kdig @127.0.0.1 -p PORT (no retry, 3 s); returns its output."""
    return run_client(["kdig", "@127.0.0.1", "-p", str(port), "+retry=0", "+time=3"]
                      + list(opts) + [name, rdtype])


# ---------------------------------------------------------------- fixture helper, exchanges

def scripted_factory(pki):
    """Generator behind a test module's `scripted` fixture (yield from it):
    yields make(script, **FakeDoT kw) -> ScriptedDoT; all stopped after."""
    made = []

    def make(script=None, **kw):
        f = ScriptedDoT(pki.chain, pki.key, script=script, **kw)
        made.append(f)
        return f
    yield make
    for f in made:
        f.stop()


def exchange(port, wire, tcp=False, timeout=3.0):
    """Send a raw query to the proxy over UDP or TCP; the reply as a Wire
    (AssertionError when nothing comes back over UDP)."""
    if tcp:
        raw = tcp_exchange(port, wire, timeout=timeout)
    else:
        raw = udp_exchange(port, wire, timeout=timeout)
    assert raw is not None, "no UDP answer within %.1f s to %s" % (timeout, Wire(wire).describe())
    return Wire(raw)


def a_of(w):
    """The IPv4 addresses of the A records in a Wire's answer section."""
    return {socket.inet_ntoa(r.rdata) for r in w.answer if r.rtype == 1 and len(r.rdata) == 4}


def txt_of(r):
    """The strings of one TXT record (RR), decoded."""
    out, o = [], 0
    while o < len(r.rdata):
        n = r.rdata[o]
        out.append(r.rdata[o + 1:o + 1 + n].decode("latin-1"))
        o += 1 + n
    return out
