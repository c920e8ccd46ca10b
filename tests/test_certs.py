"""Certificates: every bad server certificate is refused, SPKI pins, the build-time clock rule.

A refused upstream means: the client gets SERVFAIL, the server never sees a query, the reason
is logged once by BearSSL error name, and nothing is ever sent in plain text (a plain DNS
listener on the upstream's port, UDP, and on 127.0.0.1:53 when it can be bound, hears nothing).
The certificates are made here with openssl (openssl ca, for past and future validity dates),
under the test root/intermediate of tests/pki.sh.
"""

import base64
import datetime
import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time

import dns.rcode
import pytest

import helpers
from helpers import a_addrs, free_port, query_tcp, query_udp, run_dotproxy

NAME = "dns.test"


def _run(*args, **kw):
    return subprocess.run(list(args), check=True, capture_output=True, **kw)


def _date(days):
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=days)
    return t.strftime("%Y%m%d%H%M%SZ")


def _sign(d, stem, issuer, start_days, end_days, san="DNS:%s" % NAME, selfsign=False):
    """A leaf (ECDSA P-256) for NAME signed by issuer=(cert, key), valid from now+start_days
    to now+end_days; with selfsign, signed by its own key.  Returns (cert, key) paths."""
    key = os.path.join(d, stem + ".key")
    csr = os.path.join(d, stem + ".csr")
    cert = os.path.join(d, stem + ".pem")
    _run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
    _run("openssl", "req", "-new", "-key", key, "-out", csr, "-subj", "/CN=" + NAME)
    cadir = os.path.join(d, "ca-" + stem)
    os.makedirs(cadir)
    open(os.path.join(cadir, "index.txt"), "w").close()
    with open(os.path.join(cadir, "serial"), "w") as f:
        f.write("%016X\n" % int.from_bytes(os.urandom(7), "big"))
    cnf = os.path.join(cadir, "ca.cnf")
    with open(cnf, "w") as f:
        f.write("""[ca]
default_ca = ca_default
[ca_default]
dir = {dir}
database = {dir}/index.txt
new_certs_dir = {dir}
serial = {dir}/serial
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
[policy_any]
commonName = supplied
[leaf]
subjectAltName = {san}
extendedKeyUsage = serverAuth
keyUsage = critical, digitalSignature
basicConstraints = CA:FALSE
""".format(dir=cadir, san=san))
    args = ["openssl", "ca", "-batch", "-notext", "-config", cnf, "-extensions", "leaf",
            "-in", csr, "-out", cert, "-startdate", _date(start_days), "-enddate",
            _date(end_days)]
    if selfsign:
        args += ["-selfsign", "-keyfile", key]
    else:
        args += ["-cert", issuer[0], "-keyfile", issuer[1]]
    _run(*args)
    return cert, key


def _cat(out, *files):
    with open(out, "w") as f:
        for p in files:
            f.write(open(p).read())
    return out


def spki_pin(cert):
    """base64(SHA-256(DER SubjectPublicKeyInfo)), as in the README."""
    pub = _run("openssl", "x509", "-in", cert, "-pubkey", "-noout").stdout
    der = _run("openssl", "pkey", "-pubin", "-outform", "der", input=pub).stdout
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.fixture(scope="module")
def certs(pki, tmp_path_factory):
    d = str(tmp_path_factory.mktemp("certs"))
    inter = (os.path.join(pki.dir, "int.pem"), os.path.join(pki.dir, "int.key"))
    int_pem = inter[0]

    class C:
        pass
    c = C()
    leaf, key = _sign(d, "expired", inter, -60, -1)
    c.expired = (_cat(os.path.join(d, "expired-chain.pem"), leaf, int_pem), key)
    leaf, key = _sign(d, "notyet", inter, 10, 400)
    c.notyet = (_cat(os.path.join(d, "notyet-chain.pem"), leaf, int_pem), key)
    leaf, key = _sign(d, "wrongname", inter, -1, 300, san="DNS:other.test")
    c.wrongname = (_cat(os.path.join(d, "wrongname-chain.pem"), leaf, int_pem), key)
    c.selfsigned = _sign(d, "selfsigned", None, -1, 300, selfsign=True)
    c.other_root = (pki.other_chain, pki.other_key)
    c.leaf_only = (os.path.join(pki.dir, "leaf.pem"), pki.key)
    c.good = (pki.chain, pki.key)
    c.pin_good = spki_pin(os.path.join(pki.dir, "leaf.pem"))
    c.pin_other = spki_pin(os.path.join(pki.dir, "other-leaf.pem"))
    c.pin_selfsigned = spki_pin(c.selfsigned[0])
    return c


class PlainListener:
    """Plain DNS (UDP, and TCP when port is free) on host:port, counting what arrives."""

    def __init__(self, port, host="127.0.0.1", tcp=True):
        self.got = []
        self._stop = threading.Event()
        self.socks = []
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind((host, port))
        self.socks.append(u)
        if tcp:
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            t.bind((host, port))
            t.listen(8)
            self.socks.append(t)
        for s in self.socks:
            s.settimeout(0.1)
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self):
        import select
        while not self._stop.is_set():
            try:
                r, _, _ = select.select(self.socks, [], [], 0.1)
            except (OSError, ValueError):
                return
            for s in r:
                try:
                    if s.type == socket.SOCK_DGRAM:
                        self.got.append(("udp", s.recvfrom(65535)[0]))
                    else:
                        c, _ = s.accept()
                        self.got.append(("tcp", b"connect"))
                        c.close()
                except OSError:
                    pass

    def stop(self):
        self._stop.set()
        self._t.join(2)
        for s in self.socks:
            s.close()


def _plain_listeners(tls_port):
    """A UDP listener on the DoT server's port, and 127.0.0.1:53 (UDP+TCP) when bindable."""
    out = [PlainListener(tls_port, tcp=False)]
    try:
        out.append(PlainListener(53))
    except OSError:
        pass                    # not root, or something already serves port 53
    return out


BAD = [
    ("expired", "BR_ERR_X509_EXPIRED"),
    ("notyet", "BR_ERR_X509_EXPIRED"),
    ("wrongname", "BR_ERR_X509_BAD_SERVER_NAME"),
    ("selfsigned", "BR_ERR_X509_NOT_TRUSTED"),
    ("other_root", "BR_ERR_X509_NOT_TRUSTED"),
    ("leaf_only", "BR_ERR_X509_NOT_TRUSTED"),
]


def _assert_refused(p, fake, plain, error, transports=("udp", "tcp", "udp")):
    for i, t in enumerate(transports):
        ask = query_udp if t == "udp" else query_tcp
        r = ask(p.port, "q%d.certs.test" % (i + 1), timeout=5)
        assert r.rcode() == dns.rcode.SERVFAIL, r
        assert not r.answer
    time.sleep(1.2)             # a retry after the back-off, still refused
    assert fake.queries == 0, "a query reached a server that failed authentication"
    assert fake.handshakes == 0 or error == "no pin matches", fake.conns
    for l in plain:
        assert l.got == [], "plaintext fallback: %r" % l.got[:3]
    assert p.alive()
    n = sum(1 for l in p.lines if error in l)
    assert n == 1, "%r logged %d times:\n%s" % (error, n, p.log())
    assert fake.connections >= 1, "the proxy never tried the server"


@pytest.mark.parametrize("case,error", BAD, ids=[c for c, _ in BAD])
def test_bad_certificate_refused(proxies, fake_dot, certs, case, error):
    chain, key = getattr(certs, case)
    fake = fake_dot(chain=chain, key=key)
    plain = _plain_listeners(fake.port)
    try:
        p = proxies.start("127.0.0.1@%d#%s" % (fake.port, NAME), extra=["-t", "1500"])
        _assert_refused(p, fake, plain, error)
    finally:
        for l in plain:
            l.stop()


def test_good_certificate_accepted(proxies, fake_dot, certs):
    """The control: the same set-up with the good chain answers."""
    fake = fake_dot()
    p = proxies.start("127.0.0.1@%d#%s" % (fake.port, NAME), extra=["-t", "1500"])
    assert a_addrs(query_udp(p.port, "q7.certs.test")) == {"192.0.2.7"}
    assert fake.queries == 1


# ---------------------------------------------------------------- SPKI pins

def _spec(port, *pins):
    return "127.0.0.1@%d#%s" % (port, NAME) + "".join("^" + p for p in pins)


def test_pin_right_with_chain_answers(proxies, fake_dot, certs):
    fake = fake_dot()
    p = proxies.start(_spec(fake.port, "sha256/" + certs.pin_good), extra=["-t", "1500"])
    assert a_addrs(query_udp(p.port, "q8.pins.test")) == {"192.0.2.8"}
    assert a_addrs(query_tcp(p.port, "q9.pins.test")) == {"192.0.2.9"}


def test_pin_one_of_several_matches(proxies, fake_dot, certs):
    fake = fake_dot()
    p = proxies.start(_spec(fake.port, "sha256/" + certs.pin_other, "sha256/" + certs.pin_good),
                      extra=["-t", "1500"])
    assert a_addrs(query_udp(p.port, "q10.pins.test")) == {"192.0.2.10"}


def test_pin_wrong_with_good_chain_refused(proxies, fake_dot, certs):
    fake = fake_dot()
    plain = _plain_listeners(fake.port)
    try:
        p = proxies.start(_spec(fake.port, "sha256/" + certs.pin_other), extra=["-t", "1500"])
        _assert_refused(p, fake, plain, "no pin matches")
    finally:
        for l in plain:
            l.stop()


def test_pin_right_but_untrusted_chain_refused(proxies, fake_dot, certs):
    """Pins are checked in addition to the chain: the right pin does not make an untrusted
    chain acceptable (without pin-only)."""
    fake = fake_dot(chain=certs.other_root[0], key=certs.other_root[1])
    plain = _plain_listeners(fake.port)
    try:
        p = proxies.start(_spec(fake.port, "sha256/" + certs.pin_other), extra=["-t", "1500"])
        _assert_refused(p, fake, plain, "BR_ERR_X509_NOT_TRUSTED")
    finally:
        for l in plain:
            l.stop()


def test_pin_only_self_signed_without_ca_answers(proxies, fake_dot, certs):
    fake = fake_dot(chain=certs.selfsigned[0], key=certs.selfsigned[1])
    p = proxies.start(_spec(fake.port, "sha256/" + certs.pin_selfsigned, "pin-only"),
                      ca=False, extra=["-t", "1500"])
    assert a_addrs(query_udp(p.port, "q11.pins.test")) == {"192.0.2.11"}
    assert a_addrs(query_tcp(p.port, "q12.pins.test")) == {"192.0.2.12"}
    assert fake.queries == 2


def test_pin_only_wrong_pin_refused(proxies, fake_dot, certs):
    fake = fake_dot(chain=certs.selfsigned[0], key=certs.selfsigned[1])
    plain = _plain_listeners(fake.port)
    try:
        p = proxies.start(_spec(fake.port, "sha256/" + certs.pin_good, "pin-only"),
                          ca=False, extra=["-t", "1500"])
        _assert_refused(p, fake, plain, "no pin matches")
    finally:
        for l in plain:
            l.stop()


def test_self_signed_without_pin_refused(proxies, fake_dot, certs):
    fake = fake_dot(chain=certs.selfsigned[0], key=certs.selfsigned[1])
    p = proxies.start(_spec(fake.port), ca=False, extra=["-t", "1500"])
    r = query_udp(p.port, "q13.pins.test", timeout=5)
    assert r.rcode() == dns.rcode.SERVFAIL
    assert p.wait_for("BR_ERR_X509_NOT_TRUSTED", 3), p.log()
    assert fake.queries == 0


@pytest.mark.parametrize("pins", [
    ["sha256/abc"],                                  # too short
    ["sha256/" + "A" * 43 + "!"],                    # not base64
    ["md5/" + "A" * 43 + "="],                       # not sha256/
    ["sha256/" + "A" * 40 + "===="],                 # bad padding
    ["pin-only"],                                    # pin-only without a pin
    [""],                                            # empty
])
def test_bad_pin_syntax_exits_1(dotproxy_bin, pins):
    spec = _spec(free_port(), *pins)
    r = run_dotproxy(dotproxy_bin, ["-l", "127.0.0.1@%d" % free_port(), "-u", spec])
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "pin" in r.stderr, r.stderr
    assert spec in r.stderr or "'" in r.stderr, r.stderr


# ---------------------------------------------------------------- the clock rule

def _compile_with_epoch(out, epoch):
    """dotproxy built the way the Makefile builds it (its compiler, BearSSL, flags), with
    DOTPROXY_BUILD_EPOCH=epoch."""
    repo = helpers.REPO
    musl_lib = os.path.join(repo, "bearssl", "build", "musl-gcc", "libbearssl.a")
    host_lib = os.path.join(repo, "bearssl", "build", "host", "libbearssl.a")
    if shutil.which("musl-gcc") and os.path.exists(musl_lib):
        cc, lib, ld = "musl-gcc", musl_lib, ["-static"]
    elif os.path.exists(host_lib):
        cc, lib, ld = "gcc", host_lib, []
    else:
        pytest.skip("no BearSSL build (make)")
    _run(cc, "-DDOTPROXY_VERSION=\"clock-test\"", "-DDOTPROXY_BUILD_EPOCH=%d" % epoch,
         "-I" + os.path.join(repo, "bearssl", "inc"), "-O1", "-std=c99", "-o", out,
         os.path.join(repo, "dotproxy.c"), lib, *ld)
    return out


@pytest.fixture(scope="module")
def future_binaries(tmp_path_factory):
    d = tmp_path_factory.mktemp("clock")
    now = int(time.time())
    out = {}
    procs = []
    for days in (30, 800):
        path = str(d / ("dotproxy-plus%dd" % days))
        out[days] = path
        t = threading.Thread(target=_compile_with_epoch, args=(path, now + days * 86400))
        t.start()
        procs.append(t)
    for t in procs:
        t.join(300)
    for path in out.values():
        if not os.path.exists(path):
            pytest.fail("could not build %s" % path)
    return out


CLOCK_MSG = "system clock is before this binary's build time"


def test_clock_behind_build_time_uses_build_time(proxies, fake_dot, future_binaries):
    """Built 30 days in the future: the clock is 'wrong', the build time is used, and the
    test leaf (valid 365 days from now) is still valid then."""
    fake = fake_dot()
    p = proxies.start("127.0.0.1@%d#%s" % (fake.port, NAME), binary=future_binaries[30],
                      extra=["-t", "1500"])
    assert a_addrs(query_udp(p.port, "q14.clock.test")) == {"192.0.2.14"}
    assert a_addrs(query_tcp(p.port, "q15.clock.test")) == {"192.0.2.15"}
    assert p.wait_for(CLOCK_MSG, 2), p.log()
    assert p.count(CLOCK_MSG) == 1, p.log()


def test_clock_rule_refuses_certificate_expired_at_build_time(proxies, fake_dot,
                                                              future_binaries):
    """Built 800 days in the future: at that time the test leaf has expired."""
    fake = fake_dot()
    p = proxies.start("127.0.0.1@%d#%s" % (fake.port, NAME), binary=future_binaries[800],
                      extra=["-t", "1500"])
    r = query_udp(p.port, "q16.clock.test", timeout=5)
    assert r.rcode() == dns.rcode.SERVFAIL
    assert p.wait_for("BR_ERR_X509_EXPIRED", 3), p.log()
    assert p.count(CLOCK_MSG) == 1, p.log()
    assert fake.queries == 0


def test_clock_not_behind_no_message(proxies, fake_dot):
    """The binary under test (built now or earlier): no clock message."""
    fake = fake_dot()
    p = proxies.start("127.0.0.1@%d#%s" % (fake.port, NAME), extra=["-t", "1500"])
    assert a_addrs(query_udp(p.port, "q17.clock.test")) == {"192.0.2.17"}
    assert p.count(CLOCK_MSG) == 0, p.log()
