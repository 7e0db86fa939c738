# The builder's push token comes from sops-nix. It stays root-only (sops-nix's default: owner
# root, mode 0400): systemd hands it to the hookd daemon with LoadCredential, so the daemon never
# reads /run/secrets and no other account needs access to it.
{ config, ... }:
{
  sops.defaultSopsFile = ./secrets/builder.yaml;
  sops.secrets."attic/push-token" = {
    # LoadCredential copies the token when the service starts: restart hookd after a rotation.
    # (The module's hookd-tokens.path watches the file, but sops-nix does not rewrite it: it
    # swaps the /run/secrets symlink to a new generation, which systemd does not report.)
    restartUnits = [ "hookd.service" ];
  };

  services.attic-post-build-hook = {
    enable = true;
    cacheName = "prod";
    servers.corp = {
      endpoint = "https://attic.corp.example/";
      tokenFile = config.sops.secrets."attic/push-token".path;
    };
    settings = {
      # Keep sources and fixed-output downloads too, so builds do not depend on the internet.
      filter = {
        skip_sources = false;
        skip_fixed_output = false;
      };
      # Push everything, even what cache.nixos.org already has.
      upload.ignore_upstream = true;
      log = {
        format = "json";
        level = "info";
      };
    };
  };
}
