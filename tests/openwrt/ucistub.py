#!/usr/bin/python3
"""Stand-ins for OpenWrt's uci(1), /sbin/validate_data and the dnsmasq init script's UCI to
dnsmasq.conf translation, for the tests of the OpenWrt package (tests/test_openwrt.py).

    ucistub.py uci [-q] [-X] [-c DIR] get|set|delete|add_list|del_list|show|commit|changes ...
        The subset of uci(1) the package's scripts use, on files in /etc/config syntax in
        $UCI_CONFIG_DIR (or -c DIR). Uncommitted changes are kept in $UCI_SAVE_DIR (default
        DIR/.uci) until 'commit', as uci keeps them in /tmp/.uci: get and show see them,
        readers of the file (dnsmasq's init) do not. Anonymous sections are @TYPE[N], and
        cfgN with -X (N counting every section from 1, as harness.sh's config_load). Lists: get prints the items joined by spaces.
    ucistub.py validate FILE TYPE SECTION SPEC...
        procd's validate_data for one section of the config FILE: prints NAME='VALUE'
        assignments (the default for unset options) and exits 1 when a value does not match
        its datatype (or, and, not, list, range, min, max, integer, uinteger, bool, string,
        port, ipaddr, ip4addr, ip6addr, cidr, cidr4, cidr6, file, directory, regex,
        hostname, host, uciname, "literal", number), messages on stderr.
    ucistub.py dnsmasq-conf DIR PORT
        The options of OpenWrt's /etc/init.d/dnsmasq that the dotproxy hand-off changes,
        from the committed DIR/dhcp (first dnsmasq section): server (server=), noresolv
        (no-resolv), resolvfile (resolv-file=; default $DNSMASQ_DIR/resolv.conf.auto),
        written as dnsmasq.conf lines for a dnsmasq listening on 127.0.0.1@PORT.
"""

import json
import os
import re
import shlex
import sys


# ---------------------------------------------------------------- /etc/config files

def parse(text):
    """[{"name", "type", "anon", "opts": {name: str | [str]}}] in file order."""
    secs = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        kw = words[0]
        if kw == "package":
            continue
        if kw == "config":
            anon = len(words) < 3
            secs.append({"type": words[1], "name": None if anon else words[2],
                         "anon": anon, "opts": {}})
        elif kw in ("option", "list") and secs and len(words) >= 3:
            opts = secs[-1]["opts"]
            if kw == "option":
                opts[words[1]] = words[2]
            else:
                cur = opts.get(words[1])
                if isinstance(cur, str):
                    cur = [cur]
                opts[words[1]] = (cur or []) + [words[2]]
        else:
            raise SystemExit("ucistub: cannot parse %r" % line)
    for i, s in enumerate(secs):
        if s["anon"]:
            s["name"] = "cfg%d" % (i + 1)   # as the harness's config_load names them
    return secs


def quote(v):
    return "'" + v.replace("'", "'\\''") + "'"


def dump(secs):
    out = []
    for s in secs:
        out.append("config %s%s" % (s["type"], "" if s["anon"] else " " + quote(s["name"])))
        for k, v in s["opts"].items():
            if isinstance(v, list):
                out.extend("\tlist %s %s" % (k, quote(i)) for i in v)
            else:
                out.append("\toption %s %s" % (k, quote(v)))
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------- uci

class Uci:
    def __init__(self, confdir, savedir):
        self.confdir = confdir
        self.savedir = savedir

    def _delta(self, pkg):
        return os.path.join(self.savedir, pkg + ".json")

    def load(self, pkg, committed=False):
        d = self._delta(pkg)
        if not committed and os.path.exists(d):
            with open(d) as f:
                return json.load(f)
        path = os.path.join(self.confdir, pkg)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return parse(f.read())

    def stage(self, pkg, secs):
        os.makedirs(self.savedir, exist_ok=True)
        with open(self._delta(pkg), "w") as f:
            json.dump(secs, f)

    def commit(self, pkg):
        d = self._delta(pkg)
        if os.path.exists(d):
            with open(d) as f:
                secs = json.load(f)
            path = os.path.join(self.confdir, pkg)
            with open(path + ".new", "w") as f:
                f.write(dump(secs))
            os.replace(path + ".new", path)
            os.unlink(d)

    def changed(self, pkg):
        return os.path.exists(self._delta(pkg))


def find(secs, ref):
    m = re.match(r"^@(\w+)\[(-?\d+)\]$", ref)
    if m:
        of = [s for s in secs if s["type"] == m.group(1)]
        try:
            return of[int(m.group(2))]
        except IndexError:
            return None
    for s in secs:
        if s["name"] == ref:
            return s
    return None


def uci_main(argv):
    quiet = export = False
    confdir = os.environ.get("UCI_CONFIG_DIR", "/etc/config")
    while argv and argv[0].startswith("-"):
        a = argv.pop(0)
        if a == "-c":
            confdir = argv.pop(0)
        else:
            quiet |= "q" in a
            export |= "X" in a
    u = Uci(confdir, os.environ.get("UCI_SAVE_DIR", os.path.join(confdir, ".uci")))

    def fail(msg):
        if not quiet:
            sys.stderr.write("uci: %s\n" % msg)
        return 1

    if not argv:
        return fail("no command")
    cmd, args = argv[0], argv[1:]
    if cmd == "commit":
        for pkg in args:
            u.commit(pkg)
        return 0
    if cmd == "changes":
        for pkg in args:
            if u.changed(pkg):
                print(pkg)
        return 0
    if cmd == "show":
        secs = u.load(args[0])
        if secs is None:
            return fail("Entry not found")
        counts = {}
        for s in secs:
            n = counts.get(s["type"], 0)
            counts[s["type"]] = n + 1
            name = s["name"] if (export or not s["anon"]) else "@%s[%d]" % (s["type"], n)
            print("%s.%s=%s" % (args[0], name, s["type"]))
            for k, v in s["opts"].items():
                val = " ".join(quote(i) for i in v) if isinstance(v, list) else quote(v)
                print("%s.%s.%s=%s" % (args[0], name, k, val))
        return 0
    if not args:
        return fail("Invalid argument")
    target, _, value = args[0].partition("=")
    parts = target.split(".")
    if len(parts) not in (2, 3):
        return fail("Invalid argument")
    secs = u.load(parts[0])
    if secs is None:
        return fail("Entry not found")
    sec = find(secs, parts[1])
    opt = parts[2] if len(parts) == 3 else None
    if cmd == "get":
        if sec is None or (opt and opt not in sec["opts"]):
            return fail("Entry not found")
        v = sec["type"] if opt is None else sec["opts"][opt]
        print(" ".join(v) if isinstance(v, list) else v)
        return 0
    if sec is None or opt is None:
        return fail("Entry not found")
    if cmd == "set":
        sec["opts"][opt] = value
    elif cmd == "delete":
        if opt not in sec["opts"]:
            return fail("Entry not found")
        del sec["opts"][opt]
    elif cmd == "add_list":
        cur = sec["opts"].get(opt)
        sec["opts"][opt] = ([cur] if isinstance(cur, str) else (cur or [])) + [value]
    elif cmd == "del_list":
        cur = sec["opts"].get(opt)
        if isinstance(cur, list):
            sec["opts"][opt] = [i for i in cur if i != value]
    else:
        return fail("unknown command %s" % cmd)
    u.stage(parts[0], secs)
    return 0


# ---------------------------------------------------------------- validate_data

class Datatype:
    """procd's datatype expressions (libvalidate): NAME, NAME(ARG, ...), "string", number."""

    def __init__(self, expr):
        self.s = expr
        self.i = 0
        self.tree = self._expr()
        if self.i != len(self.s):
            raise ValueError("datatype %r: junk at %d" % (expr, self.i))

    def _ws(self):
        while self.i < len(self.s) and self.s[self.i] in " \t":
            self.i += 1

    def _expr(self):
        self._ws()
        c = self.s[self.i]
        if c in "\"'":
            j = self.i + 1
            while self.s[j] != c:
                j += 2 if self.s[j] == "\\" else 1
            lit = self.s[self.i + 1:j]
            self.i = j + 1
            return ("str", lit)
        m = re.compile(r"-?\d+(\.\d+)?").match(self.s, self.i)
        if m:
            self.i = m.end()
            return ("num", float(m.group(0)))
        m = re.compile(r"\w+").match(self.s, self.i)
        if not m:
            raise ValueError("datatype %r: bad at %d" % (self.s, self.i))
        name = m.group(0)
        self.i = m.end()
        args = []
        if self.i < len(self.s) and self.s[self.i] == "(":
            self.i += 1
            while True:
                self._ws()
                if self.s[self.i] == ")":
                    self.i += 1
                    break
                args.append(self._expr())
                self._ws()
                if self.s[self.i] == ",":
                    self.i += 1
        return ("fun", name, args)

    def ok(self, value):
        return check(self.tree, value)


def _num(v, base=0):
    try:
        return int(v, base)
    except ValueError:
        return None


def _ip(v, ver=None):
    import ipaddress
    try:
        a = ipaddress.ip_address(v)
    except ValueError:
        return False
    return ver is None or a.version == ver


def _cidr(v, ver=None):
    addr, _, n = v.partition("/")
    if not _ip(addr, ver):
        return False
    if n:
        import ipaddress
        bits = 32 if ipaddress.ip_address(addr).version == 4 else 128
        return n.isdigit() and int(n) <= bits
    return True


def check(node, v):
    if node[0] == "str":
        return v == node[1]
    if node[0] == "num":
        try:
            return float(v) == node[1]
        except ValueError:
            return False
    _, name, args = node
    nums = [a[1] for a in args if a[0] == "num"]
    if name == "or":
        return any(check(a, v) for a in args)
    if name == "and":
        return all(check(a, v) for a in args)
    if name == "not":
        return not check(args[0], v)
    if name == "list":
        return all(check(args[0], i) for i in v.split())
    if name in ("range", "min", "max", "integer"):
        n = _num(v)
        if n is None:
            return False
        if name == "range":
            return nums[0] <= n <= nums[1]
        if name == "min":
            return n >= nums[0]
        if name == "max":
            return n <= nums[0]
        return True
    if name == "uinteger":
        return _num(v) is not None and _num(v) >= 0
    if name == "port":
        return v.isdigit() and int(v) <= 65535
    if name == "bool":
        return v.lower() in ("0", "off", "false", "no", "disabled",
                             "1", "on", "true", "yes", "enabled")
    if name == "string":
        return (not nums or len(v) >= nums[0]) and (len(nums) < 2 or len(v) <= nums[1])
    if name in ("ipaddr", "ip4addr", "ip6addr"):
        return _ip(v, {"ipaddr": None, "ip4addr": 4, "ip6addr": 6}[name])
    if name in ("cidr", "cidr4", "cidr6"):
        return _cidr(v, {"cidr": None, "cidr4": 4, "cidr6": 6}[name])
    if name == "file":
        return os.path.isfile(v)
    if name == "directory":
        return os.path.isdir(v)
    if name == "regex":
        return re.fullmatch(args[0][1], v) is not None
    if name == "uciname":
        return re.fullmatch(r"[A-Za-z0-9_]*", v) is not None
    if name == "hostname":
        return re.fullmatch(r"([A-Za-z0-9_-]{1,63}\.)*[A-Za-z0-9_-]{1,63}\.?", v) is not None
    if name == "host":
        return check(("fun", "hostname", []), v) or _ip(v)
    raise ValueError("datatype %s: not in the stand-in" % name)


def validate_main(argv):
    path, typ, section, specs = argv[0], argv[1], argv[2], argv[3:]
    with open(path) as f:
        secs = parse(f.read())
    sec = find(secs, section) if section else None
    if section and (sec is None or sec["type"] != typ):
        sys.stderr.write("validate_data: no section %s of type %s\n" % (section, typ))
    opts = sec["opts"] if sec else {}
    bad = 0
    for spec in specs:
        name, _, rest = spec.partition(":")
        dtype, _, default = rest.partition(":")
        dt = Datatype(dtype)
        v = opts.get(name)
        items = v if isinstance(v, list) else ([] if v is None else [v])
        for i in items:
            if not dt.ok(i):
                sys.stderr.write("%s.%s.%s=%s validates as %s with false\n"
                                 % ("config", section, name, i, dtype))
                bad = 1
        value = " ".join(items) if items else default
        print("%s=%s;" % (name, quote(value)))
    return bad


# ---------------------------------------------------------------- dnsmasq

def dnsmasq_main(argv):
    confdir, port = argv[0], int(argv[1])
    secs = Uci(confdir, os.path.join(confdir, ".uci")).load("dhcp", committed=True)
    d = [s for s in secs if s["type"] == "dnsmasq"][0]["opts"]
    lines = ["port=%d" % port, "listen-address=127.0.0.1", "bind-interfaces",
             "no-hosts", "cache-size=0", "log-queries"]

    def items(o):
        v = d.get(o)
        return v if isinstance(v, list) else ([] if v is None else [v])
    for s in items("server"):
        lines.append("server=%s" % s)
    if d.get("noresolv", "0") in ("1", "on", "true", "yes", "enabled"):
        lines.append("no-resolv")
    # OpenWrt's default is /tmp/resolv.conf.d/resolv.conf.auto (the ISP's servers, written
    # by netifd); here a file in the test's directory, never the host's /etc/resolv.conf
    lines.append("resolv-file=%s" % (d.get("resolvfile") or
                                     os.path.join(os.environ["DNSMASQ_DIR"], "resolv.conf.auto")))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "uci":
        sys.exit(uci_main(sys.argv[2:]))
    if cmd == "validate":
        sys.exit(validate_main(sys.argv[2:]))
    if cmd == "dnsmasq-conf":
        sys.exit(dnsmasq_main(sys.argv[2:]))
    sys.exit(__doc__)
