"""The README says what the binary does: its option table and its table of built-in
resolvers are compared with `dotproxy --help`, which prints both from the tables the
parser itself uses (config_options and config_known in dotproxy.c).

A new option, a changed default or range, or a new resolver that is not written in
the README (or the other way round) fails here."""

import os
import re
import subprocess

import pytest

import helpers

README = os.path.join(helpers.REPO, "README.md")


def readme_table(after_header):
    """The rows of the first Markdown table whose header line starts with
    `after_header`, as lists of cell texts."""
    lines = open(README).read().splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith(after_header))
    rows = []
    for l in lines[start + 2:]:
        if not l.startswith("|"):
            break
        rows.append([c.strip() for c in l.strip().strip("|").split(" | ")])
    return rows


@pytest.fixture(scope="module")
def help_text(dotproxy_bin):
    r = subprocess.run([dotproxy_bin, "--help"], capture_output=True, text=True, timeout=5)
    assert r.returncode == 0, r.stderr
    return r.stdout


def help_options(text):
    """{long name: (short name or None, argument or None, default, range)} from --help."""
    out = {}
    body = text.split("\n\nEnvironment:")[0]
    for m in re.finditer(r"^  (?:-(\w), |    )--([\w-]+)(?: (\S+))?\n((?:        .*\n?)+)",
                         body, re.M):
        short, name, arg, desc = m.groups()
        desc = " ".join(desc.split())
        d = re.search(r"\(default (\S+?)(?: \w+)?; (\S+) to (\S+?)(, 0: off)?\)$", desc)
        out[name] = (short, arg, d.group(1) if d else None,
                     "%s to %s%s" % (d.group(2), d.group(3), d.group(4) or "") if d else None)
    return out


def readme_options():
    """{long name: (short name or None, argument or None, meaning)} from the README."""
    out = {}
    for cells in readme_table("| option | meaning |"):
        m = re.match(r"(?:`-(\w)`, )?`--([\w-]+)(?: ([^`]+))?`$", cells[0])
        assert m, "README option cell not understood: %r" % cells[0]
        short, name, arg = m.groups()
        out[name] = (short, arg, cells[1])
    return out


def test_readme_lists_exactly_the_options_of_the_binary(help_text):
    """Every option --help shows is in the README's table with the same short name
    and argument, and the README lists no option the binary does not have."""
    binary, readme = help_options(help_text), readme_options()
    assert len(binary) >= 20, "parsed only %d options from --help:\n%s" % (len(binary), help_text)
    assert set(binary) == set(readme), (
        "only in --help: %s; only in the README: %s" % (sorted(set(binary) - set(readme)),
                                                        sorted(set(readme) - set(binary))))
    for name, (short, arg, _, _) in binary.items():
        assert (short, arg) == readme[name][:2], (
            "--%s: --help says -%s %s, the README -%s %s" % (name, short, arg, *readme[name][:2]))


def test_readme_states_the_defaults_and_ranges_of_the_binary(help_text):
    """For each number, the README row says the same default and range as --help
    (e.g. "default 4000; 100 to 60000")."""
    binary, readme = help_options(help_text), readme_options()
    numbers = {n: v for n, v in binary.items() if v[2] is not None}
    assert {"timeout", "padding", "cache-size", "drain-timeout"} <= set(numbers), numbers
    for name, (_, _, default, rng) in numbers.items():
        meaning = readme[name][2]
        assert re.search(r"default %s\b" % re.escape(default), meaning), (
            "--%s: --help says default %s; the README row says: %s" % (name, default, meaning))
        lo, hi = rng.split(" to ")
        hi = hi.split(",")[0]
        assert "%s to %s" % (lo, hi) in meaning, (
            "--%s: --help says %s; the README row says: %s" % (name, rng, meaning))
        if rng.endswith("0: off"):
            assert "0: off" in meaning, "--%s: 0 turns it off, the README does not say so" % name


def test_readme_resolver_table_is_the_binary_s(help_text):
    """The README's table of resolvers whose name is built in is exactly the list
    --help prints (name, then its addresses in the same order)."""
    listed = help_text.split("Resolvers whose AUTHNAME is built in:\n")[1].strip().splitlines()
    binary = [(l.split(": ")[0].strip(), l.split(": ")[1].split()) for l in listed]
    readme = [(c[0], [a.strip() for a in c[1].split(",")])
              for c in readme_table("| name used | addresses |")]
    assert binary and readme == binary, "README:\n%s\n--help:\n%s" % (readme, binary)
    assert ("cloudflare-dns.com", ["1.1.1.1", "1.0.0.1", "2606:4700:4700::1111",
                                   "2606:4700:4700::1001"]) in binary
