# Benchmark derivations (no nixpkgs). `nonce` makes every run's paths fresh.
#   many      `count` trivial derivations (hook cost, build loop)
#   blobs     one derivation per entry of `blobsKiB`: that many KiB of incompressible data
#             (openssl aes-128-ctr of zeros); 0 gives a tiny text file
#   closure   a root referring to every blob: closure = blobs + 1 path (push throughput)
#   big       one path of `bigKiB` KiB of incompressible data (memory while streaming)
#   files     `files` text files made at evaluation time (builtins.toFile; nothing to build)
#   filesRoot a root referring to all of them: closure = files + 1 paths (no-op re-push)
#   scaleRoot a root referring to `files` text files padded to `pad` bytes (~0.5 KiB NARs with
#             pad = 400) and to the `blobsKiB` blobs: a closure of files + blobs + 1 paths. The
#             references go through a file (passAsFile): 10,000 store paths exceed the kernel's
#             128 KiB limit on one argument or environment string.
{ nonce ? "", count ? 0, blobsKiB ? [ ], bigKiB ? 0, files ? 0, pad ? 0 }:
let
  mk = name: script: builtins.derivation {
    inherit name nonce;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/usr/bin:/bin";
  };
  random = name: kib:
    if kib == 0 then "echo ${name} > $out"
    else "head -c ${toString (kib * 1024)} /dev/zero | openssl enc -aes-128-ctr -nosalt -pass pass:hookd-bench-${nonce}-${name} -pbkdf2 > $out";
  many = builtins.genList (i: mk "bench-many-${toString i}" "echo ${toString i} > $out") count;
  blobs = builtins.genList
    (i: mk "bench-blob-${toString i}" (random "blob-${toString i}" (builtins.elemAt blobsKiB i)))
    (builtins.length blobsKiB);
  closure = mk "bench-closure" "echo ${builtins.concatStringsSep " " (map toString blobs)} > $out";
  big = mk "bench-big" (random "big" bigKiB);
  fileList = builtins.genList
    (i: builtins.toFile "bench-file-${toString i}" "hookd bench ${nonce} ${toString i}\n${padding}") files;
  padding = builtins.substring 0 pad (builtins.concatStringsSep "" (builtins.genList (_: "hookd bench padding line ................................................\n") (pad / 64 + 1)));
  filesRoot = mk "bench-files-root" "echo ${builtins.concatStringsSep " " fileList} > $out";
  scaleRootDrv = builtins.derivation {
    name = "bench-scale-files-root";
    inherit nonce;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "cat $refsPath > $out" ];
    PATH = "/usr/bin:/bin";
    refs = builtins.concatStringsSep "\n" (fileList ++ map toString blobs);
    passAsFile = [ "refs" ];
  };
in
{ inherit many blobs closure big filesRoot; scaleRoot = scaleRootDrv; }
