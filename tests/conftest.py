"""Fixtures for the dotproxy integration tests.

Run:  make && /usr/bin/python3 -m pytest tests/
Binary: --dotproxy=PATH or env DOTPROXY=PATH (default: ./dotproxy at the repo root).
All traffic stays on 127.0.0.1 / ::1; every process started here is stopped in teardown.
"""

import os
import subprocess

import pytest

import helpers
from helpers import CountingRelay, DotProxy, FakeDoT, FakePlainDNS, Unbound, free_port


def pytest_addoption(parser):
    parser.addoption("--dotproxy", default=None,
                     help="path of the dotproxy binary (default: $DOTPROXY or <repo>/dotproxy)")


@pytest.fixture(scope="session")
def dotproxy_bin(request):
    path = (request.config.getoption("--dotproxy") or os.environ.get("DOTPROXY")
            or os.path.join(helpers.REPO, "dotproxy"))
    path = os.path.abspath(path)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail("dotproxy binary not found at %s (run `make` first, or set DOTPROXY=path)"
                    % path, pytrace=False)
    return path


@pytest.fixture(scope="session")
def have_ipv6():
    return helpers.ipv6_usable()


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    subprocess.run(["sh", os.path.join(helpers.HERE, "pki.sh"), str(d), "dns.test"], check=True)

    class P:
        dir = str(d)
        root = str(d / "root.pem")
        chain = str(d / "chain.pem")
        key = str(d / "leaf.key")
        other_root = str(d / "other-root.pem")
        other_chain = str(d / "other-chain.pem")
        other_key = str(d / "other-leaf.key")
        leaf = str(d / "leaf.pem")
        # under the main intermediate: a valid chain for another name (evil.test) ...
        wrongname_chain = str(d / "wrongname-chain.pem")
        wrongname_key = str(d / "wrongname.key")
        # ... and one for the right name with another key than leaf.pem's (pin failures)
        rogue_chain = str(d / "rogue-chain.pem")
        rogue_key = str(d / "rogue.key")
    return P


@pytest.fixture(scope="session")
def unbound(pki, tmp_path_factory, have_ipv6):
    u = Unbound(str(tmp_path_factory.mktemp("unbound")), pki.dir, have_ipv6)
    yield u
    u.stop()


class ProxyFactory:
    def __init__(self, binary, pki):
        self.binary = binary
        self.pki = pki
        self.started = []

    def start(self, upstream=None, extra=(), ca=True, env=None, listen=None, port=None,
              ready_timeout=5.0, cmd_prefix=None, binary=None, wait_ready=True):
        """Start dotproxy listening on 127.0.0.1@<free port> (or `listen`), upstream
        spec `upstream` (a full -u value, or a list of them, or None to pass no -u),
        trusting the test root unless ca is False/another path."""
        port = port or free_port()
        args = []
        if listen is None:
            args += ["-l", "127.0.0.1@%d" % port]
        else:
            for l in ([listen] if isinstance(listen, str) else listen):
                args += ["-l", l]
        if upstream is not None:
            for u in ([upstream] if isinstance(upstream, str) else upstream):
                args += ["-u", u]
        if ca is True:
            args += ["-c", self.pki.root]
        elif ca:
            args += ["-c", ca]
        args += list(extra)
        p = DotProxy(binary or self.binary, args, env=env, port=port,
                     ready_timeout=ready_timeout, cmd_prefix=cmd_prefix,
                     wait_ready=wait_ready)
        self.started.append(p)
        return p

    def stop_all(self):
        for p in self.started:
            p.stop()
            if os.environ.get("DOTPROXY_TEST_SHOW_LOG"):
                print("\n--- dotproxy %s\n%s" % (" ".join(p.args), p.log()))


@pytest.fixture
def proxies(dotproxy_bin, pki):
    f = ProxyFactory(dotproxy_bin, pki)
    yield f
    f.stop_all()


@pytest.fixture
def proxy(proxies, unbound):
    """dotproxy in front of the unbound DoT upstream (direct, IPv4)."""
    return proxies.start("127.0.0.1@%d#dns.test" % unbound.port)


@pytest.fixture(scope="module")
def shared_proxy(dotproxy_bin, pki, unbound):
    """One dotproxy per test module, for read-only query tests (saves start-ups)."""
    f = ProxyFactory(dotproxy_bin, pki)
    p = f.start("127.0.0.1@%d#dns.test" % unbound.port)
    yield p
    f.stop_all()


@pytest.fixture
def relay(unbound):
    r = CountingRelay(("127.0.0.1", unbound.port))
    yield r
    r.stop()


@pytest.fixture
def fake_dot(pki):
    made = []

    def make(**kw):
        kw.setdefault("chain", pki.chain)
        kw.setdefault("key", pki.key)
        f = FakeDoT(**kw)
        made.append(f)
        return f
    yield make
    for f in made:
        f.stop()


@pytest.fixture
def relays():
    """Factory for CountingRelay (or a subclass via cls=): make(target, **kw),
    started; all stopped in teardown."""
    made = []

    def make(target, cls=CountingRelay, start=True, **kw):
        r = cls(target, **kw)
        made.append(r)
        return r.start() if start else r
    yield make
    for r in made:
        r.stop()


@pytest.fixture
def plain_dns():
    """Factory for helpers.FakePlainDNS: make(zone, **kw); all stopped in teardown."""
    made = []

    def make(zone, **kw):
        s = FakePlainDNS(zone, **kw)
        made.append(s)
        return s
    yield make
    for s in made:
        s.stop()


# ---------------------------------------------------------------- sanitized builds
def pytest_configure(config):
    config.addinivalue_line("markers", "requires_static_binary: skipped when DOTPROXY_SANITIZED "
                            "is set (make test-asan): the test needs the static musl binary")


def pytest_collection_modifyitems(config, items):
    if not helpers.SANITIZED:
        return
    skip = pytest.mark.skip(reason="needs the static binary (DOTPROXY_SANITIZED: make test-asan)")
    for item in items:
        nodeid = item.nodeid.split("/")[-1]
        if item.get_closest_marker("requires_static_binary") or \
                any(nodeid.startswith(t) for t in helpers.STATIC_BINARY_TESTS):
            item.add_marker(skip)
