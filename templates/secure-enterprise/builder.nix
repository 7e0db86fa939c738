# Stand-in for the builder's own configuration: replace it with yours.
{
  networking.hostName = "builder";
  boot.loader.grub.device = "nodev";
  fileSystems."/" = {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };
  services.openssh.enable = true; # sops-nix decrypts with the host's SSH key
  system.stateVersion = "24.05";
}
