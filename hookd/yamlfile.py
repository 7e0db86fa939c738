"""The one YAML reader for hookd's files (the daemon's config and the provision spec).

Safe loading only, and duplicate keys are refused: PyYAML silently keeps the last of two equal
keys, so a config with `upload:` twice would lose half of what its author wrote. Every error is
a ConfigError naming the file, the line and the column.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from hookd.errors import ConfigError

MERGE_TAG = "tag:yaml.org,2002:merge"


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping holding the same key twice."""


def _construct_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode) -> dict[object, object]:
    first: dict[object, yaml.Mark] = {}
    for key_node, _ in node.value:
        if key_node.tag == MERGE_TAG:  # `<<: *base` merges; an explicit key may override it
            continue
        key = loader.construct_object(key_node)
        try:
            seen = first.get(key)
        except TypeError:  # unhashable: construct_mapping below reports it
            continue
        if seen is not None:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first at line {seen.line + 1}); "
                "remove one of them or merge their contents",
                key_node.start_mark,
            )
        first[key] = key_node.start_mark
    return loader.construct_mapping(node)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse(text: str, source: str) -> object:
    """The YAML document in ``text`` (None when empty); ``source`` names it in errors."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader subclass: safe
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from None
    except ValueError as e:  # e.g. an integer over Python's int-digit limit
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML: nested too deeply") from None


def load(path: Path) -> object:
    """Read and parse the YAML file at ``path``; every failure is a ConfigError naming it."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8 (byte offset {e.start})") from None
    return parse(text, str(path))
