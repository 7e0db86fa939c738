"""`hookd provision`: declarative Attic caches and tokens from a version-controlled YAML.

Modules, in the order a run uses them:

- spec: the YAML (hookd's and attic-provision's form) and its parsed form;
- claims: YAML permission names and the claim provision mints (Attic's lookup: hookd.attic);
- keys: the server's signing secret, the admin token's claims, minting tokens;
- admin: cache-config through hookd.attic's client (the only module that talks to Attic);
- plan: what differs between the YAML and the server, checked and applied;
- output: redacted messages, token files, netrc, the pull-side Nix settings;
- options: the command-line options (light: hookd's own parser imports it);
- command: the run (`hookd provision`, and `attic-provision` as that tool behaved).

This package file imports nothing, so `hookd`'s other commands do not pay for JWT and HTTP.
"""
