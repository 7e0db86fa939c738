# Stand-in for the Linux runner's own configuration: replace it with yours.
{
  networking.hostName = "ci-runner";
  boot.loader.grub.device = "nodev";
  fileSystems."/" = {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };
  nix.settings.max-jobs = 8;
  system.stateVersion = "24.05";
}
