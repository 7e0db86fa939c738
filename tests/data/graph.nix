# Test derivations without nixpkgs. `nonce` makes every test's paths fresh.
{ nonce ? "", bigMiB ? 0, count ? 0 }:
let
  mk = import ./mk.nix nonce;
  b = mk "dep-b" "echo B > $out" { };
  c = mk "dep-c" "mkdir -p $out/share; echo C > $out/share/c.txt; ln -s c.txt $out/share/link; printf '#!/bin/sh\\n' > $out/run; chmod +x $out/run" { };
  a = mk "top-a" "mkdir -p $out; echo ${b} > $out/b; cat ${c}/share/c.txt > $out/c; echo ${c} >> $out/c; echo $out > $out/self" { };
  d = mk "top-d" "echo ${a} > $out" { };
  multi = mk "multi" "mkdir -p $out $dev $lib; echo lib > $lib/l; echo $lib > $dev/l; echo $dev > $out/d" {
    outputs = [ "out" "dev" "lib" ];
  };
  # fixed-output: its path does not depend on the nonce, so it is built once per store
  fod = mk "fixed-output" "echo fixed-output-content > $out" {
    outputHashMode = "flat";
    outputHashAlgo = "sha256";
    outputHash = "0ii6yw9x1n66pwiw4952crhna93ynjinh48x8w8sphrkysg7kpca";
  };
  src = mk "thing-source" "echo src > $out" { };
  big = mk "big" "head -c ${toString (bigMiB * 1048576)} /dev/zero | openssl enc -aes-128-ctr -nosalt -pass pass:hookd-${nonce} -pbkdf2 > $out" { };
  many = builtins.genList (i: mk "many-${toString i}" "echo ${toString i} > $out" { }) count;
  manyRoot = mk "many-root" "echo ${builtins.concatStringsSep " " (map toString many)} > $out" { };
in
{ inherit a b c d multi fod src big many manyRoot; }
