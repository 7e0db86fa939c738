# The modules as the flake exports them: each imports the plain module and defaults `package` to
# the flake's own build for the host's system (or, for a system the flake does not list, to
# hookd built from the same source with the user's pkgs).
#
#   import ./nix/modules { packages = self.packages; }
{ packages }:

let
  withPackage =
    name: module:
    { lib, pkgs, ... }:
    {
      _file = "${toString ./.}/default.nix#${name}";
      key = "${toString ./.}/default.nix#${name}";
      imports = [ module ];
      config.services.attic-post-build-hook.package = lib.mkDefault (
        packages.${pkgs.stdenv.hostPlatform.system}.default or (pkgs.callPackage ../package.nix { })
      );
    };
in
{
  nixos = withPackage "nixos" ./nixos.nix;
  darwin = withPackage "darwin" ./darwin.nix;
  homeManager = withPackage "homeManager" ./home-manager.nix;
}
