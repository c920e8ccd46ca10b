"""Deployment files: the Kubernetes DaemonSet and the systemd unit.

No cluster and no systemd as PID 1 here: the manifest is checked property by property, its
args against the binary's option parser (loopback values substituted for the addresses), and
the unit with systemd-analyze verify / security --offline.
"""

import os
import re
import shutil
import subprocess

import pytest
import yaml

import helpers
from helpers import a_addrs, free_port, query_udp, run_dotproxy

K8S = os.path.join(helpers.REPO, "kubernetes", "dotproxy.yaml")
UNIT = os.path.join(helpers.REPO, "systemd", "dotproxy.service")
SOCKET_UNIT = os.path.join(helpers.REPO, "systemd", "dotproxy.socket")
EXAMPLE = {"192.0.2.10", "192.0.2.11"}

MEM = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "": 1}


def mem_bytes(v):
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|)", str(v))
    assert m, v
    return int(m.group(1)) * MEM[m.group(2)]


def cpu_milli(v):
    v = str(v)
    return int(v[:-1]) if v.endswith("m") else int(float(v) * 1000)


def opt_value(args, name):
    """Values of --name (as `--name V` or `--name=V`) in args."""
    out = []
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            out.append(args[i + 1])
        elif a.startswith(name + "="):
            out.append(a[len(name) + 1:])
    return out


@pytest.fixture(scope="module")
def daemonset():
    docs = [d for d in yaml.safe_load_all(open(K8S)) if d]
    ds = [d for d in docs if d.get("kind") == "DaemonSet"]
    assert len(ds) == 1, [d.get("kind") for d in docs]
    return ds[0]


@pytest.fixture(scope="module")
def pod(daemonset):
    return daemonset["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def container(pod):
    cs = [c for c in pod["containers"] if c["name"] == "dotproxy"]
    assert len(cs) == 1
    return cs[0]


# ---------------------------------------------------------------- Kubernetes

def test_k8s_selector_matches_labels(daemonset):
    sel = daemonset["spec"]["selector"]["matchLabels"]
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert sel.items() <= labels.items()


def test_k8s_host_network(pod):
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "Default"


def test_k8s_ports(container):
    ports = {(p["containerPort"], p.get("hostPort"), p.get("protocol", "TCP"))
             for p in container["ports"]}
    assert (53, 53, "UDP") in ports and (53, 53, "TCP") in ports


def test_k8s_resources_small(container):
    res = container["resources"]
    req, lim = res["requests"], res["limits"]
    assert 0 < mem_bytes(req["memory"]) <= mem_bytes(lim["memory"]) <= 64 << 20
    assert 0 < cpu_milli(req["cpu"]) <= cpu_milli(lim["cpu"]) <= 500


def test_k8s_security(pod, container):
    sc = container["securityContext"]
    psc = pod.get("securityContext", {})
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True
    uid = sc.get("runAsUser", psc.get("runAsUser"))
    assert isinstance(uid, int) and uid > 0
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["capabilities"]["add"] == ["NET_BIND_SERVICE"]
    assert "privileged" not in sc or sc["privileged"] is False
    for c in pod.get("initContainers", []):  # may have more, but no escalation, no privileged
        csc = c.get("securityContext", {})
        assert csc.get("privileged", False) is False
        assert csc.get("allowPrivilegeEscalation") is False
        assert csc["capabilities"]["drop"] == ["ALL"]


def test_k8s_probes_tcp_on_53(container):
    for probe in ("livenessProbe", "readinessProbe"):
        p = container[probe]
        assert "exec" not in p, "no shell in a FROM scratch image"
        assert p["tcpSocket"]["port"] == 53
        # With hostNetwork the pod IP is the node IP: the probe must hit a listen address.
        host = p["tcpSocket"].get("host")
        listens = opt_value(container["args"], "--listen") + opt_value(container["args"], "-l")
        assert any(l.split("@")[0] == host for l in listens), (host, listens)


def test_k8s_rolling_update(daemonset):
    us = daemonset["spec"]["updateStrategy"]
    assert us["type"] == "RollingUpdate"
    assert us["rollingUpdate"]["maxUnavailable"] == 1


def test_k8s_grace_period_above_drain(pod, container):
    drain = opt_value(container["args"], "--drain-timeout")
    assert drain, "no --drain-timeout in the args"
    assert pod["terminationGracePeriodSeconds"] * 1000 > int(drain[0])


def test_k8s_forward_zones(container):
    zones = dict(z.split("=", 1) for z in opt_value(container["args"], "--forward-zone"))
    assert set(zones) == {"cluster.local", "in-addr.arpa", "ip6.arpa"}
    assert len(set(zones.values())) == 1  # all to kube-dns


def test_k8s_image_placeholder(container):
    assert container["image"].startswith("dotproxy:")


def test_k8s_args_accepted(container, dotproxy_bin, unbound, pki):
    """The manifest's args through the option parser: every option the binary has now, with
    loopback values for --listen and --upstream; the others (not written yet) are skipped."""
    help_text = run_dotproxy(dotproxy_bin, ["--help"], check_safe=False).stdout
    takes_value = dict(re.findall(r"^\s+(?:-\w, )?(--[a-z-]+)( [A-Z]+)?", help_text, re.M))
    args, skipped = [], []
    a = container["args"]
    i = 0
    port = free_port()
    while i < len(a):
        opt = a[i]
        name = opt.split("=", 1)[0]
        has_val = "=" not in opt and i + 1 < len(a) and not a[i + 1].startswith("-")
        val = a[i + 1] if has_val else None
        i += 2 if has_val else 1
        if name not in takes_value:
            skipped.append(name)
            continue
        assert bool(takes_value[name]) == has_val, (name, val)
        if name == "--listen":
            args += [name, "127.0.0.1@%d" % port]
        elif name == "--upstream":
            args += [name, "127.0.0.1@%d#dns.test" % unbound.port]
        elif name in ("--quiet",):  # keep the "ready" line the helper waits for
            continue
        else:
            args += [name] + ([val] if has_val else [])
    print("options not in this binary yet, skipped:", skipped)
    assert "--listen" in args and "--upstream" in args
    p = helpers.DotProxy(dotproxy_bin, args + ["-c", pki.root], port=port)
    try:
        assert a_addrs(query_udp(port, "example.test")) == EXAMPLE
    finally:
        assert p.stop() == 0, p.log()


# ---------------------------------------------------------------- systemd

def unit_settings(path=UNIT):
    out = {}
    for line in open(path):
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        k, _, v = line.partition("=")
        out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_unit_hardening():
    """The sandbox, and no capability at all: the sockets come from dotproxy.socket."""
    s = unit_settings()
    assert "AmbientCapabilities" not in s, s.get("AmbientCapabilities")
    want = {
        "DynamicUser": "yes", "CapabilityBoundingSet": "", "NoNewPrivileges": "yes",
        "Type": "notify", "NotifyAccess": "main", "Requires": "dotproxy.socket",
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "ProtectClock": "yes",
        "ProtectHostname": "yes", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "RestrictNamespaces": "yes", "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes",
        "RestrictRealtime": "yes", "RestrictSUIDSGID": "yes", "SystemCallArchitectures": "native",
        "UMask": "077", "Restart": "on-failure", "KillSignal": "SIGTERM",
        "Before": "nss-lookup.target",
    }
    for k, v in want.items():
        assert v in s.get(k, []), (k, s.get(k))
    assert "nss-lookup.target" in s["Wants"]
    assert s["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert s["ExecStart"][0].split()[0] == "/usr/local/bin/dotproxy"
    assert "-/etc/default/dotproxy" in s["EnvironmentFile"]
    stop = s["TimeoutStopSec"][0]
    assert stop.endswith("s") and int(stop[:-1]) >= 5, stop
    wd = s["WatchdogSec"][0]
    assert wd.endswith("s") and int(wd[:-1]) >= 10, wd


def test_unit_default_listens_on_loopback_only():
    """The sockets systemd opens for it (dotproxy.socket) are loopback ones, UDP and
    TCP alike; the service passes no -l (dotproxy takes the sockets it is given)."""
    env = " ".join(unit_settings()["Environment"])
    assert "-l " not in env and "--listen" not in env, env
    sock = unit_settings(SOCKET_UNIT)
    for key in ("ListenDatagram", "ListenStream"):
        addrs = sock.get(key, [])
        assert addrs and all(a.startswith(("127.", "[::1]")) for a in addrs), (key, addrs)
    assert sorted(sock["ListenDatagram"]) == sorted(sock["ListenStream"]), sock


@pytest.fixture
def unit_copy(tmp_path, dotproxy_bin):
    """The unit, with ExecStart pointing at the built binary (verify wants it to exist),
    next to a copy of dotproxy.socket (which it requires)."""
    text = open(UNIT).read().replace("/usr/local/bin/dotproxy", dotproxy_bin)
    path = tmp_path / "dotproxy.service"
    path.write_text(text)
    (tmp_path / "dotproxy.socket").write_text(open(SOCKET_UNIT).read())
    return path


def test_unit_verifies(unit_copy):
    sa = shutil.which("systemd-analyze")
    assert sa, "systemd-analyze missing (.ci/deps.sh test installs systemd)"
    sock = unit_copy.parent / "dotproxy.socket"
    r = subprocess.run([sa, "verify", str(sock), str(unit_copy)], capture_output=True,
                       text=True, cwd=str(unit_copy.parent))
    assert r.returncode == 0, r.stderr
    # verify warns about unknown keys or bad values with exit status 0: none allowed
    complaints = [l for l in (r.stdout + r.stderr).splitlines()
                  if unit_copy.name in l or sock.name in l]
    assert not complaints, complaints


def test_unit_verify_catches_mistakes(tmp_path, unit_copy):
    """The check above can fail: a misspelt key and a missing binary are reported."""
    sa = shutil.which("systemd-analyze")
    assert sa
    bad = tmp_path / "bad" / "dotproxy.service"
    bad.parent.mkdir()
    bad.write_text(unit_copy.read_text().replace("ProtectClock=", "ProtectClok=")
                   .replace("ExecStart=/", "ExecStart=/nonexistent/"))
    r = subprocess.run([sa, "verify", str(bad)], capture_output=True, text=True)
    out = r.stdout + r.stderr
    assert "ProtectClok" in out
    assert r.returncode != 0 or "nonexistent" in out


def test_unit_security_score(unit_copy):
    sa = shutil.which("systemd-analyze")
    assert sa
    r = subprocess.run([sa, "security", "--offline=yes", "--no-pager", str(unit_copy)],
                       capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout + r.stderr)
    if not m:
        pytest.skip("this systemd-analyze has no security --offline: %s" % r.stderr.strip())
    score = float(m.group(1))
    print("systemd-analyze security: %.1f" % score)
    assert score <= 1.6, "worse than before socket activation (1.6): %.1f" % score


@pytest.mark.parametrize("mistake", ["misspelt-key", "bad-address", "no-service"])
def test_socket_unit_verify_catches_mistakes(tmp_path, unit_copy, mistake):
    """The socket's check can fail too: a misspelt key or an address out of range in
    dotproxy.socket, or the service it starts missing, is reported."""
    sa = shutil.which("systemd-analyze")
    assert sa
    d = tmp_path / mistake
    d.mkdir()
    text = (unit_copy.parent / "dotproxy.socket").read_text()
    if mistake == "misspelt-key":
        text, want = text.replace("FreeBind=", "FreeBinde="), "FreeBinde"
    elif mistake == "bad-address":
        text, want = text.replace("ListenDatagram=127.0.0.1:53",
                                  "ListenDatagram=127.0.0.1:99999"), "99999"
    else:
        want = "dotproxy.service not loaded"
    assert text != (unit_copy.parent / "dotproxy.socket").read_text() or mistake == "no-service"
    (d / "dotproxy.socket").write_text(text)
    files = [str(d / "dotproxy.socket")]
    if mistake != "no-service":
        (d / "dotproxy.service").write_text(unit_copy.read_text())
        files.append(str(d / "dotproxy.service"))
    r = subprocess.run([sa, "verify"] + files, capture_output=True, text=True, cwd=str(d))
    assert want in r.stdout + r.stderr, r.stdout + r.stderr
