"""The documentation points only inside the repository and says only what the code accepts.

README.md and docs/*.md: every relative link resolves to a file of the repository (and its
anchor to a heading), no text names a path outside it, every repository path quoted in
backticks exists, every test the README cites exists, every daemon or provision YAML example
in the README parses with hookd's own parsers, every command of the README's command table is
one the CLI has (with the options it shows), and the module table names every module under
hookd/. No Nix, no network: these run in well under a second.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from hookd import cli
from hookd import config as hookd_config
from hookd.errors import ConfigError
from hookd.provision import spec as provision_spec

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted([README, *(ROOT / "docs").glob("*.md")])

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
# Roots of the repository that docs quote paths below; a backticked path starting with one of
# them must exist (globs and pytest node ids are allowed).
REPO_ROOTS = (
    "hookd/",
    "tests/",
    "docs/",
    "scripts/",
    "nix/",
    "ci/",
    "examples/",
    "bench/",
    "templates/",
    ".ci/",
)
# Written by a run, never committed (.gitignore): `python -m bench.run` writes bench/out/.
GENERATED = ("bench/out/",)
# Spelled in pieces so that this file itself does not contain the paths it looks for.
OUTSIDE = re.compile("|".join([r"\.\./shared", r"(?<![\w.])/wor" r"k/", r"/tmp/pytest" r"-of-"]))


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """Lines outside fenced code blocks, with their 1-based numbers."""
    fenced = False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            yield n, line


def fenced_blocks(text: str, lang: str) -> list[tuple[int, str]]:
    """(first line number, body) of each fenced block in language ``lang``."""
    blocks: list[tuple[int, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == f"```{lang}":
            start, body = i + 2, []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append((start, "\n".join(body)))
        i += 1
    return blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    for _, line in prose_lines(path.read_text()):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> Iterator[tuple[int, str]]:
    for n, line in prose_lines(path.read_text()):
        for m in LINK.finditer(line):
            yield n, m.group(1)


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_relative_links_resolve_inside_the_repository(doc: Path) -> None:
    problems = []
    for n, target in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, …
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        where = f"{_rel(doc)}:{n}: ({target})"
        if not dest.is_relative_to(ROOT):
            problems.append(f"{where} points outside the repository")
        elif not dest.exists():
            problems.append(f"{where} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: no heading with anchor #{anchor} in {_rel(dest)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_no_reference_outside_the_repository(doc: Path) -> None:
    hits = [
        f"{_rel(doc)}:{n}: {line.strip()}"
        for n, line in enumerate(doc.read_text().splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not hits, "docs must not name paths outside the repository:\n" + "\n".join(hits)


def _quoted_repo_paths(doc: Path) -> Iterator[tuple[int, str]]:
    for n, line in prose_lines(doc.read_text()):
        for m in CODE_SPAN.finditer(line):
            span = m.group(1).strip()
            # the first word is the path (`scripts/test.sh -x …`); a pytest node id ends at ::
            word = span.split()[0] if span.split() else ""
            word = word.split("::")[0].rstrip(",.;:")
            if word.startswith(GENERATED):
                continue
            if word.startswith(REPO_ROOTS) and not any(c in word for c in "<>{}$…"):
                yield n, word


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_quoted_repository_paths_exist(doc: Path) -> None:
    missing = [
        f"{_rel(doc)}:{n}: `{p}`"
        for n, p in _quoted_repo_paths(doc)
        if not (any(c in p for c in "*?[") and list(ROOT.glob(p))) and not (ROOT / p).exists()
    ]
    assert not missing, "paths named in the docs that the repository lacks:\n" + "\n".join(missing)


def test_tests_the_readme_cites_exist() -> None:
    defined = set()
    for f in (ROOT / "tests").rglob("*.py"):
        defined |= set(re.findall(r"^\s*(?:async\s+)?def (test_\w+)", f.read_text(), re.M))
    cited = {m.group(1) for m in re.finditer(r"`(test_\w+)`", README.read_text())}
    assert cited, "the README cites no test by name; this check would prove nothing"
    assert not cited - defined, (
        f"tests the README names that do not exist: {sorted(cited - defined)}"
    )


# -- YAML examples ----------------------------------------------------------------------------

K8S_KEYS = {"apiVersion", "kind"}


def _readme_yaml_documents() -> list[tuple[int, dict[str, object]]]:
    docs: list[tuple[int, dict[str, object]]] = []
    for line, body in fenced_blocks(README.read_text(), "yaml"):
        for d in yaml.safe_load_all(body):
            assert isinstance(d, dict), f"README.md:{line}: a YAML example that is not a mapping"
            docs.append((line, d))
    return docs


def test_readme_daemon_config_examples_parse() -> None:
    """Every YAML block of the README is a Kubernetes manifest, a provision file, or a daemon
    config; the last two must be accepted by the parser hookd itself uses (unknown keys are
    errors there), so a misspelt or invented key fails here."""
    top = set(hookd_config.TOP_KEYS)
    checked = 0
    for line, d in _readme_yaml_documents():
        if K8S_KEYS & d.keys():
            continue
        if "server_url" in d or "caches" in d or "tokens" in d:
            provision_spec.parse_config(
                d, source=f"README.md:{line}", env={"ATTIC_ADMIN_TOKEN": "not-a-real-token"}
            )
            continue
        unknown = d.keys() - top
        assert not unknown, f"README.md:{line}: keys hookd's config does not have: {unknown}"
        raw = dict(d)
        if raw.get("attic_config", "auto") == "auto":
            raw["attic_config"] = False  # don't read this machine's ~/.config/attic
        hookd_config.parse_config(raw, source=f"README.md:{line}")
        checked += 1
    assert checked >= 1, "no daemon config example found in the README"


def test_the_yaml_check_catches_an_unknown_key() -> None:
    with pytest.raises(ConfigError):
        hookd_config.parse_config({"attic_config": False, "upload": {"concurency": 4}})


# -- commands ---------------------------------------------------------------------------------


def _section(text: str, heading: str) -> str:
    m = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## )", text, re.M | re.S)
    assert m, f"README.md has no '## {heading}' section"
    return m.group(1)


def _table_first_cells(section: str) -> list[str]:
    cells = []
    for line in section.splitlines():
        if line.startswith("|") and not re.match(r"^\|\s*-", line):
            cells.append(re.split(r"(?<!\\)\|", line)[1].replace("\\|", "|").strip())
    return cells[1:]  # the header


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.get_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("hookd's parser has no subcommands")


def test_readme_command_table_names_real_commands_and_options() -> None:
    subs = _subcommands()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    rows = _table_first_cells(_section(README.read_text(), "Commands"))
    assert rows, "the README's command table is empty"
    problems = []
    for cell in rows:
        known: set[str] = set()
        for span in CODE_SPAN.findall(cell):
            words = span.split()
            if not words:
                continue
            if words[0].startswith("-"):  # `hookd retry PATH…` / `--all`: the same command
                pass
            elif words[0] == "hookd":
                name = words[1]
                if name not in subs:
                    problems.append(f"`{span}`: hookd has no subcommand {name!r}")
                    continue
                known = set(subs[name]._option_string_actions)
            elif words[0] in scripts:
                known = set()
                if words[0] == "attic-provision":
                    known = set(subs["provision"]._option_string_actions)
                elif words[0] == "hookd-hook":
                    known = {"--socket", "--spool"}
            else:
                problems.append(f"`{span}`: not a hookd command ({sorted(scripts)})")
                continue
            for opt in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", span):
                if known and opt not in known:
                    problems.append(f"`{span}`: {words[0]} has no option {opt}")
    assert not problems, "\n".join(problems)
    named = {
        c.split()[1]
        for c in (s for cell in rows for s in CODE_SPAN.findall(cell))
        if c.startswith("hookd ")
    }
    assert set(subs) <= named, f"subcommands missing from the README: {set(subs) - named}"


def test_hook_options_match_the_hook() -> None:
    text = (ROOT / "hookd" / "hook.py").read_text()
    for opt in ("--socket", "--spool"):
        assert f'"{opt}"' in text or f"'{opt}'" in text, f"hookd/hook.py has no {opt}"


# -- module table -----------------------------------------------------------------------------


def _module_rows() -> dict[str, str]:
    rows: dict[str, str] = {}
    for line in README.read_text().splitlines():
        m = re.match(r"^\|\s*`(hookd/[^`]*)`\s*\|(.*)\|\s*$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_module_table_names_every_module_under_hookd() -> None:
    rows = _module_rows()
    assert rows, "README.md has no module table (rows starting with | `hookd/…` |)"
    missing = []
    for f in sorted((ROOT / "hookd").rglob("*.py")):
        rel = _rel(f)
        if rel in rows:
            continue
        package = _rel(f.parent) + "/"
        if f.name == "__init__.py" and (
            package in rows or any(r.startswith(package) for r in rows)
        ):
            continue
        if package in rows and re.search(rf"`{re.escape(f.stem)}(\.py)?`", rows[package]):
            continue
        missing.append(rel)
    assert not missing, f"modules the README's module table does not name: {missing}"


def test_module_table_rows_exist() -> None:
    gone = [r for r in _module_rows() if not (ROOT / r).exists()]
    assert not gone, f"module table rows for files that do not exist: {gone}"


def test_every_doc_page_is_linked_from_the_readme() -> None:
    linked = {
        (README.parent / target.partition("#")[0]).resolve()
        for _, target in links(README)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target)
    }
    orphans = [_rel(d) for d in DOCS if d != README and d.resolve() not in linked]
    assert not orphans, f"docs pages the README does not link to: {orphans}"


def test_readme_socket_ops_are_the_protocols() -> None:
    from hookd import protocol

    text = README.read_text()
    section = text.split("### The socket protocol", 1)[1].split("\n## ", 1)[0]
    ops_text = section.split("Ops:", 1)[1].split("Replies", 1)[0]
    named = set(CODE_SPAN.findall(ops_text))
    assert protocol.OPS <= named, f"ops the README omits: {sorted(protocol.OPS - named)}"
    source = (ROOT / "hookd" / "protocol.py").read_text()
    fields = named - protocol.OPS
    unknown = {f for f in fields if f'"{f}"' not in source}
    assert not unknown, f"request fields the README names that hookd/protocol.py lacks: {unknown}"
