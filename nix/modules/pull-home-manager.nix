# home-manager: services.attic-post-build-hook.pull (see pull.nix). Imported by home-manager.nix.
#
# Writes the user's nix.conf (home-manager's nix.settings, which needs nix.package) and a
# user-level netrc in $XDG_STATE_HOME/hookd/netrc, assembled at activation and, when a token file
# changes, by a systemd user path unit (Linux) or a launchd agent with WatchPaths (macOS).
#
# A multi-user nix-daemon honours a user's substituters only for trusted users or for URLs in the
# system's trusted-substituters, and downloads with the system's netrc: on NixOS and nix-darwin the
# system modules' pull options are the reliable way; this one serves single-user Nix and trusted
# users.
{
  config,
  lib,
  pkgs,
  options,
  ...
}:

let
  cfg = config.services.attic-post-build-hook;
  pull = import ./pull.nix { inherit lib pkgs; };
  r = pull.resolve cfg;
  isDarwin = pkgs.stdenv.hostPlatform.isDarwin;
  hasNixSettings = options ? nix && options.nix ? settings;
  script = pull.netrcScript {
    inherit (r) entries;
    inherit (cfg.pull) netrcFile;
  };
  withNetrc = r.entries != { };
in
{
  options.services.attic-post-build-hook.pull = pull.options {
    netrcFileDefault = "${config.xdg.stateHome}/hookd/netrc";
    netrcFileText = lib.literalExpression ''"''${config.xdg.stateHome}/hookd/netrc"'';
  };

  config = lib.mkMerge [
    { services.attic-post-build-hook.pull.netrcScript = script; }
    (lib.mkIf cfg.pull.enable (
      lib.mkMerge [
        {
          assertions = pull.assertions cfg ++ [
            {
              assertion = hasNixSettings && config.nix.package != null;
              message = ''
                services.attic-post-build-hook.pull writes the user's nix.conf (nix.settings), which
                needs nix.package; set nix.package = pkgs.nix; (or configure substituters in the
                system's Nix configuration instead).'';
            }
          ];

          home.activation.hookdNetrc = lib.mkIf withNetrc (
            lib.hm.dag.entryAfter [ "writeBoundary" ] ''
              run ${script} || echo "hookd: the netrc is incomplete (see above); pulls from those hosts are anonymous" >&2
            ''
          );
        }

        (lib.optionalAttrs hasNixSettings { nix.settings = pull.nixSettings cfg; })

        (lib.mkIf (withNetrc && !isDarwin) {
          systemd.user.paths.hookd-netrc = {
            Unit.Description = "hookd: watch the token files behind Nix's netrc";
            Path = {
              PathChanged = lib.unique (lib.attrValues r.entries);
              Unit = "hookd-netrc.service";
            };
            Install.WantedBy = [ "default.target" ];
          };
          systemd.user.services.hookd-netrc = {
            Unit.Description = "hookd: assemble Nix's netrc from the Attic token files";
            Service = {
              Type = "oneshot";
              ExecStart = "${script}";
              UMask = "0077";
            };
          };
        })

        (lib.mkIf (withNetrc && isDarwin) {
          launchd.agents.hookd-netrc = {
            enable = true;
            config = {
              ProgramArguments = [ "${script}" ];
              EnvironmentVariables.PATH = "/usr/bin:/bin";
              RunAtLoad = true;
              WatchPaths = lib.unique (lib.attrValues r.entries);
              ProcessType = "Background";
            };
          };
        })
      ]
    ))
  ];
}
