# An OCI image of hookd for Kubernetes: `hookd daemon` beside in-cluster builders, and
# `hookd provision` as a Job (examples/k8s/). It carries Nix itself, with the image's store
# registered in its Nix database, so the same image can be a builder whose /nix a hookd
# container shares (examples/k8s/hookd-builder.yaml), and the store target (`nix copy`) works.
# The post-build hook for such builders is /bin/hookd-post-build-hook.
#
#   nix build .#oci-image                        # on Linux; a docker-archive tarball
#   docker load < result                         # → hookd:<version>
#   skopeo copy docker-archive:result docker://registry.example.com/hookd:0.1.0
#   kind load image-archive result               # a local kind cluster
#
# Runs as root inside the container, a single-user Nix store without build users or sandbox
# (containers usually cannot nest one); run the pod unprivileged and let Kubernetes confine it.
{
  lib,
  dockerTools,
  hookd,
  nix,
  cacert,
  coreutils,
  bashInteractive,
  writeTextDir,
  writeShellScriptBin,
  tag ? hookd.version,
}:

let
  # For builders that share this image's /nix: `post-build-hook = /bin/hookd-post-build-hook`
  # hands the build to the hookd container through the socket and spool they share.
  postBuildHook = writeShellScriptBin "hookd-post-build-hook" ''
    exec ${hookd}/libexec/hookd/hookd-hook \
      --socket "''${HOOKD_SOCKET:-/run/hookd/hookd.sock}" \
      --spool "''${HOOKD_SPOOL_DIR:-/var/lib/hookd/spool}"
  '';
  nixConf = writeTextDir "etc/nix/nix.conf" ''
    build-users-group =
    sandbox = false
    experimental-features = nix-command flakes
  '';
in
dockerTools.buildLayeredImageWithNixDb {
  name = "hookd";
  inherit tag;
  contents = [
    hookd
    nix
    cacert
    coreutils
    bashInteractive
    nixConf
    postBuildHook
    dockerTools.fakeNss # /etc/passwd and /etc/group with root and nobody
  ];
  extraCommands = ''
    mkdir -p tmp var/lib/hookd run/hookd root
    chmod 1777 tmp
  '';
  config = {
    Entrypoint = [ (lib.getExe hookd) ];
    Cmd = [ "daemon" ];
    Env = [
      "PATH=${
        lib.makeBinPath [
          hookd
          nix
          coreutils
          bashInteractive
        ]
      }"
      "SSL_CERT_FILE=${cacert}/etc/ssl/certs/ca-bundle.crt"
      "NIX_SSL_CERT_FILE=${cacert}/etc/ssl/certs/ca-bundle.crt"
      "HOOKD_CONFIG=/etc/hookd/config.yaml"
      "USER=root"
      "HOME=/root"
    ];
    Labels."org.hookd.post-build-hook" = "/bin/hookd-post-build-hook";
    Volumes."/var/lib/hookd" = { };
  };
}
