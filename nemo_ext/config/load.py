"""The one place that turns Hydra's composed config into checked schema objects.

Each YAML in ``recipes/conf`` starts from a schema registered here (``defaults: [/sft_schema, _self_]``),
so Hydra rejects an unknown or ill-typed key, in the file or on the command line, before any work
starts, naming the key and the expected type or allowed values.
"""

from __future__ import annotations

from typing import TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from nemo_ext.config.schema import SFTConfig

T = TypeVar("T")
SCHEMAS = {"sft_schema": SFTConfig}


def register_schemas(extra: dict[str, type] | None = None) -> None:
    store = ConfigStore.instance()
    for name, schema in {**SCHEMAS, **(extra or {})}.items():
        store.store(name=name, node=schema)


def as_schema(cfg: DictConfig, schema: type[T]) -> T:
    """The composed config as an instance of ``schema`` (a dataclass), every value checked."""
    merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    return OmegaConf.to_object(merged)
