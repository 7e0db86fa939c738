{
  description = "A NixOS host that pushes every build to an Attic cache with hookd";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    # github:hookd/hookd is a placeholder: replace it with where you host hookd (a fork, a mirror
    # or a local checkout: "path:/src/hookd").
    hookd.url = "github:hookd/hookd";
    hookd.inputs.nixpkgs.follows = "nixpkgs";
  };

  outputs =
    { nixpkgs, hookd, ... }:
    {
      nixosConfigurations.my-host = nixpkgs.lib.nixosSystem {
        system = "x86_64-linux";
        modules = [
          hookd.nixosModules.default
          ./configuration.nix
          ./hookd.nix
        ];
      };
    };
}
