"""Target construction: the configured targets (or the embedded default cache) and their workers."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from hookd.backoff import Backoff
from hookd.config import AtticTargetConfig, Config, StoreTargetConfig
from hookd.errors import ConfigError
from hookd.nix import Nix
from hookd.pusher import Breaker, TargetWorker
from hookd.queue import Queue
from hookd.targets.base import Target
from hookd.targets.store import StoreTarget

if TYPE_CHECKING:
    from hookd.tokens import TokenStore

log = structlog.get_logger("hookd.daemon")


def default_target(config: Config, nix: Nix) -> StoreTarget:
    """The embedded default: a signed file:// binary cache in the state directory."""
    key, pub = config.default_key_file, config.default_public_key_file
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        name = f"hookd-{socket.gethostname()}-1"
        nix.generate_key(name, key, pub)
        os.chmod(key, 0o600)
        log.info("default_cache.key_generated", public_key=pub.read_text().strip())
    url = f"file://{config.default_cache_dir}?compression=zstd"
    return StoreTarget(url, nix=nix, secret_key_file=key)


def build_targets(config: Config, nix: Nix, tokens: TokenStore | None) -> list[Target]:
    targets: list[Target] = []
    for t in config.targets:
        if isinstance(t, StoreTargetConfig):
            targets.append(StoreTarget(t.store, nix=nix, secret_key_file=t.secret_key_file))
        elif isinstance(t, AtticTargetConfig):
            from hookd.targets.attic import AtticTarget

            if tokens is None:  # config.py refuses an attic target without its server
                raise ConfigError(f"{t.id}: no server {t.server!r} with a token is configured")
            targets.append(
                AtticTarget(
                    config.servers[t.server], t.cache, nix=nix, upload=config.upload, tokens=tokens
                )
            )
    if not targets:
        targets.append(default_target(config, nix))
    return targets


def build_workers(
    config: Config,
    targets: list[Target],
    *,
    queue: Queue,
    nix: Nix,
    on_progress: Callable[[], None],
) -> list[TargetWorker]:
    """One worker per target; targets on one server share a circuit breaker."""
    upload = config.upload
    breakers: dict[str, Breaker] = {}
    workers = []
    for target in targets:
        breaker = breakers.setdefault(
            target.server_key,
            Breaker(upload.breaker_threshold, upload.breaker_cooldown, upload.max_backoff),
        )
        workers.append(
            TargetWorker(
                target,
                queue=queue,
                nix=nix,
                breaker=breaker,
                backoff=Backoff(upload.min_backoff, upload.max_backoff),
                batch_size=upload.batch_size,
                batch_window=upload.batch_window,
                remember=upload.remember_pushed,
                max_timeouts=upload.max_timeouts,
                on_progress=on_progress,
            )
        )
    return workers
