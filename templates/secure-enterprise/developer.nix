# A developer's home-manager configuration: a user-level hookd, the token from sops-nix's
# home-manager module, and the attic CLI configured for the same server.
{ config, pkgs, ... }:
{
  home.username = "developer";
  home.homeDirectory = "/home/developer";
  home.stateVersion = "24.05";

  sops.age.keyFile = "${config.xdg.configHome}/sops/age/keys.txt";
  sops.defaultSopsFile = ./secrets/developer.yaml;
  sops.secrets.attic-token = { };

  services.attic-post-build-hook = {
    enable = true;
    cacheName = "dev";
    servers.corp = {
      endpoint = "https://attic.corp.example/";
      tokenFile = config.sops.secrets.attic-token.path;
    };
    # Also write programs.attic-client.settings (~/.config/attic/config.toml) with the same
    # server and token-file, so `attic push corp:dev ./result` works by hand.
    configureAtticClient = true;
  };

  # home-manager then writes ~/.config/nix/nix.conf, with hookd's post-build-hook in it
  # (services.attic-post-build-hook.setPostBuildHook defaults to on when nix.package is set).
  nix.package = pkgs.nix;

  # sops-nix decrypts in a user service; start hookd after it.
  systemd.user.services.hookd.Unit.After = [ "sops-nix.service" ];
}
