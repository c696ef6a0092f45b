"""The one place that turns Hydra's composed config into checked schema objects.

Each YAML in ``recipes/conf`` starts from a schema registered here (``defaults: [/sft_schema, _self_]``),
so Hydra rejects an unknown or ill-typed key, in the file or on the command line, before any work
starts, naming the key and the expected type or allowed values. ``with_refused_keys`` lets a schema
name keys that are refused with a better message than "unknown" (RL's: SFT keys that RL would not
read, each with the RL key to use; ``nemo_ext.config.rl.as_rl_config``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import field, is_dataclass, make_dataclass
from typing import Any, TypeVar, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from nemo_ext.config.schema import SFTConfig

T = TypeVar("T")
SCHEMAS = {"sft_schema": SFTConfig}


def register_schemas(extra: dict[str, type] | None = None) -> None:
    store = ConfigStore.instance()
    for name, schema in {**SCHEMAS, **(extra or {})}.items():
        store.store(name=name, node=schema)


def as_schema(cfg: DictConfig, schema: type[T], drop: Iterable[str] = ()) -> T:
    """The composed config as an instance of ``schema`` (a dataclass), every value checked.

    drop: dotted keys to leave out first (the refused keys of a ``with_refused_keys`` schema, once
    checked to be unset).
    """
    container = OmegaConf.to_container(cfg, resolve=True)
    for key in drop:
        *parents, last = key.split(".")
        node = container
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    merged = OmegaConf.merge(OmegaConf.structured(schema), container)
    return OmegaConf.to_object(merged)


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
