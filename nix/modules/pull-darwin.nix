# nix-darwin: services.attic-post-build-hook.pull (see pull.nix). Imported by darwin.nix.
#
# A root launchd daemon runs the netrc script at load (boot, and each activation that changes it)
# and whenever a token file changes (WatchPaths); activation runs it once as well.
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
  nixManaged = config.nix.enable or true;
  script = pull.netrcScript {
    inherit (r) entries;
    inherit (cfg.pull) netrcFile;
  };
in
{
  options.services.attic-post-build-hook.pull = pull.options {
    netrcFileDefault = "/var/run/hookd-pull/netrc";
  };

  config = lib.mkMerge [
    { services.attic-post-build-hook.pull.netrcScript = script; }
    (lib.mkIf cfg.pull.enable {
      assertions = pull.assertions cfg;
      warnings = lib.optional (!nixManaged) ''
        services.attic-post-build-hook.pull: nix.enable is off (Nix is managed outside nix-darwin),
        so substituters cannot be set here. Add to /etc/nix/nix.custom.conf:
          extra-substituters = ${lib.concatStringsSep " " r.substituters}
          extra-trusted-public-keys = ${lib.concatStringsSep " " r.trustedPublicKeys}
        ${lib.optionalString (r.entries != { }) "  netrc-file = ${cfg.pull.netrcFile}"}'';

      nix.settings = lib.mkIf nixManaged (pull.nixSettings cfg);

      launchd.daemons.hookd-netrc = lib.mkIf (r.entries != { }) {
        command = "${script}";
        path = [
          "/usr/bin"
          "/bin"
        ];
        serviceConfig = {
          RunAtLoad = true;
          WatchPaths = lib.unique (lib.attrValues r.entries);
          ProcessType = "Background";
          StandardErrorPath = "/var/log/hookd-netrc.log";
        };
      };

      system.activationScripts.postActivation.text = lib.mkIf (r.entries != { }) (
        lib.mkAfter ''
          echo "assembling Nix's netrc for hookd's caches..." >&2
          ${script} || true
        ''
      );
    })
  ];
}
