"""Metrics to JSONL and TensorBoard, a progress bar with throughput and ETA, curves as PNG."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from nemo_ext.io import atomic_write_text

# Dense bf16 peak of the accelerators we know, in FLOP/s, for MFU estimates.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device) -> float | None:
    """The bf16 dense peak of ``device`` if it is a known GPU, else None (no MFU on CPUs)."""
    import torch

    if getattr(device, "type", "cpu") != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def model_flops(num_params: int, num_layers: int, hidden: int, seq_lens: Sequence[int]) -> float:
    """Training FLOPs of one step: 6 x params x tokens + 6 x layers x hidden x sum(len^2) (causal
    attention counted at half of full), no recompute counted. ``num_params``: the matmul parameters
    (``models.hf_config.matmul_parameters``)."""
    return 6.0 * num_params * sum(seq_lens) + 6.0 * num_layers * hidden * sum(n * n for n in seq_lens)


class MetricsLogger:
    """Appends one JSON object per logged step to ``metrics.jsonl`` and mirrors scalars to TensorBoard.

    resume_step: the step a resumed run continues after. What a killed run logged past it is logged
    again by the resumed one, so those rows are dropped from ``metrics.jsonl`` first, and TensorBoard
    hides its events from step ``resume_step + 1`` on (``SummaryWriter(purge_step=...)``).
    """

    def __init__(self, log_dir: str | Path, tensorboard: bool = True, enabled: bool = True,
                 resume_step: int | None = None):
        self.enabled = enabled
        self.dir = Path(log_dir)
        self.writer = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            drop_rows_after(self.dir / "metrics.jsonl", resume_step)
        self.file = open(self.dir / "metrics.jsonl", "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self.writer = SummaryWriter(str(self.dir / "tensorboard"), purge_step=purge)

    def log(self, step: int, metrics: dict, prefix: str = "") -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": time.time(), **{f"{prefix}{k}": v for k, v in metrics.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.writer is not None:
            for k, v in row.items():
                if k not in ("step", "time") and isinstance(v, int | float):
                    self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.writer is not None:
                self.writer.close()


def drop_rows_after(path: Path, step: int) -> None:
    """Rewrite the JSONL ``path`` (if it exists) without rows of steps after ``step``, atomically."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def read_metrics(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(metrics_file: str | Path, keys: Sequence[str], out_png: str | Path, title: str = "") -> Path:
    """One panel per key of ``metrics.jsonl`` against step; keys missing from the file are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_file)
    keys = [k for k in keys if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(4.5 * max(1, len(keys)), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=False):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.5)
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def progress(total: int, initial: int, enabled: bool, desc: str) -> tqdm:
    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, dynamic_ncols=True,
                unit="step", smoothing=0.1)
