#!/usr/bin/env bash
# fetch-sources.sh DEST: download the module trees that tests/test_nix_modules.py evaluates the
# Nix modules in (about 20 MB once laid out, read only) and lay them out in DEST:
#
#   DEST/nixpkgs/lib        lib/ of nix-community/nixpkgs.lib
#   DEST/nixpkgs/nixos      nixos/lib and nixos/modules of a mid-2024 nixpkgs (Nix 2.8 can
#                           evaluate it; current nixos/ needs Nix >= 2.18), from the copy in
#                           RossComputerGuy/nixpkgs-llvm-ws
#   DEST/nixpkgs/maintainers/maintainer-list.nix     stand-in: { }
#   DEST/nixpkgs/modules/generic/meta-maintainers.nix stand-in module declaring meta.maintainers
#   DEST/home-manager       nix-community/home-manager
#   DEST/nix-darwin         nix-darwin/nix-darwin
#   DEST/SOURCES.txt        the commit of each
#
# Then: HOOKD_NIX_SOURCES=DEST pytest tests/test_nix_modules.py
#
# The commits below are the ones the tests were written against; override any of them (and the
# URLs) through the environment: HOOKD_SRC_{LIB,NIXOS,HM,DARWIN}_{URL,REV}. The trees are other
# projects' code (MIT): never commit them into this repository.
set -euo pipefail
if [ $# -ne 1 ]; then sed -n '2,21p' "$0"; exit 2; fi
dest=$1

LIB_URL=${HOOKD_SRC_LIB_URL:-https://github.com/nix-community/nixpkgs.lib}
LIB_REV=${HOOKD_SRC_LIB_REV:-de42d44212d207476489bce163375d8306a26d59}
NIXOS_URL=${HOOKD_SRC_NIXOS_URL:-https://github.com/RossComputerGuy/nixpkgs-llvm-ws}
NIXOS_REV=${HOOKD_SRC_NIXOS_REV:-ac550b7a74f861a3759482b295d84c3f4d0610cd}
HM_URL=${HOOKD_SRC_HM_URL:-https://github.com/nix-community/home-manager}
HM_REV=${HOOKD_SRC_HM_REV:-ec1a8fdf74ed3f276148ee106299a2ba0e65d51f}
DARWIN_URL=${HOOKD_SRC_DARWIN_URL:-https://github.com/nix-darwin/nix-darwin}
DARWIN_REV=${HOOKD_SRC_DARWIN_REV:-a1fa429e945becaf60468600daf649be4ba0350c}

work=$(mktemp -d "${TMPDIR:-/tmp}/hookd-nix-sources.XXXXXX")
trap 'rm -rf "$work"' EXIT

# fetch URL REV NAME [PATH…]: one commit, without history; with PATHs, only those directories.
fetch() {
  local url=$1 rev=$2 name=$3
  shift 3
  local repo=$work/git/$name
  git init -q "$repo"
  git -C "$repo" remote add origin "$url"
  git -C "$repo" fetch -q --depth 1 --filter=blob:none origin "$rev"
  if [ $# -gt 0 ]; then
    git -C "$repo" sparse-checkout set --no-cone "$@"
  fi
  git -C "$repo" -c advice.detachedHead=false checkout -q FETCH_HEAD
  echo "$name $(git -C "$repo" rev-parse HEAD)"
}

tree=$work/tree
mkdir -p "$tree/nixpkgs/maintainers" "$tree/nixpkgs/modules/generic"
{
  echo "fetching (one commit each)…" >&2
  fetch "$LIB_URL" "$LIB_REV" lib /lib
  fetch "$NIXOS_URL" "$NIXOS_REV" nixos /nixos/lib /nixos/modules
  fetch "$HM_URL" "$HM_REV" home-manager
  fetch "$DARWIN_URL" "$DARWIN_REV" nix-darwin
} > "$work/revs"

cp -R "$work/git/lib/lib" "$tree/nixpkgs/lib"
rm -rf "$tree/nixpkgs/lib/tests"
mkdir -p "$tree/nixpkgs/nixos"
cp -R "$work/git/nixos/nixos/lib" "$work/git/nixos/nixos/modules" "$tree/nixpkgs/nixos/"
for name in home-manager nix-darwin; do
  rm -rf "$work/git/$name/.git"
  mv "$work/git/$name" "$tree/$name"
done

printf '%s\n' '# Stand-in: the real list is large and only read when a maintainer is forced.' '{ }' \
  > "$tree/nixpkgs/maintainers/maintainer-list.nix"
cat > "$tree/nixpkgs/modules/generic/meta-maintainers.nix" <<'NIX'
# Stand-in for the nixpkgs module that declares meta.maintainers; accepts any list.
{ lib, ... }:
{
  options.meta.maintainers = lib.mkOption {
    type = lib.types.listOf lib.types.raw;
    default = [ ];
    internal = true;
  };
}
NIX
{
  while read -r name rev; do
    case $name in
      lib) echo "nixpkgs/lib     $LIB_URL @ $rev" ;;
      nixos) echo "nixpkgs/nixos   $NIXOS_URL @ $rev (path nixos/)" ;;
      home-manager) echo "home-manager    $HM_URL @ $rev" ;;
      nix-darwin) echo "nix-darwin      $DARWIN_URL @ $rev" ;;
    esac
  done < "$work/revs"
  echo "All MIT licensed; see each project's licence file."
} > "$tree/SOURCES.txt"

rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$tree" "$dest"
echo "laid out $(find "$dest" -type f | wc -l) files in $dest; now: HOOKD_NIX_SOURCES=$dest pytest tests/test_nix_modules.py"
