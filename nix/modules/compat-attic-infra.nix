# Drop-in compatibility with nix-attic-infra (the modules hookd replaces). Imported by each
# platform module as `import ./compat-attic-infra.nix "<nixos|darwin|home-manager>"`.
#
# - services.attic-post-build-hook: its quick start `{ enable; cacheName; user = "builder"; }`
#   means "push as the account whose `attic login` is set up": hookd then runs as that account
#   and reads its ~/.config/attic/config.toml (`atticConfigFile`), pushing to the default server.
#   Its other options (serverName, serverEndpoint, tokenFile, verbose, serverHostnames) keep
#   working; serverHostnames is the same assertion (no hook on the cache server itself).
# - services.attic-client (NixOS): the pull side, mapped onto services.attic-post-build-hook.pull.
# - programs.attic-client.servers.<name>.{endpoint,tokenPath} (home-manager): mapped onto
#   home-manager's own programs.attic-client.settings (never declared a second time here), and
#   hookd takes its servers and watchStore targets from there.
platform:
{
  config,
  lib,
  pkgs,
  options,
  ...
}:

let
  inherit (lib) mkOption types;
  cfg = config.services.attic-post-build-hook;
  common = import ./common.nix { inherit lib pkgs; };
  isNixos = platform == "nixos";
  isHome = platform == "home-manager";
  opt = path: common.optionName path;

  # The daemon's own account on each platform; any other `user` is an `attic login` account.
  ownUser = if isNixos then "hookd" else "root";
  homeOf =
    user:
    config.users.users.${user}.home or (
      if pkgs.stdenv.hostPlatform.isDarwin then
        "/Users/${user}"
      else if user == "root" then
        "/root"
      else
        "/home/${user}"
    );
  hostName = if isHome then null else config.networking.hostName or null;

  # home-manager's programs.attic-client (since 2026-07).
  hasAtticClient =
    isHome && options ? programs && options.programs ? attic-client && options.programs.attic-client ? settings;
  upstream = config.programs.attic-client;
  upstreamServers = if hasAtticClient then upstream.settings.servers or { } else { };
  upstreamWatch = if hasAtticClient then upstream.watchStore or [ ] else [ ];
  upstreamDefault =
    upstream.settings.default-server or (
      if lib.length (lib.attrNames upstreamServers) == 1 then
        lib.head (lib.attrNames upstreamServers)
      else
        "default"
    );
  watchTarget =
    spec:
    let
      parts = lib.splitString ":" spec;
    in
    if lib.length parts == 2 then
      {
        server = lib.head parts;
        cache = lib.last parts;
      }
    else
      {
        server = upstreamDefault;
        cache = spec;
      };
  inlineTokenServers = lib.attrNames (
    lib.filterAttrs (_: s: s ? token && !(s ? token-file)) upstreamServers
  );

  # services.attic-client (nix-attic-infra's NixOS pull module).
  client = config.services.attic-client;
  clientTokenPath =
    if client.secretsBackend == "sops" then
      "/run/secrets/attic-client-token"
    else if client.secretsBackend == "agenix" then
      config.age.secrets."attic-client-token".path
    else
      client.manualTokenPath;
  hasSops = options ? sops;
  hasAgenix = options ? age;
in
{
  _file = toString ./compat-attic-infra.nix;
  key = "${toString ./compat-attic-infra.nix}#${platform}";

  options =
    {
      services = {
        attic-post-build-hook = {
          serverHostnames = mkOption {
            type = types.listOf types.str;
            default = [
              "atticd"
              "attic-cache"
              "cache-server"
            ];
            description = ''
              Host names of machines that serve the cache (nix-attic-infra's option). Enabling the
              post-build hook on one of them fails evaluation: a cache server pushing its own builds
              into itself. Pulling ({option}`${opt [ "pull" "enable" ]}`) is still allowed there.
            '';
          };
          serverName = mkOption {
            type = types.str;
            default = "attic-cache";
            description = ''
              nix-attic-infra's name for the server given by {option}`${opt [ "serverEndpoint" ]}`
              (the key in {option}`${opt [ "servers" ]}` it becomes).
            '';
          };
          serverEndpoint = mkOption {
            type = types.nullOr types.str;
            default = null;
            example = "https://cache.example.com";
            description = ''
              nix-attic-infra's single server: when set, it becomes
              `servers.<serverName> = { endpoint = serverEndpoint; tokenFile = tokenFile; }`.
            '';
          };
          tokenFile = mkOption {
            type = types.nullOr types.str;
            default = null;
            example = "/run/secrets/attic-token";
            description = "nix-attic-infra's token file for {option}`${opt [ "serverEndpoint" ]}`.";
          };
          verbose = mkOption {
            type = types.bool;
            default = false;
            description = "nix-attic-infra's verbose logging: hookd logs at level debug.";
          };
        }
        // lib.optionalAttrs (!isHome) {
          atticConfigFile = mkOption {
            type = types.nullOr types.str;
            default =
              if cfg.cacheName != null && cfg.servers == { } && cfg.serverEndpoint == null && cfg.user != ownUser then
                "${homeOf cfg.user}/.config/attic/config.toml"
              else
                null;
            defaultText = lib.literalMD ''
              `~user/.config/attic/config.toml` when {option}`${opt [ "cacheName" ]}` is set, no
              server is configured and {option}`${opt [ "user" ]}` is an account of your own (not
              the default); else null'';
            description = ''
              An `attic login` configuration (attic's config.toml) whose servers and tokens hookd
              uses, as nix-attic-infra's `user` did. {option}`${opt [ "cacheName" ]}` then pushes to
              its default server (`attic login --set-default`, or the first login). The daemon runs
              as {option}`${opt [ "user" ]}`, which must be able to read the file.
            '';
          };
        };
      }
      // lib.optionalAttrs isNixos {
        attic-client = {
          enable = lib.mkEnableOption "nix-attic-infra's attic-client (the pull side), mapped onto services.attic-post-build-hook.pull";
          secretsBackend = mkOption {
            type = types.enum [
              "sops"
              "agenix"
              "none"
            ];
            default = "sops";
            description = "Where the pull token comes from (as in nix-attic-infra).";
          };
          server = mkOption {
            type = types.str;
            default = "http://localhost:5001";
            description = "The Attic server's URL.";
          };
          serverName = mkOption {
            type = types.str;
            default = "attic-cache";
            description = "Name of the cache entry in {option}`${opt [ "pull" "caches" ]}`.";
          };
          cache = mkOption {
            type = types.str;
            default = "cache-local";
            description = "The cache to substitute from.";
          };
          tokenFile = mkOption {
            type = types.nullOr types.path;
            default = null;
            description = "sops backend: the encrypted file holding the token (becomes sops.secrets.attic-client-token).";
          };
          tokenKey = mkOption {
            type = types.str;
            default = "ATTIC_CLIENT_JWT_TOKEN";
            description = "sops backend: the key in {option}`services.attic-client.tokenFile`.";
          };
          ageSecretFile = mkOption {
            type = types.nullOr types.path;
            default = null;
            description = "agenix backend: the .age file (becomes age.secrets.attic-client-token).";
          };
          ageSecretOwner = mkOption {
            type = types.str;
            default = "root";
            description = "agenix backend: owner of the decrypted token.";
          };
          ageSecretGroup = mkOption {
            type = types.str;
            default = "root";
            description = "agenix backend: group of the decrypted token.";
          };
          manualTokenPath = mkOption {
            type = types.nullOr types.str;
            default = null;
            description = "none backend: the token file.";
          };
          enablePostBuildHook = mkOption {
            type = types.bool;
            default = false;
            description = "Not supported: use services.attic-post-build-hook (evaluation says how).";
          };
          trustedPublicKeys = mkOption {
            type = types.listOf types.str;
            default = [ ];
            description = "The cache's public keys.";
          };
          configureNixSubstituter = mkOption {
            type = types.bool;
            default = true;
            description = "Whether to add the cache to `substituters`.";
          };
        };
      };
    }
    // lib.optionalAttrs isHome {
      # nix-attic-infra's programs.attic-client.servers. Only this sub-option is declared;
      # programs.attic-client itself (enable, package, settings, watchStore) is home-manager's.
      programs.attic-client.servers = mkOption {
        type = types.attrsOf (
          types.submodule {
            options = {
              endpoint = mkOption {
                type = types.str;
                description = "The server's URL.";
              };
              tokenPath = mkOption {
                type = types.nullOr types.str;
                default = null;
                description = "File holding the token (outside the store), e.g. a sops-nix secret.";
              };
            };
          }
        );
        default = { };
        description = ''
          nix-attic-infra's servers. Written into home-manager's `programs.attic-client.settings`
          (`endpoint`, `token-file`), from where hookd takes its servers unless
          {option}`${opt [ "servers" ]}` is set.
        '';
      };
    };

  config = lib.mkMerge (
    [
      (lib.mkIf cfg.enable {
        assertions = lib.optional (!isHome) {
          assertion = hostName == null || !(builtins.elem hostName cfg.serverHostnames);
          message = ''
            services.attic-post-build-hook is enabled on "${toString hostName}", which is listed in
            ${opt [ "serverHostnames" ]} (${lib.concatStringsSep ", " cfg.serverHostnames}): a cache
            server would push its own builds into the cache it serves. Disable the hook on this
            host (services.attic-post-build-hook.enable = false; ${opt [ "pull" "enable" ]} may stay),
            or remove "${toString hostName}" from ${opt [ "serverHostnames" ]}.'';
        };

        services.attic-post-build-hook = lib.mkMerge [
          (lib.mkIf (cfg.serverEndpoint != null) {
            servers.${cfg.serverName} = {
              endpoint = cfg.serverEndpoint;
              inherit (cfg) tokenFile;
            };
          })
          (lib.mkIf cfg.verbose { settings.log.level = lib.mkDefault "debug"; })
        ];
      })
      {
        assertions = lib.optional (cfg.enable && cfg.tokenFile != null) {
          assertion = cfg.serverEndpoint != null;
          message = ''
            ${opt [ "tokenFile" ]} belongs to ${opt [ "serverEndpoint" ]}, which is not set. Write
            ${opt [ "servers" ]}.main = { endpoint = "https://cache.example.com"; tokenFile = "${toString cfg.tokenFile}"; };'';
        };
      }
    ]
    ++ lib.optionals (!isHome) [
      (lib.mkIf (cfg.enable && cfg.atticConfigFile != null) {
        services.attic-post-build-hook.settings = {
          attic_config = cfg.atticConfigFile;
          targets = lib.mkIf (cfg.cacheName != null) (
            lib.mkDefault [
              {
                server = "default";
                cache = cfg.cacheName;
              }
            ]
          );
        };
      })
    ]
    ++ lib.optionals isNixos [
      (lib.mkIf (cfg.enable && cfg.atticConfigFile != null) (
        {
          # The account's own group need not be declared here; the daemon runs with group hookd.
          users.groups = lib.mkIf (!cfg.createUser && cfg.group == "hookd") { hookd = { }; };
          warnings = lib.optional (!(config.users.users ? ${cfg.user})) ''
            services.attic-post-build-hook.user = "${cfg.user}" is not declared in users.users; hookd
            runs as that account and reads ${cfg.atticConfigFile} (its `attic login`), so it must exist.'';
        }
        // {
          # ProtectHome=true would hide the attic config below /home or /root.
          systemd.services.hookd.serviceConfig.ProtectHome = lib.mkIf (
            lib.hasPrefix "/home/" cfg.atticConfigFile || lib.hasPrefix "/root/" cfg.atticConfigFile
          ) (lib.mkForce "read-only");
        }
      ))
      (lib.mkIf client.enable (
        lib.mkMerge [
          {
            assertions = [
              {
                assertion = !client.enablePostBuildHook;
                message = ''
                  services.attic-client.enablePostBuildHook: hookd's post-build hook replaces it. Write
                    services.attic-post-build-hook = { enable = true; cacheName = "${client.cache}"; servers.${client.serverName} = { endpoint = "${client.server}"; tokenFile = "${toString clientTokenPath}"; }; };'';
              }
              {
                assertion = client.secretsBackend != "none" || client.manualTokenPath != null;
                message = "services.attic-client: with secretsBackend = \"none\", set manualTokenPath (the token file).";
              }
              {
                assertion = client.secretsBackend != "sops" || client.tokenFile == null || hasSops;
                message = "services.attic-client.tokenFile needs sops-nix: import sops-nix.nixosModules.sops, or set secretsBackend = \"none\"; manualTokenPath = \"/run/secrets/attic-client-token\";.";
              }
              {
                assertion = client.secretsBackend != "agenix" || (hasAgenix && client.ageSecretFile != null);
                message = "services.attic-client: secretsBackend = \"agenix\" needs the agenix module and ageSecretFile.";
              }
            ];
            services.attic-post-build-hook.pull = {
              enable = true;
              caches.${client.serverName} = lib.mkIf client.configureNixSubstituter {
                url = "${lib.removeSuffix "/" client.server}/${client.cache}";
              };
              trustedPublicKeys = client.trustedPublicKeys;
              netrc = lib.mkIf (client.secretsBackend != "none" || client.manualTokenPath != null) {
                ${common.endpointHost client.server} = clientTokenPath;
              };
            };
          }
          (lib.optionalAttrs hasSops {
            sops.secrets."attic-client-token" = lib.mkIf (client.secretsBackend == "sops" && client.tokenFile != null) {
              sopsFile = client.tokenFile;
              key = client.tokenKey;
              path = "/run/secrets/attic-client-token";
              mode = "0400";
              restartUnits = [ "hookd-netrc.service" ];
            };
          })
          (lib.optionalAttrs hasAgenix {
            age.secrets."attic-client-token" = lib.mkIf (client.secretsBackend == "agenix" && client.ageSecretFile != null) {
              file = client.ageSecretFile;
              owner = client.ageSecretOwner;
              group = client.ageSecretGroup;
              mode = "0400";
            };
          })
        ]
      ))
    ]
    ++ lib.optionals isHome [
      (lib.optionalAttrs hasAtticClient {
        programs.attic-client.settings.servers = lib.mkIf (config.programs.attic-client.servers != { }) (
          lib.mapAttrs (
            _: s: { inherit (s) endpoint; } // lib.optionalAttrs (s.tokenPath != null) { token-file = s.tokenPath; }
          ) config.programs.attic-client.servers
        );
      })
      # hookd's servers and targets from programs.attic-client, unless given (configureAtticClient
      # goes the other way round).
      (lib.mkIf (!cfg.configureAtticClient) {
        services.attic-post-build-hook.servers = lib.mkDefault (
          lib.mapAttrs (_: s: {
            inherit (s) endpoint;
            tokenFile = s.token-file or null;
          }) (lib.filterAttrs (_: s: builtins.isAttrs s && s ? endpoint) upstreamServers)
        );
      })
      # Nothing configured at all but a cache name: the user's own `attic login`, as on NixOS.
      (lib.mkIf (cfg.enable && cfg.cacheName != null && cfg.servers == { }) {
        services.attic-post-build-hook.settings = {
          attic_config = "${config.xdg.configHome}/attic/config.toml";
          targets = lib.mkDefault [
            {
              server = "default";
              cache = cfg.cacheName;
            }
          ];
        };
      })
      (lib.mkIf (cfg.enable && cfg.cacheName == null && upstreamWatch != [ ]) {
        services.attic-post-build-hook.settings.targets = lib.mkDefault (map watchTarget upstreamWatch);
        # hookd pushes what `attic watch-store` pushed; its units stay defined but no longer start.
        systemd.user.services = lib.mkIf (upstream.enable && !pkgs.stdenv.hostPlatform.isDarwin) (
          lib.listToAttrs (
            map (
              spec:
              lib.nameValuePair "attic-watch-store--${lib.replaceStrings [ ":" ] [ "-" ] spec}" {
                Install.WantedBy = lib.mkForce [ ];
              }
            ) upstreamWatch
          )
        );
      })
      (lib.mkIf (cfg.enable && !cfg.configureAtticClient && inlineTokenServers != [ ]) {
        warnings = [
          ''
            programs.attic-client.settings.servers ${lib.concatStringsSep ", " inlineTokenServers} hold the token
            inline (in the world-readable store); hookd uses only `token-file`. Move the token to a
            file and set token-file (or programs.attic-client.servers.<name>.tokenPath).''
        ];
      })
    ]
  );
}
