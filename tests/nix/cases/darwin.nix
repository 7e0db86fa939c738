# nix-darwin scenarios for tests/test_nix_modules.py, evaluated in the real nix-darwin module
# system: the launchd plist as nix-darwin renders it, the hook, the activation script.
e:
let
  inherit (e) lib;
  file = "nix/modules/darwin.nix";
  server = {
    endpoint = "https://cache.example.com";
    tokenFile = "/var/lib/secrets/attic-token";
  };
  base = {
    enable = true;
    cacheName = "main";
    servers.main = server;
  };
  host = modules: e.darwin { modules = [ e.flakeModules.darwin ] ++ modules; };
  with' = cfg: host [ { services.attic-post-build-hook = cfg; } ];

  checks = ev: {
    failed = e.failedFrom ev file;
    warnings = e.warningsFrom ev file;
  };
  view =
    ev:
    let
      c = ev.config;
    in
    checks ev
    // {
      plist = c.environment.launchDaemons."org.nixos.hookd.plist".text;
      yaml = c.environment.etc."hookd/config.yaml".source.text;
      etcHook = c.environment.etc."hookd/post-build-hook".source.text;
      activation = c.system.activationScripts.postActivation.text;
      # (With nix.enable off, nix-darwin refuses any read of nix.settings.)
      nixSettingsHook =
        if c.nix.enable then map (v: v.post-build-hook.text) (e.valuesFrom ev file "nix.settings") else null;
      users = lib.mapAttrs (_: u: { inherit (u) uid gid home shell isHidden; }) (
        lib.filterAttrs (n: _: n == "_hookd") c.users.users
      );
      knownUsers = c.users.knownUsers;
    };
in
{
  default = view (with' base) // {
    optionDocs = e.optionDocs (with' base);
    hook = (with' base).config.nix.settings.post-build-hook.text;
    x86_64 = (e.darwin {
      system = "x86_64-darwin";
      modules = [
        e.flakeModules.darwin
        { services.attic-post-build-hook = base; }
      ];
    }).config.environment.launchDaemons."org.nixos.hookd.plist".text;
  };

  metrics = view (
    with' (
      base
      // {
        metrics.enable = true;
      }
    )
  );

  createdUser = view (
    with' (
      base
      // {
        user = "_hookd";
        createUser = true;
        uid = 533;
        gid = 533;
        extraPostBuildHook = "/etc/nix/determinate-hook.sh";
      }
    )
  );

  # Nix managed elsewhere (Determinate Nix): no nix.settings, a warning with the line to add.
  unmanagedNix = view (host [
    {
      nix.enable = false;
      services.attic-post-build-hook = base;
    }
  ]);

  bad = lib.mapAttrs (_: ev: (checks ev).failed) {
    storeToken = with' (base // { servers.main = server // { tokenFile = "/nix/store/00000000000000000000000000000000-attic-token"; }; });
    createWithoutIds = with' (base // { user = "_hookd"; createUser = true; });
    createRoot = with' (base // { createUser = true; uid = 533; gid = 533; });
  };
}
