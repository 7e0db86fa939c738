# Stand-in for your host's own configuration (hardware, boot, users): replace this file with
# yours, or copy ./hookd.nix and the hookd module into an existing flake.
{
  networking.hostName = "my-host";
  boot.loader.grub.device = "nodev";
  fileSystems."/" = {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };
  system.stateVersion = "24.05";
}
