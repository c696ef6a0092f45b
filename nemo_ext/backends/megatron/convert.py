"""Hugging Face <-> megatron-core names and tensors for dense Qwen2 / Qwen2.5 / Llama models.

Pure torch, no megatron-core import: CPU CI tests it, and the backend uses it for HF import,
export and the streaming ``hf_weights()`` of rollout weight sync.

What the mapping does, per decoder layer:
- QKV fusion with grouped KV heads: megatron's ``linear_qkv`` rows are interleaved per KV group,
  ``[q_0 .. q_{g-1}, k, v]`` for each of the ``n_kv`` groups (g = n_heads / n_kv), so that a
  contiguous split over tensor-parallel ranks hands each rank whole groups. Same for the bias.
- gate/up fusion: ``linear_fc1`` is ``[gate; up]`` (megatron's gated linear unit takes chunk 0 through
  SiLU). Split over TP, each rank holds ``[gate_r; up_r]``, not a contiguous slice of the full tensor.
- Column-parallel tensors (qkv, fc1, embedding, output layer) split on dim 0; row-parallel ones
  (``linear_proj``, ``linear_fc2``) on dim 1; norms are replicated.
- The vocabulary is padded to a multiple of 128 (``Shape.padded_vocab``, the same for every TP size,
  so checkpoints reshard); padded rows are zero and stripped on export. The backend masks their
  logits, so log-probs equal the unpadded model's.
- Pipeline stages (and virtual stages) own equal layer ranges (``stage_layers``, ``owner``);
  ``local_to_global`` renames a chunk's layer numbers.

Names follow the Transformer Engine spec when ``te=True`` (input norms fused into ``linear_qkv`` and
``linear_fc1`` as ``layer_norm_weight``) and the local spec otherwise; the tensors are identical.
Left out: MoE, MLA, QK-norm, biases on o_proj / MLP (Llama's ``attention_bias`` / ``mlp_bias``),
RoPE scaling; ``Shape.from_hf_config`` rejects such configs by name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

VOCAB_MULTIPLE = 128
SUPPORTED_MODEL_TYPES = ("qwen2", "llama")


@dataclass(frozen=True)
class Shape:
    """The dimensions the mapping needs. ``head_dim`` d, ``ffn`` the MLP width."""

    num_layers: int
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    tie_embeddings: bool
    qkv_bias: bool

    @property
    def padded_vocab(self) -> int:
        return -(-self.vocab // VOCAB_MULTIPLE) * VOCAB_MULTIPLE

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_hf_config(cls, cfg) -> Shape:
        """From a ``transformers`` config object or its ``to_dict()``; unsupported features raise."""
        get = cfg.get if isinstance(cfg, Mapping) else lambda k, d=None: getattr(cfg, k, d)
        model_type = get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type {model_type!r} is not supported; expected one of {SUPPORTED_MODEL_TYPES}")
        for key in ("mlp_bias", "use_sliding_window"):
            if get(key):
                raise ValueError(f"HF config key {key}=True is not supported by the megatron backend")
        if model_type == "llama" and get("attention_bias"):
            raise ValueError("HF config key attention_bias=True (biases on q/k/v/o) is not supported for llama")
        rope = get("rope_parameters") or get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise ValueError(f"HF config rope_type={rope.get('rope_type')!r} is not supported; expected 'default'")
        if get("hidden_act", "silu") != "silu":
            raise ValueError(f"HF config hidden_act={get('hidden_act')!r} is not supported; expected 'silu'")
        heads = get("num_attention_heads")
        return cls(
            num_layers=get("num_hidden_layers"),
            hidden=get("hidden_size"),
            num_heads=heads,
            num_kv_heads=get("num_key_value_heads") or heads,
            head_dim=get("head_dim") or get("hidden_size") // heads,
            ffn=get("intermediate_size"),
            vocab=get("vocab_size"),
            tie_embeddings=bool(get("tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2",
        )


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


def _layer_suffixes(shape: Shape, te: bool) -> list[str]:
    qkv_norm = "self_attention.linear_qkv.layer_norm_weight" if te else "input_layernorm.weight"
    fc1_norm = "mlp.linear_fc1.layer_norm_weight" if te else "pre_mlp_layernorm.weight"
    names = [qkv_norm, "self_attention.linear_qkv.weight"]
    if shape.qkv_bias:
        names.append("self_attention.linear_qkv.bias")
    return names + ["self_attention.linear_proj.weight", fc1_norm, "mlp.linear_fc1.weight", "mlp.linear_fc2.weight"]


def megatron_param_names(shape: Shape, te: bool = False, layers: range | None = None,
                         first_stage: bool = True, last_stage: bool = True) -> list[str]:
    """Megatron parameter names (global layer numbers) in forward order, for the given layers and
    pipeline position. Tied embeddings have no ``output_layer.weight``."""
    layers = range(shape.num_layers) if layers is None else layers
    names = ["embedding.word_embeddings.weight"] if first_stage else []
    names += [f"decoder.layers.{i}.{s}" for i in layers for s in _layer_suffixes(shape, te)]
    if last_stage:
        names.append("decoder.final_layernorm.weight")
        if not shape.tie_embeddings:
            names.append("output_layer.weight")
    return names


def _hf_layer(i: int, suffix: str, shape: Shape) -> list[str]:
    p = f"model.layers.{i}."
    attn = p + "self_attn."
    if suffix.endswith(("input_layernorm.weight", "linear_qkv.layer_norm_weight")):
        return [p + "input_layernorm.weight"]
    if suffix.endswith(("pre_mlp_layernorm.weight", "linear_fc1.layer_norm_weight")):
        return [p + "post_attention_layernorm.weight"]
    if suffix == "self_attention.linear_qkv.weight":
        return [attn + "q_proj.weight", attn + "k_proj.weight", attn + "v_proj.weight"]
    if suffix == "self_attention.linear_qkv.bias":
        return [attn + "q_proj.bias", attn + "k_proj.bias", attn + "v_proj.bias"]
    if suffix == "self_attention.linear_proj.weight":
        return [attn + "o_proj.weight"]
    if suffix == "mlp.linear_fc1.weight":
        return [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"]
    if suffix == "mlp.linear_fc2.weight":
        return [p + "mlp.down_proj.weight"]
    raise KeyError(f"no Hugging Face counterpart for megatron tensor decoder.layers.{i}.{suffix}")


def hf_names(mc_name: str, shape: Shape) -> list[str]:
    """The HF tensors a megatron tensor is made of, in fusion order."""
    m = _LAYER.match(mc_name)
    if m:
        return _hf_layer(int(m.group(1)), m.group(2), shape)
    top = {"embedding.word_embeddings.weight": "model.embed_tokens.weight",
           "decoder.final_layernorm.weight": "model.norm.weight",
           "output_layer.weight": "lm_head.weight"}
    if mc_name not in top:
        raise KeyError(f"no Hugging Face counterpart for megatron tensor {mc_name}")
    return [top[mc_name]]


def local_to_global(name: str, layer_offset: int) -> str:
    """``decoder.layers.{i}.x`` of a pipeline stage -> ``decoder.layers.{i + offset}.x``."""
    m = _LAYER.match(name)
    return f"decoder.layers.{int(m.group(1)) + layer_offset}.{m.group(2)}" if m else name


def global_to_local(name: str, layer_offset: int) -> str:
    return local_to_global(name, -layer_offset)


def stage_layers(num_layers: int, pp_size: int, pp_rank: int, vpp_size: int = 1, vp_stage: int = 0) -> range:
    """The global layer numbers of model chunk ``vp_stage`` on pipeline rank ``pp_rank``.

    Megatron's interleaved assignment: the model is cut into pp x vpp equal chunks and chunk
    ``vp_stage * pp + pp_rank`` goes to that rank (with vpp = 1: contiguous ranges per rank).
    """
    chunks = pp_size * vpp_size
    if num_layers % chunks:
        raise ValueError(f"num_layers={num_layers} is not divisible by pipeline_model_parallel_size x virtual "
                         f"stages = {pp_size} x {vpp_size}")
    per = num_layers // chunks
    start = (vp_stage * pp_size + pp_rank) * per
    return range(start, start + per)


def owner(mc_name: str, num_layers: int, pp_size: int, vpp_size: int = 1) -> tuple[int, int]:
    """(pipeline rank, virtual stage) holding megatron tensor ``mc_name``."""
    m = _LAYER.match(mc_name)
    if m:
        chunk = int(m.group(1)) // (num_layers // (pp_size * vpp_size))
        return chunk % pp_size, chunk // pp_size
    if mc_name.startswith("embedding."):
        return 0, 0
    return pp_size - 1, vpp_size - 1


def full_shape(mc_name: str, shape: Shape) -> tuple[int, ...]:
    """The unsharded shape of megatron tensor ``mc_name``."""
    h, qkv = shape.hidden, (shape.num_heads + 2 * shape.num_kv_heads) * shape.head_dim
    kind = _kind(mc_name)
    if kind == "vocab":
        return (shape.padded_vocab, h)
    if kind == "qkv":
        return (qkv, h) if mc_name.endswith("weight") else (qkv,)
    if kind == "fc1":
        return (2 * shape.ffn, h)
    if mc_name.endswith("linear_proj.weight"):
        return (h, shape.num_heads * shape.head_dim)
    if mc_name.endswith("linear_fc2.weight"):
        return (h, shape.ffn)
    return (h,)


# ---------------------------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------------------------

def _kind(mc_name: str) -> str:
    if mc_name.endswith(("linear_qkv.weight", "linear_qkv.bias")):
        return "qkv"
    if mc_name.endswith("linear_fc1.weight"):
        return "fc1"
    if mc_name.endswith(("word_embeddings.weight", "output_layer.weight")):
        return "vocab"
    if mc_name.endswith(("linear_proj.weight", "linear_fc2.weight")):
        return "row"
    return "replicated"


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shape: Shape) -> torch.Tensor:
    """q [n_heads*d, ...], k/v [n_kv*d, ...] -> [(n_heads + 2 n_kv) * d, ...] interleaved per group."""
    n_kv, g, d = shape.num_kv_heads, shape.group_size, shape.head_dim
    rest = q.shape[1:]
    parts = (q.reshape(n_kv, g * d, *rest), k.reshape(n_kv, d, *rest), v.reshape(n_kv, d, *rest))
    return torch.cat(parts, dim=1).reshape(-1, *rest)


def split_qkv(qkv: torch.Tensor, shape: Shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of ``fuse_qkv``."""
    n_kv, g, d = shape.num_kv_heads, shape.group_size, shape.head_dim
    rest = qkv.shape[1:]
    q, k, v = qkv.reshape(n_kv, (g + 2) * d, *rest).split([g * d, d, d], dim=1)
    return q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)


def _pad_vocab(t: torch.Tensor, shape: Shape) -> torch.Tensor:
    if t.shape[0] != shape.vocab:
        raise ValueError(f"vocabulary tensor has {t.shape[0]} rows, the config says vocab_size={shape.vocab}")
    pad = t.new_zeros(shape.padded_vocab - shape.vocab, *t.shape[1:])
    return torch.cat([t, pad]) if pad.shape[0] else t


def to_megatron(mc_name: str, get_hf: Callable[[str], torch.Tensor], shape: Shape) -> torch.Tensor:
    """The full (unsharded) megatron tensor ``mc_name`` built from HF tensors fetched by name."""
    names = hf_names(mc_name, shape)
    if mc_name == "output_layer.weight" and shape.tie_embeddings:
        raise KeyError("tied embeddings have no output_layer.weight")
    kind = _kind(mc_name)
    if kind == "qkv":
        return fuse_qkv(*(get_hf(n) for n in names), shape)
    if kind == "fc1":
        return torch.cat([get_hf(n) for n in names])
    if kind == "vocab":
        return _pad_vocab(get_hf(names[0]), shape)
    return get_hf(names[0])


def to_hf(mc_name: str, tensor: torch.Tensor, shape: Shape) -> list[tuple[str, torch.Tensor]]:
    """A full megatron tensor as its HF tensors, ``(hf_name, tensor)`` in ``hf_names`` order."""
    names = hf_names(mc_name, shape)
    kind = _kind(mc_name)
    if kind == "qkv":
        parts = split_qkv(tensor, shape)
    elif kind == "fc1":
        parts = tensor.chunk(2)
    elif kind == "vocab":
        parts = (tensor[: shape.vocab],)
    else:
        parts = (tensor,)
    return list(zip(names, parts, strict=True))  # a tied lm_head is left out, as in HF checkpoints


def split_tp(mc_name: str, tensor: torch.Tensor, tp_size: int) -> list[torch.Tensor]:
    """A full megatron tensor -> the ``tp_size`` shards megatron's TP ranks hold."""
    kind = _kind(mc_name)
    dim = 1 if kind == "row" else 0
    if kind == "replicated":
        return [tensor] * tp_size
    if tensor.shape[dim] % (2 * tp_size if kind == "fc1" else tp_size):
        raise ValueError(f"{mc_name}: dim {dim} of size {tensor.shape[dim]} does not split over TP={tp_size}")
    if kind == "fc1":
        gate, up = tensor.chunk(2)
        return [torch.cat(pair) for pair in zip(gate.chunk(tp_size), up.chunk(tp_size), strict=True)]
    return list(tensor.chunk(tp_size, dim=dim))


def merge_tp(mc_name: str, shards: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of ``split_tp``: the TP ranks' shards (in rank order) -> the full tensor."""
    kind = _kind(mc_name)
    if kind == "replicated":
        return shards[0]
    if kind == "fc1":
        gates, ups = zip(*(s.chunk(2) for s in shards), strict=True)
        return torch.cat([*gates, *ups])
    return torch.cat(shards, dim=1 if kind == "row" else 0)


def hf_to_megatron(hf: Mapping[str, torch.Tensor], shape: Shape, te: bool = False) -> dict[str, torch.Tensor]:
    """A whole HF state dict -> full megatron tensors by global name."""
    return {n: to_megatron(n, hf.__getitem__, shape) for n in megatron_param_names(shape, te)}


def megatron_to_hf(mc: Mapping[str, torch.Tensor], shape: Shape) -> dict[str, torch.Tensor]:
    """Full megatron tensors by global name -> a HF state dict."""
    return {hf_name: t for name, tensor in mc.items() for hf_name, t in to_hf(name, tensor, shape)}
