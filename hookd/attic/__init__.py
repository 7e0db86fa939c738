"""The Attic HTTP API, in one place (docs/attic-api.md describes the contract).

- ``names``: cache names, cache patterns and store-path hashes as Attic accepts them.
- ``claims``: the JWT claim namespace and Attic's first-match permission lookup.
- ``redact``: scrubbing tokens (and fragments of them) from any text before it is shown.
- ``answers``: typed, strictly validated answers of every route hookd uses.
- ``routes``: request bodies and URL paths of those routes.
- ``client``: ``AtticClient``, the only code that speaks HTTP to Attic.

Submodules are imported explicitly (``from hookd.attic.client import AtticClient``) so that
``hookd.config`` can use ``names`` without pulling in httpx.
"""
