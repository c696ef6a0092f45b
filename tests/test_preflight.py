"""Preflights: every bad input of an RL, SFT or evaluation run is reported with its stage (or key), its
file and the problem, all at once, in seconds, before any model, process group or engine is built."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nemo_ext.config.rl import RLConfig, StageConfig, Task
from nemo_ext.config.schema import DataConfig, HeldoutConfig, SFTConfig, SFTModelConfig, SFTTrainerConfig
from nemo_ext.data.shards import make_bin, write_shard
from nemo_ext.data.sources import ChatFields
from nemo_ext.data.synthetic import write_split
from nemo_ext.evaluation.cli import main as eval_main
from nemo_ext.preflight import PreflightError
from nemo_ext.prep.pack_job import PackConfig, pack_dataset
from nemo_ext.rl.preflight import check_rl_inputs
from nemo_ext.sft.preflight import check_sft_inputs
from tests.helpers import write_jsonl

REPO = Path(__file__).resolve().parents[1]
MATH = [{"id": "m1", "question": "What is 2+2?", "answer": "4"}]
CODE = [{"id": "c1", "question": "Print A+B.", "tests": [{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]}]
SECONDS = 10  # a preflight reads files and one tokenizer: far below this even on a loaded CPU


def rl_config(init: Path | str, math: Path | None, code: Path | None, **eval_kw) -> RLConfig:
    stages = [StageConfig(name="math_short", task=Task.math, data=str(math) if math else None, steps=1),
              StageConfig(name="code_long", task=Task.code, data=str(code) if code else None, steps=1),
              StageConfig(name="math_again", task=Task.math, data=str(math) if math else None, steps=1)]
    return RLConfig(policy=replace(RLConfig().policy, init=str(init)), stages=stages,
                    eval=HeldoutConfig(num_problems=0, **eval_kw))


def problems_of(run, cfg) -> list[str]:
    start = time.perf_counter()
    with pytest.raises(PreflightError) as err:
        run(cfg)
    assert time.perf_counter() - start < SECONDS
    assert str(err.value).count("\n") == len(err.value.problems)  # the header, then one line per problem
    return [str(p) for p in err.value.problems]


@pytest.fixture()
def prompt_files(tmp_path) -> tuple[Path, Path]:
    return write_jsonl(tmp_path / "math.jsonl", MATH), write_jsonl(tmp_path / "code.jsonl", CODE)


def test_rl_inputs_that_are_fine_pass(tiny_model_dir, prompt_files):
    check_rl_inputs(rl_config(tiny_model_dir, *prompt_files))
    check_rl_inputs(rl_config("tiny", prompt_files[0], prompt_files[1]))  # built in the run: nothing to open


def test_rl_missing_and_empty_prompt_files(tiny_model_dir, tmp_path, prompt_files):
    math, _ = prompt_files
    missing = tmp_path / "nowhere" / "code.jsonl"
    assert problems_of(check_rl_inputs, rl_config(tiny_model_dir, math, missing)) == [
        f"stage 'code_long' (stages[1].data, task code): {missing}: no such file (write it with "
        "data_prep/rl_prompts.py --task code; docs/rl.md, \"RL prompts\")"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    # two stages read the same file: one line names both
    assert problems_of(check_rl_inputs, rl_config(tiny_model_dir, empty, prompt_files[1])) == [
        f"stages 'math_short', 'math_again' (stages[0].data, stages[2].data, task math): {empty}: no problems"]
    assert problems_of(check_rl_inputs, rl_config(tiny_model_dir, tmp_path, prompt_files[1]))[0].endswith(
        f"{tmp_path}: is not a file (write it with data_prep/rl_prompts.py --task math; docs/rl.md, \"RL prompts\")")


def test_rl_rows_of_the_wrong_task_or_with_bad_tests(tiny_model_dir, tmp_path, prompt_files):
    math, code = prompt_files
    found = problems_of(check_rl_inputs, rl_config(tiny_model_dir, code, math))
    assert found == [
        f"stages 'math_short', 'math_again' (stages[0].data, stages[2].data, task math): {code}: line 1: missing key "
        "'answer' (keys: ['id', 'question', 'tests']) (its rows look like code prompts)",
        f"stage 'code_long' (stages[1].data, task code): {math}: line 1: missing key 'tests' (keys: ['answer', 'id', "
        "'question']) (its rows look like math prompts)"]
    functional = dict(CODE[0], id="c2", tests=[{"input": "1", "output": "1", "testtype": "functional"}])
    bad = write_jsonl(tmp_path / "bad_tests.jsonl", [CODE[0], functional])
    assert problems_of(check_rl_inputs, rl_config(tiny_model_dir, math, bad)) == [
        f"stage 'code_long' (stages[1].data, task code): {bad}: 1 prompt(s) with tests the code reward refuses, the "
        "first: prompt 'c2': tests[0]: functional tests need 'fn_name', a Python identifier, got None"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(MATH[0]) + "\n{not json\n")
    assert problems_of(check_rl_inputs, rl_config(tiny_model_dir, broken, code))[0].endswith(
        f"{broken}: line 2: not valid JSON (Expecting property name enclosed in double quotes)")


def test_rl_policy_checkpoint_and_chat_template(tiny_model_dir, tmp_path, prompt_files):
    found = problems_of(check_rl_inputs, rl_config(tmp_path / "no_sft", *prompt_files))
    assert found == [f"policy.init: {tmp_path / 'no_sft'}: no such directory; pass the SFT run's hf/ export "
                     "(python recipes/sft.py writes runs/sft_tiny/hf)"]
    no_weights = shutil.copytree(tiny_model_dir, tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    assert problems_of(check_rl_inputs, rl_config(no_weights, *prompt_files)) == [
        f"policy.init: {no_weights}: holds no weights (model.safetensors / pytorch_model.bin / "
        "model.safetensors.index.json / pytorch_model.bin.index.json)"]
    no_template = shutil.copytree(tiny_model_dir, tmp_path / "no_template")
    (no_template / "chat_template.jinja").unlink()
    assert problems_of(check_rl_inputs, rl_config(no_template, *prompt_files)) == [
        f"policy.init: {no_template}: its tokenizer has no chat template (tokenizer_config.json 'chat_template'); "
        "the project renders prompts in Qwen's chat format, the model must know it"]
    other = shutil.copytree(tiny_model_dir, tmp_path / "other_template")
    (other / "chat_template.jinja").write_text("{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n"
                                               "{% endfor %}### assistant:")
    (problem,) = problems_of(check_rl_inputs, rl_config(other, *prompt_files))
    assert problem.startswith(f"policy.init: {other}: its chat template renders '### system: You are a helpful")
    assert "not the project's prompt format '<|im_start|>system\\nYou are a helpful" in problem


def test_rl_reports_every_problem_at_once(tmp_path):
    cfg = rl_config(tmp_path / "no_sft", tmp_path / "m.jsonl", tmp_path / "c.jsonl", file=str(tmp_path / "e.jsonl"))
    cfg.eval.num_problems = 5
    found = problems_of(check_rl_inputs, cfg)
    assert [p.split(":")[0] for p in found] == ["policy.init", "stages 'math_short', 'math_again' (stages[0].data, "
                                                "stages[2].data, task math)", "stage 'code_long' (stages[1].data, "
                                                "task code)", "eval.file"]
    with pytest.raises(ValueError, match="RL config key stages\\[0\\].group_size"):  # ranges: the config check
        check_rl_inputs(replace(cfg, stages=[replace(cfg.stages[0], group_size=1)]))


def test_rl_recipe_fails_before_building_anything(tiny_model_dir, tmp_path):
    missing = tmp_path / "code.jsonl"
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "recipes" / "rl.py"), f"policy.init={tiny_model_dir}", f"output_dir={out}",
           "stages.1.task=code", f"stages.1.data={missing}"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 1, done.stderr
    assert f"stage 'len160' (stages[1].data, task code): {missing}: no such file" in done.stderr
    assert done.stderr.startswith("error: RL preflight: 1 problem(s)") and "Traceback" not in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["hydra"]  # no checkpoints, logs, exports or init_tiny


@pytest.fixture(scope="module")
def pack(tmp_path_factory, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("pack")
    rows = write_split(root / "train.jsonl", 60, seed=0, split="train")
    out = root / "packed"
    pack_dataset(PackConfig(input=str(rows), output=str(out), tokenizer=str(tiny_model_dir), bin_size=512,
                            fields=ChatFields(prompt="question", response="output", task="task"), bins_per_shard=4),
                 progress=False)
    return out


def sft_config(model: Path | str, train_dir: Path, global_batch_size: int = 4) -> SFTConfig:
    return SFTConfig(model=SFTModelConfig(name_or_path=str(model)), data=DataConfig(train_dir=str(train_dir)),
                     trainer=SFTTrainerConfig(global_batch_size=global_batch_size), eval=HeldoutConfig(num_problems=0))


def broken_pack(pack: Path, tmp_path: Path, name: str) -> Path:
    return shutil.copytree(pack, tmp_path / name)


def test_sft_packed_shards(tiny_model_dir, pack, tmp_path):
    check_sft_inputs(sft_config(tiny_model_dir, pack))
    meta = json.loads((pack / "metadata.json").read_text())
    first, second = (s["file"] for s in meta["shards"][:2])
    where = "data.train_dir"
    assert problems_of(check_sft_inputs, sft_config(tiny_model_dir, tmp_path / "none")) == [
        f"{where}: {tmp_path / 'none'}: no such directory (write it with data_prep/pack.py)"]
    unfinished = broken_pack(pack, tmp_path, "unfinished")
    (unfinished / "metadata.json").unlink()
    assert problems_of(check_sft_inputs, sft_config(tiny_model_dir, unfinished)) == [
        f"{where}: {unfinished / 'metadata.json'}: missing: not a finished pack (rerun data_prep/pack.py with the "
        "same arguments to finish it)"]
    bad = broken_pack(pack, tmp_path, "bad")
    (bad / first).write_bytes(b"not parquet")
    (bad / second).unlink()
    found = problems_of(check_sft_inputs, sft_config(tiny_model_dir, bad))
    assert found[0].startswith(f"{where}: {bad / first}: is not a readable Parquet file (ArrowInvalid")
    assert found[1] == f"{where}: {bad / second}: listed in metadata.json but missing"


def test_sft_shard_contents(tiny_model_dir, pack, tmp_path):
    meta = json.loads((pack / "metadata.json").read_text())
    first = meta["shards"][0]["file"]
    where = "data.train_dir"
    wrong_schema = broken_pack(pack, tmp_path, "schema")
    pq.write_table(pa.table({"input_ids": [[1, 2]], "loss_mask": [[0.5, 1.0]], "seq_start_id": [[0]]}),
                   wrong_schema / first)
    (problem,) = problems_of(check_sft_inputs, sft_config(tiny_model_dir, wrong_schema))
    assert problem.startswith(f"{where}: {wrong_schema / first}: has columns input_ids: list<element: int64>")
    out_of_vocab = broken_pack(pack, tmp_path, "vocab")
    bins = [make_bin([[1, 2, 900]], [[0, 1, 1]]) for _ in range(meta["shards"][0]["bins"])]
    write_shard(out_of_vocab / first, bins)
    vocab = json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
    assert problems_of(check_sft_inputs, sft_config(tiny_model_dir, out_of_vocab)) == [
        f"{where}: {out_of_vocab / first}: input_ids values span [1, 900], expected [0, {vocab - 1}] (the model's "
        f"vocab_size is {vocab})"]
    count = broken_pack(pack, tmp_path, "count")
    meta_bad = {**meta, "shards": [{**meta["shards"][0], "bins": 99}, *meta["shards"][1:]]}
    (count / "metadata.json").write_text(json.dumps(meta_bad))
    assert problems_of(check_sft_inputs, sft_config(tiny_model_dir, count)) == [
        f"{where}: {count / first}: holds {meta['shards'][0]['bins']} bins, metadata.json says 99"]
    total = sum(s["bins"] for s in meta["shards"])
    found = problems_of(check_sft_inputs, replace(sft_config(tiny_model_dir, pack, global_batch_size=total + 1),
                                                  model=SFTModelConfig(name_or_path=str(tiny_model_dir),
                                                                    max_position_embeddings=256)))
    assert found == [f"{where}: {pack}: holds {total} bins, fewer than trainer.global_batch_size={total + 1}",
                     f"{where}: {pack}: bins of up to 512 tokens, more than the model's 256 positions (set "
                     "model.max_position_embeddings, or pack with a smaller --bin-size)"]
    assert problems_of(check_sft_inputs, sft_config(tmp_path / "no_model", pack)) == [
        f"model.name_or_path: {tmp_path / 'no_model'}: no such directory"]


def test_sft_recipe_fails_before_building_anything(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "recipes" / "sft.py"), f"output_dir={out}", f"data.train_dir={tmp_path / 'x'}"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error: SFT preflight: 1 problem(s)") and "Traceback" not in done.stderr
    assert f"data.train_dir: {tmp_path / 'x'}: no such directory" in done.stderr
    assert not (out / "checkpoints").exists() and not (out / "init_model").exists()


def test_eval_benchmarks_and_checkpoint(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval"

    def errors(*argv: str) -> str:
        start = time.perf_counter()
        assert eval_main(["generate", *argv, f"output_dir={out}"]) == 1
        assert time.perf_counter() - start < SECONDS
        return capsys.readouterr().err

    err = errors(str(tiny_model_dir), "embedded", "aime26")
    assert err.startswith("error: evaluation preflight: 1 problem(s)")
    assert f"benchmark 'aime26': {REPO / 'eval' / 'benchmarks.yaml'}: unknown benchmark; the registry has: aime24, " \
           "aime25, brumo25, embedded" in err
    missing = tmp_path / "aime24.jsonl"
    err = errors(str(tiny_model_dir), "aime24", f"benchmarks.aime24.source.path={missing}")
    assert f"benchmark 'aime24' (source.path): {missing}: no such file" in err
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{"question": "No 'problem' column."}])
    err = errors(str(tiny_model_dir), "aime24", f"benchmarks.aime24.source.path={wrong}")
    assert f"benchmark 'aime24' (source.path): {wrong}: row 0: missing key 'id' (the id; keys: ['question'])" in err
    no_template = shutil.copytree(tiny_model_dir, tmp_path / "no_template")
    (no_template / "chat_template.jinja").unlink()
    err = errors(str(no_template), "embedded")
    assert f"checkpoint: {no_template}: its tokenizer has no chat template" in err
    assert not out.exists()  # no problems.jsonl, no settings: nothing was loaded or generated
