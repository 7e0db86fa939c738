"""Targets: the only modules that speak to a cache (HTTP or `nix copy`)."""
