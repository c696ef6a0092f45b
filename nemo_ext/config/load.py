"""The one place that turns Hydra's composed config into checked schema objects.

Each YAML in ``recipes/conf`` starts from a schema registered here (``defaults: [/sft_schema, _self_]``),
so Hydra rejects an unknown or ill-typed key, in the file or on the command line, before any work
starts, naming the key and the expected type or allowed values. A key added with Hydra's ``+key=value``
(the form Hydra's own error suggests for an unknown key) bypasses that check; ``as_schema`` then finds
it and fails, naming it and the nearest valid key. The schema dataclasses check their ranges as they
are built (``schema.check_values``), so an impossible value fails here too. ``with_refused_keys`` lets
a schema name keys that are refused with a better message than "unknown" (RL's: SFT keys that RL
would not read, each with the RL key to use; ``nemo_ext.config.rl.as_rl_config``).
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import field, fields, is_dataclass, make_dataclass
from typing import Any, TypeVar, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from nemo_ext.config.schema import SFTConfig

T = TypeVar("T")
SCHEMAS = {"sft_schema": SFTConfig}


class ConfigError(ValueError):
    """A key the schema does not have, or a value no run can use; the message names the key."""


def register_schemas(extra: dict[str, type] | None = None) -> None:
    store = ConfigStore.instance()
    for name, schema in {**SCHEMAS, **(extra or {})}.items():
        store.store(name=name, node=schema)


def _section(annotation) -> tuple[type | None, bool]:
    """The dataclass a field holds (``X``, ``X | None``) or lists (``list[X]``), and whether it lists."""
    if is_dataclass(annotation):
        return annotation, False
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is list:
        return (args[0], True) if args and is_dataclass(args[0]) else (None, False)
    return next(((a, False) for a in args if is_dataclass(a)), (None, False))


def unknown_keys(values: Mapping, schema: type, prefix: str = "") -> Iterator[str]:
    """A message per key of ``values`` (a plain container of the composed config) that ``schema``'s
    dataclasses do not declare: ``trainer.max_stpes (did you mean trainer.max_steps?)``. List items are
    ``stages.0.``, as Hydra writes them."""
    names = [f.name for f in fields(schema)]
    for key in values:
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            yield f"{prefix}{key}" + (f" (did you mean {prefix}{near[0]}?)" if near else
                                      f" ({prefix.rstrip('.') or 'the top level'} has: {', '.join(names)})")
    hints = get_type_hints(schema)
    for name in names:
        section, listed = _section(hints[name])
        value = values.get(name)
        if section is None or value is None:
            continue
        items = enumerate(value) if listed and isinstance(value, list) else [(None, value)]
        for i, item in items:
            if isinstance(item, Mapping):
                yield from unknown_keys(item, section, f"{prefix}{name}." + ("" if i is None else f"{i}."))


def _drop(values: dict, keys: Iterable[str]) -> None:
    for key in keys:
        *parents, last = key.split(".")
        node = values
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)


def as_schema(cfg: DictConfig, schema: type[T], drop: Iterable[str] = ()) -> T:
    """The composed config as an instance of ``schema`` (a dataclass), every key and value checked.

    drop: dotted keys to leave out first (the refused keys of a ``with_refused_keys`` schema, once
    checked to be unset). Raises ConfigError naming an unknown key (and the nearest valid one) or an
    impossible value.
    """
    values = OmegaConf.to_container(cfg, resolve=True)
    _drop(values, drop)
    unknown = list(unknown_keys(values, schema))
    if unknown:
        raise ConfigError(f"unknown config key{'s' if len(unknown) > 1 else ''}: {'; '.join(unknown)}")
    merged = OmegaConf.merge(OmegaConf.structured(schema), values)
    try:
        return OmegaConf.to_object(merged)
    except ValueError as e:  # a range check of the schema (``check_values``)
        raise ConfigError(str(e)) from e


def with_refused_keys(schema: type, refused: Mapping[str, str]) -> type:
    """``schema`` (a dataclass) with each dotted key of ``refused`` added as an optional field of any
    type, default None, in its section: Hydra then composes a config that sets one, and the loader can
    refuse it by name. The sections on the way must be dataclass-typed fields of ``schema``."""
    nested: dict[str, dict[str, str]] = {}
    extra = []
    for key, why in refused.items():
        if "." in key:
            section, rest = key.split(".", 1)
            nested.setdefault(section, {})[rest] = why
        else:
            extra.append((key, Any, field(default=None)))
    hints = get_type_hints(schema)
    for section, keys in nested.items():
        if not (isinstance(hints.get(section), type) and is_dataclass(hints[section])):
            raise TypeError(f"{schema.__name__}.{section} is not a dataclass section: cannot refuse keys in it")
        lenient = with_refused_keys(hints[section], keys)
        extra.append((section, lenient, field(default_factory=lenient)))
    lenient = make_dataclass(schema.__name__, extra, bases=(schema,))
    lenient.__module__ = schema.__module__  # messages name the schema's own module
    return lenient


def load_config(cfg: DictConfig, build: Callable[[DictConfig], T]) -> T:
    """``build(cfg)`` (``as_schema`` with the run's schema, or ``as_rl_config``) for a recipe's entry
    point: a bad config ends the process before any work with one line naming the key (exit status 1),
    not a traceback."""
    try:
        return build(cfg)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
