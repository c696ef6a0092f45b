"""Report rendering: the paper's table layout, published reference rows, the chart, and the comparison
of two checkpoints (nemo_ext/evaluation/report.py), on hand-made metrics files."""

import json
import math

import pytest

from nemo_ext.evaluation import report
from nemo_ext.evaluation.cli import main
from nemo_ext.evaluation.config import DEFAULT_PUBLISHED


def write_run(root, model, results):
    """results: benchmark -> (mean, se, k) as fractions."""
    for name, (mean, se, k) in results.items():
        avg = {"k": k, "mean": mean, "sd": se * math.sqrt(k), "se": se}
        metrics = {"num_problems": 30, "samples": k, "avg": avg, "pass_at_k": {"1": mean, str(k): 0.9},
                   "mean_response_tokens": 1234.4, "truncation_rate": 0.05}
        if name != "lcb_v6":
            metrics["majority"] = 0.8
        (root / name).mkdir(parents=True)
        (root / name / "metrics.json").write_text(json.dumps(
            {"benchmark": name, "title": name.upper(), "task": "math", "model": model, "metrics": metrics,
             "problems": []}))
    return root


@pytest.fixture
def runs(tmp_path):
    a = write_run(tmp_path / "a", "sft", {"aime24": (0.5, 0.1, 64), "lcb_v6": (0.40, 0.02, 8)})
    b = write_run(tmp_path / "b", "rl", {"aime24": (0.7, 0.05, 64), "lcb_v6": (0.41, 0.02, 8)})
    return a, b


def test_published_numbers_are_the_papers():
    published = report.load_published(DEFAULT_PUBLISHED)
    rows = {m.name: m.scores for m in published.models}
    assert rows["AceReason-Nemotron 1.1-7B"] == {"aime24": 72.6, "aime25": 64.8, "lcb_v5": 57.2,
                                                 "lcb_v6": 52.1}
    assert rows["AceReason-Nemotron 1.1 SFT-7B (RL start)"]["aime24"] == 62.0
    assert len(rows) == 6


def test_results_table_layout(runs):
    a, b = (report.load_run(d) for d in runs)
    published = report.Published(source="paper", models=[report.PublishedModel("Ref-7B", {"aime24": 72.6,
                                                                                         "lcb_v5": 57.2})])
    columns = report.columns_of([a, b], published, ["aime24", "aime25", "lcb_v5", "lcb_v6"])
    assert columns == ["aime24", "lcb_v5", "lcb_v6"]
    table = report.results_table([a, b], published, columns, {"aime24": "AIME24", "lcb_v5": "LCB v5"})
    assert table.splitlines() == [
        "| model | AIME24 | LCB v5 | lcb_v6 |",
        "|---|---|---|---|",
        "| Ref-7B (paper) | 72.6 | 57.2 | — |",
        "| **sft** | 50.0 ± 10.0 | — | 40.0 ± 2.0 |",
        "| **rl** | 70.0 ± 5.0 | — | 41.0 ± 2.0 |",
    ]


def test_comparison_difference_against_combined_standard_error(runs):
    a, b = (report.load_run(d) for d in runs)
    rows = {r["benchmark"]: r for r in report.compare(a, b)}
    # AIME24: +20 points, combined se sqrt(10^2 + 5^2) = 11.18 -> exceeds; LCB v6: +1 vs 2.83 -> does not
    assert rows["aime24"]["diff"] == pytest.approx(0.2)
    assert rows["aime24"]["combined_se"] == pytest.approx(math.sqrt(0.0125))
    assert rows["aime24"]["exceeds"] is True
    assert rows["aime24"]["ratio"] == pytest.approx(0.2 / math.sqrt(0.0125))
    assert rows["lcb_v6"]["combined_se"] == pytest.approx(math.sqrt(0.0008))
    assert rows["lcb_v6"]["exceeds"] is False
    table = report.comparison_table(a, b, {"aime24": "AIME24"}).splitlines()
    assert table[2] == "| AIME24 | 50.0 ± 10.0 | 70.0 ± 5.0 | +20.0 | 11.2 | 1.79 | yes |"
    assert table[3] == "| lcb_v6 | 40.0 ± 2.0 | 41.0 ± 2.0 | +1.0 | 2.8 | 0.35 | no |"


def test_report_command_writes_markdown_and_png(runs, tmp_path, capsys):
    a, b = runs
    assert main(["report", str(a), str(b), "--compare", "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "| AceReason-Nemotron 1.1-7B (paper) | 72.6 | 64.8 | 57.2 | 52.1 |" in text
    assert "| **rl** | 70.0 ± 5.0 | — | — | 41.0 ± 2.0 |" in text  # columns AIME24 AIME25 LCB v5 LCB v6
    assert "## rl vs sft" in text
    assert "| AIME24 | 50.0 ± 10.0 | 70.0 ± 5.0 | +20.0 | 11.2 | 1.79 | yes |" in text
    assert "| AIME24 | 30 | 64 | 50.0 | 80.0 | 10.0 | 1: 50.0, 64: 90.0 | 80.0 | 1234 | 5.0% |" in text
    png = (tmp_path / "rep" / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert main(["report", str(a), "--compare", "--out", str(tmp_path / "rep")]) == 1
    assert "exactly two runs" in capsys.readouterr().err


def test_run_without_metrics_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no <benchmark>/metrics.json"):
        report.load_run(tmp_path)
