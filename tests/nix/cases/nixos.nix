# NixOS scenarios for tests/test_nix_modules.py: each evaluates a host in the real NixOS module
# system and returns what a user gets (generated files, unit text, options) plus the hookd
# module's failed assertions and warnings.
e:
let
  inherit (e) lib;
  file = "nix/modules/nixos.nix";
  server = {
    endpoint = "https://cache.example.com";
    tokenFile = "/run/secrets/attic-token";
  };
  base = {
    enable = true;
    cacheName = "main";
    servers.main = server;
  };

  # The tree's NixOS may predate services.atticd: declare a stand-in option then.
  hasAtticd = builtins.pathExists (e.sources + "/nixpkgs/nixos/modules/services/networking/atticd.nix");
  atticdStub = lib.optional (!hasAtticd) { options.services.atticd.enable = lib.mkEnableOption "atticd (stand-in)"; };

  host = modules: e.nixos { modules = [ e.flakeModules.nixos ] ++ modules; };
  with' = cfg: host [ { services.attic-post-build-hook = cfg; } ];

  checks = ev: {
    failed = e.failedFrom ev file;
    warnings = e.warningsFrom ev file;
  };

  view =
    ev:
    let
      c = ev.config;
      svc = c.systemd.services.hookd;
    in
    checks ev
    // {
      hook = c.nix.settings.post-build-hook.text;
      hookIsScript = c.nix.settings.post-build-hook.writer;
      postBuildHookOption = c.services.attic-post-build-hook.postBuildHook.text;
      yaml = c.environment.etc."hookd/config.yaml".source.text;
      unitText = c.systemd.units."hookd.service".unit.env.text;
      # Token rotation: the path unit and the oneshot it starts (null without token files).
      tokensPathText = c.systemd.units."hookd-tokens.path".unit.env.text or null;
      rotatedUnitText = c.systemd.units."hookd-token-rotated.service".unit.env.text or null;
      rotatedScript = c.systemd.services.hookd-token-rotated.serviceConfig.ExecStart.text or null;
      serviceConfig = svc.serviceConfig;
      environment = svc.environment;
      path = map toString svc.path;
      wantedBy = svc.wantedBy;
      restartTriggers = map toString svc.restartTriggers;
      tmpfiles = e.fromFile ev file "systemd.tmpfiles.rules";
      allowedUsers = c.nix.settings.allowed-users;
      extraAllowedUsers = c.nix.settings.extra-allowed-users or [ ];
      user = c.users.users.hookd or null;
      group = c.users.groups.hookd or null;
      package = toString c.services.attic-post-build-hook.package;
    };
in
{
  default =
    let
      ev = with' base;
    in
    view ev // { optionDocs = e.optionDocs ev; };

  # The plain module file (not through the flake): the package comes from pkgs.hookd. Also an
  # account defined elsewhere, no GC roots, and an adminGroup the host does not declare.
  plain = view (
    e.nixos {
      modules = [
        (e.repo + "/nix/modules/nixos.nix")
        {
          services.attic-post-build-hook = base // {
            user = "uploader";
            group = "uploader";
            settings.nix.gc_roots = false;
            adminGroup = "ops";
          };
          users.users.uploader = {
            isSystemUser = true;
            group = "uploader";
          };
          users.groups.uploader = { };
        }
      ];
    }
  );

  # Everything elsewhere, and no token file (so no token watching).
  custom = view (
    with' (
      base
      // {
        servers.main = server // { tokenFile = null; };
        user = "root";
        group = "root";
        extraPostBuildHook = "/etc/nix/sign-outputs.sh";
        settings = {
          state_dir = "/srv/hookd";
          spool_dir = "/srv/hookd/spool";
          socket = "/srv/hookd/hookd.sock";
          targets = [
            {
              server = "main";
              cache = "other";
            }
            { store = "file:///srv/cache"; }
          ];
          upload.stop_timeout = 40;
          filter.exclude = [ "-nixos-system-" ];
        };
      }
    )
  );

  # Admins without sudo, and tokens for two of three servers (one path needs escaping in a unit).
  admin = view (
    with' (
      base
      // {
        adminGroup = "wheel";
        servers = {
          main = server;
          mirror = server // { tokenFile = "/var/lib/secrets/mirror-100%"; };
          public = server // { tokenFile = null; };
        };
      }
    )
  );

  # allowed-users: the NixOS default, and a host's own restriction, both left alone.
  allowedUsers = {
    without = (e.nixos { modules = [ ]; }).config.nix.settings.allowed-users;
    restricted =
      (host [
        {
          nix.settings.allowed-users = [ "@wheel" ];
          services.attic-post-build-hook = base;
        }
      ]).config.nix.settings.allowed-users;
  };

  # A host that already sets a post-build hook gets an evaluation error, never a silent override.
  hookConflict =
    (builtins.tryEval (
      toString
        (host [
          {
            services.attic-post-build-hook = base;
            nix.settings.post-build-hook = "/etc/nix/other-hook.sh";
          }
        ]).config.nix.settings.post-build-hook
    )).success;

  # Keys the hand-kept list once missed (nice), and sections' keys: all from the generated
  # nix/config-schema.json, so the module accepts what hookd accepts.
  tuned = view (
    with' (
      base
      // {
        settings = {
          nice = 5;
          upload.concurrency = 8;
          log.level = "debug";
          nix.timeout = 60;
        };
      }
    )
  );

  # Metrics on all addresses with the port opened, and a node-exporter textfile.
  metrics =
    let
      ev = with' (
        base
        // {
          metrics = {
            enable = true;
            listenAddress = "::";
            port = 9100;
            openFirewall = true;
            textfile = "/var/lib/node-exporter/hookd.prom";
          };
        }
      );
    in
    view ev
    // {
      firewall = ev.config.networking.firewall.allowedTCPPorts;
      defaultFirewall = (with' base).config.networking.firewall.allowedTCPPorts;
    };

  # What the modules read from the schema, to compare with hookd.config.schema().
  schema =
    let
      common = import (e.repo + "/nix/modules/common.nix") {
        inherit lib;
        pkgs = e.fakePkgs "x86_64-linux";
      };
    in
    {
      inherit (common) topKeys nameRegex rootStateDir;
      stopTimeoutDefault = common.stopTimeout { settings = { }; };
      gcRootsDefault = common.gcRootsEnabled { settings = { }; };
    };

  # Bad configurations, several mistakes per host to keep the evaluations few.
  bad = lib.mapAttrs (_: ev: (checks ev).failed) {
    # token in the store, an unknown settings key, a bad server name and endpoint; adminGroup
    # with a socket outside /run
    storeToken = with' (
      base
      // {
        adminGroup = "wheel";
        servers = {
          main = server // { tokenFile = "/nix/store/00000000000000000000000000000000-attic-token"; };
          "bad name" = server // { endpoint = "cache.example.com"; };
        };
        settings.colour = "blue";
        settings.upload.concurency = 8; # a misspelt key inside a section
        settings.socket = "/srv/hookd/hookd.sock";
      }
    );
    # token as a path literal, a bad cache name, a target naming an unknown server
    literalToken = with' (
      base
      // {
        cacheName = "no/slash";
        servers.main = server // { tokenFile = ./attic-token; };
        settings.targets = [
          {
            server = "other";
            cache = "main";
          }
        ];
      }
    );
    # a user that does not exist; no socket; socket_group without adminGroup
    missingUser = with' (
      base
      // {
        user = "ghost";
        settings.socket = null;
        settings.socket_group = "wheel";
      }
    );
    # a cache without servers: nowhere to push
    noServers = with' {
      enable = true;
      cacheName = "main";
    };
  };

  # The atticd warning: only for endpoints on this host, only when it runs atticd.
  atticd =
    let
      servers = {
        loopback = server // { endpoint = "http://localhost:8080/"; };
        own = server // { endpoint = "http://Builder:8080"; };
        v6 = server // { endpoint = "http://[::1]:8080"; };
        remote = server;
      };
    in
    lib.mapAttrs (_: ev: (checks ev).warnings) {
      withAtticd = host (
        atticdStub
        ++ [
          {
            services.atticd.enable = true;
            services.attic-post-build-hook = base // { inherit servers; };
          }
        ]
      );
      withoutAtticd = host (atticdStub ++ [ { services.attic-post-build-hook = base // { inherit servers; }; } ]);
    };
}
