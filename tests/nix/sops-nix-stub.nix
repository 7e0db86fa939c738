# Stand-in for sops-nix's module (NixOS or home-manager flavour), declaring just what the
# templates use: the secrets' paths are computed as sops-nix computes them.
{ homeManager ? false }:
{ config, lib, ... }:
let
  secretsDir = if homeManager then "${config.xdg.configHome}/sops-nix/secrets" else "/run/secrets";
in
{
  options.sops = {
    defaultSopsFile = lib.mkOption { type = lib.types.path; };
    age.keyFile = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
    };
    secrets = lib.mkOption {
      default = { };
      type = lib.types.attrsOf (
        lib.types.submodule (
          { name, ... }:
          {
            options = {
              path = lib.mkOption {
                type = lib.types.str;
                default = "${secretsDir}/${name}";
              };
              owner = lib.mkOption {
                type = lib.types.str;
                default = "root";
              };
              mode = lib.mkOption {
                type = lib.types.str;
                default = "0400";
              };
              restartUnits = lib.mkOption {
                type = lib.types.listOf lib.types.str;
                default = [ ];
              };
            };
          }
        )
      );
    };
  };
}
