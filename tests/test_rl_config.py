"""Every RL YAML of recipes/conf/rl loads into the schema; bad keys and values fail naming the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from nemo_ext.config.load import ConfigError, as_schema, register_schemas
from nemo_ext.config.rl import PromptFilterMode, RLConfig, TemperatureMode, validate_rl_config

CONF = Path(__file__).resolve().parents[1] / "recipes" / "conf"
RL_YAMLS = sorted(p.stem for p in (CONF / "rl").glob("*.yaml"))


def rl_config(config_name: str, overrides: list[str] = ()) -> RLConfig:
    register_schemas({"rl_schema": RLConfig})
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        composed = compose(config_name=config_name, overrides=list(overrides))
        return validate_rl_config(as_schema(composed, RLConfig))


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
    assert cfg.loss.kl_coef == 0.0 and cfg.loss.aggregation.value == "token_mean"


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


def test_added_keys_are_checked_down_to_a_stage():
    with pytest.raises(ConfigError, match=re.escape("stages.0.tempreature (did you mean stages.0.temperature?)")):
        rl_config("rl/tiny", ["+stages.0.tempreature.value=1"])
    nearest = "stages.1.overlong.filtr (did you mean stages.1.overlong.filter?)"
    with pytest.raises(ConfigError, match=re.escape(nearest)):
        rl_config("rl/tiny", ["+stages.1.overlong.filtr=false"])


def test_the_megatron_backend_is_a_choice_with_its_parallel_layout():
    cfg = rl_config("rl/tiny", ["backend=megatron", "model.tensor_model_parallel_size=2"])
    assert cfg.backend.value == "megatron" and cfg.model.tensor_model_parallel_size == 2
