"""Which paths are never pushed, and the reason given for each skip."""

from __future__ import annotations

import pytest

from hookd.config import FilterConfig, parse_config
from hookd.filters import Filter

H = "0c5x8bq0sl1qkysfsfb2y8b2kgdhk0dd"


def sp(name: str) -> str:
    return f"/nix/store/{H}-{name}"


DEFAULT = Filter(FilterConfig())


def reason(name: str, f: Filter = DEFAULT, **kw: bool) -> str | None:
    return f.skip_reason(sp(name), **kw)


def assert_skipped(f: Filter, name: str, *, fixed_output: bool = False) -> str:
    why = f.skip_reason(sp(name), fixed_output=fixed_output)
    assert why is not None, f"{name} should be skipped"
    assert isinstance(why, str) and len(why) >= 8 and why[0].isalpha()  # human-readable
    return why


# -- default rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["hello-2.12.drv", "foo.drv", "source.drv", "hello-2.12.tar.gz.drv"]
)
def test_drv_files_are_skipped(name: str) -> None:
    assert "drv" in assert_skipped(DEFAULT, name)


@pytest.mark.parametrize("name", ["source", "nixpkgs-source", "hello-2.12-source", "src-source"])
def test_sources_are_skipped(name: str) -> None:
    assert "source" in assert_skipped(DEFAULT, name)


@pytest.mark.parametrize(
    "name",
    [
        "hello-2.12.tar",
        "hello-2.12.tar.gz",
        "hello-2.12.tgz",
        "hello-2.12.tar.bz2",
        "hello-2.12.tbz2",
        "hello-2.12.tar.xz",
        "hello-2.12.txz",
        "hello-2.12.tar.zst",
        "hello-2.12.tar.lz",
        "hello-2.12.tar.lzma",
        "hello-2.12.tar.Z",
        "hello-2.12.zip",
        "hello-2.12.7z",
        "hello-2.12.rar",
        "rake-13.0.gem",
        "serde-1.0.crate",
        "requests-2.31-py3-none-any.whl",
    ],
)
def test_archives_are_skipped(name: str) -> None:
    assert "archive" in assert_skipped(DEFAULT, name)


@pytest.mark.parametrize(
    "name",
    [
        "fix-build.patch",
        "CVE-2023-1234.patch",
        "fix.diff",
        "fix.patch.gz",
        "fix.diff.xz",
        "fix.patch.zst",
    ],
)
def test_patches_are_skipped(name: str) -> None:
    assert "patch" in assert_skipped(DEFAULT, name)


@pytest.mark.parametrize("name", ["user-environment", "env-manifest.nix"])
def test_nix_env_profile_builds_are_skipped(name: str) -> None:
    assert "profile" in assert_skipped(DEFAULT, name)


@pytest.mark.parametrize(
    "name",
    [
        "tmpfiles.d",
        "python3.11-tempora-5.0",
        "nixos-tmp-thing",
        "hello-2.12",
        "my-source-code-1.0",
        "sourcehut-cli",
        "source-highlight-3.1.9",
        "sources",
        "hello-2.12-doc",
        "libarchive-3.7",
        "unzip-6.0",
        "zip-3.0",
        "patch-2.7.6",
        "diffutils-3.10",
        "patchelf-0.15",
        "tar-1.35",
        "gnutar-1.35",
        "drv-tools",
        "user-environment-tools",
        "my-user-environment",
        "python3.11-gem-tools",
        "drvs",
        "hello.tarball",
        "cratefile",
    ],
)
def test_ordinary_outputs_are_not_skipped(name: str) -> None:
    assert reason(name) is None


def test_rules_look_at_the_name_not_the_hash_or_store_dir() -> None:
    f = Filter(FilterConfig())
    # a hash part that happens to spell nothing special, a store dir containing "source"
    assert f.skip_reason("/source/store/" + H + "-hello-2.12") is None
    assert f.skip_reason("/nix/store/" + H + "-hello.drv") is not None


# -- switches ---------------------------------------------------------------------------------


def test_skip_drv_off_pushes_drv_files() -> None:
    f = Filter(FilterConfig(skip_drv=False))
    assert reason("hello-2.12.drv", f) is None
    assert reason("nixpkgs-source", f) is not None  # the other rules still apply


def test_skip_sources_off_pushes_sources_archives_and_patches() -> None:
    f = Filter(FilterConfig(skip_sources=False))
    for name in ("nixpkgs-source", "source", "hello-2.12.tar.gz", "fix.patch"):
        assert reason(name, f) is None, name
    assert reason("hello.drv", f) is not None
    assert reason("user-environment", f) is not None  # always skipped


def test_skip_fixed_output_is_off_by_default() -> None:
    assert reason("hello-2.12", fixed_output=True) is None


def test_skip_fixed_output_skips_only_fixed_outputs() -> None:
    f = Filter(FilterConfig(skip_fixed_output=True))
    why = assert_skipped(f, "hello-2.12", fixed_output=True)
    assert "fixed-output" in why
    assert reason("hello-2.12", f, fixed_output=False) is None


# -- include / exclude ------------------------------------------------------------------------


def test_exclude_is_searched_in_the_full_path() -> None:
    f = Filter(FilterConfig(exclude=("-nixos-vm$",)))
    why = assert_skipped(f, "nixos-vm")
    assert "exclude" in why and "-nixos-vm$" in why  # names the pattern
    assert reason("nixos-vm-tools", f) is None  # anchored: only the ending
    assert reason("hello-2.12", f) is None
    g = Filter(FilterConfig(exclude=("^/nix/store/0c5x",)))  # the hash part is in the path too
    assert reason("hello-2.12", g) is not None


def test_exclude_is_a_search_not_a_full_match() -> None:
    f = Filter(FilterConfig(exclude=("firefox",)))
    assert reason("firefox-120.0", f) is not None
    assert reason("firefox-unwrapped-120.0", f) is not None
    assert reason("chromium-120.0", f) is None


def test_include_set_pushes_only_matches() -> None:
    f = Filter(FilterConfig(include=("/[a-z0-9]{32}-myapp-",)))  # searched in the full path
    assert reason("myapp-1.0", f) is None
    assert reason("x-myapp-1.0", f) is not None
    why = assert_skipped(f, "hello-2.12")
    assert "include" in why


def test_any_include_pattern_suffices() -> None:
    f = Filter(FilterConfig(include=("hello", "world$")))
    assert reason("hello-2.12", f) is None
    assert reason("big-world", f) is None
    assert reason("world-big", f) is not None


def test_include_overrides_the_default_rules() -> None:
    f = Filter(FilterConfig(include=(r"\.drv$", "-source$", "user-environment", r"\.patch$")))
    for name in ("hello.drv", "nixpkgs-source", "user-environment", "fix.patch"):
        assert reason(name, f) is None, name


def test_include_overrides_skip_fixed_output() -> None:
    f = Filter(FilterConfig(include=("hello",), skip_fixed_output=True))
    assert reason("hello-2.12", f, fixed_output=True) is None


def test_exclude_wins_over_include() -> None:
    f = Filter(FilterConfig(include=("hello",), exclude=("-2\\.12$",)))
    assert reason("hello-2.13", f) is None
    why = reason("hello-2.12", f)
    assert why is not None and "exclude" in why


def test_exclude_applies_before_default_rules_and_names_the_pattern() -> None:
    f = Filter(FilterConfig(exclude=(r"\.drv$",)))
    why = reason("hello.drv", f)
    assert why is not None and "exclude" in why


def test_regexes_are_case_sensitive() -> None:
    f = Filter(FilterConfig(exclude=("Hello",)))
    assert reason("hello-2.12", f) is None
    assert reason("Hello-2.12", f) is not None


def test_filter_from_parsed_config() -> None:
    config = parse_config(
        {"attic_config": False, "filter": {"exclude": ["-nixos-vm$"], "skip_sources": False}},
    )
    f = Filter(config.filter)
    assert reason("nixos-vm", f) is not None
    assert reason("nixpkgs-source", f) is None
    assert reason("hello.drv", f) is not None


def test_every_skip_has_a_distinct_readable_reason() -> None:
    f = Filter(FilterConfig(skip_fixed_output=True, exclude=("nope$",)))
    reasons = {
        assert_skipped(f, "a.drv"),
        assert_skipped(f, "x-source"),
        assert_skipped(f, "a.tar.gz"),
        assert_skipped(f, "a.patch"),
        assert_skipped(f, "user-environment"),
        assert_skipped(f, "fod", fixed_output=True),
        assert_skipped(f, "nope"),
    }
    assert len(reasons) == 7
    g = Filter(FilterConfig(include=("only-this",)))
    assert assert_skipped(g, "other") not in reasons
