#!/usr/bin/python3
"""The OpenWrt package's seccomp allow-list (openwrt/files/dotproxy.seccomp, procd's OCI
format), applied for real with libseccomp (python3-seccomp), as ujail applies it: every name
this architecture knows becomes an ALLOW rule, names it does not know are skipped (procd's
parseOCIlinuxseccomp does the same: one list serves mips, arm, aarch64 and x86_64), the
default action is the file's, no_new_privs is set, and the filter is loaded right before
execve (so execve itself must be allowed).

    seccomp_run.py exec [--list FILE] [--drop NAME]... -- PROGRAM ARG...
        Load the filter (without the --drop names: the control) and exec PROGRAM.
    seccomp_run.py bpf [--list FILE] [--drop NAME]... OUT
        Write the compiled BPF program to OUT (for bwrap --seccomp FD).
    seccomp_run.py names [--list FILE]
        The names this architecture resolves, one per line.
    seccomp_run.py strace FILE...
        The system call names in strace -f output files, one per line, sorted.

DOTPROXY=tests/openwrt/dotproxy-seccomp runs the integration tests through it.
"""

import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
LIST = os.path.join(REPO, "openwrt", "files", "dotproxy.seccomp")


def load(path=LIST):
    with open(path) as f:
        doc = json.load(f)
    names = []
    for rule in doc["syscalls"]:
        assert rule["action"] == "SCMP_ACT_ALLOW", rule
        names.extend(rule["names"])
    return doc["defaultAction"], names


def native(names):
    import seccomp
    out = []
    for n in names:
        try:
            seccomp.resolve_syscall(seccomp.Arch.NATIVE, n)
        except (ValueError, RuntimeError):
            continue
        out.append(n)
    return out


def build(path=LIST, drop=()):
    import seccomp
    default, names = load(path)
    action = {"SCMP_ACT_KILL_PROCESS": seccomp.KILL_PROCESS, "SCMP_ACT_KILL": seccomp.KILL,
              "SCMP_ACT_LOG": seccomp.LOG}[default]
    f = seccomp.SyscallFilter(defaction=action)
    for n in native(names):
        if n not in drop:
            f.add_rule(seccomp.ALLOW, n)
    return f


def strace_names(paths):
    names = set()
    pat = re.compile(r"^(?:\[pid\s+)?\d*\]?\s*(?:<\.\.\. )?([a-z_0-9]+)(?:\(| resumed>)")
    for p in paths:
        with open(p) as f:
            for line in f:
                m = pat.match(line)
                if m and not line.startswith("+++") and not line.startswith("---"):
                    names.add(m.group(1))
    return sorted(names)


def main(argv):
    cmd, args = argv[0], argv[1:]
    path, drop = LIST, []
    while args and args[0].startswith("--") and args[0] != "--":
        if args[0] == "--list":
            path = args[1]
        elif args[0] == "--drop":
            drop.append(args[1])
        else:
            raise SystemExit("seccomp_run.py: unknown option " + args[0])
        args = args[2:]
    if cmd == "exec":
        if args and args[0] == "--":
            args = args[1:]
        f = build(path, drop)
        f.load()
        os.execv(args[0], args)
    elif cmd == "bpf":
        with open(args[0], "wb") as out:
            build(path, drop).export_bpf(out)
    elif cmd == "names":
        print("\n".join(native(load(path)[1])))
    elif cmd == "strace":
        print("\n".join(strace_names(args)))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
