"""Small helpers the CPU tests share: file writers, gloo process groups."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp


def write_jsonl(path: Path, rows: list, raw_lines: dict[int, str] | None = None) -> Path:
    """Rows as JSON Lines; ``raw_lines`` puts given text at given 1-based line numbers instead."""
    lines = [json.dumps(r) for r in rows]
    for line_no, raw in sorted((raw_lines or {}).items()):
        lines.insert(line_no - 1, raw)
    path.write_text("\n".join(lines) + "\n")
    return path


def run_gloo_ranks(worker: Callable[[int, str], None], out_dir: Path, nprocs: int = 2) -> None:
    """``worker(rank, out_dir)`` in ``nprocs`` spawned processes that share a gloo process group
    (the default group). ``worker`` must be a module-level function; it reports through files."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_gloo_rank, args=(worker, port, nprocs, str(out_dir)), nprocs=nprocs, start_method="spawn")


def _gloo_rank(rank: int, worker, port: int, nprocs: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=nprocs)
    try:
        worker(rank, out_dir)
    finally:
        dist.destroy_process_group()
