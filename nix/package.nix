# hookd as a Python application. Called with `callPackage`; the flake passes its own source.
{
  lib,
  stdenv,
  python3Packages,
  src ? ../.,
}:

let
  python3 = python3Packages.python;
  pyproject = builtins.fromTOML (builtins.readFile ../pyproject.toml);

  # Only what the wheel needs: a change to tests, docs or Nix files does not rebuild hookd.
  # (lib.cleanSourceWith, not lib.fileset: the latter needs Nix >= 2.14.)
  root = toString src;
  keep =
    path: type:
    let
      rel = lib.removePrefix "${root}/" (toString path);
      base = baseNameOf rel;
    in
    base != "__pycache__"
    && !(lib.hasSuffix ".pyc" base)
    && (
      rel == "hookd"
      || lib.hasPrefix "hookd/" rel
      || builtins.elem rel [
        "pyproject.toml"
        "README.md"
        "LICENSE"
      ]
    );
in
python3Packages.buildPythonApplication {
  pname = pyproject.project.name;
  inherit (pyproject.project) version;
  pyproject = true;

  src = lib.cleanSourceWith {
    name = "hookd-source";
    src = lib.cleanSource src;
    filter = keep;
  };

  build-system = [ python3Packages.setuptools ];

  dependencies = with python3Packages; [
    httpx
    sniffio # httpcore imports it per request; see pyproject.toml
    h11 # hookd.attic.upload: small uploads over keep-alive HTTP/1.1
    pyyaml
    structlog
    watchfiles
    pyjwt
    cryptography
    prometheus-client
    certifi
  ];

  # The post-build hook's fast entry point. hookd/hook.py is standalone and stdlib-only: run by
  # the interpreter directly, isolated and without site (-I -S), it starts about as fast as a bare
  # interpreter, where the console script bin/hookd-hook (kept for manual use) pays for site and
  # the entry-point lookup on every build. libexec/hookd/hookd-hook is hookd/hookrun.py, a tiny
  # launcher that imports the hook.py next to it from bytecode compiled here (a script given to
  # python is compiled on every run; an imported module is not). unchecked-hash: the store is
  # immutable, so python need not even stat the source. The flags are one word on purpose: Linux
  # hands everything after the interpreter to it as a single argument, and python rejects "-I -S".
  postInstall = ''
    install -d "$out/libexec/hookd"
    install -m 0644 hookd/hook.py "$out/libexec/hookd/hook.py"
    ${python3.interpreter} -m compileall -q --invalidation-mode unchecked-hash \
      "$out/libexec/hookd/hook.py"
    {
      echo "#!${python3.interpreter} -IS"
      cat hookd/hookrun.py
    } > "$out/libexec/hookd/hookd-hook"
    chmod 0755 "$out/libexec/hookd/hookd-hook"
  ''
  + lib.optionalString (stdenv.buildPlatform.canExecute stdenv.hostPlatform) ''
    # It must start as written: with nothing to queue it says so and exits 0.
    env -i "$out/libexec/hookd/hookd-hook"
  '';

  # The test suite needs a Nix store and sockets; it runs in CI, not in the build sandbox.
  doCheck = false;
  pythonImportsCheck = [
    "hookd"
    "hookd.config"
  ];

  meta = {
    description = pyproject.project.description;
    license = lib.licenses.mit;
    mainProgram = "hookd";
    platforms = lib.platforms.linux ++ lib.platforms.darwin;
  };
}
