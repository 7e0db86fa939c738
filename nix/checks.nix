# `nix flake check`: the package builds, every .nix file parses, and (on Linux) a NixOS host with
# the module evaluates without failed assertions and its generated files are what hookd accepts.
# The module-system tests in tests/test_nix_modules.py go further, offline, without nixpkgs.
{ self, nixpkgs }:
system: pkgs:

let
  inherit (nixpkgs) lib;
  hookd = self.packages.${system}.default;

  nixosHost = nixpkgs.lib.nixosSystem {
    inherit system;
    modules = [
      self.nixosModules.default
      {
        boot.isContainer = true;
        system.stateVersion = "24.05";
        services.attic-post-build-hook = {
          enable = true;
          cacheName = "main";
          servers.main = {
            endpoint = "https://cache.example.com/";
            tokenFile = "/run/secrets/attic-token";
          };
          extraPostBuildHook = "/etc/nix/other-hook";
        };
      }
    ];
  };
  host = nixosHost.config;
  failed = map (a: a.message) (lib.filter (a: !a.assertion) host.assertions);
  python = pkgs.python3.withPackages (ps: [
    ps.pyyaml
    (ps.toPythonModule hookd)
  ]);
in
{
  package = hookd;

  nix-parse = pkgs.runCommand "hookd-nix-parse" { nativeBuildInputs = [ pkgs.nix ]; } ''
    export HOME=$TMPDIR
    cd ${self}
    find . -name '*.nix' -print0 | xargs -0 -n1 nix-instantiate --store dummy:// --parse > /dev/null
    touch $out
  '';
}
// lib.optionalAttrs pkgs.stdenv.hostPlatform.isLinux {
  # Failed assertions fail the build, not the evaluation, so `nix flake show` stays cheap.
  nixos-module =
    pkgs.runCommand "hookd-nixos-module" { failedAssertions = lib.concatStringsSep "\n" failed; } ''
      if [ -n "$failedAssertions" ]; then
        echo "failed assertions:" >&2
        echo "$failedAssertions" >&2
        exit 1
      fi
      ${lib.getExe pkgs.bash} -n ${host.services.attic-post-build-hook.postBuildHook}
      ${python.interpreter} -c '
      import sys, yaml
      from hookd.config import parse_config
      parse_config(yaml.safe_load(open(sys.argv[1])), source=sys.argv[1])
      ' ${host.environment.etc."hookd/config.yaml".source}
      mkdir $out
      cp ${host.services.attic-post-build-hook.postBuildHook} $out/post-build-hook
      cp ${host.environment.etc."hookd/config.yaml".source} $out/config.yaml
      cp ${host.systemd.units."hookd.service".unit}/hookd.service $out/hookd.service
    '';
}
