"""Artifacts a later run trusts because they exist are written atomically: the tiny model and its
tokenizer are built beside their path and renamed into place. A real build is killed with SIGKILL
after each of its steps, and the SFT and RL runs that find its directory afterwards still start from a
complete model, byte for byte the one an uninterrupted build writes (the kill leaves only a hidden
temporary directory beside it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from nemo_ext import dist
from nemo_ext.models.tiny import build_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
KILLED_BUILD = """
import os, signal, sys
import transformers
from nemo_ext.models.tiny import build_tiny_checkpoint

step, out, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
die = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
if step == "rename":
    os.replace = die  # killed where the finished directory would be renamed into place
else:
    cls = {"config": transformers.PretrainedConfig, "weights": transformers.PreTrainedModel,
           "tokenizer": transformers.PreTrainedTokenizerBase}[step]
    original = cls.save_pretrained
    def killed_after(self, *args, **kwargs):
        original(self, *args, **kwargs)
        die()
    cls.save_pretrained = killed_after
build_tiny_checkpoint(out, seed=seed)
print("not killed")
"""
STEPS = ["config", "weights", "tokenizer", "rename"]


def killed_build(out: Path, step: str, seed: int) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLED_BUILD, step, str(out), str(seed)], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
    assert proc.returncode == -9, proc.stdout + proc.stderr  # it died at that step


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted builds with the SFT recipe's seed and the RL default's."""
    return {seed: build_tiny_checkpoint(tmp_path_factory.mktemp("ref") / "model", seed=seed) for seed in (1234, 0)}


def assert_same_model(got: Path, want: Path) -> None:
    assert (got / "model.safetensors").read_bytes() == (want / "model.safetensors").read_bytes()
    AutoModelForCausalLM.from_pretrained(got)
    assert AutoTokenizer.from_pretrained(got)("What is 12 + 7?")["input_ids"] == \
        AutoTokenizer.from_pretrained(want)("What is 12 + 7?")["input_ids"]


@pytest.mark.parametrize("step", STEPS)
def test_sft_starts_from_a_complete_tiny_model_after_a_killed_build(tmp_path, reference, step):
    from nemo_ext.sft.loop import RunPaths, prepare_model
    from tests.test_sft_run import SMALL, sft_config

    cfg = sft_config([*SMALL, f"output_dir={tmp_path}"])
    paths = RunPaths(tmp_path)
    killed_build(paths.init_model, step, cfg.trainer.seed)
    assert not paths.init_model.exists()  # nothing half-built where the run looks
    model_dir = prepare_model(cfg, paths, dist.World(0, 0, 1))
    assert_same_model(Path(model_dir), reference[cfg.trainer.seed])


def test_rl_starts_from_a_complete_tiny_model_after_a_killed_build(tmp_path, reference):
    from nemo_ext.rl.setup import resolve_init

    killed_build(tmp_path / "init_tiny", "config", 0)  # the same build as above: its worst step suffices
    assert_same_model(resolve_init("tiny", tmp_path), reference[0])
