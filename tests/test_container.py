"""The container image, without a Docker engine.

What the image needs is proved in parts:
- the Dockerfile's invariants (final stage FROM scratch, numeric non-root USER, EXPOSE 53/udp
  and 53/tcp, ENTRYPOINT the binary, BearSSL fetched by .ci/fetch.sh, the release tarball by
  default, checksum-verified, or a tarball from the build context);
- the build stage's own RUN commands, run in order in a directory holding only what its COPY
  lines copy, with its ARGs in the environment, produce a binary that serves DNS from an empty
  root as uid 65534 (the image's USER). The one difference: BearSSL comes from the local
  bearssl/ tree (BEARSSL_FROM=dir) instead of the release tarball, as this machine cannot reach
  bearssl.org; .ci/fetch.sh refuses a tarball whose SHA-256 is not the pinned one (below);
- the multi-architecture logic: the build stage pinned to BUILDPLATFORM, and its RUN commands
  run with stand-ins for dpkg, .ci/deps.sh and make: native make for the platform it runs on,
  make cross for linux/arm64 (aarch64) and linux/arm/v7 (armhf), an error for any other.
The real build for the three platforms with buildah, and their manifest list, is
tests/test_image.py (make test-image, slow).
"""

import fnmatch
import glob
import json
import os
import re
import shlex
import shutil
import subprocess

import pytest

import helpers
from helpers import a_addrs, query_tcp, query_udp

DOCKERFILE = os.path.join(helpers.REPO, "Dockerfile")
BEARSSL_SHA256 = "6705bba1714961b41a728dfc5debbe348d2966c117649392f8c8139efc83ff14"
EXAMPLE = {"192.0.2.10", "192.0.2.11"}


def instructions(path=DOCKERFILE):
    """[(INSTRUCTION, argument text)], continuation lines joined, comments dropped."""
    out, cur = [], ""
    for raw in open(path):
        line = raw.rstrip("\n")
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if cur and line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        word, _, rest = cur.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    assert not cur, "Dockerfile ends inside a continued line"
    return out


def stages(ins=None):
    """[[(INSTRUCTION, args)...] per stage], each starting with its FROM."""
    st = []
    for i in ins or instructions():
        if i[0] == "FROM":
            st.append([])
        if i[0] != "ARG" or st:
            assert st, "instruction %r before the first FROM" % (i,)
            st[-1].append(i)
    return st


FETCH = os.path.join(helpers.REPO, ".ci", "fetch.sh")


def fetch_var(name):
    """A pin of .ci/fetch.sh (NAME=value at the start of a line)."""
    text = open(FETCH).read()
    m = re.search(r"^%s=(\S+)\s*$" % re.escape(name), text, re.M)
    assert m, "%s not set in .ci/fetch.sh" % name
    return m.group(1)


def build_stage():
    st = stages()
    assert len(st) >= 2, "want a build stage and a final stage"
    return st[0]


def build_runs():
    """The build stage's RUN commands (shell form), in order."""
    runs = [a for i, a in build_stage() if i == "RUN"]
    assert runs and not any(a.startswith("[") for a in runs), runs
    return runs


def build_args():
    """{name: default or None} of the build stage's ARGs."""
    out = {}
    for i, a in build_stage():
        if i == "ARG":
            name, eq, default = a.partition("=")
            out[name] = default if eq else None
    return out


def build_copies():
    """Sources of the build stage's COPY lines (from the context, not --from); a pattern such
    as bearssl-0.6.tar.g[z] may match nothing."""
    srcs = []
    for i, a in build_stage():
        if i != "COPY":
            continue
        words = shlex.split(a)
        assert not any(w.startswith("--from") for w in words)
        words = [w for w in words if not w.startswith("--")]
        srcs += words[:-1]
    return srcs


def concrete(src):
    """The file name a COPY source stands for: bearssl-0.6.tar.g[z] -> bearssl-0.6.tar.gz."""
    return re.sub(r"\[(.)\]", r"\1", src)


# ---------------------------------------------------------------- invariants

def test_final_stage_from_scratch():
    final = stages()[-1]
    assert final[0] == ("FROM", "scratch"), final[0]


def test_final_stage_user_numeric_non_root():
    users = [a for i, a in stages()[-1] if i == "USER"]
    assert users, "no USER in the final stage: the image would run as root"
    m = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1])
    assert m, "USER %r is not numeric (a scratch image has no /etc/passwd)" % users[-1]
    assert int(m.group(1)) != 0 and (m.group(2) is None or int(m.group(2)) != 0)


def test_exposes_dns_ports():
    exposed = set()
    for i, a in stages()[-1]:
        if i == "EXPOSE":
            exposed |= set(a.split())
    assert {"53/udp", "53/tcp"} <= exposed, exposed


def test_entrypoint_is_the_binary():
    final = stages()[-1]
    eps = [a for i, a in final if i == "ENTRYPOINT"]
    assert eps, "no ENTRYPOINT"
    ep = json.loads(eps[-1])  # exec form: a shell form would need /bin/sh, absent in scratch
    assert isinstance(ep, list) and ep, ep
    copied = [shlex.split(a) for i, a in final if i == "COPY"]
    dests = [w[-1] for w in copied if any(x.startswith("--from=") for x in w)]
    assert ep[0] in dests, "ENTRYPOINT %r is not a file copied from the build stage %r" % (
        ep[0], dests)
    assert not any(i == "RUN" for i, _ in final), "RUN needs a shell the scratch image lacks"


def test_healthcheck_is_the_binary_in_exec_form():
    """HEALTHCHECK runs inside the container, which has no shell: exec form (a JSON array),
    running the copied binary with --probe; a shell form (CMD /dotproxy --probe) would need
    /bin/sh and fail every time, marking a working container unhealthy."""
    final = stages()[-1]
    hcs = [a for i, a in final if i == "HEALTHCHECK"]
    assert len(hcs) == 1, hcs
    words = hcs[0].split()
    opts = {w.split("=")[0]: w.split("=")[1] for w in words if w.startswith("--")}
    assert set(opts) <= {"--interval", "--timeout", "--start-period", "--retries"}, opts
    rest = hcs[0][hcs[0].index("CMD") + 3:].strip()
    cmd = json.loads(rest)
    assert cmd[:2] == ["/dotproxy", "--probe"], cmd
    timeout = opts.get("--timeout", "30s")
    assert timeout.endswith("s") and int(timeout[:-1]) > 1, "--probe waits up to 1 s"


def test_build_stage_verifies_bearssl_tarball():
    """BearSSL comes from .ci/fetch.sh, by default the release tarball over https, checked
    against the pinned SHA-256; the Dockerfile knows nothing of how bearssl/ is laid out."""
    args = build_args()
    assert args.get("BEARSSL_FROM") == "tarball", args
    assert "BEARSSL_TARBALL" in args, "no way to give a tarball from the build context"
    assert "sh .ci/fetch.sh bearssl" in build_runs(), build_runs()
    assert fetch_var("BEARSSL_SHA256") == BEARSSL_SHA256
    fetch = open(FETCH).read()
    assert "BEARSSL_URL=${BEARSSL_URL:-https://bearssl.org/" in fetch
    # the tarball path compares the download's sha256 and stops on a mismatch
    assert re.search(r'if \[ "\$got" != "\$BEARSSL_SHA256" \]', fetch)
    assert "CHECKSUM MISMATCH" in fetch
    text = " ".join(a for _, a in instructions())
    assert ".source" not in text and "bearssl/" not in text, \
        "the Dockerfile reaches into bearssl/: leave that to .ci/fetch.sh and the Makefile"


def test_fetch_refuses_a_tarball_with_another_checksum(tmp_path):
    """BEARSSL_TARBALL with the wrong content: no bearssl/, exit 1, and no fallback."""
    bad = tmp_path / "bearssl-0.6.tar.gz"
    empty = tmp_path / "empty"
    empty.mkdir()  # not tmp_path itself: tar would read the archive it is writing
    subprocess.run(["tar", "czf", str(bad), "-C", str(empty), "."], check=True)
    dest = tmp_path / "out" / "bearssl"
    env = dict(os.environ, BEARSSL_FROM="tarball", BEARSSL_TARBALL=str(bad),
               BEARSSL_URL="https://bearssl.invalid/x.tar.gz")
    r = subprocess.run(["sh", FETCH, "bearssl", str(dest)], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1, r
    assert "CHECKSUM MISMATCH" in r.stderr and BEARSSL_SHA256 in r.stderr, r.stderr
    assert not dest.exists()
    assert os.listdir(tmp_path / "out") == [], "work directory left behind"


def test_fetch_copies_a_tree_once(tmp_path):
    """BEARSSL_SRC: a copy (without build/), recorded in .source; a second run does nothing."""
    src = os.path.join(helpers.REPO, "bearssl")
    if not os.path.isfile(os.path.join(src, "inc", "bearssl.h")):
        pytest.skip("bearssl/ not fetched (make bearssl)")
    dest = tmp_path / "bearssl"
    env = dict(os.environ, BEARSSL_SRC=src)
    env.pop("BEARSSL_FROM", None)
    r = subprocess.run(["sh", FETCH, "bearssl", str(dest)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (dest / ".source").read_text() == "dir %s\n" % os.path.abspath(src)
    assert (dest / "tools" / "ta.c").is_file() and os.listdir(dest / "build") == []
    r = subprocess.run(["sh", FETCH, "bearssl", str(dest)], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "already fetched" in r.stdout, r


def test_dockerignore_keeps_what_the_build_copies():
    """The context is an allowlist; every file the build stage copies must be in it, and
    bearssl/, the binary and .git must not be."""
    path = os.path.join(helpers.REPO, ".dockerignore")
    rules = [l.strip() for l in open(path) if l.strip() and not l.lstrip().startswith("#")]

    def included(p):
        keep = True
        for r in rules:
            neg = r.startswith("!")
            pat = r[1:] if neg else r
            if fnmatch.fnmatch(p, pat) or p.startswith(pat.rstrip("/") + "/"):
                keep = neg
        return keep

    for src in build_copies():
        assert included(concrete(src)), \
            "%s is copied by the Dockerfile but excluded by .dockerignore" % src
    assert "bearssl-0.6.tar.gz" in map(concrete, build_copies())
    for p in ("bearssl/inc/bearssl.h", "dotproxy", ".git/config", "build/x", "dotproxy-mips"):
        assert not included(p), "%s would be sent to the Docker daemon" % p


# ---------------------------------------------------------------- multi-architecture
# The full build for linux/amd64, linux/arm64 and linux/arm/v7 with buildah, and the manifest
# list of the three, is tests/test_image.py (make test-image). These are its fast parts: the
# build stage's platform logic, run with stand-ins for dpkg, .ci/deps.sh and make.

def test_build_stage_runs_on_the_build_platform():
    """The build stage is pinned to BUILDPLATFORM (cross-compiling, never emulated); the final
    stage is scratch for the target platform."""
    st = stages()
    assert re.fullmatch(r"--platform=\$(\{BUILDPLATFORM\}|BUILDPLATFORM) \S+ AS build",
                        st[0][0][1]), st[0][0]
    assert "--platform" not in st[-1][0][1], st[-1][0]
    names = [a for i, a in build_stage() if i == "ARG"]
    assert "TARGETPLATFORM" in names and "BUILDPLATFORM" in names, names


def run_step(cmd, tmp_path, dpkg_arch, env_extra, stubs=()):
    """Run one build-stage RUN command in tmp_path/src with a dpkg that says dpkg_arch and a
    .ci/deps.sh (and the given stub commands) that only log their arguments."""
    src = tmp_path / "src"
    (src / ".ci").mkdir(parents=True, exist_ok=True)
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    log = tmp_path / "calls"
    (bindir / "dpkg").write_text(
        '#!/bin/sh\n[ "$1" = --print-architecture ] && echo %s\n' % dpkg_arch)
    (src / ".ci" / "deps.sh").write_text('echo "deps.sh $*" >> %s\n' % shlex.quote(str(log)))
    for name, body in stubs:
        (bindir / name).write_text("#!/bin/sh\necho \"%s $*\" >> %s\n%s\n"
                                   % (name, shlex.quote(str(log)), body))
    for f in bindir.iterdir():
        os.chmod(f, 0o755)
    env = {"PATH": "%s:/usr/bin:/bin" % bindir}
    env.update(env_extra)
    r = subprocess.run(["sh", "-c", cmd], cwd=str(src), env=env, capture_output=True,
                       text=True, timeout=30)
    calls = log.read_text().splitlines() if log.exists() else []
    return r, src, calls


def arch_step():
    steps = [a for a in build_runs() if "TARGETPLATFORM" in a and ".arch" in a]
    assert len(steps) == 1, build_runs()
    return steps[0]


@pytest.mark.parametrize("here,target,want", [
    ("amd64", None, "native"),            # a builder without platforms: the plain build
    ("amd64", "linux/amd64", "native"),
    ("amd64", "linux/arm64", "aarch64"),
    ("amd64", "linux/arm64/v8", "aarch64"),
    ("amd64", "linux/arm/v7", "armhf"),
    ("amd64", "linux/arm", "armhf"),
    ("arm64", "linux/arm64", "native"),
    ("arm64", "linux/arm/v7", "armhf"),
    ("armhf", "linux/arm/v7", "native"),  # BUILDPLATFORM unset: the stage runs emulated
])
def test_build_stage_picks_native_or_cross(tmp_path, here, target, want):
    env = {"TARGETPLATFORM": target} if target else {}
    r, src, calls = run_step(arch_step(), tmp_path, here, env)
    assert r.returncode == 0, r.stderr
    assert (src / ".arch").read_text() == want + "\n"
    if want == "native":
        assert calls == [], calls
    else:
        # only the target's cross compiler, and an ARCH that .ci/cross.sh knows
        assert calls == ["deps.sh cross %s" % want], calls
        arches = subprocess.run(["sh", os.path.join(helpers.REPO, ".ci", "cross.sh"), "arches"],
                                capture_output=True, text=True, check=True).stdout.split()
        assert want in arches, arches


@pytest.mark.parametrize("here,target", [
    ("amd64", "linux/arm/v6"),   # armhf is ARMv7: an ARMv6 board would get SIGILL
    ("amd64", "linux/ppc64le"),
    ("amd64", "linux/386"),
    ("arm64", "linux/amd64"),    # no x86-64 musl cross toolchain in .ci/cross.sh
])
def test_build_stage_refuses_other_platforms(tmp_path, here, target):
    r, src, calls = run_step(arch_step(), tmp_path, here, {"TARGETPLATFORM": target})
    assert r.returncode != 0
    assert "cannot build for %s" % target in r.stderr, r.stderr
    assert not (src / ".arch").exists() and calls == []


def test_build_stage_make_step(tmp_path):
    """native: make (./dotproxy); a cross target: make cross for that ARCH only, its
    dotproxy-<arch> copied to ./dotproxy, the path the final stage copies."""
    steps = [a for a in build_runs() if "make" in a.split()]
    assert len(steps) == 1, build_runs()
    make = ('for a in "$@"; do case $a in CROSS_ARCHES=*) echo x > "dotproxy-${a#*=}" ;; '
            'esac; done; [ "$1" = cross ] || [ "$2" = cross ] || echo x > dotproxy')
    final_src = [shlex.split(a)[-2] for i, a in stages()[-1] if i == "COPY"]
    assert final_src == ["/src/dotproxy"], final_src
    for arch, want in (("native", None), ("aarch64", "aarch64"), ("armhf", "armhf")):
        d = tmp_path / arch
        d.mkdir()
        (d / "src").mkdir()
        (d / "src" / ".arch").write_text(arch + "\n")
        r, src, calls = run_step(steps[0], d, "amd64", {}, stubs=[("make", make),
                                                                 ("nproc", "echo 2")])
        assert r.returncode == 0, r.stderr
        makes = [c for c in calls if c.startswith("make ")]
        if want is None:
            assert makes == ["make -j2"], calls
        else:
            assert makes == ["make -j2 cross CROSS_ARCHES=%s" % want], calls
        assert (src / "dotproxy").is_file()


def test_deps_cross_refuses_an_unknown_arch():
    """.ci/deps.sh cross ARCH... (the Dockerfile's one target): an ARCH .ci/cross.sh does not
    know stops it before anything is installed."""
    r = subprocess.run(["sh", os.path.join(helpers.REPO, ".ci", "deps.sh"), "cross", "sparc"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r
    assert "unknown ARCH 'sparc'" in r.stderr, r.stderr


def test_dockerignore_keeps_the_musl_tarball_and_cross_script():
    copied = set(map(concrete, build_copies()))
    assert {".ci/cross.sh", "musl-1.2.3.tar.gz", "bearssl-0.6.tar.gz"} <= copied, copied
    assert "MUSL_TARBALL" in build_args()
    gitignore = open(os.path.join(helpers.REPO, ".gitignore")).read().split()
    assert "/musl-1.2.3.tar.gz" in gitignore and "/bearssl-0.6.tar.gz" in gitignore


# ---------------------------------------------------------------- the build stage, run

@pytest.fixture(scope="module")
def docker_built_binary(tmp_path_factory):
    """Build as the Dockerfile's build stage does: its COPY set, its RUN commands in order
    with its ARGs in the environment."""
    if not os.path.isfile(os.path.join(helpers.REPO, "bearssl", "inc", "bearssl.h")):
        pytest.fail("bearssl/ not fetched (make bearssl)")
    src = tmp_path_factory.mktemp("docker-src")
    for f in build_copies():
        for path in glob.glob(os.path.join(helpers.REPO, f)):
            dst = src / os.path.relpath(path, helpers.REPO)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dst)
    env = dict(os.environ)
    for k in ("CC", "CFLAGS", "LDFLAGS", "MAKEFLAGS", "MAKELEVEL", "MFLAGS", "TARGET",
              "BEARSSL_FROM", "BEARSSL_SRC", "BEARSSL_TARBALL", "BEARSSL_URL"):
        env.pop(k, None)
    env.update({k: v for k, v in build_args().items() if v is not None})
    # BearSSL from the local tree, since bearssl.org is out of reach here (see the docstring).
    env.update(BEARSSL_FROM="dir", BEARSSL_SRC=os.path.join(helpers.REPO, "bearssl"),
               MAKEFLAGS="-j%d" % (os.cpu_count() or 1))
    for cmd in build_runs():
        r = subprocess.run(["sh", "-c", cmd], cwd=str(src), env=env, capture_output=True,
                           text=True, timeout=1800)
        assert r.returncode == 0, "RUN %s failed:\n%s\n%s" % (cmd, r.stdout[-3000:],
                                                             r.stderr[-3000:])
    binary = src / "dotproxy"
    assert binary.is_file()
    return str(binary)


def test_docker_build_binary_is_static_and_small(docker_built_binary):
    with open(docker_built_binary, "rb") as f:
        data = f.read()
    assert data[:4] == b"\x7fELF"
    assert b"/lib/ld-" not in data and b"ld-musl" not in data, "dynamically linked"
    size = len(data)
    print("docker build-stage binary: %d bytes" % size)
    assert size < 400 * 1024, size


def test_docker_build_binary_serves_from_empty_root_as_nobody(docker_built_binary, proxies,
                                                               unbound, pki, tmp_path):
    """The image: an empty root with only the binary (plus the test CA), uid/gid 65534."""
    if os.geteuid() != 0:
        pytest.skip("chroot and changing uid need root")
    users = [a for i, a in stages()[-1] if i == "USER"]
    uid, _, gid = users[-1].partition(":")
    root = tmp_path / "scratch"
    root.mkdir()
    os.chmod(root, 0o755)
    shutil.copy(docker_built_binary, root / "dotproxy")
    shutil.copy(pki.root, root / "root.pem")
    os.chmod(root / "root.pem", 0o644)
    assert sorted(os.listdir(root)) == ["dotproxy", "root.pem"]
    prefix = ["chroot", "--userspec=%s:%s" % (uid, gid or uid), str(root)]
    p = proxies.start("127.0.0.1@%d#dns.test" % unbound.port, ca="/root.pem",
                      cmd_prefix=prefix, binary="/dotproxy")
    # really running as the image's user
    status = open("/proc/%d/status" % p.proc.pid).read()
    assert re.search(r"^Uid:\s+%s\s" % uid, status, re.M), status
    assert a_addrs(query_udp(p.port, "example.test")) == EXAMPLE
    assert a_addrs(query_tcp(p.port, "example.test")) == EXAMPLE
    assert p.stop() == 0
