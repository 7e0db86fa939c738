"""`hookd provision`: declarative Attic caches and tokens from a version-controlled YAML.

Modules, in the order a run uses them:

- spec: the YAML (hookd's and attic-provision's form) and its parsed form;
- claims: Attic's permission flags, cache-name patterns and first-match claim lookup;
- keys: the server's signing secret, the admin token's claims, minting tokens;
- admin: the HTTP calls to Attic's cache-config endpoint (the only module that talks to Attic);
- plan: what differs between the YAML and the server, checked and applied;
- output: redacted messages, token files, netrc, the pull-side Nix settings;
- command: the options and the run (`hookd provision`, `attic-provision`).
"""

from __future__ import annotations

from hookd.duration import parse_duration
from hookd.errors import ProvisionError
from hookd.provision.admin import AtticAdmin, CacheState
from hookd.provision.claims import (
    CLAIM_NAMESPACE,
    caches_claim,
    pattern_matches,
    patterns_overlap,
    permission_for,
)
from hookd.provision.command import add_arguments, attic_provision_main, main, run_parsed
from hookd.provision.keys import mint, token_claims
from hookd.provision.spec import (
    CacheSpec,
    ProvisionConfig,
    TokenSpec,
    load_config,
    parse_config,
    parse_retention,
    shadowed_grants,
)

__all__ = [
    "CLAIM_NAMESPACE",
    "AtticAdmin",
    "CacheSpec",
    "CacheState",
    "ProvisionConfig",
    "ProvisionError",
    "TokenSpec",
    "add_arguments",
    "attic_provision_main",
    "caches_claim",
    "load_config",
    "main",
    "mint",
    "parse_config",
    "parse_duration",
    "parse_retention",
    "pattern_matches",
    "patterns_overlap",
    "permission_for",
    "run_parsed",
    "shadowed_grants",
    "token_claims",
]
