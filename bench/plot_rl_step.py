"""Where an RL step's time goes: one horizontal bar per step summary, split into its phases.

    PYTHONPATH=. .venv/bin/python bench/plot_rl_step.py RL_STEP_JSONL [...] --out docs/img/rl_step.png

Input: the JSON lines ``bench/rl_step.py --out`` appends (one per backend and run). Each bar is a
summary's median phase seconds (``PHASES``, in the loop's order), labelled with its backend, shape
and batch; the not-generation share and its floor (the update at 100% MFU) are written beside it
where the summary has them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rl_step import PHASES  # noqa: E402  (the bench's phases, in the loop's order)

COLOURS = {"generate": "#4c72b0", "train": "#dd8452", "logprobs": "#c44e52", "advantages": "#55a868"}
OTHER = "#8c8c8c"  # the short phases (score, gather, sleep, sync, wake)


def read_summaries(paths: list[str]) -> list[dict]:
    """Every summary line of ``paths``; a line that is not a summary names its file and line."""
    rows = []
    for path in paths:
        for number, line in enumerate(Path(path).read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{number}: not JSON ({e.msg})") from None
            if "backend" not in row or "step_s" not in row:
                raise SystemExit(f"{path}:{number}: not a bench/rl_step.py summary (no backend or step_s)")
            rows.append(row)
    return rows


def label(row: dict) -> str:
    return (f"{row['backend']}, {row.get('shape', '?')}, {row.get('prompts', '?')} x {row.get('group', '?')} x "
            f"{row.get('max_len', '?')}")


def plot(rows: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.6 * len(rows)))
    drawn = set()
    for y, row in enumerate(rows):
        left = 0.0
        for phase in PHASES:
            seconds = row.get(f"{phase}_s", 0.0)
            name = phase if phase in COLOURS else "other"
            ax.barh(y, seconds, left=left, color=COLOURS.get(phase, OTHER), edgecolor="white", linewidth=0.5,
                    label=None if name in drawn else name)
            drawn.add(name)
            left += seconds
        note = f"{row['step_s']:.1f} s"
        if "not_generation_share" in row:
            note += f", not generation {100 * row['not_generation_share']:.0f}%"
        if "not_generation_floor" in row:
            note += f" (floor {100 * row['not_generation_floor']:.0f}%)"
        ax.text(left, y, "  " + note, va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [label(r) for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (median timed step)")
    ax.set_xlim(0, 1.45 * max(r["step_s"] for r in rows))
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22 - 0.1 / len(rows)), ncol=5, frameon=False)
    card = rows[0].get("card", "")
    ax.set_title(f"GRPO step by phase{', ' + card if card else ''}", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("jsonl", nargs="+", help="bench/rl_step.py --out files")
    p.add_argument("--out", required=True, help="the PNG to write")
    args = p.parse_args()
    print(plot(read_summaries(args.jsonl), Path(args.out)))


if __name__ == "__main__":
    main()
