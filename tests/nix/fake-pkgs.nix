# A stand-in for nixpkgs' package set, good enough to evaluate the hookd modules inside the real
# NixOS, nix-darwin and home-manager module systems with Nix 2.8 and no nixpkgs checkout.
#
#   import ./fake-pkgs.nix { lib = import (src + "/nixpkgs/lib"); path = src + "/nixpkgs"; system = "x86_64-linux"; }
#
# Packages are derivation-shaped attribute sets with a fixed store path; writers keep their text
# and the formats keep their value, so a test can read back exactly what a module would write.
# Anything not listed here fails when (and only when) a module forces it.
{
  lib,
  # The nixpkgs tree (home-manager imports nixos/modules/misc/*.nix through pkgs.path).
  path,
  system,
  extraPackages ? { },
}:

let
  zeros = "00000000000000000000000000000000";

  fakeDrv =
    name: extra:
    let
      self = {
        type = "derivation";
        inherit name system;
        pname = name;
        version = "0.0.0";
        outPath = "${builtins.storeDir}/${zeros}-${name}";
        drvPath = "${builtins.storeDir}/${zeros}-${name}.drv";
        outputs = [ "out" ];
        outputName = "out";
        meta = {
          mainProgram = name;
          platforms = lib.platforms.all;
        };
        passthru = { };
        out = self;
        bin = self;
        dev = self;
        lib = self;
        man = self;
        doc = self;
        su = self;
        override = _: self;
        overrideAttrs = _: self;
      }
      // extra;
    in
    self;

  # A file written at build time: a derivation that remembers its text.
  writer =
    kind: name: text:
    fakeDrv name {
      inherit text;
      writer = kind;
      executable = kind != "writeText";
    };

  # pkgs.formats: the real option types, and a `generate` that keeps the value.
  jsonValue =
    with lib.types;
    let
      valueType =
        nullOr (oneOf [
          bool
          int
          float
          str
          lib.types.path
          (attrsOf valueType)
          (listOf valueType)
        ])
        // {
          description = "JSON value";
        };
    in
    valueType;
  tomlValue =
    with lib.types;
    let
      valueType =
        oneOf [
          bool
          int
          float
          str
          lib.types.path
          (attrsOf valueType)
          (listOf valueType)
        ]
        // {
          description = "TOML value";
        };
    in
    valueType;
  format = kind: type: _args: {
    inherit type;
    lib.types.atom = with lib.types; nullOr (oneOf [ bool int float str ]);
    generate =
      name: value:
      fakeDrv name {
        inherit value;
        format = kind;
      };
  };

  platform = lib.systems.elaborate system;

  names = [
    "attic-client"
    "bash"
    "bashInteractive"
    "cacert"
    "coreutils"
    "diffutils"
    "findutils"
    "gnugrep"
    "gnused"
    "hookd"
    "openssh"
    "shadow"
    "sops"
    "systemd"
    "util-linux"
    "man"
    "texinfoInteractive"
    "man-db"
    "less"
    "nano"
    "iptables"
    "nixos-firewall-tool"
    "nix-bash-completions"
    "nix-info"
    "bcache-tools"
    "dosfstools"
    "e2fsprogs"
    "lvm2"
    "nettools"
    "iputils"
    "iproute2"
    "host"
    "nixos-container"
    "strace"
    "rsync"
    "perl"
    "grub2"
    "pam"
    "sudo"
    "su"
    "fuse3"
    "fuse"
    "dbus"
    "nsncd"
    "openresolv"
    "kmod"
    "logrotate"
    "makeInitrdNGTool"
    "dhcpcd"
    "tzdata"
    "glibcLocales"
    "kexec-tools"
  ];

  pkgs =
    lib.genAttrs names (n: fakeDrv n { })
    // {
      _type = "pkgs";
      inherit lib system;
      inherit path;
      pkgs = pkgs;
      __splicedPackages = pkgs;
      pkgsStatic = pkgs;
      pkgsi686Linux = pkgs;
      pkgsBuildBuild = pkgs;
      buildPackages = pkgs;
      appendOverlays = _: pkgs;
      extend = _: pkgs;
      callPackage =
        f: args:
        let
          fn = if builtins.isFunction f then f else import f;
        in
        # Like the real one; an argument it does not know becomes a fake package.
        fn (
          lib.mapAttrs (n: optional: pkgs.${n} or (if optional then null else fakeDrv n { })) (
            lib.filterAttrs (n: optional: !optional || pkgs ? ${n}) (builtins.functionArgs fn)
          )
          // args
        );

      stdenv = lib.filterAttrs (n: _: lib.hasPrefix "is" n) platform // {
        hostPlatform = platform;
        buildPlatform = platform;
        targetPlatform = platform;
        shell = "${pkgs.bash}/bin/bash";
        cc = fakeDrv "cc" { };
        mkDerivation = args: fakeDrv (args.name or "${args.pname}-${args.version}") { inherit args; };
      };
      stdenvNoCC = pkgs.stdenv;

      nix = fakeDrv "nix" { version = "2.24.0"; };
      linuxPackages = {
        kernel = fakeDrv "linux" {
          version = "6.6.0";
          modDirVersion = "6.6.0";
          features = { };
        };
        extend = _: pkgs.linuxPackages;
      };
      nixVersions = { stable = pkgs.nix; latest = pkgs.nix; };
      lix = fakeDrv "lix" { version = "2.91.0"; };

      formats = {
        json = format "json" jsonValue;
        yaml = format "yaml" jsonValue;
        yaml_1_1 = format "yaml" jsonValue;
        yaml_1_2 = format "yaml" jsonValue;
        toml = format "toml" tomlValue;
        ini = format "ini" (with lib.types; attrsOf (attrsOf (nullOr (oneOf [ bool int float str ]))));
        keyValue = format "keyValue" (with lib.types; attrsOf (oneOf [ bool int float str ]));
      };

      writeText = writer "writeText";
      writeScript = writer "writeScript";
      writeScriptBin = writer "writeScriptBin";
      runtimeShell = "${pkgs.bash}/bin/bash";
      writeShellScript = writer "writeShellScript";
      writeShellScriptBin = writer "writeShellScriptBin";
      writeTextFile = args: writer "writeTextFile" args.name args.text;
      writeShellApplication = args: writer "writeShellApplication" args.name args.text;
      runCommand = name: env: script: fakeDrv name { inherit env script; };
      runCommandLocal = pkgs.runCommand;
      runCommandCC = pkgs.runCommand;
      unixtools = lib.genAttrs [ "xxd" "ping" "hostname" ] (n: fakeDrv n { });
      substituteAll = args: fakeDrv (args.name or "substituted") { inherit args; };
      symlinkJoin = args: fakeDrv args.name { inherit (args) paths; };
      buildEnv = args: fakeDrv args.name { inherit (args) paths; };
      writeTextDir = path: text: fakeDrv (baseNameOf path) { inherit path text; };
      # the image keeps its arguments, so a test can read back what it would contain
      dockerTools = {
        buildLayeredImageWithNixDb = args: fakeDrv "${args.name}.tar.gz" { inherit args; };
        fakeNss = fakeDrv "fake-nss" { };
      };

      python3Packages =
        lib.genAttrs [
          "setuptools"
          "httpx"
          "sniffio"
          "h11"
          "pyyaml"
          "structlog"
          "watchfiles"
          "pyjwt"
          "cryptography"
          "prometheus-client"
          "certifi"
        ] (n: fakeDrv n { })
        // {
          python = fakeDrv "python3" { interpreter = "${builtins.storeDir}/${zeros}-python3/bin/python3"; };
          buildPythonApplication =
            args:
            fakeDrv "${args.pname}-${args.version}" {
              inherit args;
              inherit (args) pname version;
              meta = args.meta;
            };
        };
    }
    // extraPackages;
in
pkgs
