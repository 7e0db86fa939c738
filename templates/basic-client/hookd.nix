# Push everything this host builds to one Attic cache.
{
  services.attic-post-build-hook = {
    enable = true;
    cacheName = "main";
    servers.main = {
      endpoint = "https://cache.example.com/";
      # A root-only file (chmod 600) holding a token that may push to "main", e.g. from
      #   atticadm make-token --sub my-host --validity "1y" --pull main --push main
      # systemd hands it to the daemon (LoadCredential); it never enters the Nix store.
      tokenFile = "/var/lib/secrets/attic-token";
    };
  };
}
