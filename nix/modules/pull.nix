# The pull side, shared by the NixOS, nix-darwin and home-manager modules: make a host *use* the
# caches hookd pushes to (substituters, trusted public keys) and, for private caches, give Nix a
# netrc built from the same token files.
#
#   pull = import ./pull.nix { inherit lib pkgs; };
#
# Options live under services.attic-post-build-hook.pull and work without
# services.attic-post-build-hook.enable: a pull-only host needs no daemon.
#
# The netrc is assembled at run time by `netrcScript` (never in the store): a root service on
# NixOS (systemd path unit on the token files), a root launchd daemon on nix-darwin (WatchPaths),
# and home-manager activation plus a user unit/agent. The token never reaches argv: the script
# reads it with bash's `read` and writes it with the `printf` builtin.
{ lib, pkgs }:

let
  inherit (lib) mkOption types literalExpression;
  common = import ./common.nix { inherit lib pkgs; };
  opt = path: common.optionName ([ "pull" ] ++ path);

  cacheModule =
    { name, ... }:
    {
      options = {
        url = mkOption {
          type = types.str;
          example = "https://cache.example.com/main";
          description = ''
            The substituter URL of cache `${name}`. For Attic it is the server's endpoint followed
            by the cache name (`hookd provision` prints it).
          '';
        };
        publicKey = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "main:1aL6vcQ7mKF0oEXlHsV330qXTMfafsN2radupW8OSMM=";
          description = ''
            The cache's public signing key (`hookd provision` or `attic cache info` prints it).
            Added to `trusted-public-keys`; without it Nix refuses the cache's paths unless they
            carry another trusted signature.
          '';
        };
        priority = mkOption {
          type = types.nullOr types.int;
          default = null;
          example = 30;
          description = ''
            Substituter priority (lower is tried first; cache.nixos.org is 40, Attic announces 41).
            Null: {option}`${opt [ "priority" ]}`, else what the cache announces.
          '';
        };
      };
    };

  # `?priority=N` is a store setting Nix reads from the URL; it wins over nix-cache-info.
  withPriority =
    priority: url:
    if priority == null || lib.hasInfix "priority=" url then
      url
    else
      url + (if lib.hasInfix "?" url then "&" else "?") + "priority=${toString priority}";

  # `hookd provision --nix-config FILE`: {"substituters": [...], "trusted-public-keys": [...]}.
  readNixConfig =
    file:
    let
      data = builtins.fromJSON (builtins.readFile file);
      list =
        key:
        let
          v = data.${key} or [ ];
        in
        if builtins.isList v && lib.all builtins.isString v then
          v
        else
          throw "${opt [ "nixConfigFile" ]}: ${toString file}: \"${key}\" must be a list of strings (the output of `hookd provision --nix-config`).";
    in
    if builtins.isAttrs data then
      {
        substituters = list "substituters";
        trustedPublicKeys = list "trusted-public-keys";
      }
    else
      throw "${opt [ "nixConfigFile" ]}: ${toString file} is not a JSON object; write it with `hookd provision --nix-config FILE`.";
in
rec {
  options =
    { netrcFileDefault, netrcFileText ? netrcFileDefault }:
    {
      enable = lib.mkEnableOption ''
        using the caches hookd pushes to: their substituter URLs and public keys go into Nix's
        configuration, and for private caches a netrc with the tokens (assembled at run time, never
        in the store) becomes Nix's `netrc-file`. Works without
        {option}`services.attic-post-build-hook.enable` (a pull-only host)'';

      caches = mkOption {
        type = types.attrsOf (types.submodule cacheModule);
        default = { };
        example = literalExpression ''
          {
            main = {
              url = "https://cache.example.com/main";
              publicKey = "main:1aL6vcQ7mKF0oEXlHsV330qXTMfafsN2radupW8OSMM=";
              priority = 30;
            };
          }
        '';
        description = "Caches to substitute from, by name.";
      };

      nixConfigFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = literalExpression "./caches.json";
        description = ''
          A JSON file written by `hookd provision --nix-config FILE`:
          `{"substituters": [...], "trusted-public-keys": [...]}`. Read at evaluation time (it holds
          no secret: URLs and public keys only) and added to the caches above, with
          {option}`${opt [ "priority" ]}`.
        '';
      };

      priority = mkOption {
        type = types.nullOr types.int;
        default = null;
        example = 30;
        description = ''
          Priority for substituters without their own (those from
          {option}`${opt [ "nixConfigFile" ]}`, and caches whose `priority` is null). Null: what
          each cache announces.
        '';
      };

      trustedPublicKeys = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "More keys for `trusted-public-keys` (e.g. a cache's previous key during a key change).";
      };

      netrc = mkOption {
        type = types.attrsOf types.str;
        default = { };
        example = {
          "cache.example.com" = "/run/secrets/attic-pull-token";
        };
        description = ''
          Extra netrc entries: host name -> file holding a token that may pull (a path outside the
          Nix store, read at run time). For pull-only hosts with a read-only token.
        '';
      };

      useServerTokens = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Whether each {option}`services.attic-post-build-hook.servers`.<name>.tokenFile also gives a
          netrc entry for its endpoint's host (a push token may pull too), so the token is written
          once.
        '';
      };

      netrcScript = mkOption {
        type = types.package;
        readOnly = true;
        description = ''
          The script that assembles the netrc (read-only): `hookd-netrc [DEST]` reads each token
          file and writes {option}`${opt [ "netrcFile" ]}` (or DEST) with mode 0600. The module runs
          it at boot/activation and when a token file changes; run it by hand after rotating a token
          behind a symlink swap (sops-nix, agenix) if their restart hooks are not set.
        '';
      };

      netrcFile = mkOption {
        type = types.str;
        default = netrcFileDefault;
        defaultText = netrcFileText;
        description = ''
          Where the netrc is assembled (mode 0600) and what Nix's `netrc-file` names. Only set when
          there is at least one entry.
        '';
      };
    };

  # What the options resolve to: { substituters, trustedPublicKeys, entries (host -> file) }.
  resolve =
    cfg:
    let
      p = cfg.pull;
      fromFile =
        if p.nixConfigFile == null then
          {
            substituters = [ ];
            trustedPublicKeys = [ ];
          }
        else
          readNixConfig p.nixConfigFile;
      cacheList = lib.attrValues p.caches;
      serverEntries = lib.optionalAttrs p.useServerTokens (
        lib.listToAttrs (
          lib.mapAttrsToList (_: s: lib.nameValuePair (common.endpointHost s.endpoint) (toString s.tokenFile)) (
            lib.filterAttrs (_: s: s.tokenFile != null) cfg.servers
          )
        )
      );
    in
    {
      substituters = lib.unique (
        map (c: withPriority (if c.priority != null then c.priority else p.priority) c.url) cacheList
        ++ map (withPriority p.priority) fromFile.substituters
      );
      trustedPublicKeys = lib.unique (
        lib.filter (k: k != null) (map (c: c.publicKey) cacheList)
        ++ fromFile.trustedPublicKeys
        ++ p.trustedPublicKeys
      );
      entries = serverEntries // p.netrc;
    };

  # Assertions for the pull options (empty when pull is off).
  assertions =
    cfg:
    let
      r = resolve cfg;
      badFiles = lib.filterAttrs (_: f: common.isStorePath f || !lib.hasPrefix "/" f) r.entries;
    in
    lib.optionals cfg.pull.enable [
      {
        # A netrc alone is useful too: substituters may come from elsewhere (`attic use`).
        assertion = r.substituters != [ ] || r.entries != { };
        message = ''
          ${opt [ "enable" ]} is set but there is no cache to pull from. Add one:
          ${opt [ "caches" ]}.main = { url = "https://cache.example.com/main"; publicKey = "main:…"; };
          or ${opt [ "nixConfigFile" ]} = ./caches.json; (from `hookd provision --nix-config caches.json`).'';
      }
      {
        assertion = badFiles == { };
        message = ''
          ${opt [ "netrc" ]}: the token file(s) for ${lib.concatStringsSep ", " (lib.attrNames badFiles)}
          must be absolute paths outside the Nix store (the store is world-readable), e.g.
          "/run/secrets/attic-pull-token".'';
      }
      {
        assertion = !(common.isStorePath cfg.pull.netrcFile) && lib.hasPrefix "/" cfg.pull.netrcFile;
        message = ''
          ${opt [ "netrcFile" ]} = "${cfg.pull.netrcFile}" must be an absolute path outside the Nix store.'';
      }
    ];

  # The script that writes the netrc: `hookd-netrc [DEST]`. Entries whose token file is missing or
  # empty are left out (the others still work) and the script exits 1 naming them.
  netrcScript =
    { entries, netrcFile }:
    let
      esc = lib.escapeShellArg;
    in
    pkgs.writeShellScript "hookd-netrc" ''
      # hookd: assemble Nix's netrc from the Attic token files (never in the store, mode 0600).
      set -u
      umask 077
      dest=''${1:-${esc netrcFile}}
      mkdir -p -- "$(dirname -- "$dest")"
      tmp="$dest.tmp.$$"
      trap 'rm -f -- "$tmp"' EXIT
      : > "$tmp"
      status=0
      entry() { # entry HOST TOKEN-FILE
        local token=
        if [ ! -r "$2" ]; then
          echo "hookd-netrc: token file $2 for $1 is missing or unreadable; Nix pulls from $1 without credentials until it exists" >&2
          status=1
          return
        fi
        IFS= read -r token < "$2" || true
        token=''${token//[[:space:]]/}
        if [ -z "$token" ]; then
          echo "hookd-netrc: token file $2 for $1 is empty; Nix pulls from $1 without credentials" >&2
          status=1
          return
        fi
        # printf is a shell builtin: the token is never a process argument.
        printf 'machine %s\nlogin bearer\npassword %s\n' "$1" "$token" >> "$tmp"
      }
      ${lib.concatStrings (lib.mapAttrsToList (host: file: "entry ${esc host} ${esc file}\n") entries)}
      mv -f -- "$tmp" "$dest"
      trap - EXIT
      echo "hookd-netrc: wrote $dest (${toString (lib.length (lib.attrNames entries))} host(s))" >&2
      exit "$status"
    '';

  # nix.settings for the resolved pull configuration.
  nixSettings =
    cfg:
    let
      r = resolve cfg;
    in
    {
      substituters = r.substituters;
      trusted-public-keys = r.trustedPublicKeys;
    }
    // lib.optionalAttrs (r.entries != { }) { netrc-file = cfg.pull.netrcFile; };
}
