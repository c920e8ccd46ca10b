"""Private network namespaces for the tests (test_restart, test_zone_tcp, test_kubernetes, ...).

A Netns is a network namespace held by a sleeping process (unshare --net) and gone with it:
commands run in it through nsenter(1), and the test's own threads enter it (setns) to make
their sockets there, so a test's addresses are shared with nothing else on the machine and
nothing leaves the namespace.

Needs root, unshare(1), nsenter(1), ip(8) (util-linux, iproute2: .ci/deps.sh test): a test
without them skips on a developer's machine and fails under CI (CI=true).
"""

import ctypes
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest

import helpers
from helpers import a_addrs, make_query, write_unbound_conf

EXAMPLE = {"192.0.2.10", "192.0.2.11"}     # example.test (unbound's local data)

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def missing(why):
    """A test's tool is missing: a skip here, a failure under CI (.ci/deps.sh installs it)."""
    if os.environ.get("CI"):
        pytest.fail(why + " (CI must run this test: .ci/deps.sh installs it)", pytrace=False)
    pytest.skip(why)


def need(*tools):
    """Skips (a failure under CI) without one of tools (on PATH or in /usr/sbin)."""
    for t in tools:
        if not (shutil.which(t) or os.path.exists("/usr/sbin/" + t)):
            missing("needs %s" % t)


def need_netns(*tools):
    """Skips (a failure under CI) without what a network namespace needs, or without one of
    the further tools."""
    if os.geteuid() != 0:
        missing("needs root (network namespaces)")
    need("unshare", "nsenter", "ip", *tools)
    r = subprocess.run(["unshare", "--net", "true"], capture_output=True)
    if r.returncode != 0:
        missing("unshare --net is not allowed here: %s" % r.stderr.decode(errors="replace"))


class Netns:
    """A private network namespace with only lo up, held by a sleeping process (gone with it).

    name: for messages; tmp: the directory of the logs of the processes started by popen."""

    def __init__(self, name="netns", tmp=None):
        self.name = name
        self.tmp = tmp
        self.holder = subprocess.Popen(["unshare", "--net", "--", "sleep", "900"])
        self.path = "/proc/%d/ns/net" % self.holder.pid
        mine = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 10
        while True:
            try:
                if os.readlink(self.path) != mine:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "unshare --net did not start"
            time.sleep(0.01)
        self.procs = []
        self.run(["ip", "link", "set", "lo", "up"])

    def prefix(self):
        return ["nsenter", "--net=" + self.path, "--"]

    def run(self, argv, check=True, **kw):
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 30)
        r = subprocess.run(self.prefix() + list(argv), **kw)
        if check:
            assert r.returncode == 0, (self.name, argv, r.stdout, r.stderr)
        return r

    def sh(self, script, check=True, **kw):
        return self.run(["sh", "-ec", script], check=check, **kw)

    def popen(self, argv, name, env=None, prefix=()):
        """argv (after prefix) started in the namespace, its output in tmp/<name>.log
        (p.logfile); killed by close()."""
        log = str(self.tmp / (name + ".log"))
        with open(log, "wb") as f:
            p = subprocess.Popen(self.prefix() + list(prefix) + list(argv), env=env,
                                 stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
        p.logfile = log
        p.name = name
        self.procs.append(p)
        return p

    def enter(self):
        """Moves the calling thread into the namespace (sockets it makes stay there)."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                raise OSError(e, "setns: " + os.strerror(e))
        finally:
            os.close(fd)

    def call(self, fn, *a, **kw):
        """fn(*a, **kw) in a thread inside the namespace: its result, or its exception."""
        res = {}

        def target():
            try:
                self.enter()
                res["v"] = fn(*a, **kw)
            except BaseException as e:  # handed to the caller
                res["e"] = e
        t = threading.Thread(target=target)
        t.start()
        t.join()
        if "e" in res:
            raise res["e"]
        return res["v"]

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.holder.kill()
        self.holder.wait()


def start_unbound(ns, pki, port=853):
    """unbound (DNS-over-TLS on 127.0.0.1@port, local data only) inside ns, answering: its
    Popen (killed by ns.close()); its files in ns.tmp/unbound-<ns.name>."""
    work = ns.tmp / ("unbound-" + ns.name)
    work.mkdir()
    conf = write_unbound_conf(str(work), pki.dir, port, False)
    p = ns.popen(["/usr/sbin/unbound", "-d", "-c", conf], "unbound-" + ns.name)

    def up():
        try:
            r = helpers.dot_query(("127.0.0.1", port), make_query("example.test"),
                                  cafile=pki.root, timeout=1.0)
            return EXAMPLE <= a_addrs(r)
        except (OSError, EOFError, ValueError):
            return False
    assert wait_for(lambda: p.poll() is None and ns.call(up), 20, 0.1), log_of(p)
    return p


# ================================================================ processes

def log_of(p):
    """The end of the log of a process started by Netns.popen ("" without one)."""
    try:
        with open(p.logfile, errors="replace") as f:
            return f.read()[-6000:]
    except OSError:
        return ""


def wait_for(pred, timeout, interval=0.05):
    """pred() until it is true or timeout seconds have passed: its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


def stop(p, sig=signal.SIGTERM, timeout=20):
    """sig to p (if still running), SIGKILL after timeout seconds: its exit status."""
    if p.poll() is None:
        try:
            p.send_signal(sig)
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return p.returncode
