"""The megatron-core model factory: a Hugging Face config of a dense Qwen2 / Qwen2.5 / Llama model ->
megatron-core model chunks (one per virtual pipeline stage of this rank).

Layer spec: Transformer Engine's when ``transformer_engine`` imports (fused norm+linear, TE's
attention on packed THD batches through ``PackedSeqParams``, with its own context parallelism; FP8
``hybrid`` / ``e4m3`` with the delayed, tensorwise or blockwise recipe). Without TE: megatron's local
spec with two swaps: ``VarlenCoreAttention`` as core attention (RoPE from per-token positions, then
torch's flash-attention varlen kernel on the packed batch's ``cu_seqlens``, see varlen.py; under
context parallelism the all-gather attention of context_parallel.py) and an HF-exact ``RMSNorm``
that, unlike megatron's torch fallback, allows sequence parallelism. FP8 without TE is refused, by
name, before anything is built (``impl.choose_impl``).

GPTModel vs HybridModel: megatron-core 0.19 marks GPTModel deprecated in favour of HybridModel. This
file is the one place that chooses; it builds GPTModel because HybridModel's stack spec in 0.19 is
TE-only (no local spec to fall back on) and splits each transformer layer into separate attention and
MLP layers, which would change every checkpoint name ``convert.py`` maps. Switching means changing
``_build_chunk`` and the layer names of ``convert.megatron_param_names`` together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlock,
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_config import TransformerConfig

from nemo_ext.backends.megatron.context_parallel import CPShard, cp_attention
from nemo_ext.backends.megatron.convert import Shape
from nemo_ext.backends.megatron.layout import Layout
from nemo_ext.backends.varlen import apply_rope, packed_causal_attention
from nemo_ext.config.schema import ModelConfig
from nemo_ext.models.hf_config import rope_theta_of


def fuse_wgrad_accumulation(chunks: list[GPTModel]) -> None:
    """Have Transformer Engine's linear layers add each weight gradient into the parameter's fp32
    ``main_grad`` (megatron DDP's buffer) inside the weight-gradient GEMM, instead of returning a bf16
    gradient for DDP's hook to add with a kernel of its own.

    Set on the built layers, not through ``TransformerConfig.gradient_accumulation_fusion``: that flag
    also turns the fusion on in megatron's own ``ColumnParallelLinear`` (GPTModel's output layer), which
    then needs apex's ``fused_weight_gradient_mlp_cuda`` at construction. apex is optional here, and
    the output layer's gradient comes from ``vocab_parallel`` anyway. TE reads the attribute at each
    forward. On a micro-batch marked first (the model's first ever; under FP8 each step's first) it
    writes ``main_grad`` instead of adding to it: the same, since each step starts from zeroed buffers.
    """
    for chunk in chunks:
        for module in chunk.modules():
            if hasattr(module, "fuse_wgrad_accumulation"):
                module.fuse_wgrad_accumulation = True


def transformer_config(shape: Shape, hf_config, model_cfg: ModelConfig, layout: Layout, *, impl: str,
                       bf16: bool, recompute: str | None, init_weights: bool, cpu_init: bool = False
                       ) -> TransformerConfig:
    """megatron's TransformerConfig for this model and layout.

    recompute: None, ``"full"`` (each layer recomputed from its input in backward) or ``"selective"``
    (only the MLP, whose SwiGLU intermediates are the largest activations). init_weights: False when HF
    weights overwrite them anyway.
    """
    dtype = torch.bfloat16 if bf16 else torch.float32
    te = impl == "transformer_engine"
    fp8 = {"fp8": model_cfg.fp8, "fp8_recipe": model_cfg.fp8_recipe} if model_cfg.fp8 else {}
    recompute_kw = {}
    if recompute == "full":
        recompute_kw = dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    elif recompute == "selective":
        recompute_kw = dict(recompute_granularity="selective", recompute_modules=["mlp"])
    elif recompute is not None:
        raise ValueError(f"recompute={recompute!r}; expected None, 'full' or 'selective'")
    return TransformerConfig(
        num_layers=shape.num_layers, hidden_size=shape.hidden, ffn_hidden_size=shape.ffn,
        num_attention_heads=shape.num_heads, num_query_groups=shape.num_kv_heads, kv_channels=shape.head_dim,
        add_bias_linear=False, add_qkv_bias=shape.qkv_bias, gated_linear_unit=True, activation_func=F.silu,
        normalization="RMSNorm", layernorm_epsilon=_get(hf_config, "rms_norm_eps", 1e-6),
        hidden_dropout=0.0, attention_dropout=0.0,
        tensor_model_parallel_size=layout.tp, pipeline_model_parallel_size=layout.pp,
        virtual_pipeline_model_parallel_size=layout.vpp, context_parallel_size=layout.cp,
        sequence_parallel=layout.sequence_parallel,
        bf16=bf16, params_dtype=dtype, pipeline_dtype=dtype,
        use_cpu_initialization=cpu_init, perform_initialization=init_weights,
        bias_activation_fusion=True, masked_softmax_fusion=False, persist_layer_norm=False,
        apply_rope_fusion=te, gradient_accumulation_fusion=False,
        # The loss share is already globally normalized (see backend._finalize_grads). Pipeline stages
        # exchange fixed shapes: the backend pads a step's micro-batches to one length instead of
        # variable_seq_lengths, which hangs megatron 0.19's interleaved schedule.
        calculate_per_token_loss=True, deallocate_pipeline_outputs=True,
        **recompute_kw, **fp8,
    )


@dataclass
class PackedRotary(PackedSeqParams):
    """PackedSeqParams plus the RoPE tables of the row (cos, sin [T, 1, head_dim]) for the local spec."""

    rope_cos: torch.Tensor | None = None
    rope_sin: torch.Tensor | None = None
    cp_shard: CPShard | None = None  # context parallelism: this rank's share; keys come from the CP group


class VarlenCoreAttention(MegatronModule):
    """megatron ``core_attention`` on packed THD tensors: RoPE, then ``varlen.packed_causal_attention``.

    Takes what megatron's SelfAttention passes: query [T, Hq/tp, D], key/value [T, Hkv/tp, D] (the THD
    squeeze), ``packed_seq_params`` a ``PackedRotary`` with the boundaries and RoPE tables (the local
    spec's GPTModel is built without position embeddings; see varlen.py for why). Returns [T, Hq/tp * D].
    """

    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type, attention_type: str,
                 attention_dropout: float | None = None, softmax_scale: float | None = None,
                 cp_comm_type: str | None = None, pg_collection=None):
        super().__init__(config=config)
        self.softmax_scale = softmax_scale  # None: 1/sqrt(head_dim), as in HF

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if not isinstance(packed_seq_params, PackedRotary) or packed_seq_params.rope_cos is None:
            raise ValueError("VarlenCoreAttention runs packed THD batches with RoPE tables (PackedRotary) only")
        cos, sin = packed_seq_params.rope_cos, packed_seq_params.rope_sin
        query, key = apply_rope(query, cos, sin), apply_rope(key, cos, sin)
        if packed_seq_params.cp_shard is not None:
            out = cp_attention(query, key, value, packed_seq_params.cp_shard, self.softmax_scale,
                               parallel_state.get_context_parallel_group())
        else:
            out = packed_causal_attention(query, key, value, packed_seq_params.cu_seqlens_q,
                                          packed_seq_params.max_seqlen_q, self.softmax_scale)
        return out.reshape(out.shape[0], -1)


class RMSNorm(torch.nn.Module):
    """RMSNorm for the local spec, rounded as HF's Qwen2 / Llama do: normalize in fp32, cast, scale
    (torch's fused kernel upcasts internally, so only the bf16 input is kept for backward).

    megatron's own fallback without apex (torch's RMSNorm) refuses sequence parallelism; this one
    marks its weight ``sequence_parallel`` so finalize_model_grads all-reduces its gradient over TP.
    """

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **_):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        self.weight.sequence_parallel = config.sequence_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * F.rms_norm(x, (x.shape[-1],), eps=self.eps)


def block_spec(impl: str, config: TransformerConfig, vp_stage: int | None) -> ModuleSpec:
    """The decoder of one model chunk: its layers' spec and the final norm."""
    if impl == "transformer_engine":
        return get_gpt_layer_with_transformer_engine_spec()
    layer = get_gpt_layer_local_spec(normalization="RMSNorm")
    layer.submodules.self_attention.submodules.core_attention = VarlenCoreAttention
    layer.submodules.input_layernorm = RMSNorm
    layer.submodules.pre_mlp_layernorm = RMSNorm
    layers = [layer] * get_num_layers_to_build(config, vp_stage=vp_stage)
    return ModuleSpec(module=TransformerBlock,
                      submodules=TransformerBlockSubmodules(layer_specs=layers, layer_norm=RMSNorm))


def _get(cfg, key, default=None):
    value = getattr(cfg, key, None)
    return default if value is None else value


def _build_chunk(config, impl: str, shape: Shape, theta: float, max_len: int, vp_stage: int | None) -> GPTModel:
    return GPTModel(
        config, block_spec(impl, config, vp_stage), vocab_size=shape.padded_vocab, max_sequence_length=max_len,
        pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
        post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
        share_embeddings_and_output_weights=shape.tie_embeddings, parallel_output=True,
        position_embedding_type="rope" if impl == "transformer_engine" else "none", rotary_base=theta,
        vp_stage=vp_stage,
    )


def build_model_chunks(shape: Shape, hf_config, config: TransformerConfig, impl: str) -> list[GPTModel]:
    """This rank's model chunks (``vpp`` of them with virtual pipeline stages, else one), on the CPU or
    the current CUDA device as ``config.use_cpu_initialization`` says. ``hf_config`` carries the
    recipe's overrides (``nemo_ext.models.hf_config.apply_overrides``)."""
    theta = rope_theta_of(hf_config)
    max_len = _get(hf_config, "max_position_embeddings", 32768)
    vpp = config.virtual_pipeline_model_parallel_size
    stages = range(vpp) if vpp else [None]
    chunks = [_build_chunk(config, impl, shape, theta, max_len, s) for s in stages]
    pad_id = _get(hf_config, "pad_token_id")
    for chunk in chunks:
        if chunk.pre_process and pad_id is not None and 0 <= pad_id < shape.vocab:
            freeze_padding_lookups(chunk.embedding.word_embeddings, pad_id)
    return chunks


def freeze_padding_lookups(embedding: torch.nn.Module, pad_id: int) -> None:
    """Give lookups of token ``pad_id`` no gradient, as HF's ``nn.Embedding(padding_idx=pad_token_id)``
    does (Qwen2 and Llama build their embedding so); megatron's embedding has no padding index.

    Only the lookup's gradient is dropped: with tied embeddings the output layer still trains the pad
    row, as in HF. The mask follows the embedding's output layout: [b, s, h], or under sequence
    parallelism this TP rank's share [s / tp, b, h].
    """

    def hook(module, args, output):
        if not (torch.is_grad_enabled() and output.requires_grad):
            return
        keep = args[0] != pad_id  # [b, s]
        if module.reduce_scatter_embeddings:
            keep = keep.t().chunk(module.tp_group.size())[module.tp_group.rank()]  # [s / tp, b]
        keep = keep.unsqueeze(-1).to(output.dtype)
        output.register_hook(lambda grad: grad * keep)

    embedding.register_forward_hook(hook)
