"""Benchmark registry and loaders on local fixtures with the hub schemas (tests/fixtures/eval)."""

import json
import os
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nemo_ext.evaluation import livecodebench
from nemo_ext.evaluation.config import DEFAULT_REGISTRY, parse_args, resolve_benchmarks
from nemo_ext.evaluation.loaders import load_problems
from nemo_ext.evaluation.registry import TestSelection, load_registry, render

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "eval"
LOCAL = {name: FIX / f"{name}.jsonl" for name in ("aime24", "aime25", "hmmt_feb25", "brumo25", "math500")}
LOCAL.update(lcb_v5=FIX / "lcb", lcb_v6=FIX / "lcb")


def registry_with_fixtures():
    """The real eval/benchmarks.yaml, every entry pointed at its local fixture."""
    overrides = [f"benchmarks.{name}.source.path={path}" for name, path in LOCAL.items()]
    return load_registry(DEFAULT_REGISTRY, overrides).benchmarks


def test_registry_has_the_paper_protocol():
    specs = load_registry(DEFAULT_REGISTRY).benchmarks
    assert {n: s.samples for n, s in specs.items() if n != "embedded"} == {
        "aime24": 64, "aime25": 64, "hmmt_feb25": 64, "brumo25": 64, "math500": 4, "lcb_v5": 8, "lcb_v6": 8}
    for name, spec in specs.items():
        if name != "embedded":
            s = spec.sampling
            assert (s.temperature, s.top_p, s.max_new_tokens) == (0.6, 0.95, 32768)
    windows = {n: (specs[n].contest_dates.start, specs[n].contest_dates.end) for n in ("lcb_v5", "lcb_v6")}
    assert windows == {"lcb_v5": ("2024-08-01", "2025-02-01"), "lcb_v6": ("2025-02-01", "2025-05-01")}
    assert specs["aime24"].source.hub == "HuggingFaceH4/aime_2024" and specs["math500"].source.split == "test"


@pytest.mark.parametrize(("name", "expected"), [
    ("aime24", [("60", "204"), ("61", "113"), ("62", "315")]),
    ("aime25", [("1", "70"), ("2", "588")]),  # int answers become strings
    ("hmmt_feb25", [("1", "103"), ("2", "9"), ("3", "2\\sqrt{2}")]),
    ("brumo25", [("1", "\\frac{5}{6}"), ("2", "15")]),
    ("math500", [("test/precalculus/807.json", "\\left( 3, \\frac{\\pi}{2} \\right)"),
                 ("test/algebra/2487.json", "26000")]),
])
def test_math_loaders_map_the_hub_columns(name, expected):
    problems = load_problems(name, registry_with_fixtures()[name])
    assert [(p["id"], p["answer"]) for p in problems] == expected
    assert all(p["task"] == "math" and p["starter_code"] == "" for p in problems)


def test_parquet_source_reads_like_jsonl(tmp_path):
    rows = [json.loads(line) for line in LOCAL["math500"].read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "math500.parquet")
    spec = registry_with_fixtures()["math500"]
    spec = replace(spec, source=replace(spec.source, path=str(tmp_path / "math500.parquet")))
    assert load_problems("math500", spec) == load_problems("math500", registry_with_fixtures()["math500"])


def test_livecodebench_windows_are_half_open_and_tests_decode():
    specs = registry_with_fixtures()
    v5 = {p["id"]: p for p in load_problems("lcb_v5", specs["lcb_v5"])}
    v6 = {p["id"]: p for p in load_problems("lcb_v6", specs["lcb_v6"])}
    # 2024-07-31 before v5; 2024-08-01 and 2024-12-15 in v5; 2025-02-01 in v6 only; 2025-05-01 after v6
    assert list(v5) == ["abc364_a", "3300"] and list(v6) == ["abc392_a"]
    # plain-JSON private tests (old shard)
    assert v5["abc364_a"]["tests"] == [{"input": "10 20\n", "output": "30\n", "testtype": "stdin"},
                                       {"input": "-5 5\n", "output": "0\n", "testtype": "stdin"}]
    assert v5["abc364_a"]["func_name"] == "" and v5["abc364_a"]["date"] == "2024-08-01"
    # compressed private tests of a functional problem, func_name from metadata
    add = v5["3300"]
    assert add["tests"] == [{"input": "40\n2", "output": "42", "testtype": "functional"},
                            {"input": "-1\n-1", "output": "-2", "testtype": "functional"}]
    assert add["func_name"] == "addTwo"
    assert add["starter_code"].startswith("class Solution:\n    def addTwo(self, a: int, b: int) -> int:")
    assert v6["abc392_a"]["tests"][0] == {"input": "2\n7 7\n", "output": "7\n", "testtype": "stdin"}


def test_livecodebench_public_private_selection_prepends_public_tests():
    spec = registry_with_fixtures()["lcb_v5"]
    both = {p["id"]: p for p in load_problems("lcb_v5", replace(spec, tests=TestSelection.public_private))}
    assert both["3300"]["tests"][0] == {"input": "1\n2", "output": "3", "testtype": "functional"}
    assert len(both["3300"]["tests"]) == 3


def test_compressed_tests_round_trip_and_hostile_pickles_are_refused():
    tests = [{"input": "1\n", "output": "1\n", "testtype": "stdin"}]
    assert livecodebench.decode_tests(livecodebench.encode_private_tests(tests), "x") == tests

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    import base64
    import zlib
    hostile = base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()
    with pytest.raises(ValueError, match="row 7.*neither JSON nor base64"):
        livecodebench.decode_tests(hostile, "row 7")
    with pytest.raises(ValueError, match="test 0 has testtype 'file'"):
        livecodebench.decode_tests(json.dumps([{"input": "", "output": "", "testtype": "file"}]), "row 1")


def test_functional_row_without_func_name_is_an_error(tmp_path):
    row = json.loads((FIX / "lcb" / "test6.jsonl").read_text().splitlines()[0])
    row["metadata"] = "{}"
    (tmp_path / "rows.jsonl").write_text(json.dumps(row) + "\n")
    spec = registry_with_fixtures()["lcb_v5"]
    spec = replace(spec, source=replace(spec.source, path=str(tmp_path / "rows.jsonl")))
    with pytest.raises(ValueError, match=r"rows.jsonl row 0: functional tests but no `func_name`"):
        load_problems("lcb_v5", spec)


def test_missing_column_names_file_row_and_column(tmp_path):
    rows = [{"problem": "x", "answer": "1", "id": 1}, {"problem": "y", "id": 2}]
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = registry_with_fixtures()["aime24"]
    spec = replace(spec, source=replace(spec.source, path=str(tmp_path / "bad.jsonl")))
    with pytest.raises(ValueError, match=r"bad.jsonl row 1: missing key 'answer'"):
        load_problems("aime24", spec)


def test_embedded_benchmark_is_the_synthetic_held_out_set():
    from nemo_ext.data.synthetic import make_problems

    spec = load_registry(DEFAULT_REGISTRY).benchmarks["embedded"]
    problems = load_problems("embedded", spec)
    expected = make_problems(spec.source.num_problems, seed=spec.source.seed, split="test")
    assert [(p["question"], p["answer"]) for p in problems] == [(e["question"], e["answer"])
                                                                 for e in expected]


SYSTEM = ("<|im_start|>system\nYou are a helpful and harmless assistant. You should think step-by-step."
          "<|im_end|>\n")


def test_prompts_are_the_papers_templates():
    specs = registry_with_fixtures()
    aime = load_problems("aime24", specs["aime24"])[0]
    assert render("acereason_1.1", aime) == (
        SYSTEM + "<|im_start|>user\nEvery morning Aya goes for a $9$-kilometer-long walk. Find the number of "
        "minutes the walk takes her.\n\nPlease place your final answer inside \\boxed{}.<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n")
    v5 = {p["id"]: p for p in load_problems("lcb_v5", specs["lcb_v5"])}
    assert render("acereason_1.1", v5["abc364_a"]) == (
        SYSTEM + "<|im_start|>user\nGiven two integers A and B on one line, print A+B.\n\n"
        "Write Python code to solve the problem. Please place the solution code in the following format:\n"
        "```python\n# Your solution code here\n```<|im_end|>\n<|im_start|>assistant\n<think>\n")
    assert render("acereason_1.1", v5["3300"]) == (
        SYSTEM + "<|im_start|>user\nReturn the sum of a and b.\n\n"
        "Solve the problem starting with the provided function header.\n\nFunction header:\n```\n"
        "class Solution:\n    def addTwo(self, a: int, b: int) -> int:\n        \n```\n\n"  # the starter code as given
        "Please place the solution code in the following format:\n"
        "```python\n# Your solution code here\n```<|im_end|>\n<|im_start|>assistant\n<think>\n")


@pytest.mark.parametrize(("yaml_text", "message"), [
    ("benchmarks:\n  x: {task: math, samplez: 3}\n", "key 'benchmarks.x.samplez'.*allowed keys: task, title"),
    ("benchmarks:\n  x: {task: maths}\n", "key 'benchmarks.x.task'.*expected one of \\[math, code\\]"),
    ("benchmarks:\n  x: {task: math, sampling: {max_new_tokens: lots}}\n",
     "benchmarks.x.sampling.max_new_tokens"),
    ("benchmarks:\n  x: {samples: 2}\n", "key 'benchmarks.x.task'.*missing mandatory value"),
    ("default_cpu: [y]\nbenchmarks:\n  x: {task: math}\n", "default_cpu names unknown benchmark"),
    ("benchmarks:\n  x: {task: math, template: chatml}\n",
     "benchmarks.x.template: unknown template 'chatml'"),
])
def test_registry_errors_name_the_file_and_key(tmp_path, yaml_text, message):
    path = tmp_path / "bench.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ValueError, match=message) as err:
        load_registry(path)
    assert str(path) in str(err.value)


def test_command_line_overrides_and_cpu_default():
    cfg, reg = parse_args(["runs/sft/hf", "samples=2", "max_new_tokens=256", "benchmarks.aime24.samples=5",
                           "tensor_parallel_size=2"])
    assert (cfg.checkpoint, cfg.samples, cfg.max_new_tokens) == ("runs/sft/hf", 2, 256)
    assert cfg.tensor_parallel_size == 2
    assert cfg.model_name == "sft" and cfg.output_dir == os.path.join("runs", "eval", "sft")
    assert reg == ["benchmarks.aime24.samples=5"]
    specs = resolve_benchmarks(cfg, reg)
    assert list(specs) == ["embedded"]  # this machine has no GPU: the CPU default list
    assert (specs["embedded"].samples, specs["embedded"].sampling.max_new_tokens) == (2, 256)
    assert specs["embedded"].sampling.temperature == 0.6
    cfg, _ = parse_args(["ckpt", "aime24", "lcb_v6", "temperature=1.0"])
    specs = resolve_benchmarks(cfg, [])
    assert list(specs) == ["aime24", "lcb_v6"] and specs["lcb_v6"].sampling.temperature == 1.0
    assert specs["lcb_v6"].samples == 8
    with pytest.raises(ValueError, match="key 'sampels'"):
        parse_args(["ckpt", "sampels=3"])
    with pytest.raises(KeyError, match="unknown benchmark.*'aime26'"):
        resolve_benchmarks(parse_args(["ckpt", "aime26"])[0], [])


def test_unreachable_hub_says_so_and_how_to_use_a_local_file(tmp_path, tiny_model_dir):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(ROOT))
    # a real checkpoint, so the preflight passes and the hub source is what fails (before the engine)
    cmd = [sys.executable, "-m", "nemo_ext.evaluation.cli", "generate", str(tiny_model_dir), "aime24",
           f"output_dir={tmp_path / 'out'}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "cannot load 'HuggingFaceH4/aime_2024'" in proc.stderr
    assert "benchmarks.aime24.source.path" in proc.stderr and "Traceback" not in proc.stderr
