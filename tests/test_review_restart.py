"""Adversarial review of two commits: a65edd0 (zero-gap restarts: steering a --reuseport
group with SO_ATTACH_REUSEPORT_CBPF, the lame duck's token, TCP clients closed in the lame
duck, the shared --http port) and cbfbc0f (availability: a lost connection of an upstream
that answered before, with another usable, is failed over and probed; a suspect connection
with nothing in flight stays suspect until it answers or closes idle).

Each test asserts what the contract (README, the commits' own words) promises: a test
marked xfail(strict) is an open finding (its reason says what breaks, where, and the fix
proposed); the others are attacks and faults that held, kept as guards.

Restart tests run in a private network namespace as tests/test_restart.py does (its
helpers: Netns, start_proxy, Load, ...); availability tests on 127.0.0.1 with scripted DoT
upstreams (tests/slowdot.py).  Nothing leaves the machine.
"""

import os
import signal
import socket
import struct
import subprocess
import threading
import time

import dns.message
import dns.rcode
import pytest

import helpers
from helpers import a_addrs, fake_addr_for, make_query, query_udp, wait_until
from slowdot import SlowDoT, slow_dot  # noqa: F401  (slow_dot: a fixture)
from test_restart import (DNS, EXAMPLE, HTTP_A, HTTP_B, Load, log_of, ns,  # noqa: F401
                          proxy_argv, start_proxy, status, stop, tcp_count, udp_count,
                          wait_for)
from test_review_availability import UP, UdpAsker, upstream_stats, warn_lines

DEAD_UP = "127.0.0.1@854#dns.test"          # nothing listens there (refused at once)
MUTE_DOT_PORT = 8853                        # a DoT server that never answers (in the netns)


def with_upstreams(argv, ups):
    """argv of proxy_argv with its one -u replaced by the list ups."""
    i = argv.index("-u")
    out = argv[:i] + argv[i + 2:]
    for u in ups:
        out += ["-u", u]
    return out


def no_loss(load):
    return load.count("none") == 0 and load.count("failed") == 0


# ================================================================ restarts (a65edd0)

@pytest.mark.xfail(strict=True, reason=(
    "a65edd0: a new --reuseport instance (g.steer_wait) gets no client query, and "
    "loop_steer_when_ready (like observe_ready) only ever probes upstream 0; when upstream "
    "0 is down, upstream_timers' DISCONNECTED branch probes upstream 0 again and again "
    "(failing, pick() != 0), never upstream 1, which nothing else connects: the new "
    "instance never gets ready nor takes a query, and a rollout waiting on its /ready "
    "hangs. Before a65edd0 the kernel's hash gave it clients' queries, which failed over "
    "to upstream 1. Fix: in steer_wait (and observe_ready), probe the upstream "
    "upstream_pick() names (the best usable), not upstreams[0]"))
def test_new_instance_whose_first_upstream_is_down_gets_ready(ns, dotproxy_bin, pki):
    """A serves (one healthy upstream).  B starts beside it with -u DEAD -u GOOD, the same
    good upstream second (a first resolver down during a restart): B must get ready through
    its second upstream and take the queries, as a lone instance does."""
    a = start_proxy(ns, dotproxy_bin, pki, "a", HTTP_A)
    load = Load(ns, udp=2, tcp=1)
    argv = with_upstreams(proxy_argv(dotproxy_bin, pki, HTTP_B),
                          [DEAD_UP, "127.0.0.1@853#dns.test"])
    b = ns.popen(argv, "b")
    try:
        ready = wait_for(lambda: status(ns, HTTP_B, "/ready") == 200, 8, 0.2)
        time.sleep(0.5)
        taken = udp_count(ns, HTTP_B)
    finally:
        load.stop()
    print("B ready %s, took %s UDP queries; %s" % (ready, taken, load.summary()))
    assert b.poll() is None and a.poll() is None, log_of(b)
    assert no_loss(load), load.summary()     # A serves meanwhile: that holds
    assert ready, "B never got ready through its second upstream:\n" + log_of(b)
    assert taken and taken > 0, "B ready but took no query"


def mute_dot(ns, pki):
    """A DoT server in the namespace that completes every handshake and never answers."""
    return ns.call(lambda: SlowDoT(pki.chain, pki.key, delay=lambda name: None,
                                   port=MUTE_DOT_PORT))


@pytest.mark.xfail(strict=True, reason=(
    "a65edd0: loop_steer_when_ready takes the whole group ('return 1') as soon as "
    "observe_upstream_up() is true, i.e. u->ok_ms != 0: a TLS handshake passed "
    "(upstream_on_handshake), not an answer (README: 'it takes the queries once an "
    "upstream answers it'). A new instance whose upstream completes handshakes and never "
    "answers (a wrong port or service behind a valid certificate, a resolver that lost "
    "its own upstream) takes every query from a healthy old instance: the clients get "
    "SERVFAIL or nothing until the operator stops it. Fix: steer once an upstream has "
    "answered (u->answered after the probe's answer, e.g. a flag set in "
    "upstream_on_first_answer), not at the handshake"))
def test_new_instance_takes_queries_only_once_its_upstream_answers(ns, dotproxy_bin, pki):
    """A serves; B starts beside it with an upstream that passes the TLS handshake but
    never answers a query.  A is healthy all along, so no query may be lost."""
    mute = mute_dot(ns, pki)
    try:
        a = start_proxy(ns, dotproxy_bin, pki, "a", HTTP_A)
        load = Load(ns, udp=2, tcp=1)
        argv = with_upstreams(proxy_argv(dotproxy_bin, pki, HTTP_B),
                              ["127.0.0.1@%d#dns.test" % MUTE_DOT_PORT])
        b = ns.popen(argv + ["-t", "1500"], "b")
        time.sleep(4.0)
        load.stop()
        taken = (udp_count(ns, HTTP_B), tcp_count(ns, HTTP_B))
        print("B took %s; mute upstream: %d connections, %d queries; %s"
              % (taken, len(mute.conns), mute.total(), load.summary()))
        assert b.poll() is None and a.poll() is None, log_of(b)
        assert mute.conns, "B never reached its upstream"
        assert no_loss(load), ("B took the queries (%s) before its upstream answered one:"
                               " %s" % (taken, load.summary()))
    finally:
        mute.stop()


@pytest.mark.xfail(strict=True, reason=(
    "a65edd0: start_steer_probe sends the token to listener 0 only and start_steer_all "
    "applies the answer (index 0 or 1) to every group: an instance is assumed to hold the "
    "same index in all of them. B (newer) with --listen 127.0.0.2@53 --listen 127.0.0.1@53 "
    "beside A with 127.0.0.1@53 alone: B is alone (index 0) in the first group, gets its "
    "own token, and steers every group to 'return 1', which in the shared group is B "
    "itself: in B's lame duck B keeps every new query of the shared address (a rollback "
    "of a config that added a listener). Fix: a token per listener (or per group), each "
    "group steered by its own answer"))
def test_stopping_newer_instance_with_an_extra_listener_hands_over(ns, dotproxy_bin, pki):
    """A listens on 127.0.0.1@53; B, newer, on 127.0.0.2@53 and 127.0.0.1@53.  B is
    stopped (a rollback): in its lame duck, new queries to 127.0.0.1@53 must go to A (B's
    query counters stop), as they do when both have the same listeners."""
    a = start_proxy(ns, dotproxy_bin, pki, "a", HTTP_A, lame_duck=3000)
    argv = proxy_argv(dotproxy_bin, pki, HTTP_B, lame_duck=3000)
    i = argv.index("-l")
    argv = argv[:i] + ["-l", "127.0.0.2@53"] + argv[i:]
    b = ns.popen(argv, "b")
    b.http_port = HTTP_B
    assert wait_for(lambda: status(ns, HTTP_B, "/ready") == 200, 20, 0.05), log_of(b)
    load = Load(ns, udp=3, tcp=1)
    try:
        time.sleep(1.0)
        assert udp_count(ns, HTTP_B) > 0, "B took nothing before its stop"
        b.send_signal(signal.SIGTERM)
        assert wait_for(lambda: status(ns, HTTP_B, "/ready") == 503, 2, 0.02), log_of(b)
        time.sleep(0.3)
        b1 = (udp_count(ns, HTTP_B), tcp_count(ns, HTTP_B))
        time.sleep(1.2)
        b2 = (udp_count(ns, HTTP_B), tcp_count(ns, HTTP_B))
    finally:
        load.stop()
    assert b.wait(20) == 0, log_of(b)
    print("B in its lame duck: %s -> %s; %s" % (b1, b2, load.summary()))
    assert a.poll() is None, log_of(a)
    assert no_loss(load), load.summary()
    assert b2 == b1, "B still takes new queries in its lame duck: %s -> %s" % (b1, b2)
