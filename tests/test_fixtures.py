"""Self-checks of the test infrastructure (no dotproxy needed): the PKI, the
unbound DoT upstream, the counting relay and the fake DoT upstream."""

import subprocess

import pytest

from helpers import a_addrs, dot_query, make_query


def kdig_tls(port, pki_root, name="example.test", rdtype="A", host="127.0.0.1"):
    return subprocess.run(
        ["kdig", "@" + host, "-p", str(port), "+tls-ca=" + pki_root, "+tls-hostname=dns.test",
         "+time=3", "+retry=0", "+short", name, rdtype],
        capture_output=True, text=True, timeout=15)


def test_pki_chain_verifies(pki):
    r = subprocess.run(["openssl", "verify", "-CAfile", pki.root, "-untrusted", pki.chain, pki.chain],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["openssl", "verify", "-CAfile", pki.other_root, "-untrusted", pki.chain,
                        pki.chain], capture_output=True, text=True)
    assert r.returncode != 0


def test_unbound_serves_dot(unbound, pki):
    r = kdig_tls(unbound.port, pki.root)
    assert r.returncode == 0, r.stderr
    assert "192.0.2.10" in r.stdout and "192.0.2.11" in r.stdout
    r = kdig_tls(unbound.port, pki.root, "x1.bench.test")
    assert r.stdout.split() == ["192.0.2.1"]
    resp = dot_query(("127.0.0.1", unbound.port), make_query("big.example.test", "TXT"), pki.root)
    assert len(resp.to_wire()) > 1232


def test_unbound_serves_dot_ipv6(unbound, pki, have_ipv6):
    if not have_ipv6:
        pytest.skip("::1 not usable")
    r = kdig_tls(unbound.port, pki.root, host="::1")
    assert "192.0.2.10" in r.stdout, r.stderr


def test_unbound_rejects_other_root(unbound, pki):
    r = kdig_tls(unbound.port, pki.other_root)
    assert "192.0.2.10" not in r.stdout


def test_relay_counts_connections(relay, pki):
    relay.start()
    for _ in range(3):
        r = dot_query(("127.0.0.1", relay.port), make_query("example.test"), pki.root)
        assert "192.0.2.10" in a_addrs(r)
    assert relay.accepted == 3
    relay.stop()
    with pytest.raises(OSError):
        dot_query(("127.0.0.1", relay.port), make_query("example.test"), pki.root, timeout=1)
    relay.start()
    r = kdig_tls(relay.port, pki.root)
    assert "192.0.2.10" in r.stdout
    assert relay.accepted == 4


def test_fake_dot_answers_and_closes(fake_dot, pki):
    f = fake_dot(close_after=1)
    r = kdig_tls(f.port, pki.root, "foo.example")
    assert r.stdout.split() == ["192.0.2.99"], r.stderr
    r = dot_query(("127.0.0.1", f.port), make_query("bar.example"), pki.root)
    assert a_addrs(r) == {"192.0.2.99"}
    assert f.connections == 2 and f.answers == 2


def test_fake_dot_silent(fake_dot, pki):
    f = fake_dot(mode="silent")
    with pytest.raises(OSError):
        dot_query(("127.0.0.1", f.port), make_query("foo.example"), pki.root, timeout=1)
    assert f.handshakes == 1 and f.queries == 1 and f.answers == 0


def test_fake_dot_other_root(fake_dot, pki):
    f = fake_dot(chain=pki.other_chain, key=pki.other_key)
    r = dot_query(("127.0.0.1", f.port), make_query("foo.example"), pki.other_root)
    assert a_addrs(r) == {"192.0.2.99"}
    r = kdig_tls(f.port, pki.root, "foo.example")
    assert "192.0.2.99" not in r.stdout
