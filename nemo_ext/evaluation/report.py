"""Results report: the paper's table layout (models as rows, benchmarks as columns), a chart, and a
two-checkpoint comparison.

Inputs are run directories of ``eval/run_benchmarks.sh`` (one ``<benchmark>/metrics.json`` each) and
``eval/published.yaml`` (the numbers published in AceReason-Nemotron 1.1, arXiv 2506.13284, shown as
reference rows, never rerun). Our cells are avg@k in percent ± its standard error (sd of the k run
accuracies, ddof=1, over sqrt(k)). The comparison of two runs gives, per benchmark, the difference and
whether it exceeds the combined standard error sqrt(se_a^2 + se_b^2), with their ratio: one combined
standard error is a low bar (about 68% two-sided), so the ratio is shown to judge by.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nemo_ext.evaluation.registry import config_error

DASH = "—"


@dataclass
class PublishedModel:
    name: str = ""
    scores: dict[str, float] = field(default_factory=dict)  # benchmark name -> accuracy in percent


@dataclass
class Published:
    source: str = ""
    models: list[PublishedModel] = field(default_factory=list)


@dataclass
class RunResults:
    """One evaluated checkpoint: its row label and ``{benchmark: metrics.json content}``."""

    model: str
    path: Path
    benchmarks: dict[str, dict]


def load_published(path: str | Path) -> Published:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Published), OmegaConf.load(path))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise config_error(str(path), err) from err


def load_run(run_dir: str | Path) -> RunResults:
    """Every ``<benchmark>/metrics.json`` under ``run_dir``; an error if there is none."""
    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("*/metrics.json"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no <benchmark>/metrics.json here (has the run been scored?)")
    benchmarks = {f.parent.name: json.loads(f.read_text()) for f in files}
    models = {m["model"] for m in benchmarks.values()}
    if len(models) != 1:
        raise ValueError(f"{run_dir}: metrics of several models {sorted(models)} in one run directory")
    return RunResults(model=models.pop(), path=run_dir, benchmarks=benchmarks)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _cell(metrics: dict | None) -> str:
    if metrics is None:
        return DASH
    avg = metrics["metrics"]["avg"]
    return _pct(avg["mean"]) if math.isnan(avg["se"]) else f"{_pct(avg['mean'])} ± {_pct(avg['se'])}"


def columns_of(runs: list[RunResults], published: Published, order: list[str]) -> list[str]:
    """Benchmarks to show: those evaluated or published, in ``order`` (registry order), others after."""
    names = {b for r in runs for b in r.benchmarks} | {b for m in published.models for b in m.scores}
    return [b for b in order if b in names] + sorted(names - set(order))


def results_table(runs: list[RunResults], published: Published, columns: list[str],
                  titles: dict[str, str]) -> str:
    """Markdown: published rows (marked "(paper)") then ours, one column per benchmark."""
    lines = ["| model | " + " | ".join(titles.get(c, c) for c in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for m in published.models:
        cells = [f"{m.scores[c]:.1f}" if c in m.scores else DASH for c in columns]
        lines.append(f"| {m.name} (paper) | " + " | ".join(cells) + " |")
    for r in runs:
        lines.append(f"| **{r.model}** | " + " | ".join(_cell(r.benchmarks.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def details_table(run: RunResults, columns: list[str]) -> str:
    """Markdown: every metric of one run, one row per benchmark."""
    header = ["benchmark", "problems", "k", "avg@k", "sd", "se", "pass@k (k: value)", "maj@k", "mean tokens",
              "truncated"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in columns:
        if c not in run.benchmarks:
            continue
        m = run.benchmarks[c]["metrics"]
        avg = m["avg"]
        passes = ", ".join(f"{k}: {_pct(v)}" for k, v in m["pass_at_k"].items())
        cells = [run.benchmarks[c]["title"], str(m["num_problems"]), str(avg["k"]), _pct(avg["mean"]),
                 _pct(avg["sd"]), _pct(avg["se"]), passes,
                 _pct(m["majority"]) if "majority" in m else DASH, f"{m['mean_response_tokens']:.0f}",
                 f"{_pct(m['truncation_rate'])}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(a: RunResults, b: RunResults) -> list[dict]:
    """Per benchmark both runs have: means, standard errors, difference b - a and whether |diff| exceeds
    the combined standard error (fractions, not percent)."""
    rows = []
    for name in [n for n in a.benchmarks if n in b.benchmarks]:
        ma, mb = a.benchmarks[name]["metrics"]["avg"], b.benchmarks[name]["metrics"]["avg"]
        se = math.sqrt(ma["se"] ** 2 + mb["se"] ** 2)
        diff = mb["mean"] - ma["mean"]
        rows.append({"benchmark": name, "a": ma["mean"], "se_a": ma["se"], "b": mb["mean"], "se_b": mb["se"],
                     "diff": diff, "combined_se": se, "ratio": abs(diff) / se if se > 0 else math.nan,
                     "exceeds": bool(se > 0 and abs(diff) > se)})
    return rows


def comparison_table(a: RunResults, b: RunResults, titles: dict[str, str]) -> str:
    """Markdown: one row per benchmark both runs have (see ``compare``), percent."""
    header = ["benchmark", a.model, b.model, "difference", "combined se", "\\|diff\\| / se", "exceeds se"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in compare(a, b):
        cells = [titles.get(r["benchmark"], r["benchmark"]), f"{_pct(r['a'])} ± {_pct(r['se_a'])}",
                 f"{_pct(r['b'])} ± {_pct(r['se_b'])}", f"{100 * r['diff']:+.1f}", _pct(r["combined_se"]),
                 f"{r['ratio']:.2f}", "yes" if r["exceeds"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: list[RunResults], published: Published, columns: list[str], titles: dict[str, str],
         out_png: str | Path) -> Path:
    """Grouped bars, one group per benchmark: published models (hatched) then ours with error bars (se)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    series = [(f"{m.name} (paper)", [m.scores.get(c, np.nan) for c in columns], None, True)
              for m in published.models]
    for r in runs:
        avgs = [r.benchmarks[c]["metrics"]["avg"] if c in r.benchmarks else None for c in columns]
        series.append((r.model, [100 * a["mean"] if a else np.nan for a in avgs],
                       [100 * a["se"] if a and not math.isnan(a["se"]) else 0.0 for a in avgs], False))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(columns))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(columns) + 2), 5.0))
    for i, (label, values, errors, is_paper) in enumerate(series):
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, yerr=errors, capsize=2,
                      label=label, hatch="//" if is_paper else None, alpha=0.5 if is_paper else 0.95)
        if not is_paper:
            labels = ["" if np.isnan(v) else f"{v:.1f}" for v in values]
            ax.bar_label(bars, labels=labels, fontsize=7, padding=2)
    ax.set_xticks(x, [titles.get(c, c) for c in columns])
    ax.set_ylabel("accuracy (%): avg@k, ours ± se")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def render_report(runs: list[RunResults], published: Published, order: list[str], titles: dict[str, str],
                  chart: str | None = None, compare_pair: bool = False) -> str:
    """The whole markdown report (``chart``: the PNG's name, linked below the table)."""
    columns = columns_of(runs, published, order)
    titles = {**titles, **{b: m["title"] for r in runs for b, m in r.benchmarks.items()}}
    parts = ["# Evaluation results", "", results_table(runs, published, columns, titles), "",
             "Ours: avg@k in percent ± its standard error (standard deviation of the k per-run accuracies, "
             f"ddof=1, divided by sqrt(k)). (paper) rows: {published.source or 'published numbers'}; "
             "not rerun."]
    if chart:
        parts += ["", f"![results]({chart})"]
    if compare_pair:
        if len(runs) != 2:
            raise ValueError(f"a comparison needs exactly two runs, got {len(runs)}")
        parts += ["", f"## {runs[1].model} vs {runs[0].model}", "",
                  comparison_table(runs[0], runs[1], titles)]
    for r in runs:
        parts += ["", f"## {r.model} ({r.path})", "", details_table(r, columns)]
    return "\n".join(parts) + "\n"
