# NixOS module: services.attic-post-build-hook
#
# nix-daemon runs a small post-build hook (as root) that hands each build's outputs to the hookd
# daemon over /run/hookd/hookd.sock; the daemon (a hardened systemd service, as `user`) keeps a
# durable queue and pushes to Attic. Token files reach the daemon through LoadCredential; a path
# unit restarts the daemon when one of them changes.
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
  stateDir = common.rootStateDir;
  configPath = "/etc/hookd/config.yaml";
  credentialId = name: "attic-${name}";
  credentialPath = name: "/run/credentials/${unit}.service/${credentialId name}";
  tokenServers = lib.filterAttrs (_: s: s.tokenFile != null) cfg.servers;
  esc = lib.escapeShellArg;
  # A path in a unit file: % starts a specifier there.
  unitPath = p: lib.replaceStrings [ "%" ] [ "%%" ] (toString p);

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
  socketRuntimeDir = below "/run" socketDir;
  managedState = lib.filter (d: below "/var/lib" d != null) stateDirs;
  otherDirs = lib.unique (
    lib.filter (d: below "/var/lib" d == null) stateDirs
    ++ lib.optional (socketRuntimeDir == null) socketDir
  );
  gcRootsDir = common.gcRootsDir {
    stateDir = cfg.settings.state_dir;
    inherit (cfg) user;
  };

  # Token rotation. LoadCredential copies each token file when the service starts, so the daemon's
  # own watching only ever sees that copy. hookd-tokens.path watches the token files themselves
  # (PathChanged= follows a symlink to the file it ends at: a write, a replacement by rename or
  # a deletion there triggers it) and starts this script, which restarts the daemon when a token
  # differs from the copy it was given; so a spurious event (a touch, a secret manager pruning an
  # old generation) does not interrupt uploads. A restart is safe: the queue is durable.
  #
  # sops-nix and agenix do not write the file: they write a new generation directory and swap
  # the symlink in front of it (/run/secrets -> /run/secrets.d/N). systemd sees that only as an
  # event on a parent and re-resolves its watch, without triggering; watching the parent
  # directories would not help, as they sit behind the same symlink. Their own restart hooks
  # cover them (sops-nix: restartUnits = [ "hookd.service" ]; see docs/modules.md).
  tokenRotated = pkgs.writeShellScript "hookd-token-rotated" ''
    credentials=${esc "/run/credentials/${unit}.service"}
    changed=
    check() { # check SERVER TOKEN-FILE
      if [ ! -e "$2" ]; then
        echo "token file $2 (server $1) is missing; ${unit}.service keeps the token it has" >&2
      elif ! ${pkgs.diffutils}/bin/cmp -s -- "$2" "$credentials/attic-$1"; then
        changed="$changed $1"
      fi
    }
    ${lib.concatStrings (
      lib.mapAttrsToList (name: s: ''
        check ${esc name} ${esc (toString s.tokenFile)}
      '') tokenServers
    )}
    if [ -z "$changed" ]; then
      echo "tokens unchanged; ${unit}.service keeps running"
      exit 0
    fi
    echo "new token for server(s)$changed: restarting ${unit}.service if it runs (queued paths are kept)"
    exec ${config.systemd.package}/bin/systemctl try-restart ${unit}.service
  '';

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
  imports = [
    ./pull-nixos.nix
    (import ./compat-attic-infra.nix "nixos")
  ];

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
      description = ''
        Group the daemon runs as; it owns the state directories and, unless
        {option}`services.attic-post-build-hook.adminGroup` is set, the socket's directory.
      '';
    };
    adminGroup = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "wheel";
      description = ''
        A group whose members may use `hookd status`, `hookd push` and `hookd wait` without sudo.
        The daemon's socket and its directory are handed to this group (the directory gets the
        setgid bit, so the socket hookd creates in it belongs to the group without the daemon
        joining it), and the group goes into `settings.socket_group` and
        `settings.allowed_groups`. Without it, members of
        {option}`services.attic-post-build-hook.group` may use them.
      '';
    };
    metrics = common.metricsOptions // {
      openFirewall = lib.mkOption {
        type = lib.types.bool;
        default = false;
        description = "Open {option}`services.attic-post-build-hook.metrics.port` in the firewall.";
      };
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
        assertion = cfg.adminGroup == null || cfg.settings.socket == null || socketRuntimeDir != null;
        message = ''
          services.attic-post-build-hook.adminGroup needs the socket below /run (the default,
          /run/hookd/hookd.sock), where systemd creates its directory for the service; got
          settings.socket = "${toString cfg.settings.socket}".'';
      }
      {
        assertion =
          (cfg.settings.socket_group or null) == null
          || cfg.adminGroup != null
          || cfg.settings.socket_group == cfg.group;
        message = ''
          services.attic-post-build-hook.settings.socket_group = "${toString (cfg.settings.socket_group or "")}" alone
          does not let that group reach the socket: its directory belongs to the service's group, and
          the daemon may only hand its socket to a group it is in. Set
          services.attic-post-build-hook.adminGroup = "${toString (cfg.settings.socket_group or "")}"; instead.'';
      }
      {
        # An `attic login` account (atticConfigFile) exists by construction; a warning covers it.
        assertion = cfg.createUser || config.users.users ? ${cfg.user} || cfg.atticConfigFile != null;
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
    warnings =
      lib.optional (cfg.adminGroup != null && !(config.users.groups ? ${cfg.adminGroup})) ''
        services.attic-post-build-hook.adminGroup = "${cfg.adminGroup}" is not defined in users.groups;
        make sure the group exists on this host, or hookd's socket stays with group ${cfg.group}.''
      ++ lib.optional ((config.services.atticd.enable or false) && localServers != { }) ''
      services.attic-post-build-hook: server(s) ${lib.concatStringsSep ", " (lib.attrNames localServers)}
      point at this host, which also runs services.atticd. hookd queues paths while atticd restarts,
      so this is safe, but every local build is pushed into the cache on the same machine. If that
      is not what you want, point the server at another cache or disable the hook on this host.'';

    services.attic-post-build-hook.settings = lib.mkMerge [
      (common.render cfg (name: _: credentialPath name))
      {
        # Who may use the socket besides root and the daemon's user: its directory and the socket
        # belong to adminGroup when set, else to the service's group; the daemon agrees.
        allowed_groups = [ cfg.group ] ++ lib.optional (cfg.adminGroup != null) cfg.adminGroup;
      }
      (lib.mkIf (cfg.adminGroup != null) { socket_group = cfg.adminGroup; })
      # TLS: the system's CA bundle (security.pki), so private CAs added there are trusted too.
      { ca_file = lib.mkDefault "/etc/ssl/certs/ca-certificates.crt"; }
      (common.metricsSettings cfg.metrics)
    ];
    networking.firewall.allowedTCPPorts = lib.mkIf (
      cfg.metrics.enable && cfg.metrics.openFirewall
    ) [ cfg.metrics.port ];
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
        # The daemon sends READY=1 once it listens, and WATCHDOG=1 only while its event loop
        # runs and its queue writer answers: a wedged daemon is restarted, not left running.
        Type = "notify";
        WatchdogSec = 60;
        KillSignal = "SIGTERM";
        TimeoutStopSec = common.stopTimeout cfg;

        # The daemon reads each token from its credential, never from /run/secrets.
        LoadCredential = lib.mapAttrsToList (
          name: s: "${credentialId name}:${unitPath s.tokenFile}"
        ) tokenServers;

        RuntimeDirectory = lib.mkIf (socketRuntimeDir != null) socketRuntimeDir;
        RuntimeDirectoryMode = "0750";
        # With adminGroup: the socket's directory goes to that group, setgid, so the socket the
        # daemon binds there belongs to it too (the daemon need not be a member). "+": as root,
        # outside the sandbox (RestrictSUIDSGID); "-": a missing group must not keep hookd down.
        ExecStartPre = lib.mkIf (cfg.adminGroup != null && socketRuntimeDir != null) [
          "-+${lib.escapeShellArgs [ "${pkgs.coreutils}/bin/chgrp" cfg.adminGroup (unitPath socketDir) ]}"
          "-+${lib.escapeShellArgs [ "${pkgs.coreutils}/bin/chmod" "2750" (unitPath socketDir) ]}"
        ];
        StateDirectory = map (below "/var/lib") managedState;
        StateDirectoryMode = "0750";
        ReadWritePaths =
          otherDirs
          ++ lib.optional gcRoots gcRootsDir
          ++ lib.optional (cfg.metrics.textfile != null) (unitPath (dirOf cfg.metrics.textfile));

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

    systemd.paths.hookd-tokens = lib.mkIf (tokenServers != { }) {
      description = "hookd: watch the Attic token files";
      wantedBy = [ "multi-user.target" ];
      pathConfig = {
        PathChanged = lib.unique (lib.mapAttrsToList (_: s: unitPath s.tokenFile) tokenServers);
        Unit = "hookd-token-rotated.service";
      };
    };
    systemd.services.hookd-token-rotated = lib.mkIf (tokenServers != { }) {
      description = "hookd: restart the daemon after a token rotation";
      serviceConfig = {
        Type = "oneshot";
        ExecStart = tokenRotated;
      };
    };
  };
}
