{
  description = "hookd: push every Nix build result to binary caches (Attic first), never failing a build";

  # Any nixpkgs works; point it at yours with `inputs.hookd.inputs.nixpkgs.follows = "nixpkgs";`.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = inputs: import ./nix/outputs.nix inputs;
}
