"""data_prep/synthetic.py: the embedded task written to files that the real data path accepts."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

from nemo_ext.config.rl import StageConfig
from nemo_ext.rl.prompts import load_stage_prompts

REPO = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str) -> None:
    argv, sys.argv = sys.argv, [name, *args]
    try:
        runpy.run_path(str(REPO / "data_prep" / name), run_name="__main__")
    except SystemExit as e:
        assert e.code == 0, f"{name} exited with {e.code}"
    finally:
        sys.argv = argv


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_synthetic_files_feed_pack_and_the_rl_prompt_loader(tmp_path, tiny_model_dir):
    out = tmp_path / "syn"
    run_script("synthetic.py", "--output", str(out), "--num-train", "40", "--num-eval", "12", "--num-rl", "9",
               "--seed", "3")
    train, heldout = read(out / "sft_train.jsonl"), read(out / "heldout.jsonl")
    assert len(train) == 40 and len(heldout) == 12
    assert not {r["question"] for r in train} & {r["question"] for r in heldout}
    assert all(r["output"].startswith("<think>\n") and f"\\boxed{{{r['answer']}}}" in r["output"] for r in train)

    # the RL file holds exactly the prompts the RL loop builds itself for the synthetic task
    from_file = load_stage_prompts(StageConfig(name="m", data=str(out / "rl_math.jsonl"), steps=1), seed=0)
    built_in = load_stage_prompts(StageConfig(name="m", data=None, num_prompts=9, steps=1), seed=3)
    assert from_file == built_in

    run_script("pack.py", "--input", str(out / "sft_train.jsonl"), "--output", str(out / "packed"),
               "--tokenizer", str(tiny_model_dir), "--bin-size", "1024", "--prompt-field", "question",
               "--response-field", "output", "--task-field", "task", "--no-progress")
    counts = json.loads((out / "packed" / "metadata.json").read_text())["counts"]
    assert counts["packed"] == 40 and counts["malformed"] == 0, counts
