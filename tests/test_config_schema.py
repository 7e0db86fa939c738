"""One config schema, owned by hookd/config.py; the YAML reader refuses duplicate keys.

nix/config-schema.json is generated from hookd/config.py and read by the Nix modules
(tests/test_nix_modules.py checks what the modules make of it); here: the checked-in file is
current, and its defaults are what the parser really applies.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hookd import config as cfgmod
from hookd import yamlfile
from hookd.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
REGENERATE = f"regenerate it: python -m hookd.config --schema > {cfgmod.SCHEMA_FILE}"


def test_checked_in_schema_is_current() -> None:
    checked_in = (REPO / cfgmod.SCHEMA_FILE).read_text()
    assert checked_in == cfgmod.schema_text(), f"{cfgmod.SCHEMA_FILE} is stale; {REGENERATE}"


def test_schema_command_prints_the_file() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hookd.config", "--schema"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert proc.stdout == (REPO / cfgmod.SCHEMA_FILE).read_text()


def test_schema_defaults_are_what_the_parser_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOKD_STATE_DIR", "/srv/hookd")
    cfg = cfgmod.parse_config({"attic_config": False})
    defaults = json.loads(cfgmod.schema_text())["defaults"]
    assert defaults["nice"] == cfg.nice
    assert defaults["log"] == {"format": cfg.log_format, "level": cfg.log_level}
    assert defaults["upload"] == vars(cfg.upload)
    nix = vars(cfg.nix) | {"bin_dir": None}
    assert defaults["nix"] == nix
    filt = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(cfg.filter).items()}
    assert defaults["filter"] == filt


def test_every_key_in_the_schema_is_one_the_parser_knows() -> None:
    keys = json.loads(cfgmod.schema_text())["keys"]
    for section, names in keys.items():
        for name in names:
            raw: dict[str, object] = {"attic_config": False}
            if section == "top":
                raw[name] = None
            elif section == "servers.<name>":
                raw["servers"] = {"x": {name: None}}
            else:
                raw[section] = {name: None}
            try:  # a value may be refused (null is rarely valid), the key never
                cfgmod.parse_config(raw)
            except ConfigError as e:
                assert "unknown key" not in str(e), (section, name, e)
    with pytest.raises(ConfigError, match=r"unknown key.*nosuchkey"):
        cfgmod.parse_config({"attic_config": False, "upload": {"nosuchkey": 1}})


def test_the_module_docs_list_every_key() -> None:
    text = (REPO / "docs" / "modules.md").read_text()
    table = text.split("## `settings`: hookd's YAML", 1)[1].split("```", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = line.split("|")
        if len(cells) > 3 and "`" in cells[1]:
            rows.update({k: cells[2] for k in re.findall(r"`([a-z_]+)`", cells[1])})
    keys = json.loads(cfgmod.schema_text())["keys"]
    assert sorted(rows) == keys["top"]
    for section in ("filter", "upload", "nix", "log", "metrics"):
        listed = set(re.findall(r"`([a-z_]+)`", rows[section]))
        assert set(keys[section]) <= listed, (section, set(keys[section]) - listed)


def test_check_command_names_the_file_and_line_of_a_duplicate_key(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("upload:\n  concurrency: 2\nattic_config: false\nupload:\n  concurrency: 8\n")
    proc = subprocess.run(
        [sys.executable, "-m", "hookd.config", "--check", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert f"{path}: not valid YAML at line 4, column 1: duplicate key 'upload'" in proc.stderr


# -- the one YAML reader ----------------------------------------------------------------------


def test_daemon_config_with_a_duplicate_key_is_refused_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "attic_config: false\n"
        "servers:\n"
        "  main:\n"
        "    endpoint: https://a.example/\n"
        "    endpoint: https://b.example/\n"
    )
    with pytest.raises(ConfigError) as e:
        cfgmod.load_config(path)
    message = str(e.value)
    assert message.startswith(f"error: {path}: not valid YAML at line 5, column 5:")
    assert "duplicate key 'endpoint' (first at line 4)" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: 1\nb: {c: 1, d: 2}\n", {"a": 1, "b": {"c": 1, "d": 2}}),
        # a merge key is not a duplicate, and an explicit key may override what it merged
        (
            "base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n",
            {"base": {"x": 1, "y": 2}, "other": {"x": 1, "y": 3}},
        ),
        ("", None),
    ],
)
def test_yaml_without_duplicates_reads_as_safe_load_does(text: str, expected: object) -> None:
    assert yamlfile.parse(text, "t.yaml") == expected


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("a: 1\na: 2\n", "line 2, column 1: duplicate key 'a' (first at line 1)"),
        ("1: x\n0x1: y\n", "line 2, column 1: duplicate key 1"),  # equal after resolution
        ("a:\n- {k: 1, k: 2}\n", "line 2, column 10: duplicate key 'k'"),
        ("? [a]\n: 1\n", "line 1"),  # unhashable: still a clear error
        ("!!python/object:os.system {}\n", "line 1"),  # safe loading only
    ],
)
def test_yaml_errors_name_the_source_and_line(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as e:
        yamlfile.parse(text, "spec.yaml")
    assert str(e.value).startswith("error: spec.yaml: not valid YAML at "), e.value
    assert where in str(e.value)
