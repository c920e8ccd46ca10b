"""Helpers for the dotproxy integration tests.

Everything here talks to 127.0.0.1 / ::1 only.  The process helpers refuse to
start dotproxy unless every upstream it could use is a loopback address.
"""

import os
import select
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdatatype

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

LOOPBACK_PREFIXES = ("127.", "::1")


# ---------------------------------------------------------------- ports

def ipv6_usable():
    """True when ::1 can be bound and connected to."""
    if not socket.has_ipv6:
        return False
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


def free_port(families=None):
    """A port that is currently free for both UDP and TCP on 127.0.0.1
    (and on ::1 when IPv6 works)."""
    if families is None:
        families = [(socket.AF_INET, "127.0.0.1")]
        if ipv6_usable():
            families.append((socket.AF_INET6, "::1"))
    for _ in range(200):
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        if port < 1024:
            continue
        socks = []
        try:
            for fam, addr in families:
                for typ in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    s = socket.socket(fam, typ)
                    socks.append(s)
                    if fam == socket.AF_INET6:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    s.bind((addr, port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port found")


def wait_tcp_listening(host, port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            s = socket.create_connection((host, port), timeout=0.5)
            s.close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


# ---------------------------------------------------------------- dotproxy

def _is_loopback_spec(spec):
    ip = spec.split("#", 1)[0]
    if ip.startswith("["):
        ip = ip[1:].split("]", 1)[0]
    else:
        ip = ip.split("@", 1)[0]
    return ip.startswith("127.") or ip == "::1"


def check_safe_args(args, env):
    """Refuse any dotproxy command line whose upstream could be non-loopback
    or whose listener could be port 53 / a non-loopback address."""
    ups, listens = [], []
    i = 0
    while i < len(args):
        a = args[i]
        for short, long_, dest in (("-u", "--upstream", ups), ("-l", "--listen", listens)):
            if a in (short, long_) and i + 1 < len(args):
                dest.append(args[i + 1])
                i += 1
            elif a.startswith(long_ + "="):
                dest.append(a[len(long_) + 1:])
            elif a.startswith(short) and len(a) > 2 and not a.startswith("--"):
                dest.append(a[2:])
        i += 1
    if not ups:
        ds = (env or {}).get("DOT_SERVER")
        if not ds:
            raise AssertionError("test bug: dotproxy started without a loopback upstream")
        ups = [s for s in ds.split(",") if s]
    for u in ups:
        if not _is_loopback_spec(u):
            raise AssertionError("test bug: non-loopback upstream %r" % u)
    if not listens:
        raise AssertionError("test bug: dotproxy started without an explicit -l")
    for l in listens:
        if not (l.startswith("127.") or l.startswith("[::1]") or l.startswith("::1")):
            raise AssertionError("test bug: non-loopback listener %r" % l)


def proxy_env(extra=None):
    env = dict(os.environ)
    env.pop("DOT_SERVER", None)
    if extra:
        env.update(extra)
    return env


def close_quietly(*socks):
    """Close sockets that may be closed already or broken (teardown paths)."""
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


class DotProxy:
    """A running dotproxy.  .proc, .port, .lines (stderr lines), .stop()."""

    def __init__(self, binary, args, env=None, port=None, host="127.0.0.1",
                 ready_timeout=5.0, cmd_prefix=None, wait_ready=True):
        """wait_ready=False (for -q, which hides the "ready" line): wait for
        the TCP listener on host:port instead."""
        self.binary = binary
        self.args = list(args)
        self.port = port
        self.host = host
        self.lines = []
        self._cv = threading.Condition()
        env = proxy_env(env)
        check_safe_args(self.args, env)
        cmd = list(cmd_prefix or []) + [binary] + self.args
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if wait_ready:
            up = self.wait_for("ready", ready_timeout)
        else:
            up = wait_tcp_listening(host, port, ready_timeout) and self.proc.poll() is None
        if not up:
            rc = self.proc.poll()
            self.stop()
            raise AssertionError("dotproxy did not log 'ready' within %.1fs (exit %r); "
                                 "cmd=%r\nstderr:\n%s" % (ready_timeout, rc, cmd, self.log()))

    def _read(self):
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cv:
                self.lines.append(line)
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def wait_for(self, text, timeout, exclude=" -> "):
        """Wait until a stderr line contains `text` (and not `exclude`: the
        debug state-change lines "upstream X: handshaking -> ready" do not count)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                if any(text in l and not (exclude and exclude in l) for l in self.lines):
                    return True
                if self.proc.poll() is not None and not self._reader.is_alive():
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.1))

    def count(self, text):
        with self._cv:
            return sum(1 for l in self.lines if text in l)

    def log(self):
        with self._cv:
            return "\n".join(self.lines)

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=3.0):
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(2)
        return self.proc.returncode


def run_dotproxy(binary, args, env=None, timeout=5.0, cmd_prefix=None, check_safe=True):
    """Run dotproxy expecting it to exit by itself (option errors, --help).
    Returns CompletedProcess (text).  Kills it after `timeout`."""
    env = proxy_env(env)
    if check_safe:
        check_safe_args(args, env)
    cmd = list(cmd_prefix or []) + [binary] + list(args)
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        return subprocess.CompletedProcess(cmd, None, out.decode(errors="replace"),
                                           err.decode(errors="replace"))
    return subprocess.CompletedProcess(cmd, p.returncode, out.decode(errors="replace"),
                                       err.decode(errors="replace"))


# ---------------------------------------------------------------- DNS helpers

def make_query(name, rdtype="A", qid=None, use_edns=None, payload=1232):
    if use_edns is None or use_edns is False:
        q = dns.message.make_query(name, rdtype, use_edns=False)
    else:
        q = dns.message.make_query(name, rdtype, use_edns=0, payload=payload)
    if qid is not None:
        q.id = qid
    return q


def query_udp(port, name, rdtype="A", host="127.0.0.1", timeout=3.0, **kw):
    q = make_query(name, rdtype, **kw)
    return dns.query.udp(q, host, port=port, timeout=timeout, ignore_unexpected=True,
                         raise_on_truncation=False)


def query_tcp(port, name, rdtype="A", host="127.0.0.1", timeout=3.0, **kw):
    q = make_query(name, rdtype, **kw)
    return dns.query.tcp(q, host, port=port, timeout=timeout)


def _family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def udp_exchange(port, wire, host="127.0.0.1", timeout=2.0):
    """Send raw bytes over UDP, return the raw reply or None on timeout."""
    s = socket.socket(_family(host), socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.sendto(wire, (host, port))
        try:
            data, _ = s.recvfrom(65535)
            return data
        except socket.timeout:
            return None
    finally:
        s.close()


def tcp_connect(port, host="127.0.0.1", timeout=3.0):
    s = socket.create_connection((host, port), timeout=timeout)
    s.settimeout(timeout)
    return s


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return buf


def tcp_frame(wire):
    """A DNS message with its 2-byte TCP length prefix (RFC 1035 4.2.2)."""
    return struct.pack("!H", len(wire)) + wire


def tcp_send_msg(s, wire):
    s.sendall(tcp_frame(wire))


def tcp_recv_msg(s):
    (n,) = struct.unpack("!H", recv_exact(s, 2))
    return recv_exact(s, n)


def tcp_exchange(port, wire, host="127.0.0.1", timeout=3.0):
    s = tcp_connect(port, host, timeout)
    try:
        tcp_send_msg(s, wire)
        return tcp_recv_msg(s)
    finally:
        s.close()


def txt_strings(resp):
    """The strings of the TXT records in an answer, sorted."""
    out = []
    for rr in resp.answer:
        if rr.rdtype == dns.rdatatype.TXT:
            for rd in rr:
                out.extend(s.decode() for s in rd.strings)
    return sorted(out)


def a_addrs(resp, name=None):
    out = set()
    for rrset in resp.answer:
        if rrset.rdtype == dns.rdatatype.A and (name is None or rrset.name == dns.name.from_text(name)):
            out |= {r.address for r in rrset}
    return out


def rcode(resp):
    return resp.rcode()


def wait_until(pred, timeout, interval=0.2):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            return v
        time.sleep(interval)


# ---------------------------------------------------------------- unbound

def write_unbound_conf(workdir, pki, port, v6):
    big1 = " ".join('"%s"' % (c * 250) for c in "xyz")
    big2 = " ".join('"%s"' % (c * 250) for c in "ab")
    ifaces = "  interface: 127.0.0.1@%d\n" % port
    if v6:
        ifaces += "  interface: ::1@%d\n" % port
    conf = f"""server:
  username: ""
  chroot: ""
  directory: "{workdir}"
  pidfile: "{workdir}/unbound.pid"
  use-syslog: no
  logfile: "{workdir}/unbound.log"
  verbosity: 1
  num-threads: 1
  do-daemonize: no
{ifaces}  tls-port: {port}
  tls-service-key: "{pki}/leaf.key"
  tls-service-pem: "{pki}/chain.pem"
  incoming-num-tcp: 1000
  tcp-idle-timeout: 60000
  edns-tcp-keepalive: yes
  access-control: 127.0.0.0/8 allow
  access-control: ::1 allow
  do-ip4: yes
  do-ip6: {"yes" if v6 else "no"}
  do-udp: yes
  do-tcp: yes
  module-config: "iterator"
  # answer everything from local data: never recurse (no traffic leaves the host)
  local-zone: "." static
  local-zone: "bench.test." redirect
  local-data: "bench.test. 300 IN A 192.0.2.1"
  local-zone: "example.test." static
  local-data: "example.test. 60 IN A 192.0.2.10"
  local-data: "example.test. 60 IN A 192.0.2.11"
  local-data: "example.test. 60 IN AAAA 2001:db8::10"
  local-data: 'big.example.test. 60 IN TXT {big1}'
  local-data: 'big.example.test. 60 IN TXT {big2}'
remote-control:
  control-enable: no
"""
    path = os.path.join(workdir, "unbound.conf")
    with open(path, "w") as f:
        f.write(conf)
    return path


class Unbound:
    def __init__(self, workdir, pki, v6):
        self.workdir = workdir
        self.pki = pki
        self.v6 = v6
        os.makedirs(workdir, exist_ok=True)
        self.port = free_port()
        self.conf = write_unbound_conf(workdir, pki, self.port, v6)
        self.out = open(os.path.join(workdir, "unbound.out"), "wb")
        self.proc = subprocess.Popen(["/usr/sbin/unbound", "-d", "-c", self.conf],
                                     stdin=subprocess.DEVNULL, stdout=self.out,
                                     stderr=subprocess.STDOUT)
        ok = False
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                r = dot_query(("127.0.0.1", self.port), make_query("example.test", "A"),
                              cafile=os.path.join(pki, "root.pem"), timeout=1.0)
                if {"192.0.2.10", "192.0.2.11"} <= a_addrs(r):
                    ok = True
                    break
            except (OSError, EOFError, ssl.SSLError):
                time.sleep(0.1)
        if not ok:
            self.stop()
            raise RuntimeError("unbound DoT upstream did not come up; log:\n%s" % self.logtext())

    def logtext(self):
        out = []
        for f in ("unbound.out", "unbound.log"):
            p = os.path.join(self.workdir, f)
            if os.path.exists(p):
                out.append(open(p, errors="replace").read())
        return "\n".join(out)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()


def dot_query(addr, q, cafile, server_hostname="dns.test", timeout=2.0):
    """One DNS query over TLS (for checking the fixtures themselves)."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = True
    raw = socket.create_connection(addr, timeout=timeout)
    try:
        with ctx.wrap_socket(raw, server_hostname=server_hostname) as s:
            s.settimeout(timeout)
            tcp_send_msg(s, q.to_wire())
            return dns.message.from_wire(tcp_recv_msg(s))
    finally:
        raw.close()


# ---------------------------------------------------------------- counting relay

class CountingRelay:
    """Plain TCP forwarder 127.0.0.1:port -> target, counting accepted
    connections.  start()/stop() may be called repeatedly (same port)."""

    def __init__(self, target, port=None, host="127.0.0.1"):
        self.target = target
        self.host = host
        self.port = port or free_port()
        self.accepted = 0
        self.accept_times = []        # time.monotonic() of each accepted connection
        self._lock = threading.Lock()
        self._lsock = None
        self._conns = []
        self._threads = []
        self._stopping = threading.Event()

    def start(self):
        self._stopping.clear()
        ls = socket.socket(_family(self.host), socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((self.host, self.port))
        ls.listen(64)
        self._lsock = ls
        t = threading.Thread(target=self._accept_loop, args=(ls,), daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _accept_loop(self, ls):
        while not self._stopping.is_set():
            try:
                r, _, _ = select.select([ls], [], [], 0.1)
            except (OSError, ValueError):
                return
            if not r:
                continue
            try:
                c, _ = ls.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self.accept_times.append(time.monotonic())
            try:
                u = socket.create_connection(self.target, timeout=3)
                u.settimeout(None)
            except OSError:
                c.close()
                continue
            with self._lock:
                self._conns += [c, u]
            t = threading.Thread(target=self._pump, args=(c, u), daemon=True)
            t.start()
            self._threads.append(t)

    def _pump(self, a, b):
        socks = [a, b]
        try:
            while not self._stopping.is_set():
                r, _, _ = select.select(socks, [], [], 0.1)
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        return
                    self._on_data(a, s is a, data)
                    (b if s is a else a).sendall(data)
        except (OSError, ValueError):
            pass
        finally:
            close_quietly(*socks)

    def _on_data(self, conn, from_client, data):
        """Hook: `data` read from the client side (from_client) or the target."""

    def close_connections(self):
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            close_quietly(s)

    def stop(self):
        """Stop listening (connects get refused) and close all connections."""
        self._stopping.set()
        if self._lsock is not None:
            self._lsock.close()
            self._lsock = None
        self.close_connections()
        for t in self._threads:
            t.join(2)
        self._threads = []


class TlsRecordRelay(CountingRelay):
    """A CountingRelay that also splits the client -> target byte stream of
    each connection into TLS records (5-byte header: type, version, length)
    and counts them by content type, to observe how many records the client
    used for its application data (type 23)."""

    def __init__(self, target, port=None, host="127.0.0.1"):
        super().__init__(target, port, host)
        self._bufs = {}
        self.records = {}          # id(conn) -> list of (content type, length)

    def _on_data(self, conn, from_client, data):
        if not from_client:
            return
        with self._lock:
            buf = self._bufs.get(id(conn), b"") + data
            recs = self.records.setdefault(id(conn), [])
            while len(buf) >= 5:
                n = struct.unpack("!H", buf[3:5])[0]
                if len(buf) < 5 + n:
                    break
                recs.append((buf[0], n))
                buf = buf[5 + n:]
            self._bufs[id(conn)] = buf

    def app_records(self):
        """Number of application-data records the clients sent, all connections."""
        with self._lock:
            return sum(1 for recs in self.records.values() for t, _ in recs if t == 23)


# ---------------------------------------------------------------- fake DoT upstream

def fake_addr_for(name):
    """The A data FakeDoT answers for `name`: qK.<anything> -> 192.0.2.K
    (K < 256) or 10.x.y.z (K itself, for larger K); anything else 192.0.2.99."""
    first = str(name).split(".", 1)[0].lower()
    if len(first) > 1 and first[0] == "q" and first[1:].isdigit():
        k = int(first[1:])
        if k < 256:
            return "192.0.2.%d" % k
        return "10.%d.%d.%d" % ((k >> 16) & 255, (k >> 8) & 255, k & 255)
    return FakeDoT.ANSWER_ADDR


class FakeQuery:
    """One query as a FakeDoT connection received it."""

    __slots__ = ("t", "id", "wire", "conn")

    def __init__(self, t, qid, wire, conn):
        self.t, self.id, self.wire, self.conn = t, qid, wire, conn

    def msg(self):
        return dns.message.from_wire(self.wire)

    def __repr__(self):
        return "FakeQuery(id=%d, len=%d, conn=%d)" % (self.id, len(self.wire), self.conn)


class FakeConn:
    """What happened on one connection accepted by a FakeDoT."""

    def __init__(self, index):
        self.index = index
        self.accepted_at = time.monotonic()
        self.handshake_at = None
        self.handshake_error = None
        self.session_reused = None    # sslsock.session_reused after the handshake
        self.alpn = None              # sslsock.selected_alpn_protocol()
        self.version = None
        self.queries = []             # FakeQuery, in arrival order
        self.answers = 0
        self.closed_at = None
        # who ended it and how: "close_notify" (client sent a TLS close_notify,
        # then EOF), "eof" (TCP FIN without close_notify), "reset", "server"
        # (close_after), "stopped" (FakeDoT.stop), "handshake" (handshake failed),
        # "error: ..." (anything else)
        self.close_kind = None
        self.closed = threading.Event()

    @property
    def ids(self):
        return [q.id for q in self.queries]

    def __repr__(self):
        return ("FakeConn(#%d reused=%r alpn=%r queries=%d answers=%d close=%r)"
                % (self.index, self.session_reused, self.alpn, len(self.queries),
                   self.answers, self.close_kind))


class _CloseNow(Exception):
    pass


def _question_end(wire):
    """Offset just past the first question (no compression in queries)."""
    off = 12
    while True:
        n = wire[off]
        if n == 0:
            return off + 1 + 4
        if n & 0xC0:
            return off + 2 + 4
        off += 1 + n


class FakeDoT:
    """A minimal DoT server (TLS 1.2, Python ssl) for fault injection.

    mode "reject":  reads the ClientHello and closes the TCP connection (FIN).
    mode "silent":  completes the handshake, reads queries, never answers.
    mode "answer":  answers every query (A queries: A fake_addr_for(name),
                    i.e. qK.x -> 192.0.2.K, else 192.0.2.99); the answer repeats
                    the query's question byte for byte (case included) and
                    carries an OPT record when the query had one (same DO bit).
    close_after=N:  closes a connection (TLS close_notify) after N answers on it.
    reverse_batch=N: on each connection, holds the first N queries and then
                    answers them in reverse order of arrival.
    pad_answers:    puts an EDNS Padding option (code 12) in the answers' OPT.
    alpn:           the ALPN protocols the server accepts (None: no ALPN).
    delay:          seconds to wait before each answer.
    ttl:            TTL of the A record in answers (default 60).
    aa:             set the AA flag in answers.
    special:        {name (lower case, no final dot): dict(kind=..., soa=...)}
                    answers a name differently: kind "servfail" / "refused"
                    (that RCODE, no records), "nxdomain" / "nodata" (NXDOMAIN
                    / NOERROR without answer records; soa=(TTL, MINIMUM) puts
                    a SOA for "test." in the authority section), "tc" (TC=1,
                    no records), "malformed" (ANCOUNT=1 and no record).

    `mode` may be changed while running.  Records: .conns (FakeConn per
    accepted connection), plus the counters connections / handshakes /
    queries / answers / handshake_errors.
    """

    ANSWER_ADDR = "192.0.2.99"
    addr_for = staticmethod(fake_addr_for)

    def __init__(self, chain, key, mode="answer", close_after=None, host="127.0.0.1",
                 reverse_batch=None, pad_answers=False, alpn=("dot",), delay=0.0,
                 port=None, ttl=60, aa=False, special=None):
        self.mode = mode
        self.ttl = ttl
        self.aa = aa
        self.special = dict(special or {})
        self.close_after = close_after
        self.reverse_batch = reverse_batch
        self.pad_answers = pad_answers
        self.delay = delay
        self.host = host
        self.port = port or free_port()
        self.connections = 0          # TCP connections accepted
        self.handshakes = 0           # TLS handshakes completed
        self.queries = 0              # queries read
        self.answers = 0              # answers sent
        self.handshake_errors = []
        self.conns = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._socks = []
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(chain, key)
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        # Python >= 3.10 sets this by default, which makes a TCP FIN without a
        # TLS close_notify look like a clean close; keep them apart.
        ctx.options &= ~getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
        self.ctx = ctx
        ls = socket.socket(_family(host), socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((host, self.port))
        ls.listen(256)
        self._lsock = ls
        self._threads = [threading.Thread(target=self._accept_loop, daemon=True)]
        self._threads[0].start()

    # ------------------------------------------------------------ records

    def all_queries(self):
        with self._lock:
            return [q for c in self.conns for q in c.queries]

    def wait_queries(self, n, timeout):
        return wait_until(lambda: self.queries >= n, timeout, 0.02)

    # ------------------------------------------------------------ answers

    def build_answer(self, wire):
        """The answer to `wire` (raw bytes), or None to drop it."""
        q = dns.message.from_wire(wire)
        qend = _question_end(wire)
        question = wire[12:qend]
        qname = q.question[0].name
        rdtype = q.question[0].rdtype
        flags = 0x8000 | (q.flags & 0x7900) | 0x0080   # QR, opcode, RD; RA
        flags &= ~0x0400 & 0xFFFF                       # not AA
        if self.aa:
            flags |= 0x0400
        body = b""
        an = ns = 0
        sp = self.special.get(qname.to_text(omit_final_dot=True).lower())
        kind = sp.get("kind") if sp else None
        if kind is None:
            if rdtype == dns.rdatatype.A and q.question[0].rdclass == 1:
                addr = socket.inet_aton(fake_addr_for(qname.to_text()))
                body += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, self.ttl, 4) + addr
                an = 1
        elif kind in ("servfail", "refused", "nxdomain"):
            flags |= {"servfail": 2, "refused": 5, "nxdomain": 3}[kind]
        elif kind == "tc":
            flags |= 0x0200
        elif kind == "malformed":
            an = 1                                      # promised, not there
        if kind in ("nxdomain", "nodata") and sp.get("soa"):
            sttl, smin = sp["soa"]
            rdata = (b"\x02ns\x04test\x00" + b"\x05admin\x04test\x00"
                     + struct.pack("!IIIII", 1, 3600, 600, 86400, smin))
            body += (b"\x04test\x00" + struct.pack("!HHIH", 6, 1, sttl, len(rdata))
                     + rdata)
            ns = 1
        ar = 0
        opt = b""
        if q.edns >= 0:
            ar = 1
            do = q.ednsflags & dns.flags.DO
            ttl = do & 0xFFFF
            options = b""
            if self.pad_answers:
                base = 12 + len(question) + len(body) + 11 + 4
                padlen = (-base) % 468 or 0
                options = struct.pack("!HH", 12, padlen) + b"\0" * padlen
            opt = b"\x00" + struct.pack("!HHIH", 41, 1232, ttl, len(options)) + options
        hdr = struct.pack("!HHHHHH", q.id, flags, 1, an, ns, ar)
        return hdr + question + body + opt

    # ------------------------------------------------------------ server

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([self._lsock], [], [], 0.1)
            except (OSError, ValueError):
                return
            if not r:
                continue
            try:
                c, _ = self._lsock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                rec = FakeConn(len(self.conns))
                self.conns.append(rec)
                self._socks.append(c)
            t = threading.Thread(target=self._serve, args=(c, rec), daemon=True)
            t.start()
            self._threads.append(t)

    def _send(self, s, rec, out):
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            self.answers += 1   # counted before the client can see it
            rec.answers += 1
        s.settimeout(5)
        s.sendall(struct.pack("!H", len(out)) + out)
        s.settimeout(0.2)

    def _serve(self, raw, rec):
        raw.settimeout(5)
        if self.mode == "reject":
            try:
                raw.recv(65536)          # the ClientHello: read, so the close is a FIN
            except OSError:
                pass
            with self._lock:
                rec.close_kind = "rejected"
                rec.closed_at = time.monotonic()
            rec.closed.set()
            raw.close()
            return
        try:
            s = self.ctx.wrap_socket(raw, server_side=True, suppress_ragged_eofs=False)
        except (OSError, ssl.SSLError) as e:
            with self._lock:
                self.handshake_errors.append(repr(e))
                rec.handshake_error = repr(e)
                rec.close_kind = "handshake"
                rec.closed_at = time.monotonic()
            rec.closed.set()
            raw.close()
            return
        with self._lock:
            self.handshakes += 1
            self._socks.append(s)
            rec.handshake_at = time.monotonic()
            rec.session_reused = s.session_reused
            rec.alpn = s.selected_alpn_protocol()
            rec.version = s.version()
        s.settimeout(0.2)
        held = []
        buf = b""
        kind = None
        try:
            while True:
                if self._stop.is_set():
                    kind = "stopped"
                    break
                try:
                    data = s.recv(65536)
                except (socket.timeout, ssl.SSLWantReadError):
                    continue
                except ssl.SSLEOFError:
                    kind = "eof"
                    break
                except ssl.SSLError as e:
                    if "UNEXPECTED_EOF" not in str(e):
                        raise
                    kind = "eof"    # OpenSSL 3: TCP FIN without close_notify
                    break
                except ConnectionResetError:
                    kind = "reset"
                    break
                if not data:
                    kind = "close_notify"
                    break
                buf += data
                while len(buf) >= 2:
                    (n,) = struct.unpack("!H", buf[:2])
                    if len(buf) < 2 + n:
                        break
                    wire, buf = buf[2:2 + n], buf[2 + n:]
                    qid = struct.unpack("!H", wire[:2])[0] if len(wire) >= 2 else -1
                    with self._lock:
                        self.queries += 1
                        rec.queries.append(FakeQuery(time.monotonic(), qid, wire, rec.index))
                    if self.mode == "silent":
                        continue
                    out = self.build_answer(wire)
                    if out is None:
                        continue
                    if self.reverse_batch and len(rec.queries) <= self.reverse_batch:
                        held.append(out)
                        if len(held) < self.reverse_batch:
                            continue
                        for o in reversed(held):
                            self._send(s, rec, o)
                        held = []
                    else:
                        self._send(s, rec, out)
                    if self.close_after is not None and rec.answers >= self.close_after:
                        raise _CloseNow()
        except _CloseNow:
            kind = "server"
        except (OSError, ssl.SSLError, dns.exception.DNSException, IndexError,
                struct.error) as e:
            kind = "error: %r" % (e,)
        finally:
            with self._lock:
                rec.close_kind = kind
                rec.closed_at = time.monotonic()
            rec.closed.set()
            if kind in ("server", "stopped", "close_notify"):
                try:
                    s.settimeout(0.5)
                    s.unwrap()
                except (OSError, ssl.SSLError, ValueError):
                    pass
            close_quietly(s, raw)

    def stop(self):
        self._stop.set()
        close_quietly(self._lsock)
        for t in self._threads:
            t.join(2)
        with self._lock:
            socks = list(self._socks)
        close_quietly(*socks)


# ---------------------------------------------------------------- fake plain-DNS server

class FakePlainDNS:
    """A plain-DNS server (UDP and TCP on host:port) for one zone, standing in
    for kube-dns / dnsmasq behind --forward-zone.

    A query for a name at or below `zone` is answered with `n_records` A
    records 198.51.100.<base+i> (TTL `ttl`, base = `base`); any other name
    gets NXDOMAIN with a SOA.  The question is echoed as received (case
    included); an OPT is echoed when the query had one.
    tc_udp:  every UDP answer is TC=1 without records (full answer over TCP).
    silent:  read queries, never answer.
    spoof:   before each real UDP answer, send three bogus ones (data
             203.0.113.x): from another socket, with a wrong ID, and with a
             different question.
    Records: .udp / .tcp (query counts), .queries [(transport, wire, src)].
    """

    def __init__(self, zone, port=None, host="127.0.0.1", n_records=1, base=1, ttl=60,
                 tc_udp=False, silent=False, spoof=False):
        self.zone = dns.name.from_text(zone)
        self.host = host
        self.port = port or free_port()
        self.n_records = n_records
        self.base = base
        self.ttl = ttl
        self.tc_udp = tc_udp
        self.silent = silent
        self.spoof = spoof
        self.udp = 0
        self.tcp = 0
        self.queries = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        fam = _family(host)
        self._us = socket.socket(fam, socket.SOCK_DGRAM)
        self._us.bind((host, self.port))
        self._ts = socket.socket(fam, socket.SOCK_STREAM)
        self._ts.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._ts.bind((host, self.port))
        self._ts.listen(64)
        self._conns = []
        self._threads = [threading.Thread(target=self._udp_loop, daemon=True),
                         threading.Thread(target=self._tcp_loop, daemon=True)]
        for t in self._threads:
            t.start()

    def addrs(self):
        return {"198.51.100.%d" % (self.base + i) for i in range(self.n_records)}

    def names(self):
        """(transport, lower-case name with the final dot), in order of arrival."""
        with self._lock:
            return [(t, dns.message.from_wire(w).question[0].name.to_text().lower())
                    for t, w, _ in self.queries]

    def answer(self, wire, transport, qid=None, addr_base=None, qname=None):
        q = dns.message.from_wire(wire)
        name = qname or q.question[0].name
        flags = 0x8000 | (q.flags & 0x7900) | 0x0080 | 0x0400   # QR opcode RD RA AA
        if qname is None:
            question = wire[12:_question_end(wire)]
        else:
            question = qname.to_wire() + struct.pack("!HH", q.question[0].rdtype,
                                                      q.question[0].rdclass)
        body = b""
        an = ns = 0
        if name.is_subdomain(self.zone):
            if transport == "udp" and self.tc_udp:
                flags |= 0x0200
            elif q.question[0].rdtype == dns.rdatatype.A:
                base = self.base if addr_base is None else addr_base
                for i in range(self.n_records):
                    body += (b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, self.ttl, 4)
                             + socket.inet_aton("198.51.100.%d" % (base + i)
                                                if addr_base is None else
                                                "203.0.113.%d" % (base + i)))
                    an += 1
        else:
            flags |= 3
            rdata = (b"\x02ns" + self.zone.to_wire() + b"\x05admin" + self.zone.to_wire()
                     + struct.pack("!IIIII", 1, 3600, 600, 86400, 60))
            body += self.zone.to_wire() + struct.pack("!HHIH", 6, 1, 60, len(rdata)) + rdata
            ns = 1
        ar = 0
        opt = b""
        if q.edns >= 0:
            ar = 1
            opt = b"\x00" + struct.pack("!HHIH", 41, 1232, q.ednsflags & dns.flags.DO, 0)
        hdr = struct.pack("!HHHHHH", q.id if qid is None else qid, flags, 1, an, ns, ar)
        return hdr + question + body + opt

    def _udp_loop(self):
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([self._us], [], [], 0.1)
                if not r:
                    continue
                wire, src = self._us.recvfrom(65535)
            except (OSError, ValueError):
                return
            with self._lock:
                self.udp += 1
                self.queries.append(("udp", wire, src))
            if self.silent:
                continue
            try:
                q = dns.message.from_wire(wire)
                if self.spoof:
                    other = socket.socket(_family(self.host), socket.SOCK_DGRAM)
                    other.bind((self.host, 0))
                    other.sendto(self.answer(wire, "udp", addr_base=66), src)
                    other.close()
                    self._us.sendto(self.answer(wire, "udp", qid=q.id ^ 0x5555,
                                                addr_base=67), src)
                    self._us.sendto(self.answer(wire, "udp", addr_base=68,
                                                qname=dns.name.from_text("other", self.zone)),
                                    src)
                    time.sleep(0.05)
                self._us.sendto(self.answer(wire, "udp"), src)
            except (OSError, dns.exception.DNSException):
                pass

    def _tcp_loop(self):
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([self._ts], [], [], 0.1)
                if not r:
                    continue
                c, src = self._ts.accept()
            except (OSError, ValueError):
                return
            with self._lock:
                self._conns.append(c)
            t = threading.Thread(target=self._tcp_serve, args=(c, src), daemon=True)
            t.start()
            self._threads.append(t)

    def _tcp_serve(self, c, src):
        c.settimeout(0.2)
        buf = b""
        try:
            while not self._stop.is_set():
                try:
                    data = c.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    return
                buf += data
                while len(buf) >= 2:
                    (n,) = struct.unpack("!H", buf[:2])
                    if len(buf) < 2 + n:
                        break
                    wire, buf = buf[2:2 + n], buf[2 + n:]
                    with self._lock:
                        self.tcp += 1
                        self.queries.append(("tcp", wire, src))
                    if not self.silent:
                        out = self.answer(wire, "tcp")
                        c.sendall(struct.pack("!H", len(out)) + out)
        except (OSError, dns.exception.DNSException):
            pass
        finally:
            close_quietly(c)

    def stop(self):
        self._stop.set()
        close_quietly(self._us, self._ts)
        with self._lock:
            conns = list(self._conns)
        close_quietly(*conns)
        for t in self._threads:
            t.join(2)


# ---------------------------------------------------------------- sanitized builds
# make test-asan runs the suite against build/dotproxy-asan (clang ASan/UBSan, glibc, dynamic)
# with DOTPROXY_SANITIZED=1. A test that needs the static binary itself (copied into an empty
# root, or inspected as a file) is listed here or marked @helpers.requires_static_binary;
# conftest.py skips both kinds for a sanitized binary.
SANITIZED = bool(os.environ.get("DOTPROXY_SANITIZED"))
STATIC_BINARY_TESTS = (
    "test_cli.py::test_chroot_empty_root",
    "test_container.py::",          # builds and runs its own image binary: not the one under test
    "test_cross.py::",
    "test_initramfs.py::",
)


def requires_static_binary(f):
    import pytest
    return pytest.mark.requires_static_binary(f)
