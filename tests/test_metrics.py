"""Prometheus metrics, scraped from a real daemon during real pushes (real Nix builds through
the hook, the Attic test server), and the node-exporter textfile; the example alerts in
docs/metrics.md use only metrics hookd exposes."""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hookd import __version__, errors, metrics
from hookd.queue import Queue
from tests.attic_server import AtticTestServer
from tests.conftest import (
    HOOKD_HOOK,
    HookdProcess,
    needs_nix,
    nix_build,
    nix_env,
    nonce,
    until,
    write_token,
)

REPO = Path(__file__).resolve().parent.parent
TARGET = "attic:prod/team"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by (name, labels). Parsing it at all is a check."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def srv() -> Iterator[AtticTestServer]:
    with AtticTestServer() as server:
        server.create_cache("team")
        yield server


def daemon(
    tmp_path: Path, srv: AtticTestServer, token: str, **metrics_keys: object
) -> HookdProcess:
    tf = write_token(tmp_path / "prod.token", token)
    return HookdProcess(
        tmp_path,
        {
            "servers": {"prod": {"endpoint": srv.url, "token_file": str(tf)}},
            "targets": [{"server": "prod", "cache": "team"}],
            "upload": {"retry_attempts": 1, "breaker_threshold": 1, "breaker_cooldown": 0.5},
            "metrics": metrics_keys,
        },
    )


@needs_nix
@pytest.mark.nix
def test_scrape_during_an_end_to_end_push(srv: AtticTestServer, tmp_path: Path) -> None:
    port = free_port()
    token = srv.make_token({"team": {"r": 1, "w": 1}})
    hookd = daemon(tmp_path, srv, token, listen=f"127.0.0.1:{port}").start()
    url = f"http://127.0.0.1:{port}/metrics"

    def scrape() -> Samples:
        resp = httpx.get(url, timeout=10)
        assert resp.status_code == 200
        assert token not in resp.text
        return parse(resp.text)

    before = scrape()
    assert value(before, "hookd_queue_readable") == 1
    assert value(before, "hookd_queue_items", target=TARGET, state="pending") == 0
    assert value(before, "hookd_breaker_open", target=TARGET) == 0

    # The server is down: the build's paths wait, and the metrics say so.
    srv.set_down(True)
    proc = nix_build(["d"], nonce_value=nonce(), hook=hookd.hook_script)
    outs = [line for line in proc.stdout.split() if line.startswith("/nix/store/")]
    waiting = until(
        lambda: (
            s
            if value(
                s := scrape(), "hookd_push_failures_total", target=TARGET, **{"class": "transient"}
            )
            > 0
            else None
        ),
        hookd,
    )
    assert value(waiting, "hookd_queue_items", target=TARGET, state="pending") >= 1
    assert value(waiting, "hookd_oldest_pending_age_seconds", target=TARGET) > 0
    assert value(waiting, "hookd_requests_total", via="socket", source="hook") >= 1
    assert value(waiting, "hookd_push_latency_seconds_count") == 0

    # The hook cannot reach the daemon: it spools; the daemon imports the spool file.
    (b,) = [
        line
        for line in nix_build(["b"], nonce_value=nonce()).stdout.split()
        if line.startswith("/nix/store/")
    ]
    subprocess.run(
        [HOOKD_HOOK, "--socket", str(tmp_path / "nowhere.sock"), "--spool", str(hookd.spool)],
        env=nix_env(OUT_PATHS=b, DRV_PATH=""),
        check=True,
        timeout=30,
    )
    until(lambda: value(scrape(), "hookd_requests_total", via="spool", source="hook") == 1, hookd)

    # The server is back: everything lands, and the counters moved accordingly.
    srv.set_down(False)
    hookd.client.call({"op": "retry", "all": True})
    assert hookd.client.wait(timeout=120)["drained"]
    after = until(
        lambda: (
            s
            if value(s := scrape(), "hookd_queue_items", target=TARGET, state="done") >= 2
            else None
        ),
        hookd,
    )
    uploads = srv.count(method="PUT", path_prefix="/_api/v1/upload-path", status=200)
    assert value(after, "hookd_queue_items", target=TARGET, state="pending") == 0
    done = value(after, "hookd_queue_items", target=TARGET, state="done")
    assert done >= len(outs) + 1  # every built output the hook reported, and the spooled one
    assert value(after, "hookd_oldest_pending_age_seconds", target=TARGET) == 0
    assert value(after, "hookd_paths_pushed_total", target=TARGET) == uploads > 0
    assert value(after, "hookd_bytes_pushed_total", target=TARGET) > 0
    # one observation per queued path, when it reached every target
    assert value(after, "hookd_push_latency_seconds_count") == done
    assert value(after, "hookd_push_latency_seconds_sum") > 0
    assert value(after, "hookd_spool_files") == 0
    assert value(after, "hookd_breaker_open", target=TARGET) == 0
    hookd.stop()


@needs_nix
@pytest.mark.nix
def test_textfile_shows_a_parked_target_with_its_reason_class(
    srv: AtticTestServer, tmp_path: Path
) -> None:
    textfile = tmp_path / "textfile" / "hookd.prom"
    textfile.parent.mkdir()
    bad = srv.make_token({"other": {"r": 1, "w": 1}})  # no grant on "team"
    hookd = daemon(tmp_path, srv, bad, textfile=str(textfile), textfile_interval=1).start()
    (b,) = [
        line
        for line in nix_build(["b"], nonce_value=nonce(), hook=hookd.hook_script).stdout.split()
        if line.startswith("/nix/store/")
    ]

    def parked() -> Samples | None:
        if not textfile.exists():
            return None
        s = parse(textfile.read_text())
        return s if value(s, "hookd_target_parked", target=TARGET, reason="auth") == 1 else None

    samples = until(parked, hookd)
    assert value(samples, "hookd_queue_items", target=TARGET, state="parked") == 1
    assert value(samples, "hookd_push_failures_total", target=TARGET, **{"class": "auth"}) >= 1
    assert oct(textfile.stat().st_mode & 0o777) == oct(0o644)  # node-exporter's user reads it
    assert bad not in textfile.read_text()
    assert not [p for p in textfile.parent.iterdir() if p.name != "hookd.prom"]  # no temp left
    # the token is fixed: the target resumes and the parked series goes away
    write_token(tmp_path / "prod.token", srv.make_token({"team": {"r": 1, "w": 1}}))

    def resumed() -> Samples | None:
        s = parse(textfile.read_text())
        done = value(s, "hookd_queue_items", target=TARGET, state="done") == 1
        still_parked = any(name == "hookd_target_parked" for name, _ in s)
        return s if done and not still_parked else None

    samples = until(resumed, hookd)
    assert not any(name == "hookd_target_parked" for name, _ in samples)
    assert Path(b).name.split("-", 1)[0] in srv.objects("team")
    hookd.stop()


# -- the example alerts -------------------------------------------------------------------------


def exposed_names(tmp_path: Path) -> set[str]:
    """Every sample name hookd can expose (families' names with their type's suffixes)."""
    queue = Queue(tmp_path / "q.sqlite").open()
    try:
        reg = metrics.registry(metrics.StateCollector(queue.snapshot, [], tmp_path))
        names: set[str] = set()
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_count", "_sum", "_created"),
            "info": ("_info",),
        }
        for family in reg.collect():
            names.add(family.name)
            names.update(family.name + s for s in suffixes.get(family.type, ()))
        return names
    finally:
        queue.close()


def test_example_alerts_use_only_metrics_hookd_exposes(tmp_path: Path) -> None:
    text = (REPO / "docs" / "metrics.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    rules = [yaml.safe_load(b) for b in blocks if "PrometheusRule" in b]
    assert len(rules) == 1, "docs/metrics.md has one PrometheusRule example"
    rule = rules[0]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    names = {a["alert"] for a in alerts}
    assert {"HookdQueueGrowing", "HookdTargetParked", "HookdOldestPendingTooOld"} <= names
    exposed = exposed_names(tmp_path)
    for alert in alerts:
        assert alert["expr"] and alert["annotations"]["summary"], alert["alert"]
        used = set(re.findall(r"\bhookd_[a-z_]+", str(alert["expr"])))
        assert used, alert["alert"]
        assert used <= exposed, (alert["alert"], used - exposed)
    # and every metric the docs' table describes exists too
    documented = set(re.findall(r"^\| `(hookd_[a-z_]+)", text, flags=re.M))
    assert documented and documented <= exposed, documented - exposed


# -- classes and a scrape without a readable queue ----------------------------------------------


@pytest.mark.parametrize(
    ("error", "cls"),
    [
        (errors.TransientError("x"), "transient"),
        (errors.AuthError("x"), "auth"),
        (errors.CacheGoneError("x"), "missing_cache"),
        (errors.TlsConfigError("x"), "configuration"),
        (errors.ParkedError("x"), "configuration"),
        (errors.PermanentError("x"), "permanent"),
        (errors.CorruptUploadError("x"), "corrupt_upload"),
    ],
)
def test_every_error_class_has_its_bounded_label(error: Exception, cls: str) -> None:
    assert metrics.failure_class(error) == cls
    assert cls in metrics.FAILURE_CLASSES


def test_a_scrape_answers_when_the_queue_cannot_be_read(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "missing" / "queue.sqlite")  # never opened: the file does not exist
    reg = metrics.registry(metrics.StateCollector(queue.snapshot, [], tmp_path))
    samples = parse(generate_latest(reg).decode())
    assert value(samples, "hookd_queue_readable") == 0
    assert value(samples, "hookd_build_info", version=__version__) == 1
