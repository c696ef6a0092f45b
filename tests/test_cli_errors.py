"""Bad paths on the command line end in one line that names them, not a traceback: the evaluation's
interpreter and checkpoint, data_prep/synthetic.py's --output, the recipes' input paths."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def test_run_benchmarks_without_a_project_interpreter_says_how_to_set_one(tmp_path):
    checkout = tmp_path / "checkout"  # a checkout without .venv, on a machine whose python3 lacks the project
    (checkout / "eval").mkdir(parents=True)
    shutil.copy(ROOT / "eval" / "run_benchmarks.sh", checkout / "eval")
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python3").symlink_to(shutil.which("false"))  # an interpreter that can run nothing
    env = dict(ENV, PATH=f"{bare}:{os.environ['PATH']}")
    env.pop("PYTHON", None)
    proc = subprocess.run(["bash", str(checkout / "eval" / "run_benchmarks.sh"), "runs/sft/hf"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    error = one_line_error(proc)
    assert error.startswith("run_benchmarks.sh: no interpreter for the evaluation: python3 lacks")
    assert f"run 'make venv' in {checkout}" in error and "set PYTHON=/path/to/python" in error

    env["PYTHON"] = str(tmp_path / "no-such-python")
    proc = subprocess.run(["bash", str(checkout / "eval" / "run_benchmarks.sh"), "runs/sft/hf"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and f"{tmp_path / 'no-such-python'} is not an executable" in one_line_error(proc)


@pytest.mark.parametrize("checkpoint", ["runs/no/such/hf", "/no/such/checkpoint", "."])
def test_run_benchmarks_names_a_checkpoint_that_does_not_exist(tmp_path, checkpoint):
    proc = subprocess.run(["bash", str(ROOT / "eval" / "run_benchmarks.sh"), checkpoint, "embedded",
                           f"output_dir={tmp_path / 'out'}"], env=dict(ENV, PYTHON=sys.executable),
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 1
    error = one_line_error(proc)
    if checkpoint == ".":  # exists, but is no model
        assert error == "error: checkpoint .: not a Hugging Face model directory (no config.json)"
    else:
        assert error.startswith(f"error: checkpoint {checkpoint} does not exist (expected a Hugging Face model")
    assert not (tmp_path / "out").exists()


def test_synthetic_output_that_is_a_file_is_one_line(tmp_path):
    existing = tmp_path / "existing"
    existing.write_text("not a directory")
    for output, code, message in [(existing, 2, f"--output {existing} exists and is not a directory"),
                                  (existing / "sub", 1, f"cannot write {existing / 'sub'}: ")]:
        proc = subprocess.run([sys.executable, str(ROOT / "data_prep" / "synthetic.py"), "--output", str(output)],
                              env=ENV, capture_output=True, text=True, timeout=120)
        assert proc.returncode == code and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert existing.read_text() == "not a directory"


@pytest.mark.parametrize(("recipe", "override", "problem"), [
    ("rl.py", "policy.init={missing}", "policy.init: {missing}: no such directory"),
    ("sft.py", "data.train_dir={missing}", "data.train_dir: {missing}: no such directory"),
])
def test_recipes_name_a_missing_input_without_a_traceback(tmp_path, recipe, override, problem):
    """The preflight's report: a heading line, then one line per problem naming the key and path."""
    missing = tmp_path / "missing"
    extra = ["logging.progress_bar=false"] if recipe == "sft.py" else []
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / recipe), override.format(missing=missing),
                           f"output_dir={tmp_path / 'run'}", *extra], env=ENV, capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and "preflight: 1 problem(s)" in lines[0], lines
    assert len(lines) == 2 and lines[1].strip().startswith(problem.format(missing=missing)), lines
