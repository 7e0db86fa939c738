{
  description = "CI builders (NixOS and macOS) pushing every build to several Attic caches with hookd";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    nix-darwin.url = "github:nix-darwin/nix-darwin";
    nix-darwin.inputs.nixpkgs.follows = "nixpkgs";
    # github:hookd/hookd is a placeholder: replace it with where you host hookd (a fork, a mirror
    # or a local checkout: "path:/src/hookd").
    hookd.url = "github:hookd/hookd";
    hookd.inputs.nixpkgs.follows = "nixpkgs";
  };

  outputs =
    {
      nixpkgs,
      nix-darwin,
      hookd,
      ...
    }:
    {
      # The same ./hookd.nix on both: the NixOS and nix-darwin modules share one option schema.
      nixosConfigurations.ci-runner = nixpkgs.lib.nixosSystem {
        system = "x86_64-linux";
        modules = [
          hookd.nixosModules.default
          ./hookd.nix
          ./ci-runner.nix
        ];
      };

      darwinConfigurations.mac-runner = nix-darwin.lib.darwinSystem {
        modules = [
          hookd.darwinModules.default
          ./hookd.nix
          ./mac-runner.nix
        ];
      };
    };
}
