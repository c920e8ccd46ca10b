"""The cross-built binaries (make cross) under qemu-user, against the loopback DoT upstream.

Run by `make test-cross` (DOTPROXY_CROSS=1); skipped otherwise.  Big-endian MIPS is the
point: byte-order mistakes (ports, IDs, lengths, EDNS options, addresses) show up there and
nowhere else.  qemu-user shares the host's network: every address here is loopback, and the
helpers refuse any other.
"""

import os
import shutil
import struct

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

import helpers
from helpers import (a_addrs, free_port, make_query, query_tcp, query_udp, tcp_connect,
                     tcp_exchange, tcp_recv_msg, tcp_send_msg, txt_strings, udp_exchange)

ENABLED = os.environ.get("DOTPROXY_CROSS") == "1"
pytestmark = pytest.mark.skipif(not ENABLED, reason="cross binaries: run `make test-cross` "
                                "(DOTPROXY_CROSS=1)")

# arch: (qemu name, ELF class, ELF data (1 little, 2 big), e_machine)
ARCHES = {
    "aarch64": ("aarch64", 2, 1, 183),
    "armhf": ("arm", 1, 1, 40),
    "mips": ("mips", 1, 2, 8),
    "mipsel": ("mipsel", 1, 1, 8),
}
WANT = [a for a in os.environ.get("CROSS_ARCHES", " ".join(ARCHES)).split() if a in ARCHES]

EXAMPLE = {"192.0.2.10", "192.0.2.11"}
BIG = "big.example.test"
FULL_TXT = sorted(c * 250 for c in "xyzab")
TIMEOUT = 20.0  # emulated TLS handshakes are slow; generous, not a performance bound


def qemu_for(name):
    for exe in ("qemu-%s-static" % name, "qemu-%s" % name):
        path = shutil.which(exe)
        if path:
            return path
    return None


def elf_header(path):
    with open(path, "rb") as f:
        h = f.read(20)
    assert h[:4] == b"\x7fELF", "%s is not an ELF file" % path
    ei_class, ei_data = h[4], h[5]
    machine = struct.unpack("<H" if ei_data == 1 else ">H", h[18:20])[0]
    return ei_class, ei_data, machine


@pytest.fixture(scope="module", params=WANT)
def cross_proxy(request, pki, unbound, have_ipv6):
    arch = request.param
    qname, ei_class, ei_data, machine = ARCHES[arch]
    binary = os.path.join(helpers.REPO, "dotproxy-" + arch)
    assert os.path.isfile(binary), "%s missing: run `make cross`" % binary
    assert elf_header(binary) == (ei_class, ei_data, machine), \
        "%s is not a static %s executable" % (binary, arch)
    with open(binary, "rb") as f:
        assert b"/lib/ld-" not in f.read(), "%s asks for a dynamic loader" % binary
    qemu = qemu_for(qname)
    if qemu is None:
        pytest.fail("qemu-%s-static not installed (.ci/deps.sh cross)" % qname)
    port = free_port()
    args = ["-l", "127.0.0.1@%d" % port]
    if have_ipv6:
        args += ["-l", "[::1]:%d" % port]
    args += ["-u", "127.0.0.1@%d#dns.test" % unbound.port, "-c", pki.root, "-t", "20000"]
    p = helpers.DotProxy(binary, args, port=port, ready_timeout=TIMEOUT, cmd_prefix=[qemu])
    p.arch = arch
    p.v6 = have_ipv6
    yield p
    rc = p.stop(timeout=10)
    assert rc == 0, "%s: exit status %r after SIGTERM\n%s" % (arch, rc, p.log())


def test_version(cross_proxy):
    r = helpers.run_dotproxy(cross_proxy.binary, ["--version"], timeout=TIMEOUT,
                             cmd_prefix=cross_proxy.cmd[:1], check_safe=False)
    assert r.returncode == 0 and r.stdout.startswith("dotproxy "), r


def test_udp_a(cross_proxy):
    # A fixed ID with distinct bytes: a swapped ID would come back as 0x3412.
    r = query_udp(cross_proxy.port, "ExAmPlE.test", qid=0x1234, timeout=TIMEOUT)
    assert r.id == 0x1234
    assert r.rcode() == dns.rcode.NOERROR
    assert a_addrs(r) == EXAMPLE
    assert r.question[0].name.to_text() == "ExAmPlE.test."


def test_udp_aaaa_with_edns(cross_proxy):
    r = query_udp(cross_proxy.port, "example.test", "AAAA", use_edns=True, timeout=TIMEOUT)
    addrs = {rd.address for rr in r.answer if rr.rdtype == dns.rdatatype.AAAA for rd in rr}
    assert addrs == {"2001:db8::10"}
    assert r.edns == 0
    # The EDNS padding dotproxy adds upstream is not handed back over plain DNS.
    assert all(o.otype != 12 for o in r.options), r.options


def test_tcp_pipelined(cross_proxy):
    s = tcp_connect(cross_proxy.port, timeout=TIMEOUT)
    try:
        q1 = make_query("example.test", "A", qid=0x0102)
        q2 = make_query("example.test", "AAAA", qid=0x0201)
        tcp_send_msg(s, q1.to_wire())
        tcp_send_msg(s, q2.to_wire())
        got = {}
        for _ in range(2):
            r = dns.message.from_wire(tcp_recv_msg(s))
            got[r.id] = r
    finally:
        s.close()
    assert set(got) == {0x0102, 0x0201}
    assert a_addrs(got[0x0102]) == EXAMPLE
    assert got[0x0201].answer and got[0x0201].answer[0].rdtype == dns.rdatatype.AAAA


def test_ipv6_listener(cross_proxy):
    if not cross_proxy.v6:
        pytest.skip("no IPv6 on loopback")
    assert a_addrs(query_udp(cross_proxy.port, "example.test", host="::1",
                             timeout=TIMEOUT)) == EXAMPLE
    assert a_addrs(query_tcp(cross_proxy.port, "example.test", host="::1",
                             timeout=TIMEOUT)) == EXAMPLE


def test_udp_truncation_without_edns(cross_proxy):
    q = make_query(BIG, "TXT", use_edns=False)
    rw = udp_exchange(cross_proxy.port, q.to_wire(), timeout=TIMEOUT)
    assert rw is not None, "no answer"
    assert len(rw) <= 512, len(rw)
    r = dns.message.from_wire(rw)
    assert r.id == q.id
    assert r.flags & dns.flags.TC
    assert r.rcode() == dns.rcode.NOERROR
    assert r.answer == []
    assert r.edns == -1


def test_udp_big_with_edns_4096(cross_proxy):
    """EDNS 4096 over UDP: the answer is capped at 1232 bytes (DNS flag day 2020), as on
    x86-64 (test_resolve.py::test_udp_edns_4096_capped_at_1232): TC=1, and the whole
    answer over TCP."""
    q = make_query(BIG, "TXT", use_edns=True, payload=4096)
    rw = udp_exchange(cross_proxy.port, q.to_wire(), timeout=TIMEOUT)
    assert rw is not None
    assert len(rw) <= 1232
    r = dns.message.from_wire(rw)
    assert r.flags & dns.flags.TC
    r = dns.message.from_wire(tcp_exchange(cross_proxy.port, q.to_wire(), timeout=TIMEOUT))
    assert not r.flags & dns.flags.TC
    assert txt_strings(r) == FULL_TXT


def test_tcp_big_full(cross_proxy):
    q = make_query(BIG, "TXT", use_edns=False)
    r = dns.message.from_wire(tcp_exchange(cross_proxy.port, q.to_wire(), timeout=TIMEOUT))
    assert not r.flags & dns.flags.TC
    assert txt_strings(r) == FULL_TXT
    assert len(r.to_wire()) > 1232


def test_formerr_on_garbage(cross_proxy):
    # 12-byte header claiming two questions and nothing else: FORMERR with the same ID.
    wire = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 2, 0, 0, 0)
    rw = udp_exchange(cross_proxy.port, wire, timeout=TIMEOUT)
    if rw is not None:  # dropping is allowed; answering anything but FORMERR is not
        rid, flags = struct.unpack("!HH", rw[:4])
        assert rid == 0xBEEF and flags & 0x8000 and flags & 0xF == dns.rcode.FORMERR
    # and it still serves afterwards
    assert a_addrs(query_udp(cross_proxy.port, "example.test", timeout=TIMEOUT)) == EXAMPLE


# ---------------------------------------------------------------- numbers (issue #9)
# A value that overflows 32 bits must be refused on the 32-bit targets (armhf, mips, mipsel)
# too, before anything is bound: a wrapped --user 4294967296 would be uid 0, a wrapped port
# 4294967349 (53 + 2^32) port 53. The run is bounded: a binary that takes the value starts
# serving and is killed after the timeout (exit status None).
OVERFLOW_PORT = "4294967349"
NUMBER_CASES = {
    "user": (["--user", "4294967296"], "bad --user '4294967296'"),
    "timeout": (["--timeout", "4294967297"], "bad --timeout '4294967297'"),
    "listen-port": (["-l", "127.0.0.1@" + OVERFLOW_PORT], OVERFLOW_PORT),
    "upstream-port": (["-u", "127.0.0.1@%s#dns.test" % OVERFLOW_PORT], OVERFLOW_PORT),
}


@pytest.mark.parametrize("case", sorted(NUMBER_CASES))
@pytest.mark.parametrize("arch", WANT)
def test_number_overflow_rejected(arch, case):
    """Exit 1 with a message naming the value, no "ready" line, under qemu-user."""
    binary = os.path.join(helpers.REPO, "dotproxy-" + arch)
    assert os.path.isfile(binary), "%s missing: run `make cross`" % binary
    qemu = qemu_for(ARCHES[arch][0])
    if qemu is None:
        pytest.fail("qemu-%s-static not installed (.ci/deps.sh cross)" % ARCHES[arch][0])
    extra, want = NUMBER_CASES[case]
    args = [] if extra[0] == "-l" else ["-l", "127.0.0.1@%d" % free_port()]
    args += [] if extra[0] == "-u" else ["-u", "127.0.0.1@1#dns.test"]
    r = helpers.run_dotproxy(binary, args + extra, timeout=10, cmd_prefix=[qemu])
    assert r.returncode == 1 and want in r.stderr and "ready" not in r.stderr, \
        "%s %s: expected exit 1 with %r before binding, got exit %r, stderr:\n%s" % (
            arch, " ".join(extra), want, r.returncode, r.stderr)
