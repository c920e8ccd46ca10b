"""tlsattack: a scripted TLS 1.2 server that plays an on-path attacker against
dotproxy's upstream TLS client (BearSSL), for tests/test_attack_tls.py.

It is built from parts (the `cryptography` package for the primitives, raw
sockets for the record layer) so that it can send what no TLS library would:
a ServerHello that plants a session ID and hangs up, an abbreviated handshake
that "resumes" that session with a master secret of 48 zero bytes (what a
BearSSL context holds before any key exchange), a ChangeCipherSpec before any
key exists, messages out of order, old protocol versions, a HelloRequest after
a full handshake.  It also does honest full handshakes (ECDHE, ServerKeyExchange
signed with a real key) and honest resumptions, as the control.

Layers, bottom up (TLS 1.2, RFC 5246; AEAD suites only, which is all dotproxy
offers):
  prf(), master_secret(), key_block(), finished_verify_data()
                            the PRF (5), master secret (8.1), key block (6.3),
                            Finished verify_data (7.4.9)
  RecordProtection          AEAD records: AES-GCM (RFC 5288: explicit nonce = the
                            sequence number, AAD = seq || type || version || length)
                            and ChaCha20-Poly1305 (RFC 7905)
  handshake(), ClientHello.parse(), server_hello(), certificate(),
  server_key_exchange(), ...   handshake message framing and parsing
  TLSConn                   one TCP connection: records in and out, handshake
                            reassembly, the transcript, the keys of each direction
  AttackServer              a listener on 127.0.0.1:<free port> running one script
                            ("mode") per accepted connection, recording what it saw
                            (ConnLog per connection)

Scripts (AttackServer(mode=...)).  In every mode but "honest" and
"hello_request", a ClientHello that offers a session ID this server planted is
answered by the resumption attack (resume_planted=True, the default):
ServerHello echoing the ID with the planted version and suite, CCS, Finished,
all keyed from a master secret of 48 zero bytes; then the client's CCS and
Finished are checked, and every DNS query read (2-byte framing, RFC 7858) is
answered with a forged A 6.6.6.6 (TTL 300) for the asked name.  Otherwise:
  plant_then_resume   ServerHello carrying a new random 32-byte session ID X
                      (remembered) and close.
  plant_then_stall    ServerHello(X), then silence until the client gives up (its
                      handshake timeout) and closes.
  plant_cert          ServerHello(X) + Certificate from `chain` (a PEM file; no
                      key needed), then wait for the client's alert or close.
  ccs_early           ServerHello(X), then at once ChangeCipherSpec (before any
                      key exists), then a Finished and an application-data record
                      encrypted with zero-master-secret keys; whatever the client
                      sends is tried with those keys.
  old_version         ServerHello(X) with version `version` (TLS 1.1 or 1.0), in
                      a record of that version.
  out_of_order        variant (`variant`):
                        hello_done_first  ServerHello(X), ServerHelloDone, Certificate
                        appdata_early     ServerHello(X), Certificate, then a plaintext
                                          application-data record (a framed DNS answer)
                        alert_mid         ServerHello(X), Certificate, fatal alert
                                          handshake_failure
                        finished_plain    ServerHello(X), then a Finished in plaintext
                                          (no CCS), keyed from the zero master secret
                      (the Certificate, when sent, is `chain`: a server's chain is
                      public, an attacker has it)
  hello_request       honest full handshake with `chain` and `key`, then a
                      HelloRequest at once and after every answer; answers are the
                      correct ones (helpers.fake_addr_for); a ClientHello on the
                      same connection (a renegotiation) is recorded, and from then
                      on every answer is forged.
  honest              honest full handshakes with `chain` and `key`, a session
                      cache (honest resumption), correct answers; close_after=N
                      sends close_notify and closes after N answers.

`mode` may be changed while the server runs (it is read per connection: e.g.
honest sessions first, then the attacker takes over the address).

Records: .conns (ConnLog per accepted connection), .planted ({session ID:
(version, suite)}), .sessions (the honest cache), and the summaries hellos(),
offered_planted(), attacker_reads(), queries(), forged(), renegotiations(),
resumed_handshakes(), describe().

By hand: python3 tests/tlsattack.py --mode plant_then_resume --port N, then
dotproxy -u 127.0.0.1@N#dns.test -c <test root> -v, and dig through it twice.
"""

import base64
import os
import select
import signal
import socket
import struct
import threading
import time

import dns.message
import dns.rrset
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from helpers import fake_addr_for, free_port

# ---------------------------------------------------------------- constants

TLS10, TLS11, TLS12 = 0x0301, 0x0302, 0x0303

CT_CCS, CT_ALERT, CT_HANDSHAKE, CT_APPDATA = 20, 21, 22, 23

HT_HELLO_REQUEST = 0
HT_CLIENT_HELLO = 1
HT_SERVER_HELLO = 2
HT_CERTIFICATE = 11
HT_SERVER_KEY_EXCHANGE = 12
HT_SERVER_HELLO_DONE = 14
HT_CLIENT_KEY_EXCHANGE = 16
HT_FINISHED = 20

EXT_SNI = 0x0000
EXT_GROUPS = 0x000A
EXT_SIG_ALGS = 0x000D
EXT_ALPN = 0x0010
EXT_RENEG = 0xFF01

GROUP_X25519 = 29
GROUP_P256 = 23

ALERT_WARNING, ALERT_FATAL = 1, 2
ALERT_CLOSE_NOTIFY = 0
ALERT_HANDSHAKE_FAILURE = 40
ALERT_NO_RENEGOTIATION = 100

ZERO_MASTER_SECRET = bytes(48)
FORGED_ADDR = "6.6.6.6"
FORGED_TTL = 300


class Suite:
    """An AEAD cipher suite: key exchange authentication ("ecdsa"/"rsa"), the AEAD,
    its key and fixed-IV lengths, and the PRF hash."""

    def __init__(self, code, name, auth, aead, key_len, iv_len, hash_cls):
        self.code, self.name, self.auth = code, name, auth
        self.aead, self.key_len, self.iv_len, self.hash_cls = aead, key_len, iv_len, hash_cls

    def __repr__(self):
        return "Suite(0x%04X %s)" % (self.code, self.name)


SUITES = {s.code: s for s in (
    Suite(0xC02B, "ECDHE-ECDSA-AES128-GCM-SHA256", "ecdsa", "aesgcm", 16, 4, hashes.SHA256),
    Suite(0xC02F, "ECDHE-RSA-AES128-GCM-SHA256", "rsa", "aesgcm", 16, 4, hashes.SHA256),
    Suite(0xC02C, "ECDHE-ECDSA-AES256-GCM-SHA384", "ecdsa", "aesgcm", 32, 4, hashes.SHA384),
    Suite(0xC030, "ECDHE-RSA-AES256-GCM-SHA384", "rsa", "aesgcm", 32, 4, hashes.SHA384),
    Suite(0xCCA9, "ECDHE-ECDSA-CHACHA20-POLY1305", "ecdsa", "chacha", 32, 12, hashes.SHA256),
    Suite(0xCCA8, "ECDHE-RSA-CHACHA20-POLY1305", "rsa", "chacha", 32, 12, hashes.SHA256),
)}
# The attacker's preference when it only needs some suite the client offers.
SUITE_PREFERENCE = (0xC02B, 0xC02F, 0xCCA9, 0xCCA8, 0xC02C, 0xC030)


def pick_suite(offered, auth=None):
    """The first suite of SUITE_PREFERENCE that `offered` lists (and of key type
    `auth` if given), or None."""
    for code in SUITE_PREFERENCE:
        if code in offered and (auth is None or SUITES[code].auth == auth):
            return SUITES[code]
    return None


# ---------------------------------------------------------------- PRF and keys

def _hmac(hash_cls, key, data):
    h = hmac.HMAC(key, hash_cls())
    h.update(data)
    return h.finalize()


def _hash(hash_cls, data):
    h = hashes.Hash(hash_cls())
    h.update(data)
    return h.finalize()


def prf(secret, label, seed, n, hash_cls=hashes.SHA256):
    """TLS 1.2 PRF (RFC 5246 5): P_hash(secret, label + seed), n bytes."""
    seed = label + seed
    out, a = b"", seed
    while len(out) < n:
        a = _hmac(hash_cls, secret, a)
        out += _hmac(hash_cls, secret, a + seed)
    return out[:n]


def master_secret(pre_master, client_random, server_random, suite):
    return prf(pre_master, b"master secret", client_random + server_random, 48, suite.hash_cls)


class Keys:
    """The key block (RFC 5246 6.3) of an AEAD suite: write keys and fixed IVs."""

    def __init__(self, ms, client_random, server_random, suite):
        n = 2 * suite.key_len + 2 * suite.iv_len
        kb = prf(ms, b"key expansion", server_random + client_random, n, suite.hash_cls)
        k, i = suite.key_len, suite.iv_len
        self.suite = suite
        self.client_key, self.server_key = kb[:k], kb[k:2 * k]
        self.client_iv, self.server_iv = kb[2 * k:2 * k + i], kb[2 * k + i:2 * k + 2 * i]

    def client(self):
        """Protection of the client -> server direction."""
        return RecordProtection(self.suite, self.client_key, self.client_iv)

    def server(self):
        return RecordProtection(self.suite, self.server_key, self.server_iv)


def key_block(ms, client_random, server_random, suite):
    return Keys(ms, client_random, server_random, suite)


def finished_verify_data(ms, transcript, from_client, suite):
    """verify_data of a Finished (RFC 5246 7.4.9): 12 bytes over the hash of the
    handshake messages `transcript` (bytes, headers included)."""
    label = b"client finished" if from_client else b"server finished"
    return prf(ms, label, _hash(suite.hash_cls, transcript), 12, suite.hash_cls)


# ---------------------------------------------------------------- record protection

class RecordProtection:
    """One direction of AEAD record protection, with its sequence number."""

    def __init__(self, suite, key, iv):
        self.suite = suite
        self.iv = iv
        self.seq = 0
        self.aead = AESGCM(key) if suite.aead == "aesgcm" else ChaCha20Poly1305(key)

    def _aad(self, ctype, version, length):
        return struct.pack("!QBHH", self.seq, ctype, version, length)

    def _chacha_nonce(self):
        s = bytes(4) + struct.pack("!Q", self.seq)
        return bytes(a ^ b for a, b in zip(self.iv, s))

    def seal(self, ctype, version, plaintext):
        """The record fragment carrying `plaintext`."""
        aad = self._aad(ctype, version, len(plaintext))
        if self.suite.aead == "aesgcm":
            explicit = struct.pack("!Q", self.seq)
            out = explicit + self.aead.encrypt(self.iv + explicit, plaintext, aad)
        else:
            out = self.aead.encrypt(self._chacha_nonce(), plaintext, aad)
        self.seq += 1
        return out

    def open(self, ctype, version, fragment):
        """The plaintext of a record fragment; raises InvalidTag (or ValueError)."""
        if self.suite.aead == "aesgcm":
            if len(fragment) < 8 + 16:
                raise ValueError("GCM record too short")
            explicit, ct = fragment[:8], fragment[8:]
            nonce = self.iv + explicit
        else:
            if len(fragment) < 16:
                raise ValueError("ChaCha20 record too short")
            ct, nonce = fragment, self._chacha_nonce()
        out = self.aead.decrypt(nonce, ct, self._aad(ctype, version, len(ct) - 16))
        self.seq += 1
        return out


# ---------------------------------------------------------------- handshake messages

def u8(n):
    return struct.pack("!B", n)


def u16(n):
    return struct.pack("!H", n)


def u24(n):
    return struct.pack("!I", n)[1:]


def vec8(b):
    return u8(len(b)) + b


def vec16(b):
    return u16(len(b)) + b


def vec24(b):
    return u24(len(b)) + b


def handshake(msg_type, body):
    """A handshake message: type, 24-bit length, body."""
    return u8(msg_type) + vec24(body)


def alert(level, description):
    return bytes([level, description])


class ClientHello:
    """A parsed ClientHello body: .version, .random, .session_id, .suites (list of
    codes), .extensions ({type: data}), and from them .groups, .sig_algs, .alpn,
    .sni."""

    def __init__(self):
        self.version = 0
        self.random = b""
        self.session_id = b""
        self.suites = []
        self.compressions = b""
        self.extensions = {}

    @classmethod
    def parse(cls, body):
        h = cls()
        off = 0
        h.version, = struct.unpack_from("!H", body, off)
        off += 2
        h.random = body[off:off + 32]
        off += 32
        n = body[off]
        h.session_id = body[off + 1:off + 1 + n]
        off += 1 + n
        n, = struct.unpack_from("!H", body, off)
        off += 2
        h.suites = [struct.unpack_from("!H", body, off + i)[0] for i in range(0, n, 2)]
        off += n
        n = body[off]
        h.compressions = body[off + 1:off + 1 + n]
        off += 1 + n
        if off < len(body):
            n, = struct.unpack_from("!H", body, off)
            off += 2
            end = off + n
            while off + 4 <= end:
                t, ln = struct.unpack_from("!HH", body, off)
                h.extensions[t] = body[off + 4:off + 4 + ln]
                off += 4 + ln
        return h

    def _u16_list(self, ext, skip):
        d = self.extensions.get(ext, b"")[skip:]
        return [struct.unpack_from("!H", d, i)[0] for i in range(0, len(d) - 1, 2)]

    @property
    def groups(self):
        return self._u16_list(EXT_GROUPS, 2)

    @property
    def sig_algs(self):
        return self._u16_list(EXT_SIG_ALGS, 2)

    @property
    def alpn(self):
        d = self.extensions.get(EXT_ALPN)
        if d is None:
            return []
        out, off = [], 2
        while off < len(d):
            n = d[off]
            out.append(d[off + 1:off + 1 + n])
            off += 1 + n
        return out

    @property
    def sni(self):
        d = self.extensions.get(EXT_SNI)
        if not d or len(d) < 5:
            return None
        n, = struct.unpack_from("!H", d, 3)
        return d[5:5 + n].decode("ascii", "replace")

    def __repr__(self):
        return ("ClientHello(version=0x%04X sid=%s suites=%s ext=%s sni=%r)"
                % (self.version, self.session_id.hex() or "-",
                   ",".join("%04X" % s for s in self.suites),
                   ",".join("%04X" % e for e in self.extensions), self.sni))


def server_hello(random, session_id, suite_code, version=TLS12, extensions=b""):
    """A ServerHello message; `extensions` are the encoded extensions (type, vec16
    data), without the outer length (omitted when empty)."""
    body = u16(version) + random + vec8(session_id) + u16(suite_code) + u8(0)
    if extensions:
        body += vec16(extensions)
    return handshake(HT_SERVER_HELLO, body)


def extension(ext_type, data):
    return u16(ext_type) + vec16(data)


def reneg_info_ext(renegotiated=b""):
    """renegotiation_info (RFC 5746) for a first handshake: empty."""
    return extension(EXT_RENEG, vec8(renegotiated))


def alpn_ext(proto):
    return extension(EXT_ALPN, vec16(vec8(proto)))


def load_pem_chain(path):
    """The DER certificates of a PEM file, in order."""
    out, cur = [], None
    for line in open(path):
        line = line.strip()
        if line == "-----BEGIN CERTIFICATE-----":
            cur = []
        elif line == "-----END CERTIFICATE-----":
            out.append(base64.b64decode("".join(cur)))
            cur = None
        elif cur is not None:
            cur.append(line)
    return out


def load_key(path):
    with open(path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), None)


def certificate(ders):
    return handshake(HT_CERTIFICATE, vec24(b"".join(vec24(d) for d in ders)))


def server_hello_done():
    return handshake(HT_SERVER_HELLO_DONE, b"")


def hello_request():
    return handshake(HT_HELLO_REQUEST, b"")


def finished(verify_data):
    return handshake(HT_FINISHED, verify_data)


class Ecdhe:
    """The server's ephemeral ECDHE key on X25519 or P-256."""

    def __init__(self, group):
        self.group = group
        if group == GROUP_X25519:
            self.priv = x25519.X25519PrivateKey.generate()
            self.public = self.priv.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        elif group == GROUP_P256:
            self.priv = ec.generate_private_key(ec.SECP256R1())
            self.public = self.priv.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        else:
            raise ValueError("unsupported group %d" % group)

    def params(self):
        """ServerECDHParams: named_curve, group, public point."""
        return u8(3) + u16(self.group) + vec8(self.public)

    def shared(self, peer):
        if self.group == GROUP_X25519:
            return self.priv.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
        pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), peer)
        return self.priv.exchange(ec.ECDH(), pub)


def server_key_exchange(key, ecdhe, client_random, server_random):
    """ServerKeyExchange for ECDHE, signed with `key` (ECDSA or RSA) and SHA-256."""
    params = ecdhe.params()
    tbs = client_random + server_random + params
    if isinstance(key, ec.EllipticCurvePrivateKey):
        sig, alg = key.sign(tbs, ec.ECDSA(hashes.SHA256())), 0x0403
    elif isinstance(key, rsa.RSAPrivateKey):
        sig, alg = key.sign(tbs, padding.PKCS1v15(), hashes.SHA256()), 0x0401
    else:
        raise ValueError("unsupported key type %r" % type(key))
    return handshake(HT_SERVER_KEY_EXCHANGE, params + u16(alg) + vec16(sig))


def dns_answer(wire, addr, ttl):
    """An answer to the DNS query `wire` with one A record `addr` for the asked name
    (the question copied as received)."""
    q = dns.message.from_wire(wire)
    r = dns.message.make_response(q)
    r.flags |= 0x0080                                   # RA
    r.answer.append(dns.rrset.from_text(q.question[0].name, ttl, "IN", "A", addr))
    return r.to_wire()


def frame(wire):
    return u16(len(wire)) + wire


# ---------------------------------------------------------------- one connection

class Unexpected(Exception):
    """A record of another type than the one waited for: .ctype, .payload."""

    def __init__(self, ctype, payload):
        super().__init__("unexpected record type %d (%d bytes)" % (ctype, len(payload)))
        self.ctype, self.payload = ctype, payload


class PeerClosed(EOFError):
    pass


class TLSConn:
    """The server side of one TCP connection: the record layer (plaintext until
    read_prot / write_prot are set), handshake reassembly, and the transcript
    (every handshake message read or written in plaintext or protected, headers
    included, HelloRequest excepted, as RFC 5246 7.4.9 counts them)."""

    def __init__(self, sock, stop, idle=10.0):
        self.sock = sock
        self.stop = stop
        self.idle = idle
        self.rbuf = b""
        self.hsbuf = b""
        self.read_prot = None
        self.write_prot = None
        self.version = TLS12            # record version of what we send
        self.transcript = b""
        self.out = []                   # records queued by queue(), sent by flush()
        sock.settimeout(0.1)

    # -- bytes
    def _fill(self, n):
        deadline = time.monotonic() + self.idle
        while len(self.rbuf) < n:
            if self.stop.is_set():
                raise PeerClosed("server stopped")
            if time.monotonic() > deadline:
                raise socket.timeout("idle %.0fs" % self.idle)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                raise PeerClosed("reset by the client")
            if not data:
                raise PeerClosed("closed by the client")
            self.rbuf += data

    # -- records
    def read_record(self):
        """(content type, record version, payload): the payload decrypted when
        read_prot is set (raises InvalidTag when that fails)."""
        self._fill(5)
        ctype, version, n = struct.unpack("!BHH", self.rbuf[:5])
        self._fill(5 + n)
        frag, self.rbuf = self.rbuf[5:5 + n], self.rbuf[5 + n:]
        if self.read_prot is not None:
            frag = self.read_prot.open(ctype, version, frag)
        return ctype, version, frag

    def record(self, ctype, payload, version=None, protect=True):
        """The bytes of one record (protected with write_prot when set and `protect`)."""
        version = self.version if version is None else version
        if self.write_prot is not None and protect:
            payload = self.write_prot.seal(ctype, version, payload)
        return struct.pack("!BHH", ctype, version, len(payload)) + payload

    def queue(self, ctype, payload, version=None, protect=True):
        if ctype == CT_HANDSHAKE:
            off = 0
            while off < len(payload):
                t = payload[off]
                n = struct.unpack("!I", b"\0" + payload[off + 1:off + 4])[0]
                if t != HT_HELLO_REQUEST:
                    self.transcript += payload[off:off + 4 + n]
                off += 4 + n
        self.out.append(self.record(ctype, payload, version, protect))

    def flush(self):
        data, self.out = b"".join(self.out), []
        if data:
            self.sock.settimeout(5)
            try:
                self.sock.sendall(data)
            finally:
                self.sock.settimeout(0.1)

    def send(self, ctype, payload, version=None):
        self.queue(ctype, payload, version)
        self.flush()

    # -- handshake messages
    def read_handshake(self):
        """(type, body) of the next handshake message; the raw message is added to
        the transcript.  A record of another type raises Unexpected."""
        while True:
            if len(self.hsbuf) >= 4:
                n = struct.unpack("!I", b"\0" + self.hsbuf[1:4])[0]
                if len(self.hsbuf) >= 4 + n:
                    raw, self.hsbuf = self.hsbuf[:4 + n], self.hsbuf[4 + n:]
                    if raw[0] != HT_HELLO_REQUEST:
                        self.transcript += raw
                    return raw[0], raw[4:]
            ctype, _, payload = self.read_record()
            if ctype != CT_HANDSHAKE:
                raise Unexpected(ctype, payload)
            self.hsbuf += payload

    def shutdown_and_drain(self, timeout=2.0):
        """Send a FIN and read until the client closes (so that nothing unread is
        left, which would make the close a RST)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop.is_set():
            try:
                if not self.sock.recv(65536):
                    return
            except socket.timeout:
                continue
            except OSError:
                return


# ---------------------------------------------------------------- what the server saw

class ConnLog:
    """What happened on one accepted connection."""

    def __init__(self, index):
        self.index = index
        self.accepted_at = time.monotonic()
        self.hello = None               # the ClientHello (ClientHello)
        self.offered_planted = False    # the ClientHello offered a session ID we planted
        self.action = None              # the script that ran: "plant", "resume-zero",
        #                                 "full", "resume", "ccs_early", "old_version", ...
        self.attack = True              # False for the honest scripts (full, resume)
        self.sent = []                  # what the server sent, in words
        self.received = []              # notable records from the client, in words
        self.alerts = []                # (level, description) alerts from the client
        self.client_finished_ok = None  # the client's Finished checked out (True/False)
        self.handshake_done = False
        self.app_data = []              # application data decrypted from the client
        self.queries = []               # DNS names read (lower case, final dot)
        self.answers = 0                # correct answers sent
        self.forged = 0                 # forged answers sent
        self.renegotiation_hellos = 0   # ClientHellos after the handshake completed
        self.end = None                 # how it ended
        self.closed = threading.Event()

    def __repr__(self):
        h = self.hello
        return ("ConnLog(#%d %s offered_sid=%s%s sent=[%s] alerts=%s finished_ok=%s "
                "app_records=%d queries=%s answers=%d forged=%d reneg=%d end=%r)"
                % (self.index, self.action, h.session_id.hex()[:16] + ".." if h and
                   h.session_id else "-", " (PLANTED)" if self.offered_planted else "",
                   ", ".join(self.sent + ["<- " + r for r in self.received]), self.alerts,
                   self.client_finished_ok,
                   len(self.app_data), self.queries, self.answers, self.forged,
                   self.renegotiation_hellos, self.end))


# ---------------------------------------------------------------- the server

MODES = ("plant_then_resume", "plant_then_stall", "plant_cert", "ccs_early", "old_version",
         "out_of_order", "hello_request", "honest")
OUT_OF_ORDER = ("hello_done_first", "appdata_early", "alert_mid", "finished_plain")


class AttackServer:
    """A scripted TLS 1.2 server on host:port (127.0.0.1:<free port> by default).
    See the module docstring for the modes.  Arguments:
      chain, key      PEM files: the chain sent in Certificate messages; the key for
                      the honest handshakes (hello_request, honest)
      version         old_version: the ServerHello's version (TLS11, TLS10)
      variant         out_of_order: one of OUT_OF_ORDER
      resume_planted  answer a ClientHello offering a planted ID with the
                      zero-master-secret resumption (default True)
      close_after     honest: close (close_notify) after that many answers
      idle            seconds a connection may stay silent before the server drops it
    """

    def __init__(self, mode, chain=None, key=None, version=TLS11, variant=None,
                 resume_planted=True, close_after=None, host="127.0.0.1", port=None,
                 idle=10.0):
        if mode not in MODES:
            raise ValueError("unknown mode %r" % mode)
        if mode == "out_of_order" and variant not in OUT_OF_ORDER:
            raise ValueError("out_of_order needs variant= one of %r" % (OUT_OF_ORDER,))
        if mode in ("hello_request", "honest") and not (chain and key):
            raise ValueError("%s needs chain= and key=" % mode)
        if mode == "plant_cert" and not chain:
            raise ValueError("plant_cert needs chain=")
        self.mode = mode
        self.chain = load_pem_chain(chain) if chain else []
        self.key = load_key(key) if key else None
        self.version = version
        self.variant = variant
        self.resume_planted = resume_planted
        self.close_after = close_after
        self.idle = idle
        self.host = host
        self.port = port = port or free_port()
        self.conns = []
        self.planted = {}               # session ID -> (version, Suite)
        self.sessions = {}              # honest cache: session ID -> (master secret, Suite)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._socks = []
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        ls = socket.socket(fam, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((host, port))
        ls.listen(64)
        self._ls = ls
        self._threads = [threading.Thread(target=self._accept_loop, daemon=True)]
        self._threads[0].start()

    # ------------------------------------------------------------ summaries

    def hellos(self):
        """Every ClientHello seen, in order."""
        with self._lock:
            return [c.hello for c in self.conns if c.hello is not None]

    def offered_planted(self):
        """The connections whose ClientHello offered a session ID this server planted."""
        with self._lock:
            return [c for c in self.conns if c.offered_planted]

    def attacker_reads(self):
        """Application data the attacker decrypted on connections where it did not
        hold the real key (any such record is a query the path could read)."""
        with self._lock:
            return [d for c in self.conns if c.attack for d in c.app_data]

    def queries(self):
        with self._lock:
            return [q for c in self.conns for q in c.queries]

    def forged(self):
        with self._lock:
            return sum(c.forged for c in self.conns)

    def renegotiations(self):
        with self._lock:
            return sum(c.renegotiation_hellos for c in self.conns)

    def resumed_handshakes(self):
        """Honest resumptions completed."""
        with self._lock:
            return sum(1 for c in self.conns if c.action == "resume" and c.handshake_done)

    def describe(self):
        with self._lock:
            lines = ["AttackServer(%s%s) port %d: %d connection(s), planted %d ID(s)"
                     % (self.mode, "/" + self.variant if self.variant else "", self.port,
                        len(self.conns), len(self.planted))]
            lines += ["  %r" % c for c in self.conns]
        return "\n".join(lines)

    # ------------------------------------------------------------ plumbing

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([self._ls], [], [], 0.1)
                if not r:
                    continue
                c, _ = self._ls.accept()
            except (OSError, ValueError):
                return
            with self._lock:
                log = ConnLog(len(self.conns))
                self.conns.append(log)
                self._socks.append(c)
            t = threading.Thread(target=self._serve, args=(c, log), daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self):
        self._stop.set()
        try:
            self._ls.close()
        except OSError:
            pass
        for t in self._threads:
            t.join(3)
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.close()
            except OSError:
                pass

    def _serve(self, sock, log):
        conn = TLSConn(sock, self._stop, self.idle)
        try:
            t, body = conn.read_handshake()
            if t != HT_CLIENT_HELLO:
                log.end = "first message of type %d, not a ClientHello" % t
                return
            hello = ClientHello.parse(body)
            with self._lock:
                log.hello = hello
                sid = hello.session_id
                log.offered_planted = bool(sid) and sid in self.planted
                planted = self.planted.get(sid) if sid else None
                session = self.sessions.get(sid) if sid else None
            if planted is not None and self.resume_planted:
                self._resume_zero(conn, log, hello, *planted)
            elif session is not None and self.mode in ("honest", "hello_request"):
                self._resume_honest(conn, log, hello, *session)
            elif self.mode in ("honest", "hello_request"):
                self._full_handshake(conn, log, hello)
            else:
                getattr(self, "_script_" + self.mode)(conn, log, hello)
            if log.end is None:
                log.end = "script done"
        except Unexpected as e:
            if e.ctype == CT_ALERT and len(e.payload) >= 2:
                log.alerts.append((e.payload[0], e.payload[1]))
                log.end = "alert %d/%d from the client" % (e.payload[0], e.payload[1])
            else:
                log.end = str(e)
        except (PeerClosed, socket.timeout) as e:
            log.end = str(e) or type(e).__name__
        except (InvalidTag, ValueError) as e:
            log.end = "could not decrypt/parse a client record: %r" % (e,)
        except OSError as e:
            log.end = "socket error: %r" % (e,)
        finally:
            try:
                sock.close()
            except OSError:
                pass
            log.closed.set()

    # ------------------------------------------------------------ attacker pieces

    def _plant(self, hello, version=TLS12):
        """A new session ID X, remembered with `version` and a suite the client offers
        (of the chain's key type when there is a chain, ECDSA else RSA); returns
        (X, Suite)."""
        auth = "ecdsa"
        if self.chain:
            pub = x509.load_der_x509_certificate(self.chain[0]).public_key()
            auth = "rsa" if isinstance(pub, rsa.RSAPublicKey) else "ecdsa"
        suite = pick_suite(hello.suites, auth) or pick_suite(hello.suites)
        if suite is None:
            raise ValueError("the client offers no suite this module knows: %r" % hello)
        sid = os.urandom(32)
        with self._lock:
            self.planted[sid] = (version, suite)
        return sid, suite

    def _wait_client(self, conn, log, timeout=3.0):
        """Read (plaintext) records from the client until it closes: alerts are
        recorded; anything else too."""
        conn.idle = timeout
        while True:
            ctype, _, payload = conn.read_record()
            if ctype == CT_ALERT and len(payload) >= 2:
                log.alerts.append((payload[0], payload[1]))
            else:
                log.received.append("record type %d (%d bytes)" % (ctype, len(payload)))

    def _script_plant_then_resume(self, conn, log, hello):
        log.action = "plant"
        sid, suite = self._plant(hello)
        conn.send(CT_HANDSHAKE, server_hello(os.urandom(32), sid, suite.code))
        log.sent.append("ServerHello(X, %s)" % suite.name)
        conn.shutdown_and_drain()
        log.end = "closed after the ServerHello"

    def _script_plant_then_stall(self, conn, log, hello):
        log.action = "plant_stall"
        sid, suite = self._plant(hello)
        conn.send(CT_HANDSHAKE, server_hello(os.urandom(32), sid, suite.code))
        log.sent.append("ServerHello(X, %s), then nothing" % suite.name)
        self._wait_client(conn, log, timeout=self.idle)

    def _script_plant_cert(self, conn, log, hello):
        log.action = "plant_cert"
        sid, suite = self._plant(hello)
        conn.queue(CT_HANDSHAKE, server_hello(os.urandom(32), sid, suite.code))
        conn.queue(CT_HANDSHAKE, certificate(self.chain))
        conn.flush()
        log.sent.append("ServerHello(X, %s) Certificate(%d certs)" % (suite.name, len(self.chain)))
        self._wait_client(conn, log)

    def _script_ccs_early(self, conn, log, hello):
        log.action = "ccs_early"
        sid, suite = self._plant(hello)
        srand = os.urandom(32)
        conn.queue(CT_HANDSHAKE, server_hello(srand, sid, suite.code))
        keys = Keys(ZERO_MASTER_SECRET, hello.random, srand, suite)
        conn.queue(CT_CCS, b"\x01")
        conn.write_prot = keys.server()
        vd = finished_verify_data(ZERO_MASTER_SECRET, conn.transcript, False, suite)
        conn.queue(CT_HANDSHAKE, finished(vd))
        conn.queue(CT_APPDATA, frame(dns_answer(
            dns.message.make_query("www.bank.example", "A").to_wire(), FORGED_ADDR, FORGED_TTL)))
        conn.flush()
        log.sent.append("ServerHello(X) CCS Finished(zero MS, encrypted) appdata(encrypted)")
        # Whatever comes back: try the zero-master-secret client keys on it.
        cprot = keys.client()
        conn.idle = 3.0
        while True:
            ctype, _, payload = conn.read_record()
            if ctype == CT_ALERT and len(payload) == 2:
                log.alerts.append((payload[0], payload[1]))
                continue
            if ctype == CT_CCS:
                log.received.append("CCS")
                continue
            try:
                plain = cprot.open(ctype, TLS12, payload)
            except (InvalidTag, ValueError):
                log.received.append("record type %d, not decryptable" % ctype)
                continue
            if ctype == CT_APPDATA:
                log.app_data.append(plain)
            elif ctype == CT_HANDSHAKE and plain[:1] == bytes([HT_FINISHED]):
                log.client_finished_ok = True
            log.received.append("record type %d, DECRYPTED" % ctype)

    def _script_old_version(self, conn, log, hello):
        log.action = "old_version"
        # (AEAD suites are TLS 1.2 only: the client must stop at the version anyway)
        sid, suite = self._plant(hello, self.version)
        conn.version = self.version
        conn.send(CT_HANDSHAKE, server_hello(os.urandom(32), sid, suite.code,
                                             version=self.version))
        log.sent.append("ServerHello(X, version 0x%04X)" % self.version)
        self._wait_client(conn, log)

    def _script_out_of_order(self, conn, log, hello):
        v = self.variant
        log.action = "out_of_order/" + v
        sid, suite = self._plant(hello)
        srand = os.urandom(32)
        conn.queue(CT_HANDSHAKE, server_hello(srand, sid, suite.code))
        chain = certificate(self.chain) if self.chain else None
        if v == "hello_done_first":
            conn.queue(CT_HANDSHAKE, server_hello_done())
            if chain:
                conn.queue(CT_HANDSHAKE, chain)
        elif v == "appdata_early":
            if chain:
                conn.queue(CT_HANDSHAKE, chain)
            q = dns.message.make_query("www.bank.example", "A").to_wire()
            conn.queue(CT_APPDATA, frame(dns_answer(q, FORGED_ADDR, FORGED_TTL)))
        elif v == "alert_mid":
            if chain:
                conn.queue(CT_HANDSHAKE, chain)
            conn.queue(CT_ALERT, alert(ALERT_FATAL, ALERT_HANDSHAKE_FAILURE))
        elif v == "finished_plain":
            vd = finished_verify_data(ZERO_MASTER_SECRET, conn.transcript, False, suite)
            conn.queue(CT_HANDSHAKE, finished(vd))
        conn.flush()
        log.sent.append("%s (ServerHello(X)%s)" % (v, ", chain" if chain else ""))
        self._wait_client(conn, log)

    def _resume_zero(self, conn, log, hello, version, suite):
        """The attack: resume the planted session with a zero master secret, then
        read queries and forge every answer."""
        log.action = "resume-zero"
        ms = ZERO_MASTER_SECRET
        self._abbreviated(conn, log, hello, ms, suite, version)
        self._serve_dns(conn, log, forge=True)

    # ------------------------------------------------------------ honest pieces

    def _abbreviated(self, conn, log, hello, ms, suite, version=TLS12):
        """Abbreviated handshake (RFC 5246 7.3): ServerHello echoing the session ID,
        CCS, Finished; then the client's CCS and Finished."""
        srand = os.urandom(32)
        ext = reneg_info_ext()
        if b"dot" in hello.alpn:
            ext += alpn_ext(b"dot")
        conn.version = version
        conn.queue(CT_HANDSHAKE, server_hello(srand, hello.session_id, suite.code, version, ext))
        keys = Keys(ms, hello.random, srand, suite)
        conn.queue(CT_CCS, b"\x01")
        conn.write_prot = keys.server()
        conn.queue(CT_HANDSHAKE, finished(finished_verify_data(ms, conn.transcript, False,
                                                               suite)))
        conn.flush()
        log.sent.append("ServerHello(echo sid, %s) CCS Finished" % suite.name)
        self._read_client_finished(conn, log, ms, suite, keys)

    def _read_client_finished(self, conn, log, ms, suite, keys):
        ctype, _, payload = conn.read_record()
        if ctype != CT_CCS:
            raise Unexpected(ctype, payload)
        conn.read_prot = keys.client()
        expect = finished_verify_data(ms, conn.transcript, True, suite)
        try:
            t, body = conn.read_handshake()
        except InvalidTag:
            log.client_finished_ok = False
            raise
        log.client_finished_ok = (t == HT_FINISHED and body == expect)
        if not log.client_finished_ok:
            log.end = "bad client Finished"
            raise PeerClosed("bad client Finished")
        log.handshake_done = True

    def _full_handshake(self, conn, log, hello):
        log.action = "full"
        log.attack = False
        pub = x509.load_der_x509_certificate(self.chain[0]).public_key()
        auth = "rsa" if isinstance(pub, rsa.RSAPublicKey) else "ecdsa"
        suite = pick_suite(hello.suites, auth)
        if suite is None:
            raise ValueError("no %s suite offered: %r" % (auth, hello))
        group = GROUP_X25519 if GROUP_X25519 in hello.groups else GROUP_P256
        sid, srand = os.urandom(32), os.urandom(32)
        ext = reneg_info_ext()
        if b"dot" in hello.alpn:
            ext += alpn_ext(b"dot")
        eph = Ecdhe(group)
        conn.queue(CT_HANDSHAKE, server_hello(srand, sid, suite.code, TLS12, ext))
        conn.queue(CT_HANDSHAKE, certificate(self.chain))
        conn.queue(CT_HANDSHAKE, server_key_exchange(self.key, eph, hello.random, srand))
        conn.queue(CT_HANDSHAKE, server_hello_done())
        conn.flush()
        log.sent.append("ServerHello Certificate ServerKeyExchange(%s) ServerHelloDone"
                        % ("x25519" if group == GROUP_X25519 else "P-256"))
        t, body = conn.read_handshake()
        if t != HT_CLIENT_KEY_EXCHANGE:
            raise ValueError("expected ClientKeyExchange, got type %d" % t)
        ms = master_secret(eph.shared(body[1:1 + body[0]]), hello.random, srand, suite)
        keys = Keys(ms, hello.random, srand, suite)
        self._read_client_finished(conn, log, ms, suite, keys)
        conn.queue(CT_CCS, b"\x01")
        conn.write_prot = keys.server()
        conn.queue(CT_HANDSHAKE, finished(finished_verify_data(ms, conn.transcript, False,
                                                               suite)))
        conn.flush()
        log.sent.append("CCS Finished")
        with self._lock:
            self.sessions[sid] = (ms, suite)
        self._after_honest_handshake(conn, log)

    def _resume_honest(self, conn, log, hello, ms, suite):
        log.action = "resume"
        log.attack = False
        self._abbreviated(conn, log, hello, ms, suite)
        self._after_honest_handshake(conn, log)

    def _after_honest_handshake(self, conn, log):
        if self.mode == "hello_request":
            conn.send(CT_HANDSHAKE, hello_request())
            log.sent.append("HelloRequest")
        self._serve_dns(conn, log, forge=False)

    # ------------------------------------------------------------ application data

    def _serve_dns(self, conn, log, forge):
        """Read framed DNS queries; answer each (forged 6.6.6.6 if `forge`, else the
        correct helpers.fake_addr_for data; forged too after a renegotiation)."""
        buf = b""
        conn.idle = self.idle
        while True:
            ctype, _, payload = conn.read_record()
            if ctype == CT_ALERT:
                if len(payload) >= 2:
                    log.alerts.append((payload[0], payload[1]))
                    if payload[0] == ALERT_FATAL or payload[1] == ALERT_CLOSE_NOTIFY:
                        log.end = "alert %d/%d from the client" % (payload[0], payload[1])
                        return
                continue
            if ctype == CT_HANDSHAKE:
                if payload[:1] == bytes([HT_CLIENT_HELLO]):
                    log.renegotiation_hellos += 1
                    log.received.append("ClientHello (renegotiation)")
                    forge = True
                    continue
                log.received.append("handshake type %d after the handshake" % payload[0])
                continue
            if ctype != CT_APPDATA:
                raise Unexpected(ctype, payload)
            log.app_data.append(payload)
            buf += payload
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                n = struct.unpack("!H", buf[:2])[0]
                wire, buf = buf[2:2 + n], buf[2 + n:]
                q = dns.message.from_wire(wire)
                name = q.question[0].name
                log.queries.append(name.to_text().lower())
                # counted before the client can see the answer
                if forge:
                    log.forged += 1
                    conn.send(CT_APPDATA, frame(dns_answer(wire, FORGED_ADDR, FORGED_TTL)))
                else:
                    log.answers += 1
                    conn.send(CT_APPDATA, frame(dns_answer(wire, fake_addr_for(name), 60)))
                    if self.mode == "hello_request":
                        conn.send(CT_HANDSHAKE, hello_request())
                        log.sent.append("HelloRequest")
                if self.close_after is not None and log.answers + log.forged >= self.close_after:
                    conn.send(CT_ALERT, alert(ALERT_WARNING, ALERT_CLOSE_NOTIFY))
                    log.sent.append("close_notify")
                    conn.shutdown_and_drain(1.0)
                    log.end = "closed by the server after %d answer(s)" % self.close_after
                    return


# ---------------------------------------------------------------- by hand

def main():
    """python3 tests/tlsattack.py [--mode plant_then_resume] [--port N] ...: run one
    AttackServer on 127.0.0.1 until interrupted (SIGINT, SIGTERM), printing each
    connection when it ends."""
    import argparse
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--mode", default="plant_then_resume", choices=MODES)
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--chain")
    ap.add_argument("--key")
    ap.add_argument("--variant", choices=OUT_OF_ORDER)
    ap.add_argument("--version", type=lambda s: int(s, 0), default=TLS11)
    a = ap.parse_args()

    def _interrupt(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _interrupt)      # a background job ignores SIGINT
    srv = AttackServer(a.mode, chain=a.chain, key=a.key, variant=a.variant,
                       version=a.version, port=a.port)
    print("listening on 127.0.0.1:%d (%s)" % (srv.port, a.mode), flush=True)
    seen = 0
    try:
        while True:
            time.sleep(0.2)
            with srv._lock:
                conns = list(srv.conns)
            while seen < len(conns) and conns[seen].closed.is_set():
                print("%r\n    %r" % (conns[seen], conns[seen].hello), flush=True)
                seen += 1
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
        for c in srv.conns[seen:]:
            print("%r\n    %r" % (c, c.hello), flush=True)


if __name__ == "__main__":
    main()
