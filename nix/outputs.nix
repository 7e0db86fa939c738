# The flake's outputs (flake.nix only forwards its inputs here).
{ self, nixpkgs, ... }:

let
  inherit (nixpkgs) lib;

  systems = [
    "x86_64-linux"
    "aarch64-linux"
    "x86_64-darwin"
    "aarch64-darwin"
  ];
  forAllSystems = f: lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});

  modules = import ./modules { packages = self.packages; };

  template = name: description: {
    inherit description;
    path = ../templates + "/${name}";
    welcomeText = ''
      # hookd: ${description}
      Read README.md in this directory: it lists what to edit before the first switch.
    '';
  };
in
{
  packages = forAllSystems (
    system: pkgs:
    rec {
      hookd = pkgs.callPackage ./package.nix { };
      default = hookd;
    }
    # Linux containers only; `nix build .#oci-image` (docs/kubernetes.md).
    // lib.optionalAttrs (lib.hasSuffix "-linux" system) {
      oci-image = pkgs.callPackage ./oci-image.nix { hookd = self.packages.${system}.hookd; };
    }
  );

  overlays.default = final: _prev: { hookd = final.callPackage ./package.nix { }; };

  # attic-client, attic-client-darwin: nix-attic-infra's module names (the same modules; their
  # options are mapped in nix/modules/compat-attic-infra.nix).
  nixosModules = {
    attic-post-build-hook = modules.nixos;
    attic-client = modules.nixos;
    default = modules.nixos;
  };
  darwinModules = {
    attic-post-build-hook = modules.darwin;
    default = modules.darwin;
  };
  homeManagerModules = {
    attic-post-build-hook = modules.homeManager;
    attic-client = modules.homeManager;
    attic-client-darwin = modules.homeManager;
    default = modules.homeManager;
  };

  templates = {
    basic-client = template "basic-client" "a NixOS host pushing its builds to one Attic cache";
    automated-client = template "automated-client" "CI builders (NixOS and macOS) pushing to several caches";
    secure-enterprise = template "secure-enterprise" "tokens from sops-nix, NixOS hosts and developer home-manager setups";
    default = self.templates.basic-client;
  };

  checks = forAllSystems (import ./checks.nix { inherit self nixpkgs; });
}
