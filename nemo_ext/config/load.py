"""The one place that turns Hydra's composed config into checked schema objects.

Each YAML in ``recipes/conf`` starts from a schema registered here (``defaults: [/sft_schema, _self_]``),
so Hydra rejects an unknown or ill-typed key, in the file or on the command line, before any work
starts, naming the key and the expected type or allowed values. A key added with Hydra's ``+key=value``
(the form Hydra's own error suggests for an unknown key) bypasses that check; ``as_schema`` then finds
it and fails, naming it and the nearest valid key. The schema dataclasses check their ranges as they
are built (``schema.check_values``), so an impossible value fails here too.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import fields, is_dataclass
from typing import TypeVar

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


def unknown_keys(config, prefix: str = "") -> Iterator[str]:
    """A message per key of ``config`` (a schema instance) that its dataclasses do not declare:
    ``trainer.max_stpes (did you mean trainer.max_steps?)``. List items are ``stages.0.``, as Hydra
    writes them."""
    if isinstance(config, list):
        for i, item in enumerate(config):
            yield from unknown_keys(item, f"{prefix}{i}.")
        return
    if not is_dataclass(config):
        return
    names = [f.name for f in fields(config)]
    for key in vars(config):
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            yield f"{prefix}{key}" + (f" (did you mean {prefix}{near[0]}?)" if near else
                                      f" ({prefix.rstrip('.') or 'the top level'} has: {', '.join(names)})")
    for name in names:
        yield from unknown_keys(getattr(config, name), f"{prefix}{name}.")


def as_schema(cfg: DictConfig, schema: type[T]) -> T:
    """The composed config as an instance of ``schema`` (a dataclass), every key and value checked.

    Raises ConfigError naming an unknown key (and the nearest valid one) or an impossible value.
    """
    merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    try:
        config = OmegaConf.to_object(merged)
    except ValueError as e:  # a range check of the schema (``check_values``)
        raise ConfigError(str(e)) from e
    unknown = list(unknown_keys(config))
    if unknown:
        raise ConfigError(f"unknown config key{'s' if len(unknown) > 1 else ''}: {'; '.join(unknown)}")
    return config


def load_config(cfg: DictConfig, schema: type[T], check: Callable[[T], T] | None = None) -> T:
    """``as_schema`` (then ``check``, such as ``validate_rl_config``) for a recipe's entry point: a bad
    config ends the process before any work with one line naming the key (exit status 1), not a traceback."""
    try:
        config = as_schema(cfg, schema)
        return check(config) if check is not None else config
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
