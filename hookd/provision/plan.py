"""The plan: compare each declared cache with the server's state (create, update a field,
destroy, unchanged), check it against the admin token's claims, and apply it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, cast

from hookd.duration import format_duration
from hookd.errors import ProvisionError
from hookd.provision.admin import AtticAdmin, CacheState
from hookd.provision.claims import flag_list, flag_names, permission_for
from hookd.provision.keys import AdminToken, MintedToken
from hookd.provision.output import Output
from hookd.provision.spec import (
    DEFAULT_PRIORITY,
    DEFAULT_PUBLIC,
    DEFAULT_STORE_DIR,
    DEFAULT_UPSTREAM,
    GLOBAL,
    CacheSpec,
    ProvisionConfig,
    TokenSpec,
    format_retention,
)

ChangeKind = Literal["create", "update", "unchanged", "destroy"]


@dataclass(frozen=True)
class Change:
    """One line of the plan. ``update`` carries one field (YAML name) with old and new values;
    ``create`` carries the create request's settings in ``new``."""

    kind: ChangeKind
    cache: str
    field: str | None = None
    old: object = None
    new: object = None

    def describe(self) -> str:
        if self.kind == "create":
            settings = cast(Mapping[str, object], self.new)
            shown = ", ".join(f"{k}={_show(k, v)}" for k, v in settings.items())
            return f"+ create cache {self.cache} ({shown}, keypair=generate)"
        if self.kind == "update":
            assert self.field is not None
            old, new = _show(self.field, self.old), _show(self.field, self.new)
            return f"~ update cache {self.cache}: {self.field} {old} → {new}"
        if self.kind == "destroy":
            return f"- destroy cache {self.cache}"
        return f"= cache {self.cache} {'absent' if self.new == 'absent' else 'unchanged'}"

    def to_json(self) -> dict[str, object]:
        if self.kind == "create":
            settings = cast(Mapping[str, object], self.new)
            new: object = {k: _json_value(k, v) for k, v in settings.items()}
            old: object = None
        elif self.field is not None:
            old, new = _json_value(self.field, self.old), _json_value(self.field, self.new)
        else:
            old, new = self.old, self.new
        return {"kind": self.kind, "cache": self.cache, "field": self.field, "old": old, "new": new}


def _show(name: str, value: object) -> str:
    if name == "retention_period":
        return format_retention(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def _json_value(name: str, value: object) -> object:
    if name == "retention_period":
        return format_retention(value)
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...]
    tokens: tuple[TokenSpec, ...] = ()
    # what the server had when the plan was made (None: the cache did not exist)
    states: Mapping[str, CacheState | None] = field(default_factory=dict)

    def count(self, kind: ChangeKind) -> int:
        """Caches concerned by ``kind`` (an update of three fields counts once)."""
        return len({c.cache for c in self.changes if c.kind == kind} - self._created(kind))

    def _created(self, kind: ChangeKind) -> set[str]:
        # a new cache's retention PATCH is part of creating it, not a separate update
        return {c.cache for c in self.changes if c.kind == "create"} if kind == "update" else set()

    @property
    def has_changes(self) -> bool:
        return any(c.kind != "unchanged" for c in self.changes)


def _create_settings(spec: CacheSpec) -> dict[str, object]:
    return {
        "public": DEFAULT_PUBLIC if spec.public is None else spec.public,
        "priority": DEFAULT_PRIORITY if spec.priority is None else spec.priority,
        "upstream_cache_key_names": (
            DEFAULT_UPSTREAM
            if spec.upstream_cache_key_names is None
            else spec.upstream_cache_key_names
        ),
        "store_dir": DEFAULT_STORE_DIR if spec.store_dir is None else spec.store_dir,
    }


def _state_after_create(settings: Mapping[str, object]) -> CacheState:
    return CacheState(
        public=cast(bool, settings["public"]),
        priority=cast(int, settings["priority"]),
        upstream_cache_key_names=cast(tuple[str, ...], settings["upstream_cache_key_names"]),
        store_dir=cast(str, settings["store_dir"]),
        retention_period=GLOBAL,  # Attic has no retention at create time (§3.2)
    )


def diff_cache(spec: CacheSpec, state: CacheState) -> list[Change]:
    return [
        Change("update", spec.name, name, state.value(name), new)
        for name, new in spec.wanted().items()
        if state.value(name) != new
    ]


def plan_cache(spec: CacheSpec, state: CacheState | None) -> list[Change]:
    if spec.state == "absent":
        if state is None:
            return [Change("unchanged", spec.name, new="absent")]
        return [Change("destroy", spec.name)]
    if state is None:
        if spec.keypair == "keep":
            raise ProvisionError(
                f"cache '{spec.name}' does not exist and has keypair: keep, so provision will "
                "not create it with a new signing key (is server_url right? use keypair: "
                "generate to create it)"
            )
        settings = _create_settings(spec)
        create = Change("create", spec.name, new=settings)
        return [create, *diff_cache(spec, _state_after_create(settings))]
    return diff_cache(spec, state) or [Change("unchanged", spec.name)]


def build_plan(admin: AtticAdmin | None, config: ProvisionConfig) -> Plan:
    changes: list[Change] = []
    states: dict[str, CacheState | None] = {}
    for spec in config.caches:
        assert admin is not None
        states[spec.name] = admin.get(spec.name)
        changes.extend(plan_cache(spec, states[spec.name]))
    return Plan(tuple(changes), config.tokens, states)


def required_flags(plan: Plan) -> dict[str, set[str]]:
    """Flags the admin token needs per cache to apply ``plan``."""
    needs: dict[str, set[str]] = {}
    for c in plan.changes:
        flags = needs.setdefault(c.cache, set())
        if c.kind == "create":
            flags.add("cc")
        elif c.kind == "update":
            flags.add("cr")
            if c.field == "retention_period":
                flags.add("cq")
        elif c.kind == "destroy":
            flags.add("cd")
    return {cache: flags for cache, flags in needs.items() if flags}


def check_permissions(plan: Plan, admin: AdminToken, source: str) -> None:
    if admin.caches is None:
        return
    problems = []
    for cache, needed in required_flags(plan).items():
        key, granted = permission_for(admin.caches, cache)
        missing = needed - granted
        if not missing:
            continue
        what = ", ".join(
            sorted({c.kind for c in plan.changes if c.cache == cache and c.kind != "unchanged"})
        )
        if key is None:
            has = "no entry of the token matches it"
        elif key == cache:
            has = f"its entry grants {flag_names(granted)}"
        else:
            has = f"the first matching pattern '{key}' grants {flag_names(granted)}"
        extra = ""
        if "cq" in missing:
            extra = (
                " (changing retention_period needs configure_retention as well as configure_cache)"
            )
        problems.append(f"cache '{cache}' ({what}) needs {flag_list(missing)}: {has}{extra}")
    if problems:
        raise ProvisionError(
            f"the admin token ({source}) cannot apply this plan; nothing was changed:\n  "
            + "\n  ".join(problems)
        )


def apply_plan(admin: AtticAdmin, config: ProvisionConfig, plan: Plan, out: Output) -> list[Change]:
    """Apply the plan cache by cache; returns what was actually done."""
    specs = {s.name: s for s in config.caches}
    done: list[Change] = []
    for name in dict.fromkeys(c.cache for c in plan.changes):
        changes = [c for c in plan.changes if c.cache == name]
        kinds = {c.kind for c in changes}
        if kinds == {"unchanged"}:
            for c in changes:
                out.info(c.describe())
            done.extend(changes)
            continue
        if "destroy" in kinds:
            gone = admin.destroy(name)
            out.info(f"- destroyed cache {name}" if gone else f"= cache {name} was already gone")
            done.append(
                Change("destroy", name) if gone else Change("unchanged", name, new="absent")
            )
            continue
        create = next((c for c in changes if c.kind == "create"), None)
        updates = [c for c in changes if c.kind == "update"]
        if create is not None:
            settings = cast(Mapping[str, object], create.new)
            if admin.create(name, settings):
                out.info(f"+ created cache {name}")
                done.append(create)
            else:  # created by someone else since the GET: converge what is there
                state = admin.get(name)
                if state is None:
                    raise ProvisionError(f"cache '{name}' exists and does not: try again")
                out.info(f"= cache {name} was created concurrently; converging it")
                updates = diff_cache(specs[name], state)
        if updates:
            admin.configure(name, {c.field or "": c.new for c in updates})
            for c in updates:
                out.info(
                    f"~ updated cache {name}: {c.field} {_show(c.field or '', c.old)} → {_show(c.field or '', c.new)}"
                )
            done.extend(updates)
    return done


def describe_token(spec: TokenSpec) -> str:
    grants = "; ".join(f"{p}: {flag_names(set(flags))}" for p, flags in spec.caches_claim().items())
    sub = f", sub {spec.sub}" if spec.sub != spec.name else ""
    return f"* mint token {spec.name} (valid {format_duration(spec.validity)}{sub}): {grants}"


def print_plan(plan: Plan, out: Output) -> None:
    for c in plan.changes:
        out.info(c.describe())
    for spec in plan.tokens:
        out.info(describe_token(spec))
    out.info(
        f"Plan: {plan.count('create')} to create, {plan.count('update')} to update, "
        f"{plan.count('destroy')} to destroy, {plan.count('unchanged')} unchanged; "
        f"{len(plan.tokens)} token(s) to mint. Dry run: nothing was changed."
    )


def print_summary(done: list[Change], minted: list[MintedToken], out: Output) -> None:
    result = Plan(tuple(done))
    changed = sum(result.count(k) for k in ("create", "update", "destroy"))
    out.info(
        f"{'No changes' if not changed else 'Applied'}: {result.count('create')} created, "
        f"{result.count('update')} updated, {result.count('destroy')} destroyed, "
        f"{result.count('unchanged')} unchanged; {len(minted)} token(s) minted."
    )
