# The pull side (services.attic-post-build-hook.pull) and nix-attic-infra compatibility, for
# tests/test_nix_modules.py: each scenario returns what the host gets (nix.conf text, the netrc
# script and the units that run it, hookd's YAML) and the failed assertions and warnings of
# hookd's module files.
e:
let
  inherit (e) lib;
  files = [
    "nix/modules/nixos.nix"
    "nix/modules/darwin.nix"
    "nix/modules/home-manager.nix"
    "nix/modules/pull-nixos.nix"
    "nix/modules/pull-darwin.nix"
    "nix/modules/pull-home-manager.nix"
    "nix/modules/compat-attic-infra.nix"
  ];
  failed = ev: lib.concatMap (e.failedFrom ev) files;
  warnings = ev: lib.concatMap (e.warningsFrom ev) files;
  provisionJson = e.repo + "/tests/nix/data/provision-nix-config.json";

  pullCfg = {
    enable = true;
    caches.main = {
      url = "https://cache.example.com/main";
      publicKey = "main:1aL6vcQ7mKF0oEXlHsV330qXTMfafsN2radupW8OSMM=";
      priority = 30;
    };
    nixConfigFile = provisionJson;
    priority = 45;
  };
  server = {
    endpoint = "https://cache.example.com";
    tokenFile = "/run/secrets/attic-token";
  };

  nixosHost = modules: e.nixos { modules = [ e.flakeModules.nixos ] ++ modules; };
  nixosView =
    ev:
    let
      c = ev.config;
    in
    {
      failed = failed ev;
      warnings = warnings ev;
      nixConf = c.environment.etc."nix/nix.conf".source.text;
      hasDaemon = c.systemd.services ? hookd;
      yaml = c.environment.etc."hookd/config.yaml".source.text or null;
      netrcScript = c.systemd.services.hookd-netrc.serviceConfig.ExecStart or null;
      netrcScriptText = c.services.attic-post-build-hook.pull.netrcScript.text;
      netrcUnit = c.systemd.units."hookd-netrc.service".unit.env.text or null;
      netrcPathUnit = c.systemd.units."hookd-netrc.path".unit.env.text or null;
      rotatedUnit = c.systemd.units."hookd-netrc-rotated.service".unit.env.text or null;
      protectHome = c.systemd.services.hookd.serviceConfig.ProtectHome or null;
      groups = lib.attrNames c.users.groups;
      daemonUser = c.systemd.services.hookd.serviceConfig.User or null;
    };

  darwinView =
    ev:
    let
      c = ev.config;
      daemon = c.launchd.daemons.hookd-netrc or null;
    in
    {
      failed = failed ev;
      warnings = warnings ev;
      nixConf = c.environment.etc."nix/nix.conf".source.text;
      netrcDaemon = if daemon == null then null else daemon.serviceConfig;
      netrcPlist = c.environment.launchDaemons."org.nixos.hookd-netrc.plist".text or null;
      activation = c.system.activationScripts.postActivation.text;
    };

  hm =
    system: modules:
    e.homeManager {
      inherit system;
      modules = [ e.flakeModules.homeManager ] ++ modules;
    };
  hmView =
    ev:
    let
      c = ev.config;
    in
    {
      failed = failed ev;
      warnings = warnings ev;
      nixConf = c.xdg.configFile."nix/nix.conf".source.text or null;
      yaml = c.xdg.configFile."hookd/config.yaml".source.text or null;
      atticToml = c.xdg.configFile."attic/config.toml".source.value or null;
      activation = c.home.activation.hookdNetrc.data or null;
      userPath = c.systemd.user.paths.hookd-netrc or null;
      userService = c.systemd.user.services.hookd-netrc or null;
      agent = c.launchd.agents.hookd-netrc.config or null;
      watchStoreUnits = lib.mapAttrs (_: s: s.Install.WantedBy or null) (
        lib.filterAttrs (n: _: lib.hasPrefix "attic-watch-store--" n) c.systemd.user.services
      );
    };
in
{
  nixos = {
    # A pull-only host: no daemon, substituters from options and from `hookd provision`'s JSON.
    pullOnly = nixosView (nixosHost [
      {
        services.attic-post-build-hook.pull = pullCfg // {
          netrc."cache.example.com" = "/run/secrets/attic-pull-token";
        };
      }
    ]);
    # Push and pull with one token: the server's token file is the netrc entry.
    pushAndPull = nixosView (nixosHost [
      {
        services.attic-post-build-hook = {
          enable = true;
          cacheName = "main";
          servers.main = server;
          pull.enable = true;
          pull.caches.main.url = "https://cache.example.com/main";
        };
      }
    ]);
    # Public caches only: no netrc, no units.
    publicOnly = nixosView (nixosHost [
      { services.attic-post-build-hook.pull = { enable = true; nixConfigFile = provisionJson; }; }
    ]);
    bad = lib.mapAttrs (_: ev: failed ev) {
      nothing = nixosHost [ { services.attic-post-build-hook.pull.enable = true; } ];
      storeToken = nixosHost [
        {
          services.attic-post-build-hook.pull = pullCfg // {
            netrc."cache.example.com" = "/nix/store/00000000000000000000000000000000-token";
            netrcFile = "relative/netrc";
          };
        }
      ];
      # nix-attic-infra's serverHostnames: no hook on the cache server (default list).
      cacheServer = nixosHost [
        {
          networking.hostName = "atticd";
          services.attic-post-build-hook = {
            enable = true;
            cacheName = "main";
            servers.main = server;
          };
        }
      ];
      ownServerList = nixosHost [
        {
          services.attic-post-build-hook = {
            enable = true;
            cacheName = "main";
            servers.main = server;
            serverHostnames = [ "builder" ];
          };
        }
      ];
      tokenWithoutEndpoint = nixosHost [
        {
          services.attic-post-build-hook = {
            enable = true;
            cacheName = "main";
            servers.main = server;
            tokenFile = "/run/secrets/attic-token";
          };
        }
      ];
      clientPostBuildHook = nixosHost [
        {
          services.attic-client = {
            enable = true;
            secretsBackend = "none";
            manualTokenPath = "/run/secrets/attic-client-token";
            server = "https://cache.example.com";
            cache = "main";
            enablePostBuildHook = true;
          };
        }
      ];
    };
    # nix-attic-infra's quick start, as its README writes it (flake and all).
    quickStart = nixosView (
      let
        flake = {
          outputs =
            {
              self,
              nixpkgs,
              nix-attic-infra,
            }:
            {
              nixosConfigurations.myhost = nixpkgs.lib.nixosSystem {
                modules = [
                  nix-attic-infra.nixosModules.attic-post-build-hook
                  {
                    services.attic-post-build-hook = {
                      enable = true;
                      cacheName = "my-team-cache";
                      user = "builder";
                    };
                  }
                ];
              };
            };
        };
        self = flake.outputs {
          inherit self;
          inherit (e.inputs) nixpkgs;
          nix-attic-infra = e.inputs.hookd;
        };
      in
      self.nixosConfigurations.myhost
    );
    # Both of hookd's names imported at once (nix-attic-infra users had both): one module.
    bothNames = nixosView (e.nixos {
      modules = [
        e.inputs.hookd.nixosModules.attic-post-build-hook
        e.inputs.hookd.nixosModules.attic-client
        {
          services.attic-post-build-hook = {
            enable = true;
            cacheName = "main";
            servers.main = server;
          };
        }
      ];
    });
    # nix-attic-infra's other post-build-hook options.
    legacyOptions = nixosView (nixosHost [
      {
        services.attic-post-build-hook = {
          enable = true;
          serverName = "attic";
          cacheName = "main";
          serverEndpoint = "https://cache.example.com";
          tokenFile = "/run/secrets/attic-client-token";
          verbose = true;
        };
      }
    ]);
    # nix-attic-infra's NixOS attic-client (the pull side), by its module name.
    atticClient = nixosView (e.nixos {
      modules = [
        e.inputs.hookd.nixosModules.attic-client
        {
          services.attic-client = {
            enable = true;
            secretsBackend = "none";
            manualTokenPath = "/run/secrets/attic-client-token";
            server = "https://cache.example.com/";
            cache = "main";
            trustedPublicKeys = [ "main:1aL6vcQ7mKF0oEXlHsV330qXTMfafsN2radupW8OSMM=" ];
          };
        }
      ];
    });
  };

  darwin = darwinView (e.darwin {
    modules = [
      e.flakeModules.darwin
      {
        services.attic-post-build-hook.pull = pullCfg // {
          netrc."cache.example.com" = "/var/run/secrets/attic-pull-token";
        };
      }
    ];
  });

  # The quick start's meaning of `user` on nix-darwin too.
  darwinAtticLogin =
    let
      ev = e.darwin {
        modules = [
          e.flakeModules.darwin
          {
            services.attic-post-build-hook = {
              enable = true;
              cacheName = "my-team-cache";
              user = "builder";
            };
          }
        ];
      };
    in
    {
      failed = failed ev;
      yaml = ev.config.environment.etc."hookd/config.yaml".source.text;
      userName = ev.config.launchd.daemons.hookd.serviceConfig.UserName;
    };

  home = {
    linux = hmView (hm "x86_64-linux" [
      (
        { pkgs, ... }:
        {
          nix.package = pkgs.nix;
          services.attic-post-build-hook = {
            servers.main = server // { tokenFile = "/home/alice/.config/sops-nix/secrets/attic-token"; };
            pull = pullCfg;
          };
        }
      )
    ]);
    darwin = hmView (hm "aarch64-darwin" [
      (
        { pkgs, ... }:
        {
          nix.package = pkgs.nix;
          services.attic-post-build-hook.pull = pullCfg // {
            netrc."cache.example.com" = "/Users/alice/.config/sops-nix/secrets/attic-token";
          };
        }
      )
    ]);
    noNixPackage = failed (hm "x86_64-linux" [ { services.attic-post-build-hook.pull = pullCfg; } ]);
    # nix-attic-infra's home-manager snippet, as its README writes it, plus hookd's hook.
    seedClient = hmView (hm "x86_64-linux" [
      e.inputs.hookd.homeManagerModules.attic-client
      {
        programs.attic-client = {
          enable = true;
          servers.my-server = {
            endpoint = "https://cache.example.com";
            tokenPath = "/home/user/.config/sops/attic-token";
          };
        };
      }
      {
        services.attic-post-build-hook = {
          enable = true;
          cacheName = "main";
        };
      }
    ]);
    seedClientDarwin = hmView (hm "aarch64-darwin" [
      e.inputs.hookd.homeManagerModules.attic-client-darwin
      {
        programs.attic-client = {
          enable = true;
          servers = {
            production = {
              endpoint = "https://cache.prod.example.com";
              tokenPath = "/path/to/sops/token";
            };
            development = {
              endpoint = "http://cache.dev.example.com:5001";
              tokenPath = "/path/to/dev/token";
            };
          };
        };
      }
    ]);
    # Only a cache name: the user's own `attic login`.
    atticLogin = hmView (hm "x86_64-linux" [
      {
        services.attic-post-build-hook = {
          enable = true;
          cacheName = "main";
        };
      }
    ]);
    # home-manager's own attic-client settings and watchStore: hookd takes servers and targets.
    watchStore = hmView (hm "x86_64-linux" [
      {
        programs.attic-client = {
          enable = true;
          settings = {
            default-server = "prod";
            servers.prod = {
              endpoint = "https://cache.example.com/";
              token-file = "/home/alice/.config/attic/prod-token";
            };
            servers.legacy = {
              endpoint = "https://old.example.com/";
              token = "inline";
            };
          };
          watchStore = [
            "prod:main"
            "nightly"
          ];
        };
        services.attic-post-build-hook.enable = true;
      }
    ]);
  };
}
