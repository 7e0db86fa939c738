# Stand-in for the Linux runner's own configuration: replace it with yours.
{
  networking.hostName = "ci-runner";
  boot.loader.grub.device = "nodev";
  fileSystems."/" = {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };
  nix.settings.max-jobs = 8;
  # NixOS only: members of this group may run `hookd status` and `hookd wait` without sudo, e.g.
  # the CI runner's account at the end of a job.
  # services.attic-post-build-hook.adminGroup = "ci";
  system.stateVersion = "24.05";
}
