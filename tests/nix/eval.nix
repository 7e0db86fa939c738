# Evaluate configurations in the real NixOS, nix-darwin and home-manager module systems, with
# the fake package set. Used by tests/test_nix_modules.py:
#
#   nix-instantiate --readonly-mode --eval --strict --json tests/nix/eval.nix \
#     --arg sources /var/cache/hookd-nix-sources --arg expr 'e: …'
#
# `expr` receives the helpers below and returns plain data for the test to check.
{
  sources,
  expr,
}:

let
  lib = import (sources + "/nixpkgs/lib");
  repo = ../..;

  systems = [
    "x86_64-linux"
    "aarch64-linux"
    "x86_64-darwin"
    "aarch64-darwin"
  ];

  fakePkgs =
    system:
    import ./fake-pkgs.nix {
      inherit lib system;
      path = sources + "/nixpkgs";
    };

  # Assertions and warnings defined by one file (checking every NixOS assertion needs real
  # derivations, so only the hookd module's own are collected).
  # The values one file defines for an option (a dotted path).
  valuesFrom =
    eval: file: what:
    map (d: d.value) (
      lib.filter (d: lib.hasSuffix file d.file)
        (lib.getAttrFromPath (lib.splitString "." what) eval.options).definitionsWithLocations
    );
  fromFile = eval: file: what: lib.concatLists (valuesFrom eval file what);

  # The module's options as the NixOS/home-manager/nix-darwin manuals would list them (forces
  # every description, type and default text).
  optionDocs =
    eval:
    map (o: {
      inherit (o) name description type;
      default = o.default or null;
    }) (
      lib.filter (o: !lib.hasInfix "._module." o.name) (
        lib.optionAttrSetToDocList eval.options.services.attic-post-build-hook
      )
    );
  failedFrom =
    eval: file: map (a: a.message) (lib.filter (a: !a.assertion) (fromFile eval file "assertions"));
  warningsFrom = eval: file: fromFile eval file "warnings";

  nixos =
    {
      modules,
      system ? "x86_64-linux",
      specialArgs ? { },
    }:
    import (sources + "/nixpkgs/nixos/lib/eval-config.nix") {
      inherit system lib specialArgs;
      pkgs = fakePkgs system;
      modules = [
        {
          system.stateVersion = lib.mkDefault "24.05";
          networking.hostName = lib.mkDefault "builder";
        }
      ]
      ++ modules;
    };

  darwin =
    {
      modules,
      system ? "aarch64-darwin",
      specialArgs ? { },
    }:
    import (sources + "/nix-darwin/eval-config.nix") {
      inherit lib specialArgs;
      modules = [
        (
          { config, ... }:
          {
            nixpkgs.hostPlatform = lib.mkDefault system;
            nixpkgs.pkgs = fakePkgs config.nixpkgs.hostPlatform.system;
            system.stateVersion = lib.mkDefault 6;
          }
        )
      ]
      ++ modules;
    };

  # As home-manager's NixOS module does with useGlobalPkgs: the given pkgs, no nixpkgs import.
  homeManager =
    {
      modules,
      system ? "x86_64-linux",
      pkgs ? fakePkgs system,
      extraSpecialArgs ? { },
    }:
    let
      hmLib = import (sources + "/home-manager/modules/lib/stdlib-extended.nix") lib;
      darwin = pkgs.stdenv.hostPlatform.isDarwin;
    in
    hmLib.evalModules {
      class = "homeManager";
      specialArgs = {
        modulesPath = toString (sources + "/home-manager/modules");
      }
      // extraSpecialArgs;
      modules =
        import (sources + "/home-manager/modules/modules.nix") {
          inherit pkgs;
          lib = hmLib;
          useNixpkgsModule = false;
        }
        ++ [
          {
            home.username = lib.mkDefault "alice";
            home.homeDirectory = lib.mkDefault (if darwin then "/Users/alice" else "/home/alice");
            home.stateVersion = lib.mkDefault "24.05";
          }
        ]
        ++ modules;
    };

  # Stand-ins for flake inputs, backed by the real module systems and the fake pkgs.
  inputs = rec {
    nixpkgs = {
      outPath = sources + "/nixpkgs";
      lib = lib // {
        # The real one takes the system from nixpkgs.hostPlatform when `system` is not given
        # (hardware-configuration.nix sets it); the stand-in defaults to x86_64-linux.
        nixosSystem =
          args:
          nixos {
            inherit (args) modules;
            system = args.system or "x86_64-linux";
            specialArgs = args.specialArgs or { };
          };
      };
      legacyPackages = lib.genAttrs systems fakePkgs;
    };
    # This repository's flake, with the stand-in nixpkgs as its input.
    hookd = import (repo + "/nix/outputs.nix") {
      self = hookd // {
        outPath = repo;
      };
      inherit nixpkgs;
    };
    nix-darwin.lib.darwinSystem =
      args:
      darwin {
        inherit (args) modules;
        specialArgs = args.specialArgs or { };
      };
    home-manager.lib.homeManagerConfiguration =
      args:
      homeManager {
        inherit (args) modules pkgs;
        extraSpecialArgs = args.extraSpecialArgs or { };
      };
    sops-nix = {
      nixosModules.sops = import ./sops-nix-stub.nix { };
      homeManagerModules.sops = import ./sops-nix-stub.nix { homeManager = true; };
    };
  };

  # A template's flake outputs, given the stand-in inputs.
  template =
    name:
    let
      flake = import (repo + "/templates/${name}/flake.nix");
      self = flake.outputs (inputs // { inherit self; });
    in
    self;
in
expr {
  inherit
    lib
    repo
    sources
    fakePkgs
    fromFile
    valuesFrom
    optionDocs
    failedFrom
    warningsFrom
    nixos
    darwin
    homeManager
    inputs
    template
    ;
  flakeModules = {
    nixos = inputs.hookd.nixosModules.default;
    darwin = inputs.hookd.darwinModules.default;
    homeManager = inputs.hookd.homeManagerModules.default;
  };
}
