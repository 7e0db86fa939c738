# home-manager scenarios for tests/test_nix_modules.py, evaluated in the real home-manager module
# system: the systemd user service on Linux, the launchd agent on macOS, and upstream's
# programs.attic-client, which the module fills in only when asked.
e:
let
  inherit (e) lib;
  file = "nix/modules/home-manager.nix";
  server = {
    endpoint = "https://cache.example.com";
    tokenFile = "/home/alice/.config/sops-nix/secrets/attic-token";
  };
  base = {
    enable = true;
    cacheName = "main";
    servers.main = server;
  };
  home =
    system: modules:
    e.homeManager {
      inherit system;
      modules = [ e.flakeModules.homeManager ] ++ modules;
    };
  checks = ev: {
    failed = e.failedFrom ev file;
    warnings = e.warningsFrom ev file;
  };
  view =
    ev:
    let
      c = ev.config;
      h = c.services.attic-post-build-hook;
    in
    checks ev
    // {
      hook = h.postBuildHook.text;
      yaml = c.xdg.configFile."hookd/config.yaml".source.text;
      activation = c.home.activation.hookdStateDir.data;
      atticClient = {
        inherit (c.programs.attic-client) enable settings;
      };
      nixSettings = c.nix.settings;
      packages = map toString (e.fromFile ev file "home.packages");
    };
  linux = modules: home "x86_64-linux" modules;
in
{
  linux =
    let
      ev = linux [ { services.attic-post-build-hook = base; } ];
    in
    view ev
    // {
      service = ev.config.systemd.user.services.hookd;
      optionDocs = e.optionDocs ev;
    };

  linuxAsked =
    let
      ev = linux [
        (
          { pkgs, ... }:
          {
            nix.package = pkgs.nix;
            services.attic-post-build-hook = base // {
              configureAtticClient = true;
              extraPostBuildHook = "/home/alice/bin/notify";
            };
          }
        )
      ];
    in
    view ev;

  darwin =
    let
      ev = home "aarch64-darwin" [ { services.attic-post-build-hook = base // { configureAtticClient = true; }; } ];
      agent = ev.config.launchd.agents.hookd;
    in
    view ev
    // {
      agent = agent.config;
      # home-manager writes each agent with lib.generators.toPlist; render it the same way.
      plist = lib.generators.toPlist { escape = true; } (lib.filterAttrs (_: v: v != null) agent.config);
      systemdServices = builtins.attrNames ev.config.systemd.user.services;
    };

  bad = lib.mapAttrs (_: ev: (checks ev).failed) {
    storeToken = linux [ { services.attic-post-build-hook = base // { servers.main = server // { tokenFile = "/nix/store/00000000000000000000000000000000-attic-token"; }; }; } ];
    hookWithoutNixPackage = linux [ { services.attic-post-build-hook = base // { setPostBuildHook = true; }; } ];
    # A home-manager without programs.attic-client (before 2026-07).
    noAtticClient = linux [
      {
        disabledModules = [ "programs/attic-client.nix" ];
        services.attic-post-build-hook = base // { configureAtticClient = true; };
      }
    ];
  };
}
