# The templates' flakes, called with stand-in inputs (nixpkgs, nix-darwin, home-manager and
# sops-nix backed by the real module trees and the fake pkgs; hookd is this repository's flake).
e:
let
  inherit (e) lib;
  nixosView =
    ev:
    let
      c = ev.config;
    in
    {
      failed = e.failedFrom ev "nix/modules/nixos.nix";
      hook = c.nix.settings.post-build-hook.text;
      yaml = c.environment.etc."hookd/config.yaml".source.text;
      loadCredential = c.systemd.services.hookd.serviceConfig.LoadCredential;
      sopsSecrets = lib.mapAttrs (_: s: { inherit (s) path owner restartUnits; }) (c.sops.secrets or { });
    };
  basic = e.template "basic-client";
  automated = e.template "automated-client";
  secure = e.template "secure-enterprise";
in
{
  basic-client = {
    outputs = builtins.attrNames basic;
    my-host = nixosView basic.nixosConfigurations.my-host;
  };
  automated-client = {
    outputs = builtins.attrNames automated;
    ci-runner = nixosView automated.nixosConfigurations.ci-runner;
    mac-runner =
      let
        ev = automated.darwinConfigurations.mac-runner;
      in
      {
        failed = e.failedFrom ev "nix/modules/darwin.nix";
        plist = ev.config.environment.launchDaemons."org.nixos.hookd.plist".text;
        yaml = ev.config.environment.etc."hookd/config.yaml".source.text;
        hook = ev.config.nix.settings.post-build-hook.text;
      };
  };
  secure-enterprise = {
    outputs = builtins.attrNames secure;
    builder = nixosView secure.nixosConfigurations.builder;
    developer =
      let
        ev = secure.homeConfigurations.developer;
        c = ev.config;
      in
      {
        failed = e.failedFrom ev "nix/modules/home-manager.nix";
        yaml = c.xdg.configFile."hookd/config.yaml".source.text;
        execStart = c.systemd.user.services.hookd.Service.ExecStart;
        after = c.systemd.user.services.hookd.Unit.After;
        atticClient = c.programs.attic-client.settings;
        hook = c.nix.settings.post-build-hook.text;
      };
  };
}
