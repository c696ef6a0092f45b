"""Every RL YAML of recipes/conf/rl loads into the schema; bad keys and values fail naming the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from nemo_ext.config.load import ConfigError, register_schemas
from nemo_ext.config.rl import RL_HYDRA_SCHEMA, PromptFilterMode, RLConfig, TemperatureMode, as_rl_config

CONF = Path(__file__).resolve().parents[1] / "recipes" / "conf"
RL_YAMLS = sorted(p.stem for p in (CONF / "rl").glob("*.yaml"))


def rl_config(config_name: str, overrides: list[str] = ()) -> RLConfig:
    """As recipes/rl.py loads it."""
    register_schemas({"rl_schema": RL_HYDRA_SCHEMA})
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return as_rl_config(compose(config_name=config_name, overrides=list(overrides)))


@pytest.mark.parametrize("name", RL_YAMLS)
def test_every_rl_yaml_loads_into_the_schema(name):
    cfg = rl_config(f"rl/{name}")
    assert cfg.stages and all(s.steps or s.epochs for s in cfg.stages)


def test_both_schedules_exist():
    assert {"tiny", "acereason_7b"} <= set(RL_YAMLS)


def test_the_acereason_schedule_is_the_papers():
    cfg = rl_config("rl/acereason_7b")
    stages = [(s.name, s.task.value, s.max_response_len, s.group_size, s.prompts_per_step, s.lr,
               s.overlong.filter) for s in cfg.stages]
    assert stages == [
        ("math_8k", "math", 8192, 8, 128, 1e-6, True),
        ("math_16k", "math", 16384, 16, 128, 1e-6, True),
        ("math_24k", "math", 24576, 16, 128, 1e-6, True),
        ("code_24k", "code", 24576, 16, 128, 5e-6, True),
        ("code_32k", "code", 32768, 16, 128, 5e-6, True),
        ("math_32k", "math", 32768, 16, 128, 1e-6, False),
    ]
    assert cfg.stages[2].prompt_filter.mode is PromptFilterMode.pass_rate
    assert cfg.stages[2].prompt_filter.max_pass_rate == 6 / 16
    assert all(s.prompt_filter.mode is PromptFilterMode.solved_by_all for s in cfg.stages[3:])
    assert all(s.temperature.mode is TemperatureMode.probe and s.temperature.target_entropy == 0.3
               for s in cfg.stages)
    assert cfg.loss.aggregation.value == "token_mean"


def test_overrides_reach_a_stage():
    cfg = rl_config("rl/tiny", ["stages.0.steps=3", "policy.init=somewhere"])
    assert cfg.stages[0].steps == 3 and cfg.policy.init == "somewhere"


def test_bad_keys_and_values_name_the_key():
    with pytest.raises(ConfigCompositionException, match="stages.0.tempreature"):
        rl_config("rl/tiny", ["stages.0.tempreature=1"])
    with pytest.raises(ConfigCompositionException, match="loss.aggregation=mean") as error:
        rl_config("rl/tiny", ["loss.aggregation=mean"])
    assert isinstance(error.value.__cause__, ValidationError)
    assert "token_mean, seq_mean, constant" in str(error.value.__cause__)
    with pytest.raises(ValueError, match=r"stages\[1\].group_size"):
        rl_config("rl/tiny", ["stages.1.group_size=1"])


def test_a_kv_cache_dtype_vllm_does_not_store_is_refused_at_load():
    with pytest.raises(ValueError, match=re.escape("rollout.kv_cache_dtype: expected one of ['auto', 'fp8', "
                                                   "'fp8_e4m3', 'fp8_e5m2'], got 'int8'")):
        rl_config("rl/tiny", ["rollout.kv_cache_dtype=int8"])
    assert rl_config("rl/tiny", ["rollout.kv_cache_dtype=fp8"]).rollout.kv_cache_dtype == "fp8"


def test_top_p_below_one_is_refused_with_the_reason():
    """The trainer's log-probs ignore top-p: sampling with it would make the importance ratio and the
    mismatch metric compare two different distributions."""
    with pytest.raises(ValueError, match=r"rollout.top_p: expected 1.0: the trainer's log-probs .* without top-p"):
        rl_config("rl/tiny", ["rollout.top_p=0.95"])
    assert rl_config("rl/tiny", ["rollout.top_p=1.0"]).rollout.top_p == 1.0


def test_added_keys_are_checked_down_to_a_stage():
    with pytest.raises(ConfigError, match=re.escape("stages.0.tempreature (did you mean stages.0.temperature?)")):
        rl_config("rl/tiny", ["+stages.0.tempreature.value=1"])
    nearest = "stages.1.overlong.filtr (did you mean stages.1.overlong.filter?)"
    with pytest.raises(ConfigError, match=re.escape(nearest)):
        rl_config("rl/tiny", ["+stages.1.overlong.filtr=false"])


def test_the_megatron_backend_is_a_choice_with_its_parallel_layout():
    cfg = rl_config("rl/tiny", ["backend=megatron", "model.tensor_model_parallel_size=2"])
    assert cfg.backend.value == "megatron" and cfg.model.tensor_model_parallel_size == 2


@pytest.mark.parametrize(("override", "key", "use"), [
    ("optim.lr=1e-5", "optim.lr", "use stages[i].lr"),
    ("optim.min_lr=0", "optim.min_lr", "use stages[i].lr (an RL stage's learning rate is constant after its warmup)"),
    ("optim.warmup_steps=3", "optim.warmup_steps", "use stages[i].warmup_steps"),
    ("trainer.global_batch_size=8", "trainer.global_batch_size", "use stages[i].prompts_per_step x stages[i]"),
    ("trainer.micro_batch_size=2", "trainer.micro_batch_size", "use policy.micro_batch_tokens"),
    ("trainer.max_steps=10", "trainer.max_steps", "use stages[i].steps"),
    ("model.name_or_path=x", "model.name_or_path", "use policy.init"),
    ("model.tokenizer=x", "model.tokenizer", "both use policy.init's own tokenizer"),
    ("checkpoint.export_hf=false", "checkpoint.export_hf", "RL always writes stages/<stage>/hf"),
    ("+data.train_dir=x", "data", "use stages[i].data"),
    ("loss.kl_coef=0.1", "loss.kl_coef", "loads no reference policy"),
])
def test_an_sft_key_in_an_rl_config_is_refused_naming_the_rl_key(override, key, use):
    """RL reuses SFT's section names; an SFT-only key there would be silently ignored, so it fails."""
    with pytest.raises(ValueError, match=rf"RL config key {re.escape(key)}: RL has no such key.*{re.escape(use)}"):
        rl_config("rl/tiny", [override])


def test_an_sft_key_in_an_rl_yaml_is_refused_too(tmp_path):
    """The same for a user's YAML (not only the command line), composed the way recipes/rl.py does."""
    conf = tmp_path / "rl"
    conf.mkdir()
    (conf / "mine.yaml").write_text("# @package _global_\ndefaults:\n  - /rl_schema\n  - _self_\n"
                                    "trainer:\n  global_batch_size: 64\n")
    register_schemas({"rl_schema": RL_HYDRA_SCHEMA})
    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        composed = compose(config_name="rl/mine")
    with pytest.raises(ValueError, match=r"trainer\.global_batch_size: RL has no such key.*prompts_per_step"):
        as_rl_config(composed)


def test_the_rl_sections_hold_no_sft_only_key():
    cfg = RLConfig()
    for section, key in [("trainer", "global_batch_size"), ("trainer", "max_steps"), ("optim", "lr"),
                         ("optim", "min_lr"), ("model", "name_or_path"), ("checkpoint", "export_hf"),
                         ("logging", "log_every")]:
        assert not hasattr(getattr(cfg, section), key), f"{section}.{key}"


def test_the_log_prob_kernels_compile_as_configured():
    """``trainer.compile_logprobs``: the tiny schedule turns it off; unset, it follows ``trainer.compile``
    and is on for every GPU run (nemo_ext/backends/compile.py)."""
    import torch

    from nemo_ext.backends.compile import compiled_logprobs

    tiny = rl_config("rl/tiny").trainer
    assert tiny.compile_logprobs is False
    assert not compiled_logprobs(tiny, torch.device("cuda"))
    default = rl_config("rl/acereason_7b").trainer
    assert default.compile_logprobs is None
    assert compiled_logprobs(default, torch.device("cuda"))
    assert compiled_logprobs(default, torch.device("cpu")) == default.compile
    forced = rl_config("rl/tiny", ["trainer.compile_logprobs=true"]).trainer
    assert compiled_logprobs(forced, torch.device("cpu"))
