# NixOS: services.attic-post-build-hook.pull (see pull.nix). Imported by nixos.nix.
#
# The netrc is written by hookd-netrc.service (root, oneshot) at boot and whenever a token file
# changes (hookd-netrc.path), to /run/hookd-pull/netrc (a tmpfs, root-only); nix-daemon reads
# `netrc-file` at each download, so a rotated token is used without restarting anything.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.attic-post-build-hook;
  pull = import ./pull.nix { inherit lib pkgs; };
  r = pull.resolve cfg;
  unitPath = p: lib.replaceStrings [ "%" ] [ "%%" ] (toString p);
  script = pull.netrcScript {
    inherit (r) entries;
    inherit (cfg.pull) netrcFile;
  };
in
{
  options.services.attic-post-build-hook.pull = pull.options {
    netrcFileDefault = "/run/hookd-pull/netrc";
  };

  config = lib.mkMerge [
    { services.attic-post-build-hook.pull.netrcScript = script; }
    (lib.mkIf cfg.pull.enable {
      assertions = pull.assertions cfg;

      nix.settings = pull.nixSettings cfg;

      systemd.services.hookd-netrc = lib.mkIf (r.entries != { }) {
        description = "hookd: assemble Nix's netrc from the Attic token files";
        wantedBy = [ "multi-user.target" ];
        before = [ "nix-daemon.service" ];
        # A secret manager that swaps a symlinked directory (sops-nix, agenix) needs its own
        # restart hook: sops-nix restartUnits = [ "hookd-netrc.service" ].
        restartTriggers = [ script ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          ExecStart = "${script}";
          UMask = "0077";
          PrivateTmp = true;
          ProtectHome = "read-only";
          NoNewPrivileges = true;
        };
      };

      systemd.paths.hookd-netrc = lib.mkIf (r.entries != { }) {
        description = "hookd: watch the token files behind Nix's netrc";
        wantedBy = [ "multi-user.target" ];
        pathConfig = {
          PathChanged = lib.unique (map unitPath (lib.attrValues r.entries));
          Unit = "hookd-netrc-rotated.service";
        };
      };
      # A second unit for the path trigger: the boot-time one stays active (RemainAfterExit).
      systemd.services.hookd-netrc-rotated = lib.mkIf (r.entries != { }) {
        description = "hookd: rewrite Nix's netrc after a token rotation";
        serviceConfig = {
          Type = "oneshot";
          ExecStart = "${script}";
          UMask = "0077";
        };
      };
    })
  ];
}
