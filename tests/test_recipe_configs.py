"""The shipped configs: the real SFT recipe builds the paper's model (Qwen2.5-Math-7B, RoPE base 1e6),
the RL ones read the prompt files launcher.yaml's data stage writes, and every key of every shipped
YAML is read by the code."""

from __future__ import annotations

import ast
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path

import pytest
import torch
from transformers import Qwen2ForCausalLM

from nemo_ext.models.catalog import qwen2_config
from nemo_ext.models.hf_config import rope_theta_of
from nemo_ext.preflight import PreflightError
from nemo_ext.prep.rl_prompts import build_prompts, task_config
from nemo_ext.rl.preflight import check_rl_inputs
from tests.helpers import write_jsonl
from tests.test_rl_code_set import CODE_CONTESTS, LCB
from tests.test_rl_config import rl_config
from tests.test_sft_run import sft_config


def test_acereason_sft_config_builds_the_7b_model_on_the_meta_device():
    cfg = sft_config([], "sft/acereason_7b")
    assert cfg.model.name_or_path == "Qwen/Qwen2.5-Math-7B"
    assert cfg.model.rope_theta == 1_000_000.0 and cfg.model.max_position_embeddings == 131072
    assert cfg.trainer.epochs == 5
    hf_config = qwen2_config(cfg.model.name_or_path, rope_theta=cfg.model.rope_theta,
                             max_position_embeddings=cfg.model.max_position_embeddings)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(hf_config)
    params = sum(p.numel() for p in model.parameters())
    # 2 x 152064 x 3584 embeddings + 28 layers x 233.0M = 7,615,616,512 (Qwen2.5-7B's published 7.61B)
    assert params == 7_615_616_512
    assert rope_theta_of(model.config) == 1_000_000.0


def test_rope_theta_override_reaches_the_loaded_model(tiny_model_dir):
    from nemo_ext.backends.torch_backend import load_hf_model
    from nemo_ext.config.schema import ModelConfig

    model = load_hf_model(ModelConfig(rope_theta=1e6, max_position_embeddings=4096), str(tiny_model_dir))
    assert rope_theta_of(model.config) == 1e6 and model.config.max_position_embeddings == 4096
    inv_freq = model.model.rotary_emb.inv_freq  # base^(-2i/d): the second entry is 1e6^(-2/64)
    assert abs(float(inv_freq[1]) - 1e6 ** (-2 / 64)) < 1e-6  # 1e4 would give 0.750


# -- every key of every shipped YAML is read by something ------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
CODE = [*ROOT.glob("nemo_ext/**/*.py"), *ROOT.glob("recipes/*.py"), *ROOT.glob("data_prep/*.py"),
        *ROOT.glob("eval/*.py")]


def attributes_read() -> set[str]:
    """Every attribute name the project's code loads (``x.name``), outside ``nemo_ext/config``: a key
    read only by the schema's own validation is not read."""
    names = set()
    for path in CODE:
        if path.is_relative_to(ROOT / "nemo_ext" / "config"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                names.add(node.attr)
    return names


def schema_keys(obj, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, field name) of every field of a loaded config, sections and list items included."""
    keys = []
    for f in fields(obj):
        key, value = f"{prefix}{f.name}", getattr(obj, f.name)
        keys.append((key, f.name))
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        if is_dataclass(value):
            keys += schema_keys(value, key + ".")
        for i, item in items:
            if is_dataclass(item):
                keys += schema_keys(item, f"{key}[{i}].")
    return keys


def shipped_configs() -> dict[str, object]:
    from nemo_ext.evaluation.registry import load_registry
    from nemo_ext.launch.schema import load_launcher
    from tests.test_rl_config import rl_config

    configs = {f"sft/{p.stem}": sft_config([], f"sft/{p.stem}") for p in (ROOT / "recipes/conf/sft").glob("*.yaml")}
    configs |= {f"rl/{p.stem}": rl_config(f"rl/{p.stem}") for p in (ROOT / "recipes/conf/rl").glob("*.yaml")}
    configs["eval/benchmarks.yaml"] = load_registry(ROOT / "eval" / "benchmarks.yaml")
    configs["launcher.yaml"] = load_launcher(ROOT / "launcher.yaml")
    return configs


def test_every_key_of_every_shipped_yaml_is_read():
    """No key accepted but ignored: each key of each shipped config's schema (recipes/conf, the
    benchmark registry, launcher.yaml) is read by the code as an attribute. This would have caught
    trainer.eval_every, which nothing read (and model.attn_implementation, before the torch backend
    read it); SFT-only keys cannot reach an RL config (tests/test_rl_config.py)."""
    read, configs = attributes_read(), shipped_configs()
    assert len(configs) >= 8
    unread = sorted({f"{name}: {key}" for name, cfg in configs.items() for key, field_name in schema_keys(cfg)
                     if field_name not in read})
    assert not unread, unread


def test_the_key_check_sees_a_dead_key():
    @dataclass
    class WithDeadKey:
        logits_chunk_tokens: int = 1
        attn_implementation_never_read: str = "auto"

    assert [key for key, name in schema_keys(WithDeadKey()) if name not in attributes_read()] == \
        ["attn_implementation_never_read"]


def test_the_7b_rl_config_reads_the_files_data_prep_writes(tiny_model_dir, tmp_path, monkeypatch):
    """rl/acereason_7b's stages name data/rl/*.jsonl under the working directory: the preflight names each
    missing one with its stages, and passes once they are written (the code file from the fixture sources)."""
    monkeypatch.chdir(tmp_path)
    for name in ("rl/acereason_7b", "rl/acereason_7b_megatron"):
        with pytest.raises(PreflightError) as err:
            check_rl_inputs(rl_config(name, [f"policy.init={tmp_path / 'sft' / 'hf'}"]))
        assert [(p.where, p.file) for p in err.value.problems] == [
            ("policy.init", str(tmp_path / "sft" / "hf")),
            ("stages 'math_8k', 'math_16k', 'math_24k', 'math_32k' (stages[0].data, stages[1].data, stages[2].data, "
             "stages[5].data, task math)", "data/rl/acereason_math.jsonl"),
            ("stages 'code_24k', 'code_32k' (stages[3].data, stages[4].data, task code)",
             "data/rl/acereason_code.jsonl"),
        ]
    (tmp_path / "data" / "rl").mkdir(parents=True)
    write_jsonl(tmp_path / "data" / "rl" / "acereason_math.jsonl", [{"id": "m", "question": "1+1?", "answer": "2"}])
    build_prompts(task_config("code", (str(CODE_CONTESTS), str(LCB)), "data/rl/acereason_code.jsonl",
                              validation="off"), progress=False)
    check_rl_inputs(rl_config("rl/acereason_7b", [f"policy.init={tiny_model_dir}"]))
