# The one way the tests make a derivation without nixpkgs: builder /bin/sh with a host PATH
# (sandbox = false), carrying `nonce` so every test run gets fresh store paths.
nonce: name: script: extra:
builtins.derivation ({
  inherit name nonce;
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" script ];
  PATH = "/usr/bin:/bin";
} // extra)
