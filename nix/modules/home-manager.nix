# home-manager module: services.attic-post-build-hook
#
# The same options as the NixOS and nix-darwin modules, for a daemon that runs as the user: a
# systemd user service on Linux, a launchd agent on macOS. State lives in
# $XDG_STATE_HOME/hookd; on Linux the socket is $XDG_RUNTIME_DIR/hookd/hookd.sock.
#
# home-manager can only write the user's nix.conf. A post-build-hook there is honoured for that
# user's single-user builds (and for trusted users); a multi-user nix-daemon runs the system
# hook, so on NixOS and nix-darwin the system modules are the reliable way.
#
# This module does not declare programs.attic-client (home-manager has it); with
# configureAtticClient it fills in upstream's programs.attic-client.settings.
{
  config,
  lib,
  pkgs,
  options,
  ...
}:

let
  cfg = config.services.attic-post-build-hook;
  common = import ./common.nix { inherit lib pkgs; };
  esc = lib.escapeShellArg;

  isDarwin = pkgs.stdenv.hostPlatform.isDarwin;
  stateDir = "${config.xdg.stateHome}/hookd";
  configFile = common.configFile cfg;
  hookd = lib.getExe' cfg.package "hookd";

  # `settings`: programs.attic-client.servers alone is nix-attic-infra's, declared by
  # compat-attic-infra.nix.
  hasAtticClient =
    options ? programs && options.programs ? attic-client && options.programs.attic-client ? settings;
  hasNixSettings = options ? nix && options.nix ? settings;
  nixPackage = if hasNixSettings then config.nix.package else null;

  searchPath = lib.concatStringsSep ":" (
    lib.optional (nixPackage != null) "${nixPackage}/bin"
    ++ [
      "${config.home.profileDirectory}/bin"
      "/nix/var/nix/profiles/default/bin"
      "/run/current-system/sw/bin"
      "/usr/local/bin"
      "/usr/bin"
      "/bin"
    ]
  );

  # Linux: the runtime directory is only known at run time.
  hookSocket =
    if cfg.settings.socket != null then
      esc cfg.settings.socket
    else
      "\"\${XDG_RUNTIME_DIR:-/run/user/$(${lib.getExe' pkgs.coreutils "id"} -u)}/hookd/hookd.sock\"";

  serverNames = lib.attrNames cfg.servers;
in
{
  imports = [
    ./pull-home-manager.nix
    (import ./compat-attic-infra.nix "home-manager")
  ];

  options.services.attic-post-build-hook = common.options {
    socket = if isDarwin then "${stateDir}/hookd.sock" else null;
    socketText = lib.literalMD "`$XDG_RUNTIME_DIR/hookd/hookd.sock` on Linux (null: hookd's default), `\${config.xdg.stateHome}/hookd/hookd.sock` on macOS";
    inherit stateDir;
    stateDirText = lib.literalExpression ''"''${config.xdg.stateHome}/hookd"'';
    spoolDir = "${stateDir}/spool";
    spoolDirText = lib.literalExpression ''"''${config.xdg.stateHome}/hookd/spool"'';
  } // {
    configureAtticClient = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Whether to put the same servers into home-manager's `programs.attic-client.settings`
        (with `token-file`), so the `attic` CLI shares this configuration. This enables
        `programs.attic-client`, which installs attic; set `programs.attic-client.package = null`
        to keep only the configuration file.
      '';
    };
    setPostBuildHook = lib.mkOption {
      type = lib.types.bool;
      default = hasNixSettings && nixPackage != null;
      defaultText = lib.literalExpression "config.nix.package != null";
      description = ''
        Whether to set `post-build-hook` in the user's nix.conf (home-manager's `nix.settings`,
        which requires `nix.package`). Nix honours it for this user's single-user builds and for
        trusted users; a multi-user daemon runs the system's hook instead (use the NixOS or
        nix-darwin module there).
      '';
    };
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        assertions = common.assertions cfg ++ [
          (lib.hm.assertions.assertPlatform "services.attic-post-build-hook" pkgs (
            lib.platforms.linux ++ lib.platforms.darwin
          ))
          {
            assertion = cfg.configureAtticClient -> hasAtticClient;
            message = ''
              services.attic-post-build-hook.configureAtticClient needs home-manager's
              programs.attic-client (added in 2026); update home-manager or turn it off.'';
          }
          {
            assertion = cfg.setPostBuildHook -> (hasNixSettings && nixPackage != null);
            message = ''
              services.attic-post-build-hook.setPostBuildHook writes nix.settings, which needs
              nix.package; set nix.package = pkgs.nix; or turn setPostBuildHook off.'';
          }
        ];

        services.attic-post-build-hook.settings = common.render cfg (_: s: toString s.tokenFile);
        services.attic-post-build-hook.postBuildHook = common.hookScript {
          inherit cfg;
          socket = hookSocket;
          spool = esc cfg.settings.spool_dir;
        };

        home.packages = [ cfg.package ];
        # Where `hookd status` and friends look by default.
        xdg.configFile."hookd/config.yaml".source = configFile;

        home.activation.hookdStateDir = lib.hm.dag.entryAfter [ "writeBoundary" ] ''
          run mkdir -p -m 0700 ${esc cfg.settings.state_dir} ${esc cfg.settings.spool_dir}
        '';
      }

      (lib.mkIf (!isDarwin) {
        systemd.user.services.hookd = {
          Unit = {
            Description = "hookd: push Nix build results to binary caches";
            After = [ "network.target" ];
            StartLimitIntervalSec = 0;
          };
          Service = {
            # The configuration's store path: a change rewrites the unit and restarts it.
            ExecStart = lib.escapeShellArgs [
              hookd
              "daemon"
              "--config"
              "${configFile}"
            ];
            Environment = [
              "PATH=${searchPath}"
            ]
            ++ lib.optional (cfg.settings.socket == null) "HOOKD_SOCKET=%t/hookd/hookd.sock";
            RuntimeDirectory = "hookd";
            RuntimeDirectoryMode = "0700";
            Restart = "always";
            RestartSec = 5;
            KillSignal = "SIGTERM";
            TimeoutStopSec = common.stopTimeout cfg;
            NoNewPrivileges = true;
            UMask = "0077";
          };
          Install.WantedBy = [ "default.target" ];
        };
      })

      (lib.mkIf isDarwin {
        launchd.agents.hookd = {
          enable = true;
          config = {
            ProgramArguments = [
              hookd
              "daemon"
              "--config"
              "${configFile}"
            ];
            EnvironmentVariables.PATH = searchPath;
            KeepAlive = true;
            RunAtLoad = true;
            ProcessType = "Background";
            ExitTimeOut = common.stopTimeout cfg;
            ThrottleInterval = 5;
            StandardErrorPath = "${cfg.settings.state_dir}/hookd.log";
            StandardOutPath = "${cfg.settings.state_dir}/hookd.log";
          };
        };
      })

      (lib.optionalAttrs hasNixSettings {
        nix.settings = lib.mkIf cfg.setPostBuildHook { post-build-hook = cfg.postBuildHook; };
      })

      (lib.optionalAttrs hasAtticClient {
        programs.attic-client = lib.mkIf cfg.configureAtticClient {
          enable = lib.mkDefault true;
          settings = {
            servers = lib.mapAttrs (
              _: s:
              {
                inherit (s) endpoint;
              }
              // lib.optionalAttrs (s.tokenFile != null) { token-file = toString s.tokenFile; }
            ) cfg.servers;
            default-server = lib.mkIf (lib.length serverNames == 1) (lib.mkDefault (lib.head serverNames));
          };
        };
      })
    ]
  );
}
