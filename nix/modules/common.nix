# What the NixOS, nix-darwin and home-manager modules share: the option schema, the YAML that
# hookd reads, the post-build-hook script and the checks behind their assertions.
#
#   common = import ./common.nix { inherit lib pkgs; };
#
# Every module calls this with its own `lib` and `pkgs`; nothing here is a module by itself.
{ lib, pkgs }:

let
  inherit (lib)
    mkOption
    types
    literalExpression
    ;

  # The keys hookd accepts, its defaults and name pattern, generated from hookd/config.py
  # (`python -m hookd.config --schema`; a test fails when the file is stale). hookd refuses
  # unknown keys, so the modules check them at evaluation time instead of leaving a daemon that
  # will not start.
  schema = lib.importJSON ../config-schema.json;
  topKeys = schema.keys.top;
  # The settings sections whose keys are checked too (servers come from the `servers` option).
  sectionKeys = lib.getAttrs [ "filter" "upload" "nix" "log" ] schema.keys;
  inherit (schema) nameRegex;

  settingsFormat = pkgs.formats.yaml { };

  isStorePath = p: lib.hasPrefix "${builtins.storeDir}/" (toString p);

  optionName = path: lib.concatStringsSep "." ([ "services" "attic-post-build-hook" ] ++ path);

  serverModule =
    { name, ... }:
    {
      options = {
        endpoint = mkOption {
          type = types.str;
          example = "https://cache.example.com/";
          description = "URL of the Attic server `${name}`.";
        };
        tokenFile = mkOption {
          type = types.nullOr types.path;
          default = null;
          example = "/run/secrets/attic-token";
          description = ''
            File holding the Attic token (a JWT) that may push to the caches on this server, for
            example one decrypted by sops-nix or agenix at activation. It must be an absolute path
            outside the Nix store: the store is world-readable. On NixOS, systemd hands the file to
            the daemon with `LoadCredential` (read as root when the service starts, so it may stay
            root-only), and `hookd-tokens.path` restarts `hookd.service` when the file changes. A
            secret manager that swaps a symlinked directory instead (sops-nix, agenix) needs its
            own restart: sops-nix `restartUnits = [ "hookd.service" ]`. Elsewhere the daemon reads
            the file itself, and picks up a new token without a restart; the account it runs as
            must be able to read it.
          '';
        };
      };
    };
in
rec {
  inherit
    schema
    topKeys
    nameRegex
    settingsFormat
    isStorePath
    optionName
    ;

  # The options every module declares. `defaults` sets the platform's paths:
  #   { socket, stateDir, spoolDir, and optional *Text for the documentation }
  #   (a null socket means hookd's own default)
  options =
    defaults:
    {
      enable = lib.mkEnableOption "hookd, which pushes every Nix build result to binary caches (Attic first)";

      # mkPackageOption gives the conventional type, description and `pkgs.hookd` default text.
      # hookd is not in nixpkgs: the flake's modules (nix/modules/default.nix) set the default
      # to the flake's package, and the tests evaluate with a fake pkgs (tests/nix/fake-pkgs.nix)
      # that has every name. Only the plain module file without an overlay lacks pkgs.hookd, so
      # the default is replaced by one that says how to fix that rather than mkPackageOption's
      # "hookd cannot be found in pkgs".
      package =
        lib.mkPackageOption pkgs "hookd" {
          extraDescription = ''
            It provides `hookd`, and `libexec/hookd/hookd-hook`, which the post-build hook runs
            (`bin/hookd-hook` is the same, slower to start). The modules of the hookd flake
            default to the flake's package.
          '';
        }
        // {
          default =
            pkgs.hookd or (throw ''
              ${optionName [ "package" ]}: pkgs.hookd does not exist. Use the module from the hookd
              flake (`nixosModules.default`, `darwinModules.default` or `homeManagerModules.default`
              set it), add the flake's `overlays.default`, or set this option.'');
        };

      cacheName = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "main";
        description = ''
          The Attic cache to push to. Short form: every server in
          {option}`${optionName [ "servers" ]}` gets one target `{ server = <name>; cache = cacheName; }`.
          Set {option}`${optionName [ "settings" "targets" ]}` instead for anything else (several
          caches, `nix copy` stores); when set, it wins.
        '';
      };

      servers = mkOption {
        type = types.attrsOf (types.submodule serverModule);
        default = { };
        example = literalExpression ''
          {
            main = {
              endpoint = "https://cache.example.com/";
              tokenFile = "/run/secrets/attic-token";
            };
          }
        '';
        description = "Attic servers, by name. Rendered to `servers:` in hookd's configuration.";
      };

      extraPostBuildHook = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = literalExpression ''pkgs.writeShellScript "sign-outputs" "…"'';
        description = ''
          Another post-build hook to run after hookd has taken the paths (Nix allows only one
          `post-build-hook`, so put the one the host already has here). It sees the same
          `DRV_PATH` and `OUT_PATHS`. Its exit status is logged and ignored: a chained hook never
          fails the build.
        '';
      };

      settings = mkOption {
        default = { };
        description = ''
          hookd's configuration (docs/modules.md lists every key), rendered to YAML. The short-form
          options above fill in `servers`, `targets` and `attic_config`. Keys hookd does not know
          are refused when the configuration is evaluated.
        '';
        example = literalExpression ''
          {
            upload.concurrency = 8;
            filter.exclude = [ "-nixos-system-" ];
            targets = [ { server = "main"; cache = "main"; } { store = "s3://bucket"; } ];
          }
        '';
        type = types.submodule {
          freeformType = settingsFormat.type;
          options = {
            socket = mkOption {
              type = types.nullOr types.str;
              default = defaults.socket;
              defaultText = defaults.socketText or defaults.socket;
              description = "Unix socket the daemon listens on and the hook connects to.";
            };
            state_dir = mkOption {
              type = types.str;
              default = defaults.stateDir;
              defaultText = defaults.stateDirText or defaults.stateDir;
              description = "Directory for the durable queue (the daemon's only state).";
            };
            spool_dir = mkOption {
              type = types.str;
              default = defaults.spoolDir;
              defaultText = defaults.spoolDirText or defaults.spoolDir;
              description = "Where the hook leaves paths when the daemon is not reachable; imported at start.";
            };
          };
        };
      };

      postBuildHook = mkOption {
        type = types.package;
        readOnly = true;
        description = ''
          The generated post-build hook (read-only). Set as `nix.settings.post-build-hook` by the
          module; reference it when Nix's configuration is managed elsewhere.
        '';
      };
    };

  # What goes into the YAML file.
  #   cfg           the module's config
  #   tokenPath     name -> server -> the path hookd should read the token from
  render =
    cfg: tokenPath:
    let
      servers = lib.mapAttrs (
        name: server:
        {
          inherit (server) endpoint;
        }
        // lib.optionalAttrs (server.tokenFile != null) { token_file = tokenPath name server; }
      ) cfg.servers;
    in
    {
      servers = lib.mkIf (cfg.servers != { }) servers;
      targets = lib.mkIf (cfg.cacheName != null) (
        lib.mkDefault (
          map (name: {
            server = name;
            cache = cfg.cacheName;
          }) (lib.attrNames cfg.servers)
        )
      );
      attic_config = lib.mkDefault false;
    };

  # The settings without unset (null) keys, as written to the file.
  finalSettings = cfg: lib.filterAttrs (_: v: v != null) cfg.settings;

  # JSON is YAML: writing it with builtins.toJSON needs no converter at build time and gives the
  # exact text hookd reads.
  configFile =
    cfg:
    pkgs.writeText "hookd-config.yaml" ''
      # Generated by hookd's Nix module from services.attic-post-build-hook; do not edit.
      ${builtins.toJSON (finalSettings cfg)}
    '';

  # The post-build hook. `socket` and `spool` are shell words (already quoted) so the
  # home-manager module can use $XDG_RUNTIME_DIR.
  hookScript =
    {
      cfg,
      socket,
      spool,
    }:
    pkgs.writeShellScript "hookd-post-build-hook" (
      ''
        # hookd post-build hook: hand this build's outputs (DRV_PATH, OUT_PATHS) to the hookd
        # daemon and return. Nix aborts the build when a post-build hook fails, so this script
        # always exits 0; hookd-hook itself returns within 2 s and spools when the daemon is down.
        # libexec/hookd/hookd-hook is hook.py run by python -I -S, which starts several times
        # faster than the console script; a package built without it falls back to the latter.
        hook=${lib.escapeShellArg "${cfg.package}/libexec/hookd/hookd-hook"}
        [ -x "$hook" ] || hook=${lib.escapeShellArg (lib.getExe' cfg.package "hookd-hook")}
        "$hook" --socket ${socket} --spool ${spool} || true
      ''
      + lib.optionalString (cfg.extraPostBuildHook != null) ''
        ${lib.escapeShellArg "${cfg.extraPostBuildHook}"} ||
          printf 'hookd: chained post-build hook %s exited with status %s; ignored, the build goes on\n' \
            ${lib.escapeShellArg "${cfg.extraPostBuildHook}"} "$?" >&2
      ''
      + ''
        exit 0
      ''
    );

  # Checks shared by every module: a list of { assertion; message; }.
  assertions =
    cfg:
    let
      settings = finalSettings cfg;
      unknownKeys =
        lib.subtractLists topKeys (lib.attrNames settings)
        ++ lib.concatLists (
          lib.mapAttrsToList (
            section: known:
            let
              value = settings.${section} or { };
            in
            map (k: "${section}.${k}") (
              lib.optionals (builtins.isAttrs value) (lib.subtractLists known (lib.attrNames value))
            )
          ) sectionKeys
        );
      storeTokens = lib.filterAttrs (_: s: s.tokenFile != null && isStorePath s.tokenFile) cfg.servers;
      literalTokens = lib.filterAttrs (_: s: s.tokenFile != null && builtins.isPath s.tokenFile) cfg.servers;
      badNames = lib.filter (n: builtins.match nameRegex n == null) (lib.attrNames cfg.servers);
      badEndpoints = lib.filterAttrs (_: s: builtins.match "https?://[^/]+.*" s.endpoint == null) cfg.servers;
      knownServers = lib.attrNames (settings.servers or { });
      targets = settings.targets or [ ];
      strayTargets = lib.filter (
        t: builtins.isAttrs t && t ? server && !(builtins.elem t.server knownServers)
      ) targets;
    in
    [
      {
        assertion = unknownKeys == [ ];
        message = ''
          ${optionName [ "settings" ]}: hookd does not know the key(s) ${lib.concatStringsSep ", " unknownKeys}
          and would refuse to start. Known keys: ${lib.concatStringsSep ", " topKeys}; in
          ${lib.concatStringsSep "; " (lib.mapAttrsToList (s: ks: "${s}: ${lib.concatStringsSep ", " ks}") sectionKeys)}.'';
      }
      {
        assertion = literalTokens == { };
        message = ''
          ${optionName [ "servers" ]}.<name>.tokenFile for ${lib.concatStringsSep ", " (lib.attrNames literalTokens)}
          is a Nix path literal, which Nix copies into the world-readable store. Use a string naming
          the file at run time instead, e.g. tokenFile = "/run/secrets/attic-token"; (sops-nix:
          config.sops.secrets.attic-token.path).'';
      }
      {
        assertion = storeTokens == { };
        message = ''
          ${optionName [ "servers" ]}.<name>.tokenFile for ${lib.concatStringsSep ", " (lib.attrNames storeTokens)}
          points into the Nix store (${lib.concatMapStringsSep ", " (s: toString s.tokenFile) (lib.attrValues storeTokens)}),
          where every user can read it. Keep tokens outside the store, e.g. with sops-nix or agenix:
          tokenFile = config.sops.secrets.attic-token.path;'';
      }
      {
        assertion = badNames == [ ];
        message = ''
          ${optionName [ "servers" ]}: server name(s) ${lib.concatStringsSep ", " badNames} are not valid;
          use 1-50 letters, digits, '-', '_' or '+', starting with a letter or digit.'';
      }
      {
        assertion = badEndpoints == { };
        message = ''
          ${optionName [ "servers" ]}.<name>.endpoint must be an http:// or https:// URL; got
          ${lib.concatStringsSep ", " (lib.mapAttrsToList (n: s: "${n} = \"${s.endpoint}\"") badEndpoints)}.'';
      }
      {
        assertion = cfg.cacheName == null || builtins.match nameRegex cfg.cacheName != null;
        message = ''
          ${optionName [ "cacheName" ]} = "${toString cfg.cacheName}" is not an Attic cache name;
          use 1-50 letters, digits, '-', '_' or '+', starting with a letter or digit.'';
      }
      {
        # Servers may also come from an `attic login` config (attic_config).
        assertion = cfg.cacheName == null || cfg.servers != { } || (settings.attic_config or false) != false;
        message = ''
          ${optionName [ "cacheName" ]} is set but there is no server to push it to. Add one:
          ${optionName [ "servers" ]}.main = { endpoint = "https://cache.example.com/"; tokenFile = "/run/secrets/attic-token"; };'';
      }
      {
        assertion = targets != [ ];
        message = ''
          services.attic-post-build-hook is enabled but has nowhere to push. Set
          ${optionName [ "cacheName" ]} and ${optionName [ "servers" ]}, or ${optionName [ "settings" "targets" ]}.'';
      }
      {
        assertion = (settings.attic_config or false) != false || strayTargets == [ ];
        message = ''
          ${optionName [ "settings" "targets" ]} names server(s) ${lib.concatMapStringsSep ", " (t: toString t.server) strayTargets}
          that are not configured. Known servers: ${lib.concatStringsSep ", " knownServers}. Add them
          to ${optionName [ "servers" ]}.'';
      }
    ];

  # Whether hookd pins queued paths with GC roots (settings.nix.gc_roots, on by default).
  gcRootsEnabled =
    cfg: ((cfg.settings.nix or { }).gc_roots or schema.defaults.nix.gc_roots) != false;

  # root's state directory in hookd, which the NixOS and nix-darwin modules use too.
  rootStateDir = schema.gcRoots.rootStateDir;

  # Where hookd keeps those roots: Config.gc_roots_dir in hookd/config.py, from the same parts
  # (below Nix's gcroots, per user unless the daemon runs as root, suffixed with a hash of a
  # state_dir other than root's default). A module test compares the two.
  gcRootsDir =
    { stateDir, user }:
    let
      inherit (schema) gcRoots;
      name =
        if stateDir == gcRoots.rootStateDir then
          gcRoots.name
        else
          "${gcRoots.name}-"
          + builtins.substring 0 gcRoots.hashLength (builtins.hashString "sha256" stateDir);
    in
    if user == "root" then
      "${gcRoots.nixStateDir}/gcroots/${name}"
    else
      "${gcRoots.nixStateDir}/gcroots/per-user/${user}/${name}";

  # Seconds the service manager waits after SIGTERM: hookd's own upload.stop_timeout plus room
  # to commit and exit.
  stopTimeout =
    cfg:
    builtins.ceil (
      ((cfg.settings.upload or { }).stop_timeout or schema.defaults.upload.stop_timeout) + 10
    );

  # The host part of an endpoint URL, for the "pushing to yourself" warning.
  endpointHost =
    url:
    let
      rest = lib.last (lib.splitString "://" url);
      authority = lib.head (lib.splitString "/" rest);
      noUser = lib.last (lib.splitString "@" authority);
      bracketed = builtins.match "\\[([^]]*)].*" noUser;
    in
    lib.toLower (if bracketed != null then lib.head bracketed else lib.head (lib.splitString ":" noUser));

  # Servers whose endpoint is this machine (loopback or one of its names).
  localServers =
    cfg: hostNames:
    let
      local = [
        "localhost"
        "127.0.0.1"
        "::1"
        "0.0.0.0"
      ] ++ map lib.toLower (lib.filter (n: n != null && n != "") hostNames);
    in
    lib.filterAttrs (
      _: s:
      let
        host = endpointHost s.endpoint;
      in
      builtins.elem host local || lib.hasPrefix "127." host || lib.hasSuffix ".localhost" host
    ) cfg.servers;

  # services.attic-post-build-hook.metrics (NixOS and nix-darwin; docs/metrics.md).
  metricsOptions = {
    enable = lib.mkEnableOption "hookd's Prometheus metrics on `listenAddress`:`port` (/metrics)";
    listenAddress = lib.mkOption {
      type = lib.types.str;
      default = "127.0.0.1";
      example = "::";
      description = "Address the metrics listener binds to. It has no authentication: keep it on loopback unless only your Prometheus can reach the host.";
    };
    port = lib.mkOption {
      type = lib.types.port;
      default = schema.defaults.metrics.port;
      description = "Port of the metrics listener.";
    };
    textfile = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "/var/lib/prometheus-node-exporter/textfile/hookd.prom";
      description = "Also write the metrics to this node-exporter textfile (atomically, every `settings.metrics.textfile_interval` seconds). The daemon must be able to write to its directory.";
    };
  };

  # What the metrics options put into the YAML (nothing when both are off).
  metricsSettings =
    m:
    lib.mkIf (m.enable || m.textfile != null) {
      metrics =
        lib.optionalAttrs m.enable {
          listen =
            if lib.hasInfix ":" m.listenAddress then
              "[${m.listenAddress}]:${toString m.port}"
            else
              "${m.listenAddress}:${toString m.port}";
        }
        // lib.optionalAttrs (m.textfile != null) { inherit (m) textfile; };
    };
}
