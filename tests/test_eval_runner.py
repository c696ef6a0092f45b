"""The evaluation runner without a model: problems from fixtures, hand-written generations, real
scoring in the reward pool, metrics checked against values worked out by hand; append-only records."""

import json
import math
from pathlib import Path

import pytest

from nemo_ext.evaluation import runner
from nemo_ext.evaluation.config import parse_args, resolve_benchmarks
from nemo_ext.evaluation.records import RecordWriter, read_records
from nemo_ext.rewards import RewardPool

FIX = Path(__file__).resolve().parent / "fixtures" / "eval"


def prepare(tmp_path, *names, extra=()):
    argv = [str(tmp_path / "ckpt"), *names, "samples=2", f"output_dir={tmp_path / 'out'}",
            f"benchmarks.aime24.source.path={FIX / 'aime24.jsonl'}",
            f"benchmarks.lcb_v5.source.path={FIX / 'lcb'}", *extra]
    cfg, overrides = parse_args(argv)
    return cfg, runner.prepare(cfg, resolve_benchmarks(cfg, overrides))


def write_generations(run, texts: dict, truncated=(), num_tokens=None):
    with RecordWriter(run.dir / "generations.jsonl") as w:
        w.write([{"problem_id": pid, "sample": j, "seed": 0, "text": text, "finish_reason": "stop",
                  "num_tokens": (num_tokens or {}).get((pid, j), 10), "truncated": (pid, j) in truncated}
                 for (pid, j), text in texts.items()])


def test_math_scoring_and_metrics_by_hand(tmp_path):
    cfg, [run] = prepare(tmp_path, "aime24")
    texts = {("60", 0): "walk...</think>The answer is \\boxed{204}.", ("60", 1): "</think>\\boxed{204}",
             ("61", 0): "</think>\\boxed{24}", ("61", 1): "hmm</think>so \\boxed{113}",
             ("62", 0): "counting rectangles, not done", ("62", 1): "</think>\\boxed{7}"}
    lengths = {("60", 0): 100, ("60", 1): 200, ("61", 0): 300, ("61", 1): 400, ("62", 0): 512, ("62", 1): 50}
    write_generations(run, texts, truncated={("62", 0)}, num_tokens=lengths)
    with RewardPool(2) as pool:
        assert runner.score_missing([run], pool) == 6
        assert runner.score_missing([run], pool) == 0  # resumed: nothing left to score
    out = runner.benchmark_metrics(run, cfg.model_name)
    m = out["metrics"]
    # rewards [[1, 1], [0, 1], [0, 0]]: runs 1/3 and 2/3
    assert m["avg"]["mean"] == pytest.approx(0.5) and m["avg"]["se"] == pytest.approx(1 / 6)
    assert m["avg"]["sd"] == pytest.approx(math.sqrt(1 / 18))
    assert m["pass_at_k"] == pytest.approx({"1": 0.5, "2": 2 / 3})
    assert m["majority"] == pytest.approx(0.5)  # 1 (204 x2), 1/2 (24 vs 113 tie), 0 (only 7 votes)
    assert m["mean_response_tokens"] == pytest.approx(1562 / 6)
    assert m["truncation_rate"] == pytest.approx(1 / 6)
    assert m["verdicts"] == {"accepted": 3, "wrong_answer": 2, "no_answer": 1}
    by_id = {p["id"]: p for p in out["problems"]}
    assert by_id["61"]["rewards"] == [0.0, 1.0] and by_id["61"]["majority_score"] == 0.5
    assert by_id["62"]["truncated"] == 1 and by_id["62"]["majority_answer"] == "7"
    assert json.loads((run.dir / "metrics.json").read_text()) == out


SUM_OK = "</think>\n```python\na, b = map(int, input().split())\nprint(a + b)\n```"
SUM_BAD = "</think>\n```python\na, b = map(int, input().split())\nprint(a - b)\n```"
ADD_OK = ("</think>\n```python\nclass Solution:\n    def addTwo(self, a: int, b: int) -> int:\n"
          "        return a + b\n```")


def test_code_scoring_uses_private_tests_and_func_name(tmp_path):
    cfg, [run] = prepare(tmp_path, "lcb_v5")
    assert [p["id"] for p in run.problems] == ["abc364_a", "3300"]
    texts = {("abc364_a", 0): SUM_OK, ("abc364_a", 1): SUM_BAD, ("3300", 0): ADD_OK, ("3300", 1): "no code"}
    write_generations(run, texts)
    with RewardPool(2) as pool:
        runner.score_missing([run], pool)
    m = runner.benchmark_metrics(run, cfg.model_name)["metrics"]
    assert m["avg"]["mean"] == pytest.approx(0.5) and m["avg"]["sd"] == pytest.approx(math.sqrt(0.5))
    assert m["avg"]["se"] == pytest.approx(0.5) and "majority" not in m
    assert m["verdicts"] == {"accepted": 2, "wrong_answer": 1, "no_code": 1}


def test_scoring_refuses_missing_generations(tmp_path):
    _, [run] = prepare(tmp_path, "aime24")
    write_generations(run, {("60", 0): "</think>\\boxed{204}"})
    with RewardPool(1) as pool, pytest.raises(RuntimeError, match="lacks 5 samples"):
        runner.score_missing([run], pool)


def test_generation_is_skipped_when_every_sample_exists(tmp_path):
    cfg, [run] = prepare(tmp_path, "aime24")
    write_generations(run, {key: "x" for key in run.expected})
    assert runner.generate_missing([run], cfg) == 0  # no engine built: the checkpoint does not even exist


def test_resume_with_other_settings_is_refused(tmp_path):
    prepare(tmp_path, "aime24")
    with pytest.raises(ValueError, match="other settings \\(sampling differ\\)"):
        prepare(tmp_path, "aime24", extra=["temperature=1.0"])
    prepare(tmp_path, "aime24", extra=["samples=4"])  # more samples of the same settings: fine


def test_a_failed_load_does_not_bind_the_run_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl: no such file"):
        prepare(tmp_path, "aime24", extra=[f"benchmarks.aime24.source.path={tmp_path / 'nowhere.jsonl'}"])
    _, [run] = prepare(tmp_path, "aime24")  # the fixed source, same output_dir
    assert [p["id"] for p in run.problems] == ["60", "61", "62"]


def test_sample_seeds_are_per_sample_and_stable():
    a = runner.sample_seed(0, "aime24", "60", 0)
    assert runner.sample_seed(0, "aime24", "60", 3) == a + 3
    assert a == runner.sample_seed(0, "aime24", "60", 0) and 0 <= a < 2**28
    assert len({runner.sample_seed(0, "aime24", str(p), 0) for p in range(100)}) == 100


def test_records_drop_a_torn_tail_and_reject_duplicates(tmp_path):
    path = tmp_path / "g.jsonl"
    with RecordWriter(path) as w:
        w.write([{"problem_id": "a", "sample": 0}, {"problem_id": "a", "sample": 1}])
    with path.open("a") as f:
        f.write('{"problem_id": "a", "sam')  # a kill in the middle of a write
    assert list(read_records(path)) == [("a", 0), ("a", 1)]
    assert path.read_text().endswith('"sample": 1}\n')  # cut back to the last complete line
    with RecordWriter(path) as w:
        w.write([{"problem_id": "a", "sample": 2}])
    assert list(read_records(path)) == [("a", 0), ("a", 1), ("a", 2)]
    with RecordWriter(path) as w:
        w.write([{"problem_id": "a", "sample": 1}])
    with pytest.raises(ValueError, match="g.jsonl:4: duplicate record for problem 'a' sample 1"):
        read_records(path)
    path.write_text('{"problem_id": "a", "sample": 0}\nnot json\n')
    with pytest.raises(ValueError, match="g.jsonl:2: not a JSON record"):
        read_records(path)
