# nix-darwin module: services.attic-post-build-hook
#
# The same options as the NixOS module. nix-daemon runs the post-build hook as root; the hookd
# daemon is a launchd daemon (root by default) that owns its socket under the state directory.
# launchd has no LoadCredential, so the daemon reads each tokenFile itself.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.attic-post-build-hook;
  common = import ./common.nix { inherit lib pkgs; };

  stateDir = common.rootStateDir;
  configFile = common.configFile cfg;
  gcRootsDir = common.gcRootsDir {
    stateDir = cfg.settings.state_dir;
    inherit (cfg) user;
  };
  nixManaged = config.nix.enable or true;
  hookd = lib.getExe' cfg.package "hookd";
  esc = lib.escapeShellArg;
in
{
  imports = [
    ./pull-darwin.nix
    (import ./compat-attic-infra.nix "darwin")
  ];

  options.services.attic-post-build-hook = common.options {
    # /var/run is emptied at boot and launchd creates no directories, so the socket lives in the
    # state directory, which activation creates.
    socket = "${stateDir}/hookd.sock";
    inherit stateDir;
    spoolDir = "${stateDir}/spool";
  } // {
    metrics = common.metricsOptions;
    user = lib.mkOption {
      type = lib.types.str;
      default = "root";
      description = ''
        User the launchd daemon runs as (root by default, like nix-darwin's other Nix services).
        The post-build hook itself always runs as root, inside nix-daemon.
      '';
    };
    group = lib.mkOption {
      type = lib.types.str;
      default = if cfg.user == "root" then "wheel" else cfg.user;
      defaultText = lib.literalExpression ''if user == "root" then "wheel" else user'';
      description = "Group the daemon runs as; it owns the state directory.";
    };
    createUser = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Whether nix-darwin should create {option}`services.attic-post-build-hook.user` and
        its group (macOS needs fixed ids: set {option}`services.attic-post-build-hook.uid` and
        {option}`services.attic-post-build-hook.gid`; service accounts conventionally start
        with `_`).
      '';
    };
    uid = lib.mkOption {
      type = lib.types.nullOr lib.types.int;
      default = null;
      example = 533;
      description = "User id for the created user (only with createUser).";
    };
    gid = lib.mkOption {
      type = lib.types.nullOr lib.types.int;
      default = null;
      example = 533;
      description = "Group id for the created group (only with createUser).";
    };
    logFile = lib.mkOption {
      type = lib.types.str;
      default =
        if cfg.user == "root" then "/var/log/hookd.log" else "${cfg.settings.state_dir}/hookd.log";
      defaultText = lib.literalExpression ''if user == "root" then "/var/log/hookd.log" else "''${settings.state_dir}/hookd.log"'';
      description = "Where launchd writes the daemon's output (JSON lines); the user must be able to create it.";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = common.assertions cfg ++ [
      {
        assertion = cfg.settings.socket != null;
        message = ''
          services.attic-post-build-hook.settings.socket is null; on nix-darwin the hook and the daemon
          need an explicit path. Remove the setting to get the default.'';
      }
      {
        assertion = !cfg.createUser || (cfg.uid != null && cfg.gid != null);
        message = ''
          services.attic-post-build-hook.createUser needs fixed ids on macOS: set
          services.attic-post-build-hook.uid and .gid to unused numbers (check with
          `dscl . -list /Users UniqueID`), e.g. uid = 533; gid = 533;.'';
      }
      {
        assertion = !cfg.createUser || cfg.user != "root";
        message = ''
          services.attic-post-build-hook.createUser cannot create root; set
          services.attic-post-build-hook.user = "_hookd"; (or turn createUser off).'';
      }
    ];

    warnings =
      lib.optional (!cfg.createUser && cfg.user != "root" && !(config.users.users ? ${cfg.user})) ''
        services.attic-post-build-hook.user = "${cfg.user}" is not defined in users.users; make sure
        the account exists on this Mac, or set createUser = true with uid and gid.''
      ++ lib.optional (!nixManaged) ''
        services.attic-post-build-hook: nix.enable is off (Nix is managed outside nix-darwin, e.g.
        by Determinate Nix), so the post-build hook cannot be set here. Add this line to
        /etc/nix/nix.custom.conf and restart the Nix daemon:
          post-build-hook = /etc/hookd/post-build-hook
        If it already has a post-build-hook, move that to
        services.attic-post-build-hook.extraPostBuildHook.'';

    services.attic-post-build-hook.settings = lib.mkMerge [
      (common.render cfg (_: s: toString s.tokenFile))
      (common.metricsSettings cfg.metrics)
    ];
    services.attic-post-build-hook.postBuildHook = common.hookScript {
      inherit cfg;
      socket = esc (toString cfg.settings.socket);
      spool = esc cfg.settings.spool_dir;
    };

    # Never allowed-users: defining it replaces the default "*".
    nix.settings = lib.mkIf nixManaged { post-build-hook = cfg.postBuildHook; };

    environment.etc."hookd/config.yaml".source = configFile;
    environment.etc."hookd/post-build-hook".source = cfg.postBuildHook;
    environment.systemPackages = [ cfg.package ];

    users.users = lib.mkIf cfg.createUser {
      ${cfg.user} = {
        uid = cfg.uid;
        gid = cfg.gid;
        home = cfg.settings.state_dir;
        shell = "/usr/bin/false";
        isHidden = true;
        description = "hookd binary cache uploader";
      };
    };
    users.groups = lib.mkIf cfg.createUser {
      ${cfg.group} = {
        gid = cfg.gid;
        description = "hookd binary cache uploader";
      };
    };
    users.knownUsers = lib.mkIf cfg.createUser [ cfg.user ];
    users.knownGroups = lib.mkIf cfg.createUser [ cfg.group ];

    # launchd creates no directories; activation runs as root.
    system.activationScripts.postActivation.text = lib.mkAfter (
      ''
        echo "setting up hookd's state directory..." >&2
        mkdir -p ${esc cfg.settings.state_dir} ${esc cfg.settings.spool_dir}
        chown ${esc "${cfg.user}:${cfg.group}"} ${esc cfg.settings.state_dir} ${esc cfg.settings.spool_dir}
        chmod 0750 ${esc cfg.settings.state_dir} ${esc cfg.settings.spool_dir}
      ''
      + lib.optionalString (common.gcRootsEnabled cfg) ''
        mkdir -p ${esc gcRootsDir}
        chown ${esc "${cfg.user}:${cfg.group}"} ${esc gcRootsDir}
      ''
    );

    launchd.daemons.hookd = {
      # The store path of the configuration (not /etc/hookd/config.yaml), so a change rewrites the
      # plist and nix-darwin reloads the daemon.
      command = lib.escapeShellArgs [
        hookd
        "daemon"
        "--config"
        "${configFile}"
      ];
      path = lib.optional nixManaged config.nix.package ++ [
        "/nix/var/nix/profiles/default/bin"
        "/usr/bin"
        "/bin"
      ];
      environment = {
        NIX_REMOTE = "daemon";
        XDG_CACHE_HOME = "${cfg.settings.state_dir}/.cache";
      };
      serviceConfig =
        {
          KeepAlive = true;
          RunAtLoad = true;
          ProcessType = "Background";
          ExitTimeOut = common.stopTimeout cfg;
          ThrottleInterval = 5;
          StandardErrorPath = cfg.logFile;
          StandardOutPath = cfg.logFile;
        }
        // lib.optionalAttrs (cfg.user != "root") {
          UserName = cfg.user;
          GroupName = cfg.group;
        };
    };
  };
}
