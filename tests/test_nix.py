"""The nix CLI wrapper and its parsers, checked against a real Nix 2.8 and real builds."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hookd.errors import NixError
from hookd.models import NIX32_ALPHABET, PathInfo, nix32_decode, nix32_encode, sha256_digest
from hookd.nix import Nix, parse_path_info, path_info_entries

HAVE_NIX = shutil.which("nix-build") is not None
needs_nix = pytest.mark.skipif(not HAVE_NIX, reason="needs a real Nix (scripts/setup.sh)")

# A small graph without nixpkgs: top -> mid -> leaf, top refers to itself; a three-output
# derivation; a >1 MiB path (several dump chunks); a fixed-output derivation; a slow builder.
MK_NIX = Path(__file__).resolve().parent / "data" / "mk.nix"
GRAPH = r"""
{ nonce }:
let
  mk = import MK_NIX nonce;
  leaf = mk "leaf" "echo leaf > $out" { };
  mid = mk "mid" "mkdir -p $out/share; echo ${leaf} > $out/share/ref; ln -s ref $out/share/link; printf '#!/bin/sh\\n' > $out/run; chmod +x $out/run" { };
  top = mk "top" "mkdir $out; echo ${mid} > $out/mid; echo $out > $out/self" { };
  multi = mk "multi" "mkdir -p $out $dev $lib; echo lib > $lib/l; echo $lib > $dev/l; echo $dev > $out/d" {
    outputs = [ "out" "dev" "lib" ];
  };
  big = mk "big" "head -c 3000000 /dev/urandom > $out" { };
  fod = mk "fod-${nonce}" "printf hello > $out" {
    outputHashMode = "flat";
    outputHashAlgo = "sha256";
    outputHash = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
  };
  sleepy = mk "sleepy" "sleep 120; echo > $out" { };
in { inherit leaf mid top multi big fod sleepy; }
"""

# docs/attic-api.md §7.4: a verified hex <-> nix32 pair
VECTOR_HEX = "91e129ac1959d062ad093d2b1f8b65afae0f712056fe3eac78ec530ff6a1bb9a"
VECTOR_NIX32 = "16mvl7v0ylzcg2n3xzjn41qhzbmgcn5iyarx16nn5l2r36n2kqci"


def sh(*argv: str, timeout: float = 300) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{argv} failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc.stdout


@dataclass
class Graph:
    file: Path
    nonce: str
    drvs: dict[str, str]  # attr -> .drv
    outs: dict[str, list[str]]  # attr -> output paths (nix-store -q --outputs order)

    def out(self, attr: str) -> str:
        return self.outs[attr][0]


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Graph:
    if not HAVE_NIX:
        pytest.skip("needs a real Nix")
    d = tmp_path_factory.mktemp("nixgraph")
    f = d / "graph.nix"
    f.write_text(GRAPH.replace("MK_NIX", str(MK_NIX)))
    nonce = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
    attrs = ["leaf", "mid", "top", "multi", "big", "fod"]
    argv = ["nix-instantiate", str(f), "--argstr", "nonce", nonce]
    for a in attrs:
        argv += ["-A", a]
    drv_list = sh(*argv).split()
    assert len(drv_list) == len(attrs)
    drvs = dict(zip(attrs, drv_list, strict=True))
    # indirect GC roots: other tests share this store and may collect garbage
    sh("nix-store", "--realise", "--add-root", str(d / "result"), "--indirect", *drv_list)
    outs = {a: sh("nix-store", "-q", "--outputs", drvs[a]).split() for a in attrs}
    return Graph(f, nonce, drvs, outs)


def raw_path_info(*args: str) -> tuple[str, dict[str, dict[str, Any] | None]]:
    """The raw JSON and its entries by full path (None: invalid), for any Nix's shape."""
    text = sh("nix", "path-info", "--json", *args)
    return text, path_info_entries(text)


def nix_version() -> tuple[int, ...]:
    out = sh("nix", "--version").split()[-1]
    return tuple(int(x) for x in re.findall(r"\d+", out)[:2])


def nar_of(path: str) -> bytes:
    return subprocess.run(
        ["nix-store", "--dump", path], capture_output=True, check=True, timeout=60
    ).stdout


# -- nix32 ------------------------------------------------------------------------------------


def test_nix32_test_vector_from_attic_api() -> None:
    digest = bytes.fromhex(VECTOR_HEX)
    assert nix32_encode(digest) == VECTOR_NIX32
    assert nix32_decode(VECTOR_NIX32) == digest
    assert sha256_digest("sha256:" + VECTOR_NIX32) == digest
    assert sha256_digest("sha256:" + VECTOR_HEX) == digest
    assert sha256_digest("sha256-" + base64.b64encode(digest).decode()) == digest
    info = PathInfo(
        path="/nix/store/xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10",
        nar_hash=digest,
        nar_size=206104,
    )
    assert info.nar_hash_hex == "sha256:" + VECTOR_HEX
    assert info.nar_hash_nix32 == "sha256:" + VECTOR_NIX32
    assert (info.hash_part, info.name, info.basename) == (
        "xcp9cav49dmsjbwdjlmkjxj10gkpx553",
        "hello-2.10",
        "xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10",
    )


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 7, 8, 16, 20, 31, 32, 33, 48, 64, 100])
def test_nix32_round_trips(size: int) -> None:
    for seed in range(20):
        data = hashlib.sha512(f"{size}-{seed}".encode()).digest() * 2
        data = data[:size]
        text = nix32_encode(data)
        assert len(text) == (size * 8 + 4) // 5
        assert set(text) <= set(NIX32_ALPHABET)
        assert nix32_decode(text) == data
    assert nix32_encode(b"\x00" * size) == "0" * ((size * 8 + 4) // 5)


def test_nix32_length_for_sha256_is_52() -> None:
    assert len(nix32_encode(b"\xff" * 32)) == 52


@pytest.mark.parametrize("bad", ["e", "o", "u", "t", "E", "-", " ", "="])
def test_nix32_decode_refuses_characters_outside_the_alphabet(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid nix-base32 character"):
        nix32_decode(VECTOR_NIX32[:-1] + bad)


def test_nix32_decode_refuses_non_zero_padding() -> None:
    # 52 chars carry 260 bits for 256: the first char (the top bits) may only be 0 or 1
    assert nix32_decode("1" + VECTOR_NIX32[1:])
    with pytest.raises(ValueError, match="padding"):
        nix32_decode("2" + VECTOR_NIX32[1:])


@pytest.mark.parametrize(
    "text",
    [
        "md5:abc",
        "sha256",
        "sha256-",
        "sha256:",
        "sha256:abcd",
        "sha256-" + base64.b64encode(b"x" * 31).decode(),
        "sha256:" + "0" * 63,
        "sha512-" + base64.b64encode(b"x" * 64).decode(),
    ],
)
def test_sha256_digest_refuses_malformed_hashes(text: str) -> None:
    with pytest.raises(ValueError):
        sha256_digest(text)


@needs_nix
@pytest.mark.nix
@pytest.mark.parametrize("algo,size", [("sha256", 32), ("sha1", 20), ("sha512", 64), ("md5", 16)])
def test_nix32_encode_agrees_with_real_nix(algo: str, size: int) -> None:
    digests = [hashlib.new(algo, f"hookd-{i}".encode()).digest() for i in range(8)]
    assert all(len(d) == size for d in digests)
    out = sh("nix", "hash", "to-base32", "--type", algo, *[d.hex() for d in digests]).split()
    assert out == [nix32_encode(d) for d in digests]
    assert [nix32_decode(t) for t in out] == digests


# -- parse_path_info on real 2.8 output ---------------------------------------------------------


@needs_nix
@pytest.mark.nix
def test_path_info_from_real_nix(graph: Graph) -> None:
    top, mid, leaf = graph.out("top"), graph.out("mid"), graph.out("leaf")
    text, raw = raw_path_info("--recursive", top)
    assert len(raw) == 3  # the whole closure
    # the shape is the version's: a list before 2.19, an object keyed by path from 2.19 on
    assert isinstance(json.loads(text), list) == (nix_version() < (2, 19))
    infos = {i.path: i for i in parse_path_info(text)}
    assert set(infos) == {top, mid, leaf}
    for path, info in infos.items():
        assert info.references == tuple(sorted(sh("nix-store", "-q", "--references", path).split()))
        assert info.nar_size == int(sh("nix-store", "-q", "--size", path))
        assert info.deriver == sh("nix-store", "-q", "--deriver", path).strip()
        assert info.ultimate is True  # built here
        assert info.signatures == ()
        assert info.ca is None
        assert (
            isinstance(info.registration_time, int)
            and 0 < info.registration_time <= time.time() + 5
        )
        assert len(info.nar_hash) == 32
    assert top in infos[top].references  # self-reference kept
    assert infos[top].references == tuple(sorted([top, mid]))
    assert infos[mid].references == (leaf,)
    assert infos[leaf].references == ()
    assert infos[top].deriver == graph.drvs["top"]
    assert infos[top].name == "top" and infos[top].basename == os.path.basename(top)


@needs_nix
@pytest.mark.nix
def test_nar_hash_conversions_agree_with_nix_store(graph: Graph) -> None:
    paths = [
        graph.out("top"),
        graph.out("mid"),
        graph.out("leaf"),
        graph.out("big"),
        *graph.outs["multi"],
    ]
    text, raw = raw_path_info(*paths)
    by_path = raw
    for info in parse_path_info(text):
        nar = nar_of(info.path)
        assert len(nar) == info.nar_size
        assert info.nar_hash == hashlib.sha256(nar).digest()
        assert info.nar_hash_hex == "sha256:" + hashlib.sha256(nar).hexdigest()
        assert info.nar_hash_nix32 == sh("nix-store", "-q", "--hash", info.path).strip()
        entry = by_path[info.path]
        assert entry is not None
        sri = entry["narHash"]
        assert sri.startswith("sha256-")
        assert sh("nix", "hash", "to-base16", sri).strip() == info.nar_hash.hex()
        assert sh("nix", "hash", "to-base32", sri).strip() == info.nar_hash_nix32.removeprefix(
            "sha256:"
        )
        assert (
            sha256_digest(info.nar_hash_nix32) == sha256_digest(info.nar_hash_hex) == info.nar_hash
        )


@needs_nix
@pytest.mark.nix
def test_path_info_with_closure_size_and_extra_keys(graph: Graph) -> None:
    text, raw = raw_path_info("-S", "--recursive", graph.out("top"))
    assert raw and all(d is not None and "closureSize" in d for d in raw.values())
    plain, _ = raw_path_info("--recursive", graph.out("top"))
    assert parse_path_info(text) == parse_path_info(plain)


@needs_nix
@pytest.mark.nix
def test_invalid_paths_are_skipped(graph: Graph) -> None:
    missing = f"/nix/store/{'0' * 32}-hookd-missing-{graph.nonce}"
    proc = subprocess.run(
        ["nix", "path-info", "--json", graph.out("leaf"), missing],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0  # an invalid path is not an error without --recursive
    raw = json.loads(proc.stdout)
    if nix_version() < (2, 19):  # a list entry {"path": P, "valid": false}
        assert {"path": missing, "valid": False} in raw
    else:  # an object keyed by path, null for the invalid one (NixOS/nix#9242, 2.19)
        assert raw[missing] is None
    assert path_info_entries(proc.stdout)[missing] is None
    infos = parse_path_info(proc.stdout)
    assert [i.path for i in infos] == [graph.out("leaf")]
    # through the wrapper too
    assert [i.path for i in Nix().path_info([missing, graph.out("leaf"), missing])] == [
        graph.out("leaf")
    ]
    assert Nix().path_info([missing]) == []
    assert [i.path for i in Nix().path_info([missing, graph.out("mid")])] == [graph.out("mid")]


@needs_nix
@pytest.mark.nix
def test_recursive_path_info_keeps_valid_closures_next_to_an_invalid_root(graph: Graph) -> None:
    missing = f"/nix/store/{'4' * 32}-hookd-missing"
    infos = Nix().path_info([graph.out("top"), missing], recursive=True)
    assert {i.path for i in infos} == {graph.out("top"), graph.out("mid"), graph.out("leaf")}


@needs_nix
@pytest.mark.nix
def test_signatures_fixed_output_ca_and_drv_files(graph: Graph, tmp_path: Path) -> None:
    nix = Nix()
    secret, public = tmp_path / "k.sec", tmp_path / "k.pub"
    keyname = f"hookd-test-{graph.nonce}"
    nix.generate_key(keyname, secret, public)
    nix.sign([graph.out("leaf")], secret)
    (leaf,) = nix.path_info([graph.out("leaf")])
    assert keyname in leaf.signature_key_names
    assert all(s.startswith(keyname + ":") for s in leaf.signatures if keyname in s)

    text, raw = raw_path_info(graph.out("fod"))
    (fod,) = parse_path_info(text)
    (fod_entry,) = raw.values()
    assert fod_entry is not None
    assert fod.ca == fod_entry["ca"] and fod.ca is not None and fod.ca.startswith("fixed:sha256:")
    assert nix.derivation_outputs(graph.drvs["fod"])[1] is True
    assert nix.derivation_outputs(graph.drvs["top"])[1] is False

    text, raw = raw_path_info("--derivation", graph.drvs["top"])
    (drv,) = parse_path_info(text)
    assert drv.path == graph.drvs["top"]
    assert drv.ca is not None and drv.ca.startswith("text:sha256:")
    assert drv.deriver is None
    assert graph.drvs["mid"] in drv.references


# -- the newer object form, built from the same real data ------------------------------------


def ca_to_structured(ca: str | None) -> dict[str, str] | None:
    """A string CA as --json-format 2 prints it: {"method", "hash": SRI}."""
    if ca is None:
        return None
    for prefix, method in (
        ("fixed:r:", "nar"),
        ("fixed:git:", "git"),
        ("fixed:", "flat"),
        ("text:", "text"),
    ):
        if ca.startswith(prefix):
            algo, nix32 = ca.removeprefix(prefix).split(":")
            digest = nix32_decode(nix32)
            return {"method": method, "hash": f"{algo}-{base64.b64encode(digest).decode()}"}
    raise AssertionError(ca)


def reshape(raw: dict[str, dict[str, Any] | None], shape: str, hash_style: str) -> Any:
    """Real path-info entries in the shape another Nix version prints (docs/nix-versions.md):
    list (2.8-2.18), object (2.19-2.32 and --json-format 1), v2/v3 (--json-format 2/3, 2.33+)."""
    listed: list[dict[str, Any]] = []
    keyed: dict[str, Any] = {}
    for path, d in raw.items():
        if d is None:
            listed.append({"path": path, "valid": False})
            keyed[path] = None
            continue
        digest = base64.b64decode(d["narHash"].removeprefix("sha256-"))
        nar_hash: Any = {
            "sri": d["narHash"],
            "base64": {
                "algorithm": "sha256",
                "format": "base64",
                "hash": base64.b64encode(digest).decode(),
            },
            "base64-no-format": {"algorithm": "sha256", "hash": base64.b64encode(digest).decode()},
            "base16": {"algorithm": "sha256", "format": "base16", "hash": digest.hex()},
            "nix32": {"algorithm": "sha256", "format": "nix32", "hash": nix32_encode(digest)},
            "sri-structured": {"algorithm": "sha256", "format": "sri", "hash": d["narHash"]},
        }[hash_style]
        entry = {k: v for k, v in d.items() if k not in ("path", "valid")}
        entry["narHash"] = nar_hash
        refs = [os.path.basename(r) for r in d["references"]]
        if shape in ("list", "object"):  # full paths, as printed
            listed.append({"path": path, **entry})
            keyed[path] = entry
            continue
        entry["version"] = int(shape[1])
        entry["storeDir"] = "/nix/store"
        if shape in ("v2", "v3"):
            entry["references"] = refs
            if d.get("deriver"):
                entry["deriver"] = os.path.basename(d["deriver"])
            entry["ca"] = ca_to_structured(d.get("ca"))
        if shape == "v3":
            entry["signatures"] = [
                {"keyName": sig.split(":", 1)[0], "sig": sig.split(":", 1)[1]}
                for sig in d.get("signatures") or []
            ]
        keyed[path if shape == "v1" else os.path.basename(path)] = entry
    if shape == "list":
        return listed
    if shape in ("object", "v1"):
        return keyed
    return {"version": int(shape[1]), "storeDir": "/nix/store", "info": keyed}


@needs_nix
@pytest.mark.nix
@pytest.mark.parametrize("shape", ["list", "object", "v1", "v2", "v3"])
@pytest.mark.parametrize(
    "hash_style", ["sri", "base64", "base64-no-format", "base16", "nix32", "sri-structured"]
)
def test_path_info_every_versions_shape_parses_alike(
    graph: Graph, tmp_path: Path, shape: str, hash_style: str
) -> None:
    missing = f"/nix/store/{'1' * 32}-hookd-missing"
    secret, public = tmp_path / "k.sec", tmp_path / "k.pub"
    Nix().generate_key("hookd-shape-1", secret, public)
    Nix().sign([graph.out("mid"), graph.out("fod")], secret)  # signatures in the data
    paths = ["--recursive", graph.out("top"), graph.out("big"), graph.out("fod")]
    text, raw = raw_path_info(*paths)
    _, raw_missing = raw_path_info(missing)  # without --recursive an invalid path is rc 0
    assert raw_missing == {missing: None}
    raw.update(raw_missing)
    expected = sorted(parse_path_info(text), key=lambda i: i.path)
    assert len(expected) == 5
    assert any(i.ca for i in expected) and any(i.signatures for i in expected)
    reshaped = reshape(raw, shape, hash_style)
    got = sorted(parse_path_info(json.dumps(reshaped)), key=lambda i: i.path)
    assert got == expected  # full paths restored, same digest, CA string, signatures, all
    assert path_info_entries(json.dumps(reshaped))[missing] is None


def test_object_form_with_valid_false_entry_and_non_dict_value() -> None:
    h = "sha256-" + base64.b64encode(bytes(32)).decode()
    text = json.dumps(
        {
            "/nix/store/" + "a" * 32 + "-ok": {
                "narHash": h,
                "narSize": 8,
                "references": ["b" * 32 + "-dep"],
            },
            "/nix/store/" + "c" * 32 + "-gone": {"valid": False},
            "/nix/store/" + "d" * 32 + "-null": None,
        }
    )
    (info,) = parse_path_info(text)
    assert info.references == ("/nix/store/" + "b" * 32 + "-dep",)
    assert info.nar_hash == bytes(32) and info.deriver is None and not info.ultimate


def test_parse_path_info_edge_cases() -> None:
    assert parse_path_info("") == []
    assert parse_path_info("  \n") == []
    assert parse_path_info("[]") == []
    with pytest.raises(NixError):
        parse_path_info("42")
    with pytest.raises(NixError):
        parse_path_info("[{not json")
    good = "sha256-" + base64.b64encode(bytes(32)).decode()
    p = "/nix/store/" + "a" * 32 + "-x"
    for bad in (
        {"path": p, "narHash": "sha256-AAAA", "narSize": 1},  # 3 bytes
        {
            "path": p,
            "narHash": {"algorithm": "sha256", "format": "base16", "hash": "00" * 31},
            "narSize": 1,
        },
        {
            "path": p,
            "narHash": {"algorithm": "sha512", "format": "base16", "hash": "00" * 64},
            "narSize": 1,
        },
        {
            "path": p,
            "narHash": {"algorithm": "sha256", "format": "base58", "hash": "x"},
            "narSize": 1,
        },
        {"path": p, "narHash": good},  # no narSize
        {"path": p, "narHash": good, "narSize": "big"},
    ):
        with pytest.raises(NixError):
            parse_path_info(json.dumps([bad]))


def test_structured_ca_is_read_as_the_narinfo_string() -> None:
    # --json-format 2 (Nix 2.33+): {"method", "hash": SRI}; narinfo and Attic take the string.
    digest = hashlib.sha256(b"hookd").digest()
    sri = "sha256-" + base64.b64encode(digest).decode()
    p = "/nix/store/" + "a" * 32 + "-x"
    expected = {
        "nar": "fixed:r:sha256:",
        "flat": "fixed:sha256:",
        "text": "text:sha256:",
        "git": "fixed:git:sha256:",
    }
    for method, prefix in expected.items():
        entry = {"narHash": sri, "narSize": 1, "ca": {"method": method, "hash": sri}}
        (info,) = parse_path_info(json.dumps({p: entry}))
        assert info.ca == prefix + nix32_encode(digest)
    with pytest.raises(NixError):
        parse_path_info(json.dumps({p: {"narHash": sri, "narSize": 1, "ca": {"method": "x"}}}))


# -- the Nix wrapper --------------------------------------------------------------------------


@needs_nix
@pytest.mark.nix
def test_query_outputs_returns_every_output(graph: Graph) -> None:
    outs = Nix().query_outputs(graph.drvs["multi"])
    assert len(outs) == 3
    assert sorted(outs) == sorted(graph.outs["multi"])
    names = sorted(os.path.basename(o).split("-", 1)[1] for o in outs)
    assert names == ["multi", "multi-dev", "multi-lib"]
    from_drv, fixed = Nix().derivation_outputs(graph.drvs["multi"])
    assert sorted(from_drv) == sorted(outs) and fixed is False


@needs_nix
@pytest.mark.nix
def test_query_outputs_of_an_unbuilt_drv(graph: Graph) -> None:
    # outputs are known from the .drv alone: the hook's DRV_PATH fallback needs no build
    drv = sh(
        "nix-instantiate",
        str(graph.file),
        "--argstr",
        "nonce",
        graph.nonce + "-unbuilt",
        "-A",
        "multi",
    ).strip()
    outs = Nix().query_outputs(drv)
    assert len(outs) == 3
    assert Nix().path_info(outs) == []


def dump_all(nix: Nix, path: str) -> tuple[bytes, int]:
    async def go() -> tuple[bytes, int]:
        h, chunks = hashlib.sha256(), 0
        async with nix.dump(path) as stream:
            async for block in stream:
                assert 0 < len(block) <= 1 << 20
                h.update(block)
                chunks += 1
        return h.digest(), chunks

    return asyncio.run(go())


@needs_nix
@pytest.mark.nix
def test_dump_streams_the_nar_whose_sha256_is_nar_hash(graph: Graph) -> None:
    nix = Nix()
    for path in (graph.out("leaf"), graph.out("top"), graph.out("big")):
        (info,) = nix.path_info([path])
        digest, chunks = dump_all(nix, path)
        assert digest == info.nar_hash
        assert digest == hashlib.sha256(nar_of(path)).digest()
        if path == graph.out("big"):
            assert info.nar_size > 2 * (1 << 20) and chunks >= 3  # streamed, not read whole


@needs_nix
@pytest.mark.nix
def test_dump_stopped_early_after_an_error_kills_and_reaps(graph: Graph) -> None:
    async def go() -> None:
        async with Nix().dump(graph.out("big")) as stream:
            async for _block in stream:
                raise KeyError("upload failed")

    with pytest.raises(KeyError):
        asyncio.run(asyncio.wait_for(go(), 20))


@needs_nix
@pytest.mark.nix
def test_dump_stopped_early_without_error_reaps_the_process(graph: Graph) -> None:
    async def go() -> int:
        async with Nix().dump(graph.out("big")) as stream:
            async for block in stream:
                return len(block)
        raise AssertionError("no data")

    # bounded: the loop closing the pipe afterwards lets a stuck nix-store die of EPIPE
    assert asyncio.run(asyncio.wait_for(go(), 60)) > 0


@needs_nix
@pytest.mark.nix
def test_dump_of_an_invalid_path_raises_nix_error(graph: Graph) -> None:
    with pytest.raises(NixError, match="nix-store --dump"):
        dump_all(Nix(), f"/nix/store/{'2' * 32}-hookd-missing")


@needs_nix
@pytest.mark.nix
def test_a_call_over_its_timeout_raises_nix_error(graph: Graph) -> None:
    nix = Nix(timeout=0.5)
    argv = [
        "nix-build",
        str(graph.file),
        "--no-out-link",
        "-A",
        "sleepy",
        "--argstr",
        "nonce",
        graph.nonce + "-slow",
    ]
    t0 = time.monotonic()
    with pytest.raises(NixError, match="timed out"):
        nix.run(argv)
    # Gave up at the timeout, did not wait for the 120 s build; the margin is for a loaded
    # machine (evaluating, killing and reaping nix-build wait for a CPU there).
    assert time.monotonic() - t0 < 60
    t0 = time.monotonic()
    with pytest.raises(NixError, match="timed out"):
        Nix().run([*argv[:-1], graph.nonce + "-slow2"], timeout=0.3)  # per-call timeout wins
    assert time.monotonic() - t0 < 60


@needs_nix
@pytest.mark.nix
def test_failing_call_raises_nix_error_with_stderr(graph: Graph) -> None:
    with pytest.raises(NixError, match=r"not valid|error"):
        Nix().run(["nix-store", "-q", "--references", f"/nix/store/{'3' * 32}-nope"])
    assert (
        Nix().run(["nix-store", "-q", "--references", f"/nix/store/{'3' * 32}-nope"], check=False)
        == ""
    )


def test_missing_binaries_raise_nix_error_not_found() -> None:
    nix = Nix(bin_dir=Path("/nonexistent"))
    assert nix.exe("nix-store") == "/nonexistent/nix-store"
    with pytest.raises(NixError, match="not found"):
        nix.run(["nix", "--version"])
    with pytest.raises(NixError, match="not found"):
        nix.path_info(["/nix/store/" + "a" * 32 + "-x"])
    with pytest.raises(NixError, match="not found"):
        nix.query_outputs("/nix/store/" + "a" * 32 + "-x.drv")


def test_child_environment_disables_our_hook_and_drops_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NIX_CONFIG", "post-build-hook = /evil\n")
    monkeypatch.setenv("ATTIC_TOKEN", "secret")
    monkeypatch.setenv("NIX_REMOTE", "daemon")
    env = Nix().env()
    assert "ATTIC_TOKEN" not in env
    assert env["NIX_REMOTE"] == "daemon"
    assert "/evil" not in env["NIX_CONFIG"] and "post-build-hook =" in env["NIX_CONFIG"]


def test_derivation_outputs_read_from_the_drv_file_match_nix_store() -> None:
    from hookd.nix import Nix, parse_drv_outputs
    from tests.conftest import instantiate, nonce

    nix = Nix()
    n = nonce()
    for attr, fixed in (("multi", False), ("d", False), ("fod", True)):
        drv = instantiate(attr, n)
        outs, is_fixed = nix.derivation_outputs(drv)
        assert sorted(outs) == sorted(nix.query_outputs(drv)), attr
        assert is_fixed is fixed, attr
    text = 'Derive([("out","/nix/store/x-a\\"b","",""),("dev","/nix/store/y-c","sha256","ab")],[],'
    assert parse_drv_outputs(text) == [
        ("out", '/nix/store/x-a"b', ""),
        ("dev", "/nix/store/y-c", "sha256"),
    ]
    for bad in ("", "Derive(", 'Derive([("out","/p"', "not a drv"):
        with pytest.raises(ValueError):
            parse_drv_outputs(bad)


def test_derivation_outputs_fall_back_to_nix_store_when_the_file_is_unreadable(
    tmp_path: Path,
) -> None:
    from hookd.errors import NixError
    from hookd.nix import Nix

    missing = "/nix/store/" + "0" * 32 + "-gone.drv"
    with pytest.raises(NixError):
        Nix().derivation_outputs(missing)


def _children_nice(name: str) -> list[int]:
    """The niceness of this process's children called ``name`` (from /proc, any Nix version)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        if comm == name and int(fields[1]) == os.getpid():
            found.append(int(fields[16]))
    return found


@needs_nix
@pytest.mark.nix
def test_nix_processes_run_at_the_configured_niceness(graph: Graph) -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    if base >= 19:
        pytest.skip("the test process already runs at the lowest priority")

    async def go() -> list[int]:
        # The dump child stays alive while we hold its pipe unread: its niceness can be read.
        async with Nix(nice=base + 1).dump(graph.out("big")) as stream:
            async for _block in stream:
                return _children_nice("nix-store")
        raise AssertionError("no data")

    assert asyncio.run(asyncio.wait_for(go(), 20)) == [base + 1]


@needs_nix
def test_stream_lines_yields_what_run_prints_and_classifies_failures(graph: Any) -> None:
    """`stream_lines` (used by backfill for the store's whole listing) gives the same lines as
    the buffered call, one at a time, and turns a failing command into a NixError."""
    nix = Nix()
    argv = ["nix-store", "--query", "--requisites", graph.out("top")]
    assert list(nix.stream_lines(argv)) == nix.run(argv).split()
    with pytest.raises(NixError, match="failed"):
        list(nix.stream_lines(["nix-store", "--query", "--requisites", "/nix/store/not-a-path"]))
    # a consumer that stops early leaves no child behind (the generator kills it)
    lines = nix.stream_lines(["nix", "path-info", "--all"])
    assert next(lines).startswith(nix.store_dir())
    lines.close()


@needs_nix
def test_paths_registered_since_reads_the_store_in_chunks(graph: Any) -> None:
    """Backfill's scan: paths registered at or after a time, each with its metadata."""
    nix = Nix()
    [leaf] = nix.path_info([graph.out("leaf")])
    assert leaf.registration_time is not None
    since = nix.paths_registered_since(leaf.registration_time)
    assert graph.out("leaf") in {p.path for p in since}
    assert all((p.registration_time or 0) >= leaf.registration_time for p in since)
    assert nix.paths_registered_since(time.time() + 3600) == []
