# Every runner pushes what it builds to the "ci" cache on two Attic servers. Each target has its
# own queue state, retries and circuit breaker, so one server being down does not hold up the other.
{
  services.attic-post-build-hook = {
    enable = true;

    servers = {
      main = {
        endpoint = "https://cache.example.com/";
        tokenFile = "/var/lib/secrets/attic-main-token";
      };
      mirror = {
        endpoint = "https://cache-eu.example.com/";
        tokenFile = "/var/lib/secrets/attic-mirror-token";
      };
    };

    # Anything in hookd's YAML that the short options do not cover.
    settings = {
      targets = [
        {
          server = "main";
          cache = "ci";
        }
        {
          server = "mirror";
          cache = "ci";
        }
      ];
      filter = {
        # Sources and fixed-output downloads are on their upstreams already.
        skip_fixed_output = true;
        # Regular expressions; these skip whole-system closures and installer images.
        exclude = [
          "-nixos-system-"
          "-darwin-system-"
          "\\.iso$"
        ];
      };
      upload.concurrency = 8;
      log.format = "json";
    };

    # A post-build hook the runners already had keeps working: hookd runs it after queueing the
    # paths, logs its failures and never lets it fail the build.
    # extraPostBuildHook = "/etc/nix/notify-dashboard.sh";
  };
}
