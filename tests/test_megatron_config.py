"""The 8 x H100 megatron SFT and RL configs compose, and their layouts are valid for the paper's 7B model."""

from __future__ import annotations

import pytest

from nemo_ext.backends.megatron.convert import Shape
from nemo_ext.backends.megatron.layout import plan_layout
from nemo_ext.models.catalog import qwen2_config
from tests.test_sft_run import sft_config


def _layout(cfg, model_name: str | None = None, **over):
    """As the backend plans it: SFT's batch sizes, or RL's varying number of micro-batches (None)."""
    m, t = cfg.model, cfg.trainer
    sft = hasattr(t, "global_batch_size")
    args = dict(world_size=t.devices * t.num_nodes, gpus_present=8, tp=m.tensor_model_parallel_size,
                pp=m.pipeline_model_parallel_size, cp=m.context_parallel_size,
                vpp=m.virtual_pipeline_model_parallel_size, sequence_parallel=m.sequence_parallel,
                global_batch_size=t.global_batch_size if sft else None,
                micro_batch_size=t.micro_batch_size if sft else 1)
    shape = Shape.from_hf_config(qwen2_config(model_name or cfg.model.name_or_path))
    return plan_layout(shape, **{**args, **over})


def test_acereason_megatron_config_is_the_7b_sft_on_a_valid_8_gpu_layout():
    cfg = sft_config([], "sft/acereason_7b_megatron")
    base = sft_config([], "sft/acereason_7b")
    assert cfg.backend.value == "megatron" and cfg.output_dir != base.output_dir
    assert (cfg.model.name_or_path, cfg.data, cfg.optim, cfg.trainer.epochs) == \
        (base.model.name_or_path, base.data, base.optim, base.trainer.epochs)
    layout = _layout(cfg)
    assert (layout.tp, layout.pp, layout.cp, layout.dp) == (2, 1, 1, 4)
    assert cfg.trainer.global_batch_size // (layout.dp * cfg.trainer.micro_batch_size) == 16
    assert cfg.model.fp8 is None


def test_command_line_layouts_are_checked_against_the_model():
    cfg = sft_config(["model.tensor_model_parallel_size=8"], "sft/acereason_7b_megatron")
    with pytest.raises(ValueError, match="num_attention_heads=28 is not divisible by tensor_model_parallel_size=8"):
        _layout(cfg)


def test_acereason_megatron_rl_config_is_the_7b_rl_on_a_valid_8_gpu_layout():
    from tests.test_rl_config import rl_config

    cfg, base = rl_config("rl/acereason_7b_megatron"), rl_config("rl/acereason_7b")
    assert cfg.backend.value == "megatron" and cfg.output_dir != base.output_dir
    assert (cfg.stages, cfg.policy, cfg.rollout, cfg.optim, cfg.loss) == \
        (base.stages, base.policy, base.rollout, base.optim, base.loss)
    # the policy is the SFT export of Qwen2.5-Math-7B; RL's micro-batch count varies
    layout = _layout(cfg, "Qwen/Qwen2.5-Math-7B")
    assert (layout.tp, layout.pp, layout.cp, layout.dp) == (2, 1, 1, 4)


def test_megatron_without_megatron_core_names_what_to_install():
    import importlib.util

    import torch

    from nemo_ext.backends import build_backend
    from nemo_ext.backends.schedule import LRSchedule
    from nemo_ext.config.schema import BackendName, ModelConfig, OptimConfig, TrainerConfig

    if importlib.util.find_spec("megatron") is not None:
        pytest.skip("megatron-core is installed here: the error this checks cannot happen")
    with pytest.raises(ModuleNotFoundError, match=r"backend=megatron needs megatron-core.*pip install -e '.\[gpu\]'"):
        build_backend(BackendName.megatron, "unused", ModelConfig(), TrainerConfig(), OptimConfig(),
                      LRSchedule(1e-5), torch.device("cpu"))


def test_fp8_without_transformer_engine_names_the_key():
    from nemo_ext.backends.megatron.impl import choose_impl
    from nemo_ext.config.schema import ModelConfig

    with pytest.raises(RuntimeError, match=r"model.fp8=hybrid needs Transformer Engine"):
        choose_impl(ModelConfig(fp8="hybrid"), have_te=False)
    with pytest.raises(RuntimeError, match=r"model.fp8=hybrid needs .*got local"):
        choose_impl(ModelConfig(fp8="hybrid", transformer_impl="local"), have_te=True)
    with pytest.raises(ValueError, match=r"model.fp8_recipe='mxfp8'; expected one of"):
        choose_impl(ModelConfig(fp8_recipe="mxfp8"), have_te=True)
    assert choose_impl(ModelConfig(fp8="hybrid"), have_te=True) == "transformer_engine"
    assert choose_impl(ModelConfig(), have_te=False) == "local"


def test_fused_gradient_accumulation_without_transformer_engine_names_the_key():
    from nemo_ext.backends.megatron.impl import choose_impl
    from nemo_ext.config.schema import ModelConfig

    fused = ModelConfig(gradient_accumulation_fusion=True)
    with pytest.raises(RuntimeError, match=r"model.gradient_accumulation_fusion=True needs Transformer Engine"):
        choose_impl(fused, have_te=False)
    with pytest.raises(RuntimeError, match=r"model.gradient_accumulation_fusion=True needs .*got local"):
        choose_impl(ModelConfig(gradient_accumulation_fusion=True, transformer_impl="local"), have_te=True)
    assert choose_impl(fused, have_te=True) == "transformer_engine"


def test_fused_gradient_accumulation_is_on_by_default_wherever_transformer_engine_runs():
    from nemo_ext.backends.megatron.impl import choose_impl, gradient_accumulation_fusion_on
    from nemo_ext.config.schema import ModelConfig

    default = ModelConfig()
    assert default.gradient_accumulation_fusion is None
    assert gradient_accumulation_fusion_on(default, choose_impl(default, have_te=True))
    assert not gradient_accumulation_fusion_on(default, choose_impl(default, have_te=False))  # no error: auto
    local = ModelConfig(transformer_impl="local")
    assert not gradient_accumulation_fusion_on(local, choose_impl(local, have_te=True))
    off = ModelConfig(gradient_accumulation_fusion=False)
    assert not gradient_accumulation_fusion_on(off, choose_impl(off, have_te=True))
