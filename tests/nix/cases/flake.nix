# This repository's flake outputs, with a stand-in nixpkgs whose legacyPackages are the fake pkgs:
# the output names, the package's recipe, its source filter, the templates.
e:
let
  inherit (e) lib;
  flake = e.inputs.hookd;
  pkg = flake.packages.x86_64-linux.default;
  src = pkg.args.src;
  root = toString e.repo;
  srcHas = rel: type: src.filter "${root}/${rel}" type;
in
{
  outputs = builtins.attrNames flake;
  # flake.nix itself is a thin wrapper over nix/outputs.nix.
  inputs = (import (e.repo + "/flake.nix")).inputs;
  systems = builtins.attrNames flake.packages;
  packageNames = lib.mapAttrs (_: builtins.attrNames) flake.packages;
  package = {
    inherit (pkg.args)
      pname
      version
      pyproject
      doCheck
      pythonImportsCheck
      ;
    name = pkg.name;
    # The fast hook entry point is made here; the test runs this script.
    postInstall = pkg.args.postInstall;
    python = (e.fakePkgs "x86_64-linux").python3Packages.python.interpreter;
    buildSystem = map (d: d.name) pkg.args.build-system;
    dependencies = map (d: d.name) pkg.args.dependencies;
    mainProgram = pkg.meta.mainProgram;
    platforms = pkg.meta.platforms;
    overlay = ((flake.overlays.default (e.fakePkgs "x86_64-linux") { }).hookd).name;
  };
  sourceFilter = {
    package = srcHas "hookd/config.py" "regular";
    packageDir = srcHas "hookd" "directory";
    subpackage = srcHas "hookd/targets/base.py" "regular";
    pyproject = srcHas "pyproject.toml" "regular";
    readme = srcHas "README.md" "regular";
    license = srcHas "LICENSE" "regular";
    tests = srcHas "tests/test_nix_modules.py" "regular";
    testsDir = srcHas "tests" "directory";
    nix = srcHas "nix/package.nix" "regular";
    flake = srcHas "flake.nix" "regular";
    bytecode = srcHas "hookd/__pycache__" "directory";
  };
  modules = {
    nixos = builtins.attrNames flake.nixosModules;
    darwin = builtins.attrNames flake.darwinModules;
    homeManager = builtins.attrNames flake.homeManagerModules;
  };
  templates = lib.mapAttrs (_: t: {
    inherit (t) description;
    path = toString t.path;
  }) flake.templates;
  checks = lib.mapAttrs (_: builtins.attrNames) flake.checks;
  ociImage =
    let
      image = flake.packages.x86_64-linux.oci-image;
    in
    {
      inherit (image.args) name tag config;
      contents = map (c: c.name) image.args.contents;
      nixConf = (lib.findFirst (c: c.name == "nix.conf") null image.args.contents).text;
      extraCommands = image.args.extraCommands;
      hookScript = (lib.findFirst (c: c.name == "hookd-post-build-hook") null image.args.contents).text or null;
      hookd = toString pkg;
    };
}
