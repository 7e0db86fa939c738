# Stand-in for the Mac runner's own configuration: replace it with yours.
{
  nixpkgs.hostPlatform = "aarch64-darwin";
  networking.hostName = "mac-runner";
  system.stateVersion = 6;

  # With Determinate Nix (or any Nix that nix-darwin does not manage), set nix.enable = false:
  # the module then leaves nix.conf alone, installs the hook as /etc/hookd/post-build-hook and
  # warns with the line to add to /etc/nix/nix.custom.conf.
  # nix.enable = false;
}
