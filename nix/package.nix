# hookd as a Python application. Called with `callPackage`; the flake passes its own source.
{
  lib,
  python3Packages,
  src ? ../.,
}:

let
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
    tenacity
    pyyaml
    structlog
    watchfiles
    pyjwt
    cryptography
  ];

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
