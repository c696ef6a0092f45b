"""The SFT run's preflight: the model and the packed shards opened and checked before anything is built.

``check_sft_inputs(cfg)`` (called by ``recipes/sft.py`` before it starts any rank) reports together
(``nemo_ext.preflight.PreflightError``, one line per problem naming the key, the file and the
problem):

- ``model.name_or_path`` (unless ``tiny``): a local directory must hold ``config.json`` and weights;
  a hub name is checked by loading its config; its tokenizer (``model.tokenizer`` when set) must load;
- ``data.train_dir`` (when set): a finished pack (``metadata.json``), every shard it lists present,
  a Parquet file with the pack's columns and types (``nemo_ext.data.shards.SCHEMA``) and as many
  bins as the metadata says; the first row group of each shard well formed (lengths agree,
  sequence starts increasing from 0); token ids below the model's vocabulary size and loss masks
  0 or 1 (from the Parquet statistics); bins no longer than the model's positions; at least
  ``trainer.global_batch_size`` bins;
- ``eval.file``, when the held-out check reads one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from nemo_ext.config.schema import SFTConfig
from nemo_ext.data.shards import SCHEMA, read_metadata
from nemo_ext.preflight import Checks, check_heldout_file, check_model_and_tokenizer, load_tokenizer


def check_sft_inputs(cfg: SFTConfig) -> None:
    """Raise ``PreflightError`` listing every problem with the run's inputs (module doc)."""
    checks = Checks()
    model_config = _check_model(cfg, checks)
    if cfg.data.train_dir:
        check_packed_shards(Path(cfg.data.train_dir), cfg, model_config, checks)
    check_heldout_file(cfg.eval.file, cfg.eval.num_problems, "eval.file", checks)
    checks.raise_if_any("SFT")


def _check_model(cfg: SFTConfig, checks: Checks) -> dict | None:
    """config.json of the model as a dict (None for ``tiny`` or when unreadable)."""
    name = cfg.model.name_or_path
    if name == "tiny":
        return None
    if Path(name).exists() or name.startswith((".", "/")):
        return check_model_and_tokenizer(name, cfg.model.tokenizer, "model.name_or_path", checks, chat_template=False)
    from transformers import AutoConfig

    try:  # a hub name: its config and tokenizer come from the hub or the local cache, as in the run
        config = AutoConfig.from_pretrained(name).to_dict()
    except Exception as e:  # noqa: BLE001 - any failure to resolve the name is the problem to report
        checks.add("model.name_or_path", name, f"neither a local directory nor a loadable hub model "
                                               f"({type(e).__name__}: {str(e).splitlines()[0][:200]})")
        return None
    load_tokenizer(cfg.model.tokenizer or name, "model.tokenizer" if cfg.model.tokenizer else "model.name_or_path",
                   checks)
    return config


def check_packed_shards(train_dir: Path, cfg: SFTConfig, model_config: dict | None, checks: Checks) -> None:
    """The problems of a pack directory (module doc) go to ``checks``."""
    where = "data.train_dir"
    if not train_dir.is_dir():
        checks.add(where, train_dir, "no such directory (write it with data_prep/pack.py)")
        return
    try:
        meta = read_metadata(train_dir)
        shards, bin_size = meta["shards"], int(meta["bin_size"])
        listed = [(train_dir / s["file"], int(s["bins"])) for s in shards]
    except FileNotFoundError:
        checks.add(where, train_dir / "metadata.json", "missing: not a finished pack (rerun data_prep/pack.py with "
                                                        "the same arguments to finish it)")
        return
    except (OSError, ValueError, KeyError, TypeError) as e:
        checks.add(where, train_dir / "metadata.json", f"not a pack's metadata ({type(e).__name__}: {e})")
        return
    vocab = (model_config or {}).get("vocab_size")
    for path, bins in listed:
        _check_shard(path, bins, vocab, checks)
    total = sum(bins for _, bins in listed)
    if total < cfg.trainer.global_batch_size:
        checks.add(where, train_dir, f"holds {total} bins, fewer than trainer.global_batch_size="
                                     f"{cfg.trainer.global_batch_size}")
    positions = cfg.model.max_position_embeddings or (model_config or {}).get("max_position_embeddings")
    if positions and bin_size > positions:
        checks.add(where, train_dir, f"bins of up to {bin_size} tokens, more than the model's {positions} positions "
                                     "(set model.max_position_embeddings, or pack with a smaller --bin-size)")


def _check_shard(path: Path, bins: int, vocab: int | None, checks: Checks) -> None:
    where = "data.train_dir"
    if not path.exists():
        checks.add(where, path, "listed in metadata.json but missing")
        return
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a file that is not Parquet
        checks.add(where, path, f"is not a readable Parquet file ({type(e).__name__}: {e})")
        return
    schema = pf.schema_arrow
    if any(n not in schema.names or schema.field(n).type != SCHEMA.field(n).type for n in SCHEMA.names):
        checks.add(where, path, f"has columns {schema}, expected {SCHEMA}".replace("\n", "; "))
        return
    if pf.metadata.num_rows != bins:
        checks.add(where, path, f"holds {pf.metadata.num_rows} bins, metadata.json says {bins}")
    if pf.metadata.num_row_groups:
        if problem := _first_group_problem(pf):
            checks.add(where, path, problem)
    for column, low, high in (("input_ids", 0, (vocab or 0) - 1 if vocab else None), ("loss_mask", 0, 1)):
        lo, hi = _column_range(pf, column)
        if lo is not None and (lo < low or (high is not None and hi > high)):
            limit = f"[{low}, {high}]" if high is not None else f">= {low}"
            checks.add(where, path, f"{column} values span [{lo}, {hi}], expected {limit}"
                                    + (f" (the model's vocab_size is {vocab})" if column == "input_ids" else ""))


def _first_group_problem(pf: pq.ParquetFile) -> str | None:
    table = pf.read_row_group(0, columns=SCHEMA.names).to_pydict()
    for r, (ids, mask, starts) in enumerate(zip(table["input_ids"], table["loss_mask"], table["seq_start_id"],
                                                 strict=True)):
        if len(ids) != len(mask):
            return f"bin {r}: {len(ids)} input_ids but {len(mask)} loss_mask values"
        if not starts or starts[0] != 0 or np.any(np.diff(starts) <= 0) or starts[-1] >= max(len(ids), 1):
            return f"bin {r}: seq_start_id {starts[:8]} must start at 0 and increase within the bin's {len(ids)} tokens"
    return None


def _column_range(pf: pq.ParquetFile, column: str) -> tuple[int | None, int | None]:
    """(min, max) of a list column's values over the file, from the row groups' statistics (None, None
    when a row group has none)."""
    paths = [pf.metadata.schema.column(i).path.split(".")[0] for i in range(pf.metadata.num_columns)]
    index = paths.index(column) if column in paths else None
    lows, highs = [], []
    for g in range(pf.metadata.num_row_groups):
        stats = pf.metadata.row_group(g).column(index).statistics if index is not None else None
        if stats is None or not stats.has_min_max:
            return None, None
        lows.append(stats.min)
        highs.append(stats.max)
    return (min(lows), max(highs)) if lows else (None, None)
