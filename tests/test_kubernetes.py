"""Kubernetes (issue 14): kubernetes/ rendered, validated offline, and its parts run for real.

There is no cluster here, so what the cluster would do is done by hand, always with the text
of the manifest (never a copy of it):

- rendering: kubernetes/render.sh with every combination of its options gives the shipped
  kubernetes/dotproxy.yaml with exactly those values changed, and nothing else;
- schema: every document of every rendering through python3-kubernetes' models (a round trip
  that loses any field the API does not have, or of the wrong type);
- the kubelet's part: the containers' environment (envFrom the ConfigMap, the
  kube-dns-upstream Service link) and $(VAR) expansion in args; the security context as a
  real process (capsh); the httpGet probes by a small prober with the kubelet's rules;
- the node: network namespaces for a node, a pod and the kube-dns pod, kube-proxy's DNAT as
  nftables rules, the init container's and the node-agent sidecar's commands with the script
  from the manifest's ConfigMap, dotproxy with the manifest's args.

Every address is inside network namespaces made here (or loopback); dotproxy always gets an
explicit --upstream on the namespace's 127.0.0.1 (the manifest's DOT_SERVER is removed).
A missing tool (root and network namespaces, capsh, conntrack, nft, dnsmasq, shellcheck,
python3-kubernetes: .ci/deps.sh installs them) skips a test, and fails it under CI.
"""

import http.client
import itertools
import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest
import yaml

import dns.exception
import dns.message
import dns.query
import dns.rcode

import helpers
from helpers import a_addrs, make_query
from netns import (Netns, log_of, missing, need, need_netns, start_unbound, stop,
                   wait_for)

K8S = os.path.join(helpers.REPO, "kubernetes")
MANIFEST = os.path.join(K8S, "dotproxy.yaml")
RENDER_SH = os.path.join(K8S, "render.sh")
EXAMPLE = {"192.0.2.10", "192.0.2.11"}

# The test topology (all inside namespaces made here).
KUBE_DNS_IP = "10.96.0.10"          # the manifest's default kube-dns ClusterIP
UPSTREAM_SVC_IP = "10.96.0.11"      # kube-dns-upstream's ClusterIP (a Service link env var)
KUBE_DNS_POD = "10.244.0.5"         # the kube-dns pod, in its own namespace
NODE_KDNS = "10.244.0.1"
NODE_POD = "10.244.1.1"
POD_IP = "10.244.1.10"
NODE_IP = "192.168.77.2"            # the node's "own" address (on lo of the node namespace)
LINK_LOCAL_IP = "169.254.20.10"
DOT_PORT = 853                      # unbound's DNS-over-TLS port in the node namespace
CLUSTER_NAME = "kubernetes.default.svc.cluster.local"
CLUSTER_ADDR = "10.96.0.1"


# ================================================================ rendering

def render_text(*opts):
    r = subprocess.run(["sh", RENDER_SH] + list(opts), capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, (opts, r.stderr)
    assert r.stderr == ""
    return r.stdout


def load_docs(text):
    return [d for d in yaml.safe_load_all(text) if d]


def shipped():
    with open(MANIFEST) as f:
        return f.read()


# Every option of render.sh with a value unlike the default, and what it must change.
VALUES = {"--image": "registry.example/dotproxy:1.2.3",
          "--agent-image": "registry.example/netutils@sha256:" + "ab" * 32,
          "--kube-dns-ip": "172.20.0.10",
          "--cluster-domain": "corp.example",
          "--link-local-ip": "169.254.20.25",
          "--upstream": "9.9.9.9#dns.quad9.net,149.112.112.112#dns.quad9.net"}
FLAGS = ["--link-local", "--notrack", "--force-tcp"]


def flag_combos():
    return [c for n in range(len(FLAGS) + 1) for c in itertools.combinations(FLAGS, n)]


@pytest.fixture(scope="module")
def every_render():
    """{flags: documents} for render.sh with every combination of the flags (and every value
    option set), plus the shipped file."""
    out = {"shipped": load_docs(shipped())}
    for flags in flag_combos():
        opts = list(flags) + [x for kv in VALUES.items() for x in kv]
        out[flags] = load_docs(render_text(*opts))
    return out


def test_render_without_options_is_the_shipped_file():
    """render.sh with no option writes dotproxy.yaml as it is (after one comment line)."""
    assert render_text() == "# Rendered by kubernetes/render.sh\n" + shipped()


def strip_expected(docs, flags):
    """docs with the values render.sh is expected to set put back to the shipped ones."""
    docs = json.loads(json.dumps(docs))
    cfg = kind(docs, "ConfigMap", "dotproxy-config")["data"]
    ds = kind(docs, "DaemonSet")
    for c in all_containers(ds):
        c["image"] = {"dotproxy": "ghcr.io/OWNER/dotproxy:0.1.0"}.get(
            c["name"], "ghcr.io/OWNER/dotproxy-netutils:0.1.0")
    cfg.update(KUBE_DNS_IP="10.96.0.10", CLUSTER_DOMAIN="cluster.local",
               LINK_LOCAL_IP="169.254.20.10", DOT_SERVER="1.1.1.1,1.0.0.1",
               FORWARD_TRANSPORT="", NOTRACK="0")
    if "--link-local" in flags:
        args = container(ds, "dotproxy")["args"]
        args.insert(args.index("$(LINK_LOCAL_IP)@53") + 1, "--listen=$(KUBE_DNS_IP)@53")
    return docs


def test_render_options():
    """Each option of render.sh, alone or with the others, changes what it says and only
    that (the rest of the documents is the shipped file's): every combination of the flags,
    without values and with all of them, and each value option alone."""
    base = load_docs(shipped())
    cases = ([(flags, {}) for flags in flag_combos()] +
             [((), {o: v}) for o, v in VALUES.items()] +
             [(flags, VALUES) for flags in flag_combos()])
    for flags, vals in cases:
        opts = list(flags) + [x for kv in vals.items() for x in kv]
        text = render_text(*opts)
        assert text.splitlines()[0] == " ".join(["# Rendered by kubernetes/render.sh"] + opts)
        docs = load_docs(text)
        ds = kind(docs, "DaemonSet")
        cfg = kind(docs, "ConfigMap", "dotproxy-config")["data"]
        args = container(ds, "dotproxy")["args"]
        listens = opt_values(args, "--listen")
        if "--link-local" in flags:
            assert listens == ["$(LINK_LOCAL_IP)@53"] and cfg["KUBE_DNS_IP"] == ""
        else:
            assert listens == ["$(LINK_LOCAL_IP)@53", "$(KUBE_DNS_IP)@53"]
            assert cfg["KUBE_DNS_IP"] == vals.get("--kube-dns-ip", KUBE_DNS_IP)
        assert cfg["NOTRACK"] == ("1" if "--notrack" in flags else "0")
        assert cfg["FORWARD_TRANSPORT"] == (",tcp" if "--force-tcp" in flags else "")
        assert cfg["CLUSTER_DOMAIN"] == vals.get("--cluster-domain", "cluster.local")
        assert cfg["LINK_LOCAL_IP"] == vals.get("--link-local-ip", LINK_LOCAL_IP)
        assert cfg["DOT_SERVER"] == vals.get("--upstream", "1.1.1.1,1.0.0.1")
        imgs = {c["name"]: c["image"] for c in all_containers(ds)}
        assert imgs["dotproxy"] == vals.get("--image", "ghcr.io/OWNER/dotproxy:0.1.0")
        assert imgs["setup"] == imgs["node-agent"] == vals.get(
            "--agent-image", "ghcr.io/OWNER/dotproxy-netutils:0.1.0")
        assert strip_expected(docs, flags) == base, opts


@pytest.mark.parametrize("opts", [["--image", "a|b"], ["--image", "a b"],
                                  ["--kube-dns-ip", "10.0.0.1\n"], ["--kube-dns-ip", ""],
                                  ["--cluster-domain", 'x"y'], ["--upstream", "1.1.1.1&"],
                                  ["--upstream"], ["--bogus"]])
def test_render_rejects(opts):
    """A value that would break the YAML or the sed command (or none, or an unknown option)
    is refused: exit 2, nothing on stdout."""
    r = subprocess.run(["sh", RENDER_SH] + opts, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and r.stdout == "" and "render.sh" in r.stderr, (opts, r)


def test_render_help_and_docs():
    """render.sh --help names every option, and so does kubernetes/README.md; render.sh
    takes no option that they do not name."""
    r = subprocess.run(["sh", RENDER_SH, "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    with open(os.path.join(K8S, "README.md")) as f:
        docs = f.read()
    opts = set(list(VALUES) + FLAGS)
    with open(RENDER_SH) as f:
        code = f.read()
    taken = set(re.findall(r"^\t(--[a-z-]+(?: \| --[a-z-]+)*)\)", code, re.M))
    taken = {o for alt in taken for o in alt.split(" | ")}
    assert taken == opts, taken
    for o in opts:
        assert o in r.stdout and o in docs, o


# ---------------------------------------------------------------- schema

def py_model(doc):
    group = doc["apiVersion"].split("/")
    version = group[-1].capitalize()
    return "%s%s" % (version, doc["kind"])


def roundtrip_diff(orig, back, path=""):
    """Where `back` (deserialized then serialized again) lost or changed something of orig."""
    diffs = []
    if isinstance(orig, dict):
        if not isinstance(back, dict):
            return ["%s: %r became %r" % (path, orig, back)]
        for k, v in orig.items():
            if k not in back:
                diffs.append("%s.%s: unknown field" % (path, k))
            else:
                diffs += roundtrip_diff(v, back[k], "%s.%s" % (path, k))
    elif isinstance(orig, list):
        if not isinstance(back, list) or len(back) != len(orig):
            return ["%s: list %r became %r" % (path, orig, back)]
        for i, (a, b) in enumerate(zip(orig, back)):
            diffs += roundtrip_diff(a, b, "%s[%d]" % (path, i))
    elif orig != back:
        diffs.append("%s: %r became %r" % (path, orig, back))
    return diffs


def api_client():
    try:
        from kubernetes.client import ApiClient
    except ImportError:
        missing("python3-kubernetes is not installed")
    return ApiClient()


def schema_diffs(api, doc):
    class Resp:
        data = json.dumps(doc)
    obj = api.deserialize(Resp(), py_model(doc))
    return roundtrip_diff(doc, api.sanitize_for_serialization(obj))


# The one field newer than python3-kubernetes 22.6 (Kubernetes 1.22) that the manifest uses:
# a sidecar's restartPolicy (Kubernetes 1.28, on by default from 1.29); "Always" is its only
# allowed value.
SIDECAR = r"\.spec\.template\.spec\.initContainers\[(\d+)\]\.restartPolicy: unknown field"


def test_schema_python_kubernetes(every_render):
    """Every document of every rendering deserializes into python3-kubernetes' models
    (required fields, types) and serializes back unchanged: a misspelled or misplaced field
    would be dropped and show up here."""
    api = api_client()
    checked = 0
    for flags, docs in every_render.items():
        assert [d["kind"] for d in docs] == ["ServiceAccount", "ConfigMap", "ConfigMap",
                                             "Service", "DaemonSet"], flags
        for doc in docs:
            diffs = schema_diffs(api, doc)
            allowed = [d for d in diffs if re.fullmatch(SIDECAR, d)]
            for d in allowed:
                i = int(re.fullmatch(SIDECAR, d).group(1))
                assert doc["spec"]["template"]["spec"]["initContainers"][i][
                    "restartPolicy"] == "Always"
            assert [d for d in diffs if d not in allowed] == [], (flags, doc["kind"], diffs)
            checked += 1
    assert checked == 5 * len(every_render)


def test_schema_catches_mistakes():
    """The round trip does reject wrong documents (so its silence means something): a
    misspelled field, a field in the wrong place, a missing required field."""
    api = api_client()
    ds = kind(load_docs(shipped()), "DaemonSet")
    bad = json.loads(json.dumps(ds))
    bad["spec"]["template"]["spec"]["hostNetwrok"] = True
    assert ".spec.template.spec.hostNetwrok: unknown field" in schema_diffs(api, bad)
    bad = json.loads(json.dumps(ds))
    container(bad, "dotproxy")["livenessProbe"]["path"] = "/health"
    assert any("livenessProbe.path: unknown field" in d for d in schema_diffs(api, bad))
    bad = json.loads(json.dumps(ds))
    del container(bad, "dotproxy")["name"]
    with pytest.raises(ValueError):
        schema_diffs(api, bad)


# ================================================================ manifest helpers

def kind(docs, k, name=None):
    found = [d for d in docs if d["kind"] == k and (name is None or
                                                     d["metadata"]["name"] == name)]
    assert len(found) == 1, (k, name, [d["kind"] for d in docs])
    return found[0]


def all_containers(ds):
    spec = ds["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def container(ds, name):
    found = [c for c in all_containers(ds) if c["name"] == name]
    assert len(found) == 1, name
    return found[0]


def opt_values(args, name):
    """Values of `name V` and `name=V` in args, in order."""
    out = []
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            out.append(args[i + 1])
        elif a.startswith(name + "="):
            out.append(a[len(name) + 1:])
    return out


def expand(s, env):
    """Kubernetes' $(VAR) expansion (k8s.io/kubernetes/third_party/forked/golang/expansion):
    a defined VAR is replaced, an undefined one left as is, $$ is a $."""
    out, i = [], 0
    while i < len(s):
        if s[i] == "$" and i + 1 < len(s):
            if s[i + 1] == "$":
                out.append("$")
                i += 2
                continue
            if s[i + 1] == "(":
                j = s.find(")", i + 2)
                if j != -1:
                    name = s[i + 2:j]
                    out.append(env[name] if name in env else s[i:j + 1])
                    i = j + 1
                    continue
        out.append(s[i])
        i += 1
    return "".join(out)


def test_expand_like_kubernetes():
    env = {"A": "1", "E": ""}
    assert expand("$(A)@53$(E)", env) == "1@53"
    assert expand("$(B)x", env) == "$(B)x"
    assert expand("$$(A)", env) == "$(A)"


class Pod:
    """One pod of a rendered DaemonSet as the kubelet would run it on a node: each
    container's environment and command line, its ConfigMap volumes as files."""

    def __init__(self, docs, tmp_path, services=None, node_ip=NODE_IP):
        self.docs = docs
        self.ds = kind(docs, "DaemonSet")
        self.spec = self.ds["spec"]["template"]["spec"]
        self.dir = tmp_path
        # Service links (enableServiceLinks): the Services of the namespace at pod start.
        self.services = dict(services or {})
        self.node_ip = node_ip
        self.volumes = {}
        for v in self.spec.get("volumes", []):
            cm = kind(docs, "ConfigMap", v["configMap"]["name"])
            d = tmp_path / ("volume-" + v["name"])
            d.mkdir(exist_ok=True)
            for k, text in cm["data"].items():
                (d / k).write_text(text)
            self.volumes[v["name"]] = str(d)

    def container(self, name):
        return container(self.ds, name)

    def env(self, name):
        c = self.container(name)
        env = {}
        for ef in c.get("envFrom", []):
            cm = kind(self.docs, "ConfigMap", ef["configMapRef"]["name"])
            env.update({ef.get("prefix", "") + k: v for k, v in cm["data"].items()})
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = expand(e["value"], {**self.services, **env})
            else:
                ref = e["valueFrom"]["fieldRef"]["fieldPath"]
                assert ref == "status.hostIP", ref
                env[e["name"]] = self.node_ip
        if self.spec.get("enableServiceLinks", True):
            for k, v in self.services.items():
                env.setdefault(k, v)
        return env

    def argv(self, name):
        """command + args, expanded, with the container's mount paths mapped to the files
        of its ConfigMap volumes."""
        c = self.container(name)
        env = self.env(name)
        argv = [expand(a, env) for a in c.get("command", []) + c.get("args", [])]
        for m in c.get("volumeMounts", []):
            argv = [self.volumes[m["name"]] + a[len(m["mountPath"]):]
                    if a.startswith(m["mountPath"] + "/") else a for a in argv]
        return argv


def dotproxy_cmd(pod, binary, pki, upstream_port=DOT_PORT, extra=()):
    """The dotproxy container's command line, with the one change that makes it safe here:
    the manifest's upstreams (DOT_SERVER) replaced by the namespace's own 127.0.0.1."""
    env = pod.env("dotproxy")
    argv = pod.argv("dotproxy")
    assert not any(a in ("-u", "--upstream") or a.startswith("--upstream=") for a in argv)
    assert not [a for a in argv if "$(" in a], argv
    env.pop("DOT_SERVER")
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"   # a runtime's default (for capsh here)
    args = argv + ["--upstream", "127.0.0.1@%d#dns.test" % upstream_port,
                   "-c", pki.root] + list(extra)
    return [binary] + args, env


# ================================================================ network namespaces

def quick_stop(p):
    """SIGTERM twice: the second ends the lame duck (for tests not about it)."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        time.sleep(0.2)
    return stop(p)


@pytest.fixture
def netns(tmp_path):
    made = []

    def make(name, service_route=True):
        need_netns()
        n = Netns(name, tmp_path)
        made.append(n)
        # a node has a default route; dotproxy refuses a --forward-zone server it has no
        # route to. This one leads nowhere (lo), for the namespaces without kube-dns.
        if service_route:
            n.sh("ip route add 10.96.0.0/12 dev lo")
        return n
    yield make
    for n in made:
        n.close()


def dummy_supported():
    r = subprocess.run(["unshare", "--net", "ip", "link", "add", "d0", "type", "dummy"],
                       capture_output=True)
    return r.returncode == 0


IP_SHIM = r"""#!/bin/sh
# tests/test_kubernetes.py: this kernel has no dummy interfaces (CONFIG_DUMMY is off); a
# bridge with no port holds local addresses the same way, so `type dummy` becomes that.
n=$#; prev=
for a in "$@"; do
    if [ "$prev" = type ] && [ "$a" = dummy ]; then a=bridge; fi
    set -- "$@" "$a"; prev=$a
done
shift "$n"
exec /usr/sbin/ip "$@"
"""


def agent_env(pod, name, tmp_path):
    """The node-agent containers' environment, PATH with Debian's iproute2 and nftables (what
    kubernetes/netutils/Dockerfile installs), and a `type dummy` shim where the kernel lacks
    dummy interfaces."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    if not dummy_supported():
        shim = tmp_path / "shim"
        shim.mkdir(exist_ok=True)
        (shim / "ip").write_text(IP_SHIM)
        (shim / "ip").chmod(0o755)
        env["PATH"] = str(shim) + ":" + env["PATH"]
    env.update(pod.env(name))
    return env


def http_get(host, port, path, timeout=2.0, headers=None):
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


def wait_ready(ns, port=9253, timeout=15):
    def ready():
        try:
            return ns.call(http_get, "127.0.0.1", port, "/ready")[0] == 200
        except OSError:
            return False
    return wait_for(ready, timeout, 0.1)


def metric(ns, name, port=9253):
    body = ns.call(http_get, "127.0.0.1", port, "/metrics")[1]
    total = 0
    for line in body.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def query(ns, server, name, tcp=False, timeout=2.0):
    q = make_query(name)
    if tcp:
        return ns.call(dns.query.tcp, q, server, timeout=timeout)
    return ns.call(dns.query.udp, q, server, timeout=timeout)


def resolve_as_pod(ns, resolv, name):
    """getent (glibc's stub resolver, as in a pod) in ns with resolv.conf = resolv."""
    r = ns.run(["unshare", "--mount", "sh", "-c",
                'mount --bind "$0" /etc/resolv.conf && exec getent ahostsv4 "$1"',
                str(resolv), name], check=False)
    return {l.split()[0] for l in r.stdout.splitlines() if l.strip()}


def test_scripts_shellcheck(tmp_path):
    """node-agent.sh (from the manifest's ConfigMap: POSIX sh, dash in the netutils image)
    and render.sh."""
    need("shellcheck")
    script = tmp_path / "node-agent.sh"
    script.write_text(kind(load_docs(shipped()), "ConfigMap", "dotproxy-node-agent")["data"]
                      ["node-agent.sh"])
    r = subprocess.run(["shellcheck", "-s", "sh", str(script), RENDER_SH],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("force_tcp", [True, False], ids=["force-tcp", "control"])
def test_force_tcp(netns, tmp_path, dotproxy_bin, pki, force_tcp):
    """render.sh --force-tcp: dotproxy, with the rendered args, asks kube-dns-upstream for the
    cluster zones over TCP only (a stand-in kube-dns on its ClusterIP counts the queries by
    transport); without it (the control), over UDP."""
    docs = load_docs(render_text(*(["--force-tcp"] if force_tcp else [])))
    pod = Pod(docs, tmp_path, services={"KUBE_DNS_UPSTREAM_SERVICE_HOST": UPSTREAM_SVC_IP})
    ns = netns("node")
    ns.sh("ip addr add %s/32 dev lo" % UPSTREAM_SVC_IP)
    ns.run(pod.argv("setup"), env=agent_env(pod, "setup", tmp_path))
    kdns = ns.call(helpers.FakePlainDNS, "cluster.local", port=53, host=UPSTREAM_SVC_IP)
    try:
        argv, env = dotproxy_cmd(pod, dotproxy_bin, pki)
        p = ns.popen(argv, "dp", env=env)
        assert wait_for(lambda: Cluster.answers(ns, LINK_LOCAL_IP, "a.svc.cluster.local")
                        == {"198.51.100.1"}, 10), log_of(p)
        for i in range(5):
            assert Cluster.answers(ns, KUBE_DNS_IP, "n%d.svc.cluster.local" % i) == \
                {"198.51.100.1"}
        quick_stop(p)
    finally:
        kdns.stop()
    if force_tcp:
        assert kdns.udp == 0 and kdns.tcp >= 6, (kdns.udp, kdns.tcp)
    else:
        assert kdns.tcp == 0 and kdns.udp >= 6, (kdns.udp, kdns.tcp)


# ================================================================ (ii) security context

def caps_of(status):
    return {k: int(v, 16) for k, v in re.findall(r"^(Cap\w+):\s+([0-9a-f]+)$", status, re.M)}


def cap_bits(names):
    bits = 0
    for n in names:
        r = subprocess.run(["capsh", "--explain=" + n], capture_output=True, text=True)
        m = re.search(r"^\S+ \((\d+)\)", r.stdout)
        assert m, (n, r.stdout)
        bits |= 1 << int(m.group(1))
    return bits


def all_cap_names():
    out = subprocess.run(["capsh", "--print"], capture_output=True, text=True).stdout
    m = re.search(r"^Bounding set =(.*)$", out, re.M)
    return m.group(1).strip().split(",")


def capsh_for(sc, uid_gid=None):
    """capsh arguments that leave a process as a container runtime starts the container's
    process: bounding, permitted and effective sets = the added capabilities (drop ALL),
    no inheritable or ambient ones, no_new_privs if allowPrivilegeEscalation is false, the
    uid and gid (before the caps, for a non-root user: what setuid leaves)."""
    assert sc["capabilities"]["drop"] == ["ALL"]
    keep = ["cap_" + c.lower() for c in sc["capabilities"].get("add", [])]
    drop = [c for c in all_cap_names() if c not in keep]
    argv = ["capsh", "--drop=" + ",".join(drop)]
    uid, gid = uid_gid or (sc.get("runAsUser", 0), sc.get("runAsGroup", 0))
    if uid != 0 or gid != 0:
        argv += ["--gid=%d" % gid, "--groups=", "--uid=%d" % uid]
    else:
        argv += ["--caps=" + ",".join(keep) + "+ep", "--inh=", "--noamb"]
    if sc.get("allowPrivilegeEscalation") is False:
        argv.append("--no-new-privs")
    return argv


def test_security_context_binds_53_then_drops(netns, tmp_path, dotproxy_bin, pki):
    """The dotproxy container's securityContext as a real process: root with only
    NET_BIND_SERVICE, SETUID and SETGID (bounding = permitted = effective), no_new_privs, in
    a namespace where the setup init container put the node-local addresses; dotproxy binds
    port 53 there, then runs as 65534:65534 with no capability at all."""
    need("capsh")
    docs = load_docs(shipped())
    pod = Pod(docs, tmp_path, services={"KUBE_DNS_UPSTREAM_SERVICE_HOST": UPSTREAM_SVC_IP})
    sc = pod.container("dotproxy")["securityContext"]
    assert sc["runAsUser"] == 0 and sc["runAsNonRoot"] is False
    assert sc["readOnlyRootFilesystem"] is True and sc["privileged"] is False
    assert opt_values(pod.argv("dotproxy"), "--user") == ["65534:65534"]
    ns = netns("node")
    ns.run(pod.argv("setup"), env=agent_env(pod, "setup", tmp_path))
    argv, env = dotproxy_cmd(pod, dotproxy_bin, pki)
    capsh = capsh_for(sc)
    p = ns.popen(capsh + ["--shell=" + argv[0], "--"] + argv[1:], "dp",
                 env=env)
    assert wait_for(lambda: "ready:" in log_of(p) or p.poll() is not None, 10), log_of(p)
    assert p.poll() is None, log_of(p)
    status = open("/proc/%d/status" % p.pid).read()
    assert re.search(r"^Uid:\s+65534\s+65534\s+65534\s+65534$", status, re.M), status
    assert re.search(r"^Gid:\s+65534\s+65534\s+65534\s+65534$", status, re.M), status
    assert re.search(r"^Groups:\s*$", status, re.M), status
    caps = caps_of(status)
    assert caps["CapEff"] == caps["CapPrm"] == caps["CapInh"] == caps["CapAmb"] == 0, caps
    assert caps["CapBnd"] == cap_bits(["cap_net_bind_service", "cap_setuid", "cap_setgid"])
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), status
    # bound on port 53 of both node-local addresses ("localhost." is answered by dotproxy)
    for addr in (KUBE_DNS_IP, "169.254.20.10"):
        r = query(ns, addr, "localhost.")
        assert r.rcode() == dns.rcode.NOERROR and a_addrs(r) == {"127.0.0.1"}, r
    assert quick_stop(p) == 0, log_of(p)


def test_security_context_nonroot_cannot_bind_53(netns, tmp_path, dotproxy_bin, pki):
    """The control (the old manifest, kubernetes#56374): the same capabilities for uid 65534
    from the start leave none after exec (no ambient set): binding port 53 fails."""
    need("capsh")
    docs = load_docs(shipped())
    pod = Pod(docs, tmp_path, services={"KUBE_DNS_UPSTREAM_SERVICE_HOST": UPSTREAM_SVC_IP})
    sc = pod.container("dotproxy")["securityContext"]
    ns = netns("node")
    ns.run(pod.argv("setup"), env=agent_env(pod, "setup", tmp_path))
    argv, env = dotproxy_cmd(pod, dotproxy_bin, pki)
    i = argv.index("-c")
    del argv[i:i + 2]   # uid 65534 cannot read pytest's private directory: the built-in roots
    capsh = capsh_for(sc, uid_gid=(65534, 65534))
    r = ns.run(capsh + ["--shell=" + argv[0], "--"] + argv[1:], check=False, env=env,
               timeout=10)
    assert r.returncode != 0
    assert "Permission denied" in r.stderr and "CAP_NET_BIND_SERVICE" in r.stderr, r.stderr


# ================================================================ (iii) probes

class Prober:
    """The kubelet's httpGet probe, with its rules: the pod IP unless httpGet.host (with
    hostNetwork, the node's address), a success for a status of 200 to 399, a failure on any
    other, on a refused connection or after timeoutSeconds; the state changes after
    successThreshold successes or failureThreshold failures in a row; readiness starts
    false, liveness true. `speed` shortens periods (not timeouts) to keep the test short."""

    def __init__(self, ns, probe, pod_ip, speed=1.0):
        self.ns = ns
        self.p = probe
        hg = probe["httpGet"]
        self.host = hg.get("host") or pod_ip
        self.port = hg["port"]
        assert isinstance(self.port, int), "a named port needs a containerPort: none here"
        self.path = hg.get("path", "/")
        assert hg.get("scheme", "HTTP") == "HTTP"
        self.timeout = probe.get("timeoutSeconds", 1)
        self.period = probe.get("periodSeconds", 10)
        self.success = probe.get("successThreshold", 1)
        self.failure = probe.get("failureThreshold", 3)
        self.delay = probe.get("initialDelaySeconds", 0)
        self.speed = speed
        self.run_ok = self.run_bad = 0

    def once(self):
        try:
            st, _ = self.ns.call(http_get, self.host, self.port, self.path,
                                 timeout=self.timeout,
                                 headers={"User-Agent": "kube-probe/1.32", "Accept": "*/*"})
            return 200 <= st < 400
        except (OSError, http.client.HTTPException):
            return False

    def step(self, state):
        """One period: returns the new state."""
        t0 = time.monotonic()
        ok = self.once()
        if ok:
            self.run_ok, self.run_bad = self.run_ok + 1, 0
            if self.run_ok >= self.success:
                state = True
        else:
            self.run_ok, self.run_bad = 0, self.run_bad + 1
            if self.run_bad >= self.failure:
                state = False
        left = self.period / self.speed - (time.monotonic() - t0)
        if left > 0:
            time.sleep(left)
        return state


def probe_setup(netns, tmp_path, dotproxy_bin, pki):
    docs = load_docs(shipped())
    pod = Pod(docs, tmp_path, services={"KUBE_DNS_UPSTREAM_SERVICE_HOST": UPSTREAM_SVC_IP})
    c = pod.container("dotproxy")
    http_addr = opt_values(pod.argv("dotproxy"), "--http")[0]
    for probe in ("livenessProbe", "readinessProbe"):
        hg = c[probe]["httpGet"]
        assert "%s@%d" % (hg["host"], hg["port"]) == http_addr, (probe, http_addr)
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    ns = netns("node")
    ns.run(pod.argv("setup"), env=agent_env(pod, "setup", tmp_path))
    argv, env = dotproxy_cmd(pod, dotproxy_bin, pki)
    return c, ns, argv, env


def test_probes_by_a_kubelet_like_prober(netns, tmp_path, dotproxy_bin, pki):
    """The rendered probes against dotproxy started with the rendered args: not ready while
    its upstream cannot be reached; ready once it can (and a pod's query has made dotproxy
    try it again: see the test below); live all along, also during the lame duck, when
    readiness says no at once; liveness fails once the process is stopped (SIGSTOP), so the
    kubelet would restart it, after failureThreshold periods."""
    c, ns, argv, env = probe_setup(netns, tmp_path, dotproxy_bin, pki)
    p = ns.popen(argv, "dp", env=env)
    readiness = Prober(ns, c["readinessProbe"], NODE_IP, speed=4)
    liveness = Prober(ns, c["livenessProbe"], NODE_IP, speed=4)
    ready, live = False, True
    for _ in range(6):      # no upstream yet: never ready, always live
        ready = readiness.step(ready)
        assert not ready, log_of(p)
    assert liveness.step(live)
    _, why = ns.call(http_get, "127.0.0.1", readiness.port, "/ready")
    assert "127.0.0.1:%d" % DOT_PORT in why, why
    start_unbound(ns, pki, DOT_PORT)
    t0 = time.monotonic()
    while not ready and time.monotonic() - t0 < 15:
        Cluster.answers(ns, "169.254.20.10", "example.test")   # a pod asks something
        ready = readiness.step(ready)
    assert ready, "not ready %.1f s after the upstream came\n%s" % (time.monotonic() - t0,
                                                                  log_of(p))
    # lame duck (3 s): readiness goes at once, liveness stays
    p.send_signal(signal.SIGTERM)
    for _ in range(readiness.failure):
        ready = readiness.step(ready)
    assert not ready and liveness.once(), log_of(p)
    assert stop(p) == 0, log_of(p)
    # a hung process: SIGSTOP; the kernel still accepts the connection, nothing answers
    p = ns.popen(argv, "dp2", env=env)
    assert wait_ready(ns), log_of(p)
    liveness = Prober(ns, c["livenessProbe"], NODE_IP, speed=4)
    assert liveness.step(True)
    os.kill(p.pid, signal.SIGSTOP)
    try:
        live, n = True, 0
        while live and n < 10:
            live = liveness.step(live)
            n += 1
    finally:
        os.kill(p.pid, signal.SIGCONT)
    assert not live and n == liveness.failure, n
    quick_stop(p)


def test_readiness_recovers_without_traffic(netns, tmp_path, dotproxy_bin, pki):
    """The kubelet's readiness probe alone (no client query) must see dotproxy ready once its
    upstream, down when it started, is reachable (after the back-off)."""
    c, ns, argv, env = probe_setup(netns, tmp_path, dotproxy_bin, pki)
    p = ns.popen(argv, "dp", env=env)
    readiness = Prober(ns, c["readinessProbe"], NODE_IP, speed=4)
    ready = False
    for _ in range(4):
        ready = readiness.step(ready)
    assert not ready
    start_unbound(ns, pki, DOT_PORT)
    t0 = time.monotonic()
    while not ready and time.monotonic() - t0 < 6:   # one failure: a back-off of 0.5 s
        ready = readiness.step(ready)
    quick_stop(p)
    assert ready, log_of(p)


# ================================================================ the node, pods, kube-dns

DNSMASQ = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
           "--no-hosts", "--bind-interfaces", "--listen-address=" + KUBE_DNS_POD,
           "--port=53", "--user=root", "--pid-file=", "--log-facility=-", "--log-queries",
           "--local=/cluster.local/",
           "--host-record=%s,%s" % (CLUSTER_NAME, CLUSTER_ADDR)]

KUBE_PROXY = """
table ip kubeproxy {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr { %(svc)s } meta l4proto { tcp, udp } th dport 53 dnat to %(pod)s
    }
    chain output {
        type nat hook output priority -100; policy accept;
        ip daddr { %(svc)s } meta l4proto { tcp, udp } th dport 53 dnat to %(pod)s
    }
}
""" % {"svc": "%s, %s" % (KUBE_DNS_IP, UPSTREAM_SVC_IP), "pod": KUBE_DNS_POD}


class Cluster:
    """A node namespace with a pod namespace and the kube-dns pod's namespace on veths, the
    node routing between them; kube-proxy's DNAT of the kube-dns and kube-dns-upstream
    ClusterIPs to the kube-dns pod (nftables); dnsmasq as kube-dns (cluster.local only, no
    upstream); unbound as the DNS-over-TLS upstream on the node's 127.0.0.1."""

    def __init__(self, netns, tmp_path, pki, kube_proxy=True, kube_dns=True):
        self.node = netns("node")
        self.pod = netns("pod", service_route=False)
        self.kdns = netns("kubedns", service_route=False)
        self.tmp = tmp_path
        pid = lambda n: str(n.holder.pid)  # noqa: E731
        self.node.sh("""
            ip link add pod0 type veth peer name eth0 netns %s
            ip link add kdns0 type veth peer name eth0 netns %s
            ip addr add %s/24 dev pod0 && ip link set pod0 up
            ip addr add %s/24 dev kdns0 && ip link set kdns0 up
            ip addr add %s/32 dev lo
            ip route replace 10.96.0.0/12 via %s
            sysctl -qw net.ipv4.ip_forward=1
        """ % (pid(self.pod), pid(self.kdns), NODE_POD, NODE_KDNS, NODE_IP, KUBE_DNS_POD))
        self.pod.sh("ip addr add %s/24 dev eth0 && ip link set eth0 up && "
                    "ip route add default via %s" % (POD_IP, NODE_POD))
        self.kdns.sh("ip addr add %s/24 dev eth0 && ip link set eth0 up && "
                     "ip route add default via %s" % (KUBE_DNS_POD, NODE_KDNS))
        if kube_proxy:
            self.node.run(["nft", "-f", "-"], input=KUBE_PROXY)
        if kube_dns:
            self.dnsmasq = self.kdns.popen(DNSMASQ, "dnsmasq")
            assert wait_for(lambda: self.answers(self.kdns, KUBE_DNS_POD), 10), \
                log_of(self.dnsmasq)
        self.unbound = start_unbound(self.node, pki, DOT_PORT)
        self.resolv = tmp_path / "resolv.conf"
        # a pod's resolv.conf (ClusterFirst): the kube-dns ClusterIP only
        self.resolv.write_text("nameserver %s\nsearch default.svc.cluster.local "
                               "svc.cluster.local cluster.local\noptions ndots:5 timeout:1 "
                               "attempts:1\n" % KUBE_DNS_IP)

    @staticmethod
    def answers(ns, server, name=CLUSTER_NAME, tcp=False, timeout=1.0):
        try:
            return a_addrs(query(ns, server, name, tcp=tcp, timeout=timeout))
        except (OSError, dns.exception.DNSException):
            return set()


def conntrack_dns(ns, addrs):
    """conntrack entries of ns for port 53 to or from one of addrs."""
    out = ns.run(["conntrack", "-L"], check=False).stdout
    return [l for l in out.splitlines()
            if "port=53 " in l and any("=%s " % a in l for a in addrs)]


@pytest.mark.parametrize("opts", [[], ["--link-local", "--notrack"], ["--link-local"]],
                         ids=["interception", "link-local-notrack", "link-local-control"])
def test_notrack_rules(netns, tmp_path, dotproxy_bin, pki, opts):
    """NOTRACK (the node-agent sidecar's rules, from the rendered ConfigMap): with them, no
    conntrack entry for DNS over UDP or TCP to the node-local addresses, from a pod (PREROUTING)
    or from the node itself (OUTPUT), answers included; without them (before the sidecar
    runs, and in link-local mode without --notrack) there are. kube-proxy's nat rules are
    there as on a node (they are what makes conntrack track at all)."""
    need("conntrack", "nft")
    docs = load_docs(render_text(*opts))
    pod = Pod(docs, tmp_path, services={"KUBE_DNS_UPSTREAM_SERVICE_HOST": UPSTREAM_SVC_IP})
    notrack = opts != ["--link-local"]
    local = [LINK_LOCAL_IP] + ([] if "--link-local" in opts else [KUBE_DNS_IP])
    cl = Cluster(netns, tmp_path, pki, kube_dns=False)
    node = cl.node
    node.run(pod.argv("setup"), env=agent_env(pod, "setup", tmp_path))
    argv, env = dotproxy_cmd(pod, dotproxy_bin, pki)
    p = node.popen(argv, "dp", env=env)
    assert wait_ready(node), log_of(p)

    def traffic(answered):
        for addr in local:
            for who in (cl.pod, node):
                for tcp in (False, True):
                    for _ in range(3):
                        # without NOTRACK, kube-proxy's DNAT takes the ClusterIP's queries
                        # (to no kube-dns here): sent all the same, not waited for
                        dnat = not answered and addr == KUBE_DNS_IP
                        got = Cluster.answers(who, addr, "example.test", tcp=tcp,
                                              timeout=0.2 if dnat else 1.0)
                        if not dnat:
                            assert got == EXAMPLE, (addr, who.name, tcp)

    node.run(["conntrack", "-F"], check=False)
    traffic(False)
    before = conntrack_dns(node, local)
    assert len(before) >= 6 * len(local), before    # the control: tracked
    agent = node.popen(pod.argv("node-agent"), "agent",
                       env=agent_env(pod, "node-agent", tmp_path))
    if notrack:
        assert wait_for(lambda: all(node.run(["nft", "get", "element", "inet", "dotproxy",
                                              "local4", "{ %s }" % a],
                                             check=False).returncode == 0
                                    for a in local), 10), log_of(agent)
    else:
        assert wait_for(lambda: "watching" in log_of(agent), 10), log_of(agent)
        time.sleep(1.5)     # a tick or more: it must not turn NOTRACK on
    node.run(["conntrack", "-F"], check=False)
    traffic(True)
    after = conntrack_dns(node, local)
    if notrack:
        assert after == [], after
        ruleset = node.run(["nft", "list", "table", "inet", "dotproxy"]).stdout
        assert "hook prerouting priority raw" in ruleset
        assert "hook output priority raw" in ruleset
    else:
        assert len(after) >= 6 * len(local), after
        assert node.run(["nft", "list", "table", "inet", "dotproxy"],
                        check=False).returncode != 0
    quick_stop(p)
    stop(agent)
    assert node.run(["nft", "list", "table", "inet", "dotproxy"], check=False).returncode != 0
    assert node.run(["ip", "link", "show", "dotproxy"], check=False).returncode != 0


def test_interception_mode(netns, tmp_path, dotproxy_bin, pki):
    """Interception mode on a node, in namespaces: a pod whose only resolver is the kube-dns
    ClusterIP; kube-proxy's DNAT; a kube-dns pod (dnsmasq: cluster.local only).
    Before: the pod's cluster names come from kube-dns, external names fail.
    Installed (the setup init container, the node-agent sidecar, dotproxy, all from the
    rendered manifest): the pod resolves external names (DNS-over-TLS, through dotproxy) and
    cluster names through dotproxy -> kube-dns-upstream -> kube-dns.
    dotproxy killed (kill -9): within seconds the sidecar hands the ClusterIP back to kube-dns;
    restarted: dotproxy has it again.
    Removed (dotproxy stopped, then the sidecar), while the pod asks all along: at most a few
    queries lost (the sidecar looks once a second), the interface and the rules gone, the
    pod's cluster names from kube-dns again."""
    need("nft", "dnsmasq", "getent")
    docs = load_docs(shipped())
    pod = Pod(docs, tmp_path, services={"KUBE_DNS_UPSTREAM_SERVICE_HOST": UPSTREAM_SVC_IP,
                                        "KUBE_DNS_UPSTREAM_SERVICE_PORT": "53"})
    assert pod.env("dotproxy")["KUBE_DNS_IP"] == KUBE_DNS_IP
    svc = kind(docs, "Service", "kube-dns-upstream")
    assert svc["spec"]["selector"] == {"k8s-app": "kube-dns"}
    assert {(x["port"], x["protocol"]) for x in svc["spec"]["ports"]} == {(53, "UDP"),
                                                                          (53, "TCP")}
    cl = Cluster(netns, tmp_path, pki)
    node = cl.node

    def pod_sees():
        return (resolve_as_pod(cl.pod, cl.resolv, CLUSTER_NAME),
                resolve_as_pod(cl.pod, cl.resolv, "example.test"))

    assert pod_sees() == ({CLUSTER_ADDR}, set())     # kube-dns only
    # install
    node.run(pod.argv("setup"), env=agent_env(pod, "setup", tmp_path))
    agent = node.popen(pod.argv("node-agent"), "agent",
                       env=agent_env(pod, "node-agent", tmp_path))
    argv, env = dotproxy_cmd(pod, dotproxy_bin, pki)
    p = node.popen(argv, "dp", env=env)
    assert wait_ready(node), log_of(p)
    assert wait_for(lambda: pod_sees() == ({CLUSTER_ADDR}, EXAMPLE), 10), \
        (pod_sees(), log_of(agent), log_of(p))
    zone = 'dotproxy_zone_queries_total{zone="cluster.local"}'
    n0 = metric(node, zone)
    assert resolve_as_pod(cl.pod, cl.resolv, "other.svc.cluster.local") == set()  # NXDOMAIN
    assert resolve_as_pod(cl.pod, cl.resolv, CLUSTER_NAME) == {CLUSTER_ADDR}
    assert metric(node, zone) >= n0 + 1, "the cluster names did not go through dotproxy"
    # the node itself (hostNetwork pods, ClusterFirstWithHostNet) too
    assert Cluster.answers(node, KUBE_DNS_IP, "example.test") == EXAMPLE
    # dotproxy dies: the ClusterIP goes back to kube-dns
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    t0 = time.monotonic()
    assert wait_for(lambda: pod_sees() == ({CLUSTER_ADDR}, set()), 10), log_of(agent)
    assert time.monotonic() - t0 < 5
    p = node.popen(argv, "dp2", env=env)   # the kubelet restarts it
    assert wait_ready(node), log_of(p)
    assert wait_for(lambda: pod_sees() == ({CLUSTER_ADDR}, EXAMPLE), 10), log_of(agent)
    # removal: dotproxy stops (lame duck, drain), then the sidecar (it is stopped after the
    # main container) tears down; a pod asks for a cluster name all along
    results = []

    def remove():
        results.append(stop(p))
        results.append(stop(agent))
    t = threading.Thread(target=remove)
    t.start()
    asked = []
    while t.is_alive():
        t0 = time.monotonic()
        got = Cluster.answers(cl.pod, KUBE_DNS_IP, CLUSTER_NAME, timeout=1.0)
        asked.append((round(time.monotonic() - t0, 3), got == {CLUSTER_ADDR}))
        time.sleep(0.02)
    t.join()
    assert results == [0, 0], (log_of(p), log_of(agent))
    # Lost: the queries sent between dotproxy's exit and the sidecar's next look (1 s
    # apart), which a pod's resolver asks again after its timeout. Each lost one took the
    # 1 s timeout, so 3 would mean a window of 3 s or more.
    lost = [a for a in asked if not a[1]]
    print("removal: %d queries, %d lost" % (len(asked), len(lost)))
    assert len(asked) >= 10 and len(lost) <= 3, asked
    assert "dotproxy deleted" in log_of(agent), log_of(agent)
    assert node.run(["ip", "link", "show", "dotproxy"], check=False).returncode != 0
    assert node.run(["nft", "list", "table", "inet", "dotproxy"], check=False).returncode != 0
    assert pod_sees() == ({CLUSTER_ADDR}, set())


KUBE_DNS_IP6 = "fd00:10:96::a"


def test_interception_ipv6(netns, tmp_path, dotproxy_bin, pki):
    """An IPv6 kube-dns ClusterIP (render.sh --kube-dns-ip fd00:10:96::a), on the node: setup
    puts it on the interface, dotproxy listens on it with the rendered args, the sidecar's
    NOTRACK takes it (the IPv6 set: no conntrack entry for the node's queries to it, over
    UDP and TCP), and teardown leaves nothing."""
    need("nft", "conntrack")
    docs = load_docs(render_text("--kube-dns-ip", KUBE_DNS_IP6))
    pod = Pod(docs, tmp_path, services={"KUBE_DNS_UPSTREAM_SERVICE_HOST": UPSTREAM_SVC_IP})
    assert opt_values(pod.argv("dotproxy"), "--listen")[1] == KUBE_DNS_IP6 + "@53"
    node = netns("node")
    # kube-proxy's IPv6 nat rules (conntrack tracks nothing without some)
    node.run(["nft", "-f", "-"], input="table ip6 kp { chain o { type nat hook output "
             "priority -100; policy accept; ip6 daddr fd00:10:96::99 udp dport 53 "
             "dnat to fd00:10:96::a; }; }")
    node.run(pod.argv("setup"), env=agent_env(pod, "setup", tmp_path))
    assert KUBE_DNS_IP6 + "/128" in node.run(["ip", "-6", "addr", "show", "dotproxy"]).stdout
    start_unbound(node, pki, DOT_PORT)
    argv, env = dotproxy_cmd(pod, dotproxy_bin, pki)
    p = node.popen(argv, "dp", env=env)
    assert wait_ready(node), log_of(p)

    def ask():
        for tcp in (False, True):
            assert Cluster.answers(node, KUBE_DNS_IP6, "example.test", tcp=tcp) == EXAMPLE

    def tracked():
        out = node.run(["conntrack", "-L", "-f", "ipv6"], check=False).stdout
        return [l for l in out.splitlines() if "port=53 " in l and KUBE_DNS_IP6 in l]

    ask()
    assert tracked(), "the control: tracked before the sidecar runs"
    agent = node.popen(pod.argv("node-agent"), "agent",
                       env=agent_env(pod, "node-agent", tmp_path))
    assert wait_for(lambda: node.run(["nft", "get", "element", "inet", "dotproxy", "local6",
                                      "{ %s }" % KUBE_DNS_IP6], check=False).returncode == 0,
                    10), log_of(agent)
    node.run(["conntrack", "-F"], check=False)
    ask()
    assert tracked() == []
    quick_stop(p)
    assert stop(agent) == 0, log_of(agent)
    assert node.run(["ip", "link", "show", "dotproxy"], check=False).returncode != 0
    assert node.run(["nft", "list", "table", "inet", "dotproxy"], check=False).returncode != 0


def test_rolling_update_keeps_the_node_setup(netns, tmp_path, dotproxy_bin, pki):
    """A rolling update on one node (maxSurge 1): the new pod's containers start beside the
    old one's with exactly the same args (port 53 and the --http port shared: --reuseport;
    the shared /ready answers for the newest); once it is ready the old pod stops; its
    sidecar sees the new dotproxy and leaves the interface and the rules; the pod's queries
    are answered by dotproxy all along, then by the new one alone, which is ready."""
    need("nft", "dnsmasq")
    docs = load_docs(shipped())
    pod = Pod(docs, tmp_path, services={"KUBE_DNS_UPSTREAM_SERVICE_HOST": UPSTREAM_SVC_IP})
    cl = Cluster(netns, tmp_path, pki)
    node = cl.node
    node.run(pod.argv("setup"), env=agent_env(pod, "setup", tmp_path))
    agent_a = node.popen(pod.argv("node-agent"), "agent-a",
                         env=agent_env(pod, "node-agent", tmp_path))
    argv, env = dotproxy_cmd(pod, dotproxy_bin, pki)
    a = node.popen(argv, "a", env=env)
    assert wait_ready(node), log_of(a)
    assert wait_for(lambda: Cluster.answers(cl.pod, KUBE_DNS_IP, "example.test") == EXAMPLE,
                    10), log_of(agent_a)
    # the new pod
    node.run(pod.argv("setup"), env=agent_env(pod, "setup", tmp_path))
    agent_b = node.popen(pod.argv("node-agent"), "agent-b",
                         env=agent_env(pod, "node-agent", tmp_path))
    b = node.popen(argv, "b", env=env)
    assert wait_for(lambda: "ready:" in log_of(b) or b.poll() is not None, 10), log_of(b)
    assert b.poll() is None and wait_ready(node), log_of(b)
    stop_a = threading.Thread(target=lambda: (stop(a), stop(agent_a)))
    stop_a.start()
    answered = 0
    while stop_a.is_alive():
        got = Cluster.answers(cl.pod, KUBE_DNS_IP, "example.test")
        assert got == EXAMPLE, (log_of(a), log_of(agent_a))
        answered += 1
    stop_a.join()
    assert a.returncode == 0 and agent_a.returncode == 0
    assert answered > 10
    assert "leaving dotproxy to it" in log_of(agent_a), log_of(agent_a)
    assert wait_ready(node), log_of(b)      # the new one alone
    assert Cluster.answers(cl.pod, KUBE_DNS_IP, "example.test") == EXAMPLE
    assert node.run(["ip", "link", "show", "dotproxy"], check=False).returncode == 0
    quick_stop(b)
    stop(agent_b)
    assert node.run(["ip", "link", "show", "dotproxy"], check=False).returncode != 0
