"""Deployment files: the Kubernetes DaemonSet and the systemd unit.

No cluster and no systemd as PID 1 here: the manifest is checked property by property, its
args against the binary's option parser (loopback values substituted for the addresses), and
the unit with systemd-analyze verify / security --offline. The Kubernetes manifests are
checked further (rendering, schema, and their parts run in network namespaces) in
tests/test_kubernetes.py.
"""

import os
import re
import shutil
import subprocess
import time

import pytest
import yaml

import helpers
from helpers import a_addrs, free_port, query_udp, run_dotproxy

K8S_DIR = os.path.join(helpers.REPO, "kubernetes")
# The manifest in its two modes: interception (kubernetes/dotproxy.yaml as shipped) and
# link-local (kubernetes/render.sh --link-local; tests/test_kubernetes.py checks every option).
K8S_MODES = {"interception": [], "link-local": ["--link-local"]}
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


def k8s_expand(s, env):
    """Kubernetes' $(VAR) expansion of args (an undefined VAR is left as is)."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)),
                  s)


@pytest.fixture(scope="module", params=sorted(K8S_MODES))
def k8s_docs(request):
    r = subprocess.run(["sh", os.path.join(K8S_DIR, "render.sh")] + K8S_MODES[request.param],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.fixture(scope="module")
def daemonset(k8s_docs):
    ds = [d for d in k8s_docs if d.get("kind") == "DaemonSet"]
    assert len(ds) == 1, [d.get("kind") for d in k8s_docs]
    return ds[0]


@pytest.fixture(scope="module")
def pod(daemonset):
    return daemonset["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def container(pod):
    cs = [c for c in pod["containers"] if c["name"] == "dotproxy"]
    assert len(cs) == 1
    return cs[0]


@pytest.fixture(scope="module")
def params(k8s_docs, container):
    """The ConfigMap the dotproxy container takes its environment from."""
    (ref,) = container["envFrom"]
    name = ref["configMapRef"]["name"]
    (cm,) = [d for d in k8s_docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
    return cm["data"]


@pytest.fixture(scope="module")
def args(container, params):
    """The dotproxy args as the kubelet expands them (the Service link of kube-dns-upstream
    is a ClusterIP the API server picks: a placeholder)."""
    env = dict(params, KUBE_DNS_UPSTREAM_SERVICE_HOST="10.96.0.11")
    out = [k8s_expand(a, env) for a in container["args"]]
    assert not [a for a in out if "$(" in a], out
    return out


def all_containers(pod):
    return pod.get("initContainers", []) + pod["containers"]


# ---------------------------------------------------------------- Kubernetes

def test_k8s_selector_matches_labels(daemonset):
    sel = daemonset["spec"]["selector"]["matchLabels"]
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert sel.items() <= labels.items()


def test_k8s_host_network(pod):
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "Default"
    assert pod.get("enableServiceLinks", True) is True   # $(KUBE_DNS_UPSTREAM_SERVICE_HOST)


def test_k8s_no_ports(pod):
    """No containerPort at all: with hostNetwork the API server makes each one a hostPort,
    and the scheduler would keep the rolling update's surge pod off the node."""
    for c in all_containers(pod):
        assert "ports" not in c, c["name"]


def test_k8s_resources_no_cpu_limit(pod):
    for c in all_containers(pod):
        res = c["resources"]
        req, lim = res["requests"], res["limits"]
        assert "cpu" not in lim, (c["name"], "a CPU limit throttles TLS handshake bursts")
        assert 0 < cpu_milli(req["cpu"]) <= 100
        assert 0 < mem_bytes(req["memory"]) <= mem_bytes(lim["memory"]) <= 64 << 20


def test_k8s_security_bind_then_drop(pod, container, args):
    """Root with only NET_BIND_SERVICE, SETUID and SETGID (port 53 as a non-root user needs
    ambient capabilities, which Kubernetes does not set: kubernetes#56374); dotproxy drops
    to 65534:65534 itself once bound (tests/test_kubernetes.py runs it so under capsh)."""
    sc = container["securityContext"]
    assert sc["runAsUser"] == 0 and sc["runAsNonRoot"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sorted(sc["capabilities"]["add"]) == ["NET_BIND_SERVICE", "SETGID", "SETUID"]
    assert opt_value(args, "--user") == ["65534:65534"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod["initContainers"]:
        csc = c["securityContext"]
        assert csc["privileged"] is False and csc["allowPrivilegeEscalation"] is False
        assert csc["readOnlyRootFilesystem"] is True
        assert csc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}


def test_k8s_probes_http(container, args):
    """httpGet on --http's address: liveness /health, readiness /ready; no exec (no shell in
    a FROM scratch image), no tcpSocket (a stopped process still gets its connections)."""
    (http,) = opt_value(args, "--http")
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        p = container[probe]
        assert set(p) & {"exec", "tcpSocket", "grpc"} == set()
        hg = p["httpGet"]
        assert hg["path"] == path
        # with hostNetwork the kubelet's own 127.0.0.1 is the pod's
        assert "%s@%d" % (hg["host"], hg["port"]) == http


def test_k8s_rolling_update_surge(daemonset, args):
    us = daemonset["spec"]["updateStrategy"]
    assert us["type"] == "RollingUpdate"
    assert us["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert "--reuseport" in args and int(opt_value(args, "--lame-duck")[0]) > 0


def test_k8s_grace_period_above_lame_duck_and_drain(pod, args):
    lame = int(opt_value(args, "--lame-duck")[0])
    drain = int(opt_value(args, "--drain-timeout")[0])
    assert pod["terminationGracePeriodSeconds"] * 1000 >= lame + drain + 5000


def test_k8s_forward_zones(k8s_docs, container, params):
    fz = opt_value(container["args"], "--forward-zone")
    zones = dict(z.split("=", 1) for z in fz)
    assert set(zones) == {"$(CLUSTER_DOMAIN)", "in-addr.arpa", "ip6.arpa"}
    assert set(zones.values()) == {"$(KUBE_DNS_UPSTREAM_SERVICE_HOST)@53$(FORWARD_TRANSPORT)"}
    assert params["CLUSTER_DOMAIN"] == "cluster.local" and params["FORWARD_TRANSPORT"] == ""
    (svc,) = [d for d in k8s_docs if d["kind"] == "Service"]
    assert svc["metadata"]["name"] == "kube-dns-upstream"     # the env var's name follows
    assert svc["metadata"]["namespace"] == "kube-system"
    assert svc["spec"]["selector"] == {"k8s-app": "kube-dns"}


def test_k8s_modes(k8s_docs, args, params):
    """Interception (dotproxy.yaml) also listens on the kube-dns ClusterIP; link-local only on
    169.254.20.10 (and node-agent.sh holds no ClusterIP: KUBE_DNS_IP is empty)."""
    listens = opt_value(args, "--listen")
    if params["KUBE_DNS_IP"]:
        assert listens == ["169.254.20.10@53", "10.96.0.10@53"]
    else:
        assert listens == ["169.254.20.10@53"]


def test_k8s_image_placeholder(pod):
    images = {c["image"] for c in all_containers(pod)}
    assert images == {"ghcr.io/OWNER/dotproxy:0.1.0", "ghcr.io/OWNER/dotproxy-netutils:0.1.0"}


def test_k8s_args_accepted(args, params, dotproxy_bin, unbound, pki):
    """The manifest's args, expanded, through the option parser: loopback values for
    --listen, --http and the zones' server, the unbound fixture as the upstream (instead of
    DOT_SERVER); --user only as root."""
    help_text = run_dotproxy(dotproxy_bin, ["--help"], check_safe=False).stdout
    takes_value = {}
    # option lines only ("  -l, --listen ADDR", "      --reuseport"), not the descriptions
    for opt, val in re.findall(r"^\s{2,6}(?:-\w, )?(--[a-z-]+)( \S+)?\s*$", help_text, re.M):
        takes_value.setdefault(opt, val)
    port, hport = free_port(), free_port()
    out, i = [], 0
    while i < len(args):
        name, eq, val = args[i].partition("=")
        assert name in takes_value, name
        if not eq:
            val = args[i + 1] if takes_value[name] else None
            i += 1 if takes_value[name] else 0
        i += 1
        if name == "--listen":
            val = "127.0.0.1@%d" % port
            if "--listen" in out:
                continue
        elif name == "--http":
            val = "127.0.0.1@%d" % hport
        elif name == "--forward-zone":
            val = val.replace("10.96.0.11", "127.0.0.1")
        elif name == "--user" and os.geteuid() != 0:
            continue
        out += [name] + ([val] if val is not None else [])
    assert "DOT_SERVER" in params
    p = helpers.DotProxy(dotproxy_bin, out + ["--upstream", "127.0.0.1@%d#dns.test"
                                              % unbound.port, "-c", pki.root], port=port)
    try:
        assert a_addrs(query_udp(port, "example.test")) == EXAMPLE
    finally:
        p.proc.send_signal(15)   # the first starts the lame duck; the second ends it
        time.sleep(0.2)
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
