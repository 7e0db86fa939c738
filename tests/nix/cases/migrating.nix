# docs/migrating.md's configurations, for tests/test_migrating.py: each snippet (a file the test
# writes, `nix-attic-infra: <snippet>` for modules, the flake itself for flakes) is evaluated in
# the real module system its kind names; the result is what the host gets plus the failed
# assertions and warnings of hookd's module files.
e: snippets:
let
  inherit (e) lib;
  files = [
    "nix/modules/nixos.nix"
    "nix/modules/darwin.nix"
    "nix/modules/home-manager.nix"
    "nix/modules/pull-nixos.nix"
    "nix/modules/pull-darwin.nix"
    "nix/modules/pull-home-manager.nix"
    "nix/modules/compat-attic-infra.nix"
  ];
  hookd = e.inputs.hookd;
  module = s: import (/. + s.file) hookd;

  nixosView =
    ev:
    let
      c = ev.config;
    in
    {
      failed = lib.concatMap (e.failedFrom ev) files;
      warnings = lib.concatMap (e.warningsFrom ev) files;
      yaml = c.environment.etc."hookd/config.yaml".source.text or null;
      nixConf = c.environment.etc."nix/nix.conf".source.text;
      postBuildHook = toString (c.nix.settings.post-build-hook or "");
    };
  homeView =
    ev:
    let
      c = ev.config;
    in
    {
      failed = lib.concatMap (e.failedFrom ev) files;
      warnings = lib.concatMap (e.warningsFrom ev) files;
      yaml = c.xdg.configFile."hookd/config.yaml".source.text or null;
      nixConf = c.xdg.configFile."nix/nix.conf".source.text or null;
      atticToml = c.xdg.configFile."attic/config.toml".source.value or null;
    };

  evaluate =
    s:
    if s.kind == "nixos-flake" then
      let
        flake = import (/. + s.file);
        self = flake.outputs {
          inherit self;
          inherit (e.inputs) nixpkgs;
          nix-attic-infra = hookd;
        };
      in
      lib.mapAttrs (_: nixosView) self.nixosConfigurations
    else if s.kind == "nixos" then
      nixosView (e.nixos { modules = [ hookd.nixosModules.default (module s) ]; })
    else if s.kind == "nixos-with-attic-client" then
      nixosView (e.nixos { modules = [ hookd.nixosModules.attic-client (module s) ]; })
    else if s.kind == "nixos-plain" then
      nixosView (e.nixos { modules = [ (module s) ]; })
    else if s.kind == "home-manager" then
      homeView (e.homeManager { modules = [ hookd.homeManagerModules.default (module s) ]; })
    else if s.kind == "home-manager-sops" then
      homeView (
        e.homeManager {
          system = "aarch64-darwin";
          modules = [
            e.inputs.sops-nix.homeManagerModules.sops
            (module s)
          ];
        }
      )
    else
      throw "tests/nix/cases/migrating.nix: unknown kind ${s.kind}";
in
lib.listToAttrs (map (s: lib.nameValuePair s.name (evaluate s)) snippets)
