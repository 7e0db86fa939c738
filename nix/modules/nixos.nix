# NixOS module: services.attic-post-build-hook
#
# nix-daemon runs a small post-build hook (as root) that hands each build's outputs to the hookd
# daemon over /run/hookd/hookd.sock; the daemon (a hardened systemd service, as `user`) keeps a
# durable queue and pushes to Attic. Token files reach the daemon through LoadCredential.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.attic-post-build-hook;
  common = import ./common.nix { inherit lib pkgs; };

  unit = "hookd";
  stateDir = "/var/lib/hookd";
  configPath = "/etc/hookd/config.yaml";
  credentialId = name: "attic-${name}";
  credentialPath = name: "/run/credentials/${unit}.service/${credentialId name}";
  tokenServers = lib.filterAttrs (_: s: s.tokenFile != null) cfg.servers;

  configFile = common.configFile cfg;
  gcRoots = common.gcRootsEnabled cfg;

  # systemd creates and owns directories below /var/lib and /run (StateDirectory,
  # RuntimeDirectory); a directory elsewhere gets a tmpfiles rule and ReadWritePaths.
  below =
    prefix: dir: if lib.hasPrefix "${prefix}/" dir then lib.removePrefix "${prefix}/" dir else null;
  stateDirs = [
    cfg.settings.state_dir
    cfg.settings.spool_dir
  ];
  socketDir = dirOf (toString cfg.settings.socket);
  managedState = lib.filter (d: below "/var/lib" d != null) stateDirs;
  otherDirs = lib.unique (
    lib.filter (d: below "/var/lib" d == null) stateDirs
    ++ lib.optional (below "/run" socketDir == null) socketDir
  );
  gcRootsDir = common.gcRootsDir {
    stateDir = cfg.settings.state_dir;
    inherit (cfg) user;
  };

  localServers = common.localServers cfg [
    config.networking.hostName
    (
      if (config.networking.domain or null) != null then
        "${config.networking.hostName}.${config.networking.domain}"
      else
        null
    )
  ];
in
{
  options.services.attic-post-build-hook = common.options {
    socket = "/run/hookd/hookd.sock";
    stateDir = stateDir;
    spoolDir = "${stateDir}/spool";
  } // {
    user = lib.mkOption {
      type = lib.types.str;
      default = "hookd";
      description = ''
        User the daemon runs as. The post-build hook itself always runs as root, inside nix-daemon.
      '';
    };
    group = lib.mkOption {
      type = lib.types.str;
      default = "hookd";
      description = "Group the daemon runs as; it owns the state and runtime directories.";
    };
    createUser = lib.mkOption {
      type = lib.types.bool;
      default = cfg.user == "hookd";
      defaultText = lib.literalExpression ''config.services.attic-post-build-hook.user == "hookd"'';
      description = ''
        Whether to create {option}`services.attic-post-build-hook.user` and
        {option}`services.attic-post-build-hook.group` as a system user and group. Turn it off to
        run the daemon as an account defined elsewhere.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = common.assertions cfg ++ [
      {
        assertion = cfg.settings.socket != null;
        message = ''
          services.attic-post-build-hook.settings.socket is null; on NixOS the hook and the daemon
          need an explicit path. Remove the setting to get the default.'';
      }
      {
        assertion = cfg.createUser || config.users.users ? ${cfg.user};
        message = ''
          services.attic-post-build-hook.user = "${cfg.user}" does not exist and createUser is off.
          Define users.users.${cfg.user} (and users.groups.${cfg.group}), or set
          services.attic-post-build-hook.createUser = true; to get a system user.'';
      }
      {
        assertion = cfg.createUser || config.users.groups ? ${cfg.group};
        message = ''
          services.attic-post-build-hook.group = "${cfg.group}" does not exist and createUser is off.
          Define users.groups.${cfg.group}, or set services.attic-post-build-hook.createUser = true;.'';
      }
    ];

    # Pushing a host's builds to an atticd on the same host works (the queue rides out atticd
    # restarts), so this is only a warning.
    warnings = lib.optional ((config.services.atticd.enable or false) && localServers != { }) ''
      services.attic-post-build-hook: server(s) ${lib.concatStringsSep ", " (lib.attrNames localServers)}
      point at this host, which also runs services.atticd. hookd queues paths while atticd restarts,
      so this is safe, but every local build is pushed into the cache on the same machine. If that
      is not what you want, point the server at another cache or disable the hook on this host.'';

    services.attic-post-build-hook.settings = common.render cfg (name: _: credentialPath name);
    services.attic-post-build-hook.postBuildHook = common.hookScript {
      inherit cfg;
      socket = lib.escapeShellArg (toString cfg.settings.socket);
      spool = lib.escapeShellArg cfg.settings.spool_dir;
    };

    # Only the hook. allowed-users is left alone: defining it would replace the default "*" and
    # lock every other user out of the daemon. extra-allowed-users only adds the daemon's user,
    # for hosts that restrict allowed-users.
    nix.settings.post-build-hook = cfg.postBuildHook;
    nix.settings.extra-allowed-users = [ cfg.user ];

    environment.etc."hookd/config.yaml".source = configFile;
    # `hookd status` and friends, for root (they read /etc/hookd/config.yaml).
    environment.systemPackages = [ cfg.package ];

    users.users = lib.mkIf cfg.createUser {
      ${cfg.user} = {
        isSystemUser = true;
        group = cfg.group;
        home = cfg.settings.state_dir;
        description = "hookd binary cache uploader";
      };
    };
    users.groups = lib.mkIf cfg.createUser { ${cfg.group} = { }; };

    # Directories systemd does not manage (see `below`), and the one below Nix's gcroots where
    # hookd pins queued paths until they are uploaded (the service may write only that one there).
    systemd.tmpfiles.rules =
      map (d: "d ${d} 0750 ${cfg.user} ${cfg.group} - -") otherDirs
      ++ lib.optional gcRoots "d ${gcRootsDir} 0755 ${cfg.user} ${cfg.group} - -";

    systemd.services.${unit} = {
      description = "hookd: push Nix build results to binary caches";
      wantedBy = [ "multi-user.target" ];
      after = [
        "network.target"
        "nix-daemon.socket"
      ];
      wants = [ "nix-daemon.socket" ];
      restartTriggers = [ configFile ];
      # The daemon shells out to nix (path-info, store dumps) through nix-daemon.
      path = [ config.nix.package ];
      environment = {
        NIX_REMOTE = "daemon";
        XDG_CACHE_HOME = "${cfg.settings.state_dir}/.cache";
      };
      startLimitIntervalSec = 0;

      serviceConfig = {
        ExecStart = lib.escapeShellArgs [
          (lib.getExe' cfg.package "hookd")
          "daemon"
          "--config"
          configPath
        ];
        User = cfg.user;
        Group = cfg.group;
        Restart = "always";
        RestartSec = 5;
        KillSignal = "SIGTERM";
        TimeoutStopSec = common.stopTimeout cfg;

        # The daemon reads each token from its credential, never from /run/secrets.
        LoadCredential = lib.mapAttrsToList (
          name: s: "${credentialId name}:${toString s.tokenFile}"
        ) tokenServers;

        RuntimeDirectory = lib.mkIf (below "/run" socketDir != null) (below "/run" socketDir);
        RuntimeDirectoryMode = "0750";
        StateDirectory = map (below "/var/lib") managedState;
        StateDirectoryMode = "0750";
        ReadWritePaths = otherDirs ++ lib.optional gcRoots gcRootsDir;

        CapabilityBoundingSet = [ "" ];
        DevicePolicy = "closed";
        LockPersonality = true;
        NoNewPrivileges = true;
        PrivateDevices = true;
        PrivateTmp = true;
        ProcSubset = "pid";
        ProtectClock = true;
        ProtectControlGroups = true;
        ProtectHome = true;
        ProtectHostname = true;
        ProtectKernelLogs = true;
        ProtectKernelModules = true;
        ProtectKernelTunables = true;
        ProtectProc = "invisible";
        ProtectSystem = "strict";
        RemoveIPC = true;
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
        ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        SystemCallArchitectures = "native";
        # Not ~@resources: the nix client raises its stack limit (setrlimit) at start.
        SystemCallErrorNumber = "EPERM";
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
        ];
        UMask = "0077";
      };
    };
  };
}
