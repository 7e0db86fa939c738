{
  description = "hookd with tokens from sops-nix: NixOS builders and developers' home-manager setups";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    sops-nix.url = "github:Mic92/sops-nix";
    sops-nix.inputs.nixpkgs.follows = "nixpkgs";
    home-manager.url = "github:nix-community/home-manager";
    home-manager.inputs.nixpkgs.follows = "nixpkgs";
    # github:hookd/hookd is a placeholder: replace it with where you host hookd (a fork, a mirror
    # or a local checkout: "path:/src/hookd").
    hookd.url = "github:hookd/hookd";
    hookd.inputs.nixpkgs.follows = "nixpkgs";
  };

  outputs =
    {
      nixpkgs,
      sops-nix,
      home-manager,
      hookd,
      ...
    }:
    {
      # A shared builder: the system daemon pushes every build on the machine.
      nixosConfigurations.builder = nixpkgs.lib.nixosSystem {
        system = "x86_64-linux";
        modules = [
          sops-nix.nixosModules.sops
          hookd.nixosModules.default
          ./builder.nix
          ./hookd.nix
        ];
      };

      # A developer's own machine without system access: a user daemon, and the `attic` CLI
      # configured for the same server.
      homeConfigurations.developer = home-manager.lib.homeManagerConfiguration {
        pkgs = nixpkgs.legacyPackages.x86_64-linux;
        modules = [
          sops-nix.homeManagerModules.sops
          hookd.homeManagerModules.default
          ./developer.nix
        ];
      };
    };
}
