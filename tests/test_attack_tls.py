"""TLS attacks from the path: an attacker with no certificate and no key between dotproxy and
its upstream, scripted with tests/tlsattack.py (a TLS 1.2 server built from parts).

The attack these tests exist for: BearSSL stores the session ID, version and cipher suite of
a ServerHello in the engine's session parameters as soon as it reads it, before any
certificate is checked; and a client reset with resume_session=1 offers that session again.
So an attacker answers dotproxy's ClientHello with a ServerHello carrying a session ID X of
its choice and hangs up (or sends a certificate that fails, or anything else that fails the
handshake); the next ClientHello offers X; the attacker "resumes" it with the master secret
the context holds when no key exchange ever happened (48 zero bytes), reads every query and
forges every answer.  Its answers carry 6.6.6.6 (tlsattack.FORGED_ADDR).

For each attack the tests assert the three things a refused attack means:
  (a) nothing the attacker can read: it never decrypted application data, and (for the
      cases that plant a session ID) no later ClientHello offered a planted ID;
  (b) no forged answer reaches a client: clients get SERVFAIL (or, with a good second
      upstream, the right answer), never 6.6.6.6;
  (c) a warn line names the upstream and says what failed.
The queries go through dotproxy over UDP and TCP, a new name each, across reconnects and
back-offs (0.5 s doubling, --max-backoff 1000), until the attacker has seen several
ClientHellos.  The honest controls show that resumption itself still works.
"""

import base64
import hashlib
import re
import signal
import time

import dns.rcode
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import tlsattack
from helpers import a_addrs, fake_addr_for, query_tcp, query_udp, wait_until
from tlsattack import FORGED_ADDR, TLS10, TLS11, AttackServer

TIMEOUT_MS = 1500
OPTS = ["-t", str(TIMEOUT_MS), "--max-backoff", "1000"]
NAME = "dns.test"


@pytest.fixture
def attackers():
    """Factory for tlsattack.AttackServer(mode, **kw); all stopped in teardown."""
    made = []

    def make(mode, **kw):
        a = AttackServer(mode, **kw)
        made.append(a)
        return a
    yield make
    for a in made:
        a.stop()


def spki_pin(cert_pem):
    """base64(SHA-256(DER SubjectPublicKeyInfo)) of a PEM certificate, as in the README."""
    cert = x509.load_pem_x509_certificate(open(cert_pem, "rb").read())
    der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def spec(port, *pins):
    return "127.0.0.1@%d#%s" % (port, NAME) + "".join("^" + p for p in pins)


def label(port):
    """How dotproxy names the upstream in its logs: "upstream 127.0.0.1:PORT (dns.test...)"."""
    return "upstream 127.0.0.1:%d (%s" % (port, NAME)


# ---------------------------------------------------------------- driving and judging

class Asked:
    """One query asked through dotproxy and what came back."""

    def __init__(self, name, transport, resp, error=None):
        self.name, self.transport, self.resp, self.error = name, transport, resp, error

    def addrs(self):
        return a_addrs(self.resp) if self.resp is not None else set()

    def __repr__(self):
        if self.resp is None:
            return "%s/%s: %s" % (self.name, self.transport, self.error)
        return "%s/%s: %s %s" % (self.name, self.transport,
                                 dns.rcode.to_text(self.resp.rcode()), sorted(self.addrs()))


_counter = [0]


def ask(port, transport, name=None):
    """One A query through dotproxy; a timeout is recorded, not raised."""
    if name is None:
        _counter[0] += 1
        name = "q%d.attack.test" % (_counter[0] % 250 + 1)
    f = query_udp if transport == "udp" else query_tcp
    try:
        return Asked(name, transport, f(port, name, timeout=TIMEOUT_MS / 1000 + 4))
    except Exception as e:          # dns.exception.Timeout, EOFError, OSError
        return Asked(name, transport, None, repr(e))


def drive(p, att, hellos=3, min_queries=4, timeout=12.0, pause=0.25):
    """Ask through dotproxy (UDP and TCP in turn, a new name each time) until the attacker
    has seen `hellos` ClientHellos and `min_queries` were asked; sooner once a forged
    answer got through (the attack worked: no need to go on).  Returns [Asked]."""
    out = []
    deadline = time.monotonic() + timeout
    while True:
        out.append(ask(p.port, ("udp", "tcp")[len(out) % 2]))
        if len(out) >= min_queries:
            if len(att.hellos()) >= hellos:
                break
            if any(FORGED_ADDR in a.addrs() for a in out):
                break
        if time.monotonic() > deadline:
            break
        time.sleep(pause)
    return out


def problems(p, att, asked, port=None, planted=True, good=None, log_has=None,
             failed="failed"):
    """What is wrong after an attack, as a list of sentences (empty: refused as it should):
    (a) the attacker read application data / (planted) a later ClientHello offered an ID it
    planted; (b) an answer other than SERVFAIL (or the right one when `good` names the right
    data for a name: good(name) -> set of addresses) reached a client, or the attacker sent a
    forged answer at all; (c) no warn line names the upstream at `port` and says `failed`
    (and `log_has`, if given)."""
    out = []
    reads = att.attacker_reads()
    if reads:
        out.append("(a) the attacker decrypted %d application-data record(s) from dotproxy "
                   "(queries %s)" % (len(reads), att.queries()))
    if planted:
        offered = att.offered_planted()
        if offered:
            out.append("(a) dotproxy offered a session ID the attacker planted, in the "
                       "ClientHello of connection(s) %s" % [c.index for c in offered])
    for a in asked:
        if FORGED_ADDR in a.addrs():
            out.append("(b) forged answer reached the client: %r" % a)
        elif a.resp is None:
            out.append("(b) no answer at all (want SERVFAIL within -t): %r" % a)
        elif a.resp.rcode() == dns.rcode.SERVFAIL and not a.resp.answer:
            continue
        elif good is not None and a.resp.rcode() == dns.rcode.NOERROR \
                and a.addrs() == good(a.name):
            continue
        else:
            out.append("(b) unexpected answer (want SERVFAIL%s): %r"
                       % (" or the right data" if good else "", a))
    if att.forged():
        out.append("(b) the attacker sent %d forged answer(s)" % att.forged())
    port = att.port if port is None else port
    lines = [l for l in p.lines if "warn" in l and label(port) in l and failed in l]
    if not lines:
        out.append("(c) no warn line names %r and says %r" % (label(port), failed))
    elif log_has and not any(log_has in l for l in lines):
        out.append("(c) the failure lines do not say %r: %s" % (log_has, lines))
    return out


def assert_refused(p, att, asked, min_hellos=2, **kw):
    """The attack was played (the client came back after the attacker's first answer) and
    refused (problems() found nothing)."""
    assert len(att.hellos()) >= min_hellos, \
        "the attacker saw %d ClientHello(s), want >= %d: the attack was not played out\n" \
        "%s\nasked: %s\n--- dotproxy log\n%s" % (len(att.hellos()), min_hellos, att.describe(),
                                                 asked, p.log())
    bad = problems(p, att, asked, **kw)
    assert not bad, "attack not refused:\n  %s\n%s\nasked: %s\n--- dotproxy log\n%s" % (
        "\n  ".join(bad), att.describe(), asked, p.log())
    assert p.alive(), p.log()


# ---------------------------------------------------------------- resumption of a session
#                                                                   that never completed

def test_resume_planted_session_at_start(proxies, attackers):
    """ATTACK: resumption of a never-completed session, single upstream, at start.  The
    attacker answers the first ClientHello with ServerHello(session ID X) and hangs up;
    then it answers a ClientHello offering X with an abbreviated handshake keyed from a
    zero master secret and forges 6.6.6.6.  Refused: X is never offered again."""
    att = attackers("plant_then_resume")
    p = proxies.start(spec(att.port), extra=OPTS)
    asked = drive(p, att)
    assert_refused(p, att, asked)


def test_resume_planted_session_pinned(proxies, attackers, pki):
    """ATTACK: the same against an upstream pinned to the real leaf key (^sha256/...): a
    resumed session shows no certificate, so the pin is never checked; refused all the
    same."""
    att = attackers("plant_then_resume")
    p = proxies.start(spec(att.port, "sha256/" + spki_pin(pki.leaf)), extra=OPTS)
    asked = drive(p, att)
    assert_refused(p, att, asked)


def test_resume_after_handshake_timeout(proxies, attackers):
    """ATTACK: resumption after a handshake that timed out.  The attacker sends ServerHello(X)
    and then nothing: dotproxy gives up on its handshake timer (5 s), not on anything the
    server sent.  Then the attacker tries to resume X."""
    att = attackers("plant_then_stall")
    p = proxies.start(spec(att.port), extra=OPTS)
    asked = drive(p, att, hellos=2, timeout=15)
    assert_refused(p, att, asked, failed="timed out")


def test_resume_after_name_failure(proxies, attackers, pki):
    """ATTACK: resumption after a name failure.  The attacker sends ServerHello(X) and a valid
    chain from the test CA for another name (evil.test); the name check fails
    (BR_ERR_X509_BAD_SERVER_NAME), after BearSSL stored X.  Then it tries to resume X."""
    att = attackers("plant_cert", chain=pki.wrongname_chain)
    p = proxies.start(spec(att.port), extra=OPTS)
    asked = drive(p, att)
    assert_refused(p, att, asked, log_has="BR_ERR_X509_BAD_SERVER_NAME")


def test_resume_after_pin_failure(proxies, attackers, pki):
    """ATTACK: resumption after a pin failure.  The upstream is pinned to the real leaf key;
    the attacker sends ServerHello(X) and a valid chain for dns.test from the test CA with
    another key (the rogue leaf): the chain and name pass, the pin fails.  Then it tries to
    resume X."""
    att = attackers("plant_cert", chain=pki.rogue_chain)
    p = proxies.start(spec(att.port, "sha256/" + spki_pin(pki.leaf)), extra=OPTS)
    asked = drive(p, att)
    assert_refused(p, att, asked, log_has="no pin matches")


def test_resume_planted_session_on_backup_upstream(proxies, attackers, relays, unbound):
    """ATTACK: the backup-upstream variant.  -u <good primary> -u <attacker>: the primary
    (unbound, through a relay) answers; the relay stops (connections refused), dotproxy fails
    over to the backup, which never completed a handshake; the attacker plants X there and
    tries to resume it.  Clients get SERVFAIL or the primary's right answer, never 6.6.6.6;
    once the relay is back, answers are right again."""
    relay = relays(("127.0.0.1", unbound.port))
    att = attackers("plant_then_resume")
    p = proxies.start([spec(relay.port), spec(att.port)], extra=OPTS)
    right = {"192.0.2.1"}                      # bench.test is a redirect zone in unbound
    r = query_udp(p.port, "q1.bench.test", timeout=5)
    assert a_addrs(r) == right, "the primary does not answer before the attack: %s" % r
    assert len(att.hellos()) == 0, "the backup was used while the primary worked"
    relay.stop()
    asked = []
    deadline = time.monotonic() + 15
    k = 0
    while time.monotonic() < deadline:
        k += 1
        asked.append(ask(p.port, ("udp", "tcp")[k % 2], "q%d.bench.test" % (k + 1)))
        if len(att.hellos()) >= 3 and k >= 4:
            break
        if any(FORGED_ADDR in a.addrs() for a in asked) and k >= 4:
            break
        time.sleep(0.25)
    assert_refused(p, att, asked, good=lambda name: right)
    relay.start()

    def right_again():
        a = ask(p.port, "udp", "q200.bench.test")
        asked.append(a)
        return a.resp is not None and a.resp.rcode() == dns.rcode.NOERROR and a
    assert wait_until(right_again, 10, 0.3), \
        "no right answer after the primary came back: %s\n%s" % (asked[-3:], p.log())
    for k, t in enumerate(("udp", "tcp", "udp", "tcp")):
        a = ask(p.port, t, "q%d.bench.test" % (210 + k))
        assert a.resp is not None and a.addrs() == right, \
            "want %s from the primary after it came back, got %r\n%s" % (right, a, att.describe())
    assert not problems(p, att, asked, good=lambda name: right), att.describe()


def test_plant_after_completed_session(proxies, attackers, pki):
    """ATTACK: a plant after real sessions.  An honest server (full handshake, then honest
    resumption) closes after each answer; then the attacker takes over the address and
    plants X.  With a completed session the context holds the real master secret, so the
    attacker cannot finish a resumption (no forged answer either way) - but the planted ID
    must not be offered: the session to resume is the last one that completed, or none."""
    att = attackers("honest", chain=pki.chain, key=pki.key, close_after=1)
    p = proxies.start(spec(att.port), extra=OPTS)
    for k in (1, 2):
        a = ask(p.port, "udp", "q%d.attack.test" % k)
        assert a.addrs() == {fake_addr_for(a.name)}, "honest phase: %r\n%s" % (a, p.log())
        assert wait_until(lambda: att.conns and att.conns[-1].closed.is_set(), 3, 0.02)
    honest = len(att.conns)
    att.mode = "plant_then_resume"
    asked = drive(p, att, hellos=honest + 3)
    assert_refused(p, att, asked, min_hellos=honest + 2)


# ---------------------------------------------------------------- other protocol attacks

def test_ccs_early(proxies, attackers, pki):
    """ATTACK: ChangeCipherSpec before any key exists (the OpenSSL CVE-2014-0224 pattern).
    ServerHello(X), then at once CCS, a Finished and an application-data record encrypted
    with keys from a zero master secret; whatever the client sends back is tried with those
    keys.  Refused: the client never sends anything under those keys, and never offers X."""
    att = attackers("ccs_early", chain=pki.chain)
    p = proxies.start(spec(att.port), extra=OPTS)
    asked = drive(p, att)
    early = [c for c in att.conns if c.action == "ccs_early"]
    assert early, att.describe()
    assert not any(c.client_finished_ok for c in early), \
        "the client sent a Finished under zero-master-secret keys after an early CCS:\n" + \
        att.describe()
    assert_refused(p, att, asked)


def test_hello_request_no_renegotiation(proxies, attackers, pki):
    """ATTACK: renegotiation.  A server with the real key completes a full handshake, then
    sends a HelloRequest at once and after every answer.  dotproxy sets
    BR_OPT_NO_RENEGOTIATION: no second ClientHello on that connection (the server would
    forge every answer from then on), answers stay right (or the connection is dropped,
    SERVFAIL, and the drop is logged).  BearSSL answers each HelloRequest with a
    no_renegotiation warning alert and goes on: nothing is logged when the connection
    stays up, so (c) only applies to a dropped connection."""
    att = attackers("hello_request", chain=pki.chain, key=pki.key)
    p = proxies.start(spec(att.port), extra=OPTS)
    asked = [ask(p.port, t, "q%d.attack.test" % (30 + k))
             for k, t in enumerate(("udp", "tcp", "udp", "tcp", "udp"))]
    assert att.renegotiations() == 0, \
        "dotproxy renegotiated after a HelloRequest:\n" + att.describe()
    for a in asked:
        assert FORGED_ADDR not in a.addrs(), "forged answer reached the client: %r" % a
        assert a.resp is not None and (
            a.addrs() == {fake_addr_for(a.name)} or a.resp.rcode() == dns.rcode.SERVFAIL), \
            "want the right answer %s or SERVFAIL, got %r" % (fake_addr_for(a.name), a)
    assert att.forged() == 0, att.describe()
    sent = sum(c.sent.count("HelloRequest") for c in att.conns)
    assert sent >= 2, "the server sent %d HelloRequest(s)\n%s" % (sent, att.describe())
    refused = [al for c in att.conns for al in c.alerts
               if al == (tlsattack.ALERT_WARNING, tlsattack.ALERT_NO_RENEGOTIATION)]
    dropped = len(att.conns) > 1 or any(a.resp.rcode() == dns.rcode.SERVFAIL for a in asked)
    if dropped:
        assert any(label(att.port) in l and "failed" in l for l in p.lines), \
            "the connection was dropped without a warn line:\n" + p.log()
    else:
        assert refused, "no no_renegotiation alert and the connection stayed up:\n" + \
            att.describe()
    assert p.alive()


@pytest.mark.parametrize("version", [TLS11, TLS10], ids=["tls1.1", "tls1.0"])
def test_old_version(proxies, attackers, version):
    """ATTACK: protocol downgrade.  ServerHello with version TLS 1.1 / TLS 1.0 (in a record of
    that version) and a session ID X; dotproxy allows TLS 1.2 only.  Refused before the
    session ID is read: X is never offered."""
    att = attackers("old_version", version=version)
    p = proxies.start(spec(att.port), extra=OPTS)
    asked = drive(p, att)
    assert_refused(p, att, asked)


@pytest.mark.parametrize("variant", tlsattack.OUT_OF_ORDER)
def test_out_of_order(proxies, attackers, pki, variant):
    """ATTACK: messages and records out of order, each after a ServerHello(X) that plants a
    session ID, followed by a resumption attempt of X:
      hello_done_first  ServerHelloDone before the Certificate
      appdata_early     an application-data record (a framed forged DNS answer) before the
                        handshake completed (after the server's real, public chain)
      alert_mid         a fatal alert in the middle (after the real, public chain)
      finished_plain    a Finished in plaintext, without ChangeCipherSpec"""
    att = attackers("out_of_order", variant=variant, chain=pki.chain)
    p = proxies.start(spec(att.port), extra=OPTS)
    asked = drive(p, att)
    assert_refused(p, att, asked)


# ---------------------------------------------------------------- honest controls

UPSTREAM_STATS = re.compile(r"upstream (\S+) \(([^)]*)\) (\S+) queries=(\d+) connects=(\d+) "
                            r"resumed=(\d+) failures=(\d+)")


def upstream_stats(p, port, timeout=3.0):
    """SIGUSR1; the counters of the upstream at 127.0.0.1:port from the new stats line."""
    key = "dotproxy: stats:"
    before = p.count(key)
    p.proc.send_signal(signal.SIGUSR1)
    assert wait_until(lambda: p.count(key) > before, timeout, 0.02), \
        "no stats line after SIGUSR1:\n" + p.log()
    line = [l for l in p.log().splitlines() if key in l][-1]
    for m in UPSTREAM_STATS.finditer(line):
        if m.group(1) == "127.0.0.1:%d" % port:
            return dict(state=m.group(3), queries=int(m.group(4)), connects=int(m.group(5)),
                        resumed=int(m.group(6)), failures=int(m.group(7)))
    raise AssertionError("upstream 127.0.0.1:%d not in %r" % (port, line))


@pytest.mark.parametrize("server,pinned", [("tlsattack", False), ("tlsattack", True),
                                           ("openssl", False)],
                         ids=["tlsattack", "tlsattack-pinned", "openssl"])
def test_honest_server_session_resumed(proxies, attackers, fake_dot, pki, server, pinned):
    """CONTROL (no attack): an honest server that completes full handshakes and resumes its
    own sessions closes the connection after each answer; each reconnect resumes the session
    of the last completed handshake (dotproxy's resumed=N counter, and the server's own
    view).  The fix for the attacks above must not turn resumption off.  Servers: the
    tlsattack honest mode (pinned or not), and FakeDoT (Python ssl, OpenSSL)."""
    if server == "tlsattack":
        srv = attackers("honest", chain=pki.chain, key=pki.key, close_after=1)
    else:
        srv = fake_dot(close_after=1)
    pins = ["sha256/" + spki_pin(pki.leaf)] if pinned else []
    p = proxies.start(spec(srv.port, *pins), extra=OPTS)
    for k, t in enumerate(("udp", "tcp", "udp")):
        a = ask(p.port, t, "q%d.attack.test" % (40 + k))
        assert a.addrs() == {fake_addr_for(a.name)}, \
            "want %s, got %r\n%s" % (fake_addr_for(a.name), a, p.log())
        assert wait_until(lambda: srv.conns and srv.conns[-1].closed.is_set(), 3, 0.02), \
            "the server did not close after answering"
    st = upstream_stats(p, srv.port)
    assert st["connects"] == 3 and st["resumed"] == 2 and st["failures"] == 0, \
        "want connects=3 resumed=2 failures=0, got %s\n%s" % (st, p.log())
    if server == "tlsattack":
        assert [c.action for c in srv.conns] == ["full", "resume", "resume"], srv.describe()
        assert srv.resumed_handshakes() == 2, srv.describe()
    else:
        assert [c.session_reused for c in srv.conns] == [False, True, True], srv.conns
    assert not [l for l in p.lines if "warn" in l], p.log()
