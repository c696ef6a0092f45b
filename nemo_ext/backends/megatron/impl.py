"""Which layer spec the megatron backend builds, checked before megatron-core is imported.

``choose_impl`` resolves ``model.transformer_impl`` (auto: Transformer Engine's spec where TE imports,
else megatron's local spec) and refuses, naming the key, the settings that need TE where it is missing
or not chosen; ``gradient_accumulation_fusion_on`` resolves ``model.gradient_accumulation_fusion`` for the
chosen spec. Pure Python: the configs' errors reach the user without megatron-core or a GPU.
"""

from __future__ import annotations

from nemo_ext.backends.te_import import te_available
from nemo_ext.config.schema import ModelConfig

FP8_FORMATS = (None, "hybrid", "e4m3")
FP8_RECIPES = ("delayed", "tensorwise", "blockwise")
IMPLS = ("auto", "transformer_engine", "local")


def choose_impl(model_cfg: ModelConfig, have_te: bool | None = None) -> str:
    """``transformer_engine`` or ``local``; a forced TE, FP8 or the fused gradient accumulation without TE
    raise, naming the key."""
    have_te = te_available() if have_te is None else have_te
    impl, fp8 = model_cfg.transformer_impl, model_cfg.fp8
    if impl not in IMPLS:
        raise ValueError(f"model.transformer_impl={impl!r}; expected one of {IMPLS}")
    if fp8 not in FP8_FORMATS:
        raise ValueError(f"model.fp8={fp8!r}; expected one of {FP8_FORMATS}")
    if model_cfg.fp8_recipe not in FP8_RECIPES:
        raise ValueError(f"model.fp8_recipe={model_cfg.fp8_recipe!r}; expected one of {FP8_RECIPES}")
    if impl == "auto":
        impl = "transformer_engine" if have_te else "local"
    missing = "Transformer Engine (`import transformer_engine.pytorch` fails here; install transformer-engine[pytorch])"
    if impl == "transformer_engine" and not have_te:
        raise RuntimeError(f"model.transformer_impl=transformer_engine needs {missing}")
    for key, on in (("fp8", fp8 is not None), ("gradient_accumulation_fusion",
                                                 model_cfg.gradient_accumulation_fusion is True)):
        if on and impl != "transformer_engine":
            raise RuntimeError(f"model.{key}={getattr(model_cfg, key)} needs {missing} and model.transformer_impl "
                               f"auto or transformer_engine (got {model_cfg.transformer_impl})")
    return impl


def gradient_accumulation_fusion_on(model_cfg: ModelConfig, impl: str) -> bool:
    """Whether the weight-gradient GEMMs add into the fp32 gradient buffer: ``model.gradient_accumulation_fusion``,
    None meaning on wherever ``impl`` (``choose_impl``'s answer, which refused True without TE) is TE's."""
    fusion = model_cfg.gradient_accumulation_fusion
    return impl == "transformer_engine" if fusion is None else fusion
