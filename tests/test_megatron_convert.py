"""HF <-> megatron mapping of nemo_ext.backends.megatron.convert: exact on CPU tensors, no megatron-core."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, Qwen2Config, Qwen2ForCausalLM

from nemo_ext.backends.megatron import convert
from nemo_ext.backends.megatron.convert import Shape


def _shape(**kw) -> Shape:
    base = dict(num_layers=1, hidden=1, num_heads=4, num_kv_heads=2, head_dim=1, ffn=4, vocab=3,
                tie_embeddings=False, qkv_bias=True)
    return Shape(**{**base, **kw})


def test_qkv_interleaves_query_groups_with_their_kv_head():
    shape = _shape()  # 4 query heads, 2 KV heads, head_dim 1: groups (q0 q1 | k0 v0), (q2 q3 | k1 v1)
    q, k, v = torch.tensor([0.0, 1, 2, 3]), torch.tensor([10.0, 11]), torch.tensor([20.0, 21])
    fused = convert.fuse_qkv(q, k, v, shape)
    assert fused.tolist() == [0, 1, 10, 20, 2, 3, 11, 21]
    back = convert.split_qkv(fused, shape)
    assert [t.tolist() for t in back] == [q.tolist(), k.tolist(), v.tolist()]


def test_qkv_with_head_dim_two_keeps_each_head_contiguous():
    shape = _shape(num_heads=2, num_kv_heads=1, head_dim=2)
    q = torch.tensor([[0.0], [1], [2], [3]])  # head 0 rows 0-1, head 1 rows 2-3
    k, v = torch.tensor([[10.0], [11]]), torch.tensor([[20.0], [21]])
    assert convert.fuse_qkv(q, k, v, shape).squeeze(1).tolist() == [0, 1, 2, 3, 10, 11, 20, 21]


def test_tp_split_of_fc1_gives_each_rank_its_gate_and_up_rows():
    fc1 = torch.tensor([0.0, 1, 2, 3, 10, 11, 12, 13])[:, None]  # gate rows 0-3, up rows 10-13
    shards = convert.split_tp("decoder.layers.0.mlp.linear_fc1.weight", fc1, 2)
    assert [s.squeeze(1).tolist() for s in shards] == [[0, 1, 10, 11], [2, 3, 12, 13]]
    assert torch.equal(convert.merge_tp("decoder.layers.0.mlp.linear_fc1.weight", shards), fc1)


def test_tp_split_dims_by_parallel_kind():
    w = torch.arange(24.0).reshape(4, 6)
    row = convert.split_tp("decoder.layers.3.self_attention.linear_proj.weight", w, 2)
    assert [tuple(s.shape) for s in row] == [(4, 3), (4, 3)] and torch.equal(row[1], w[:, 3:])
    col = convert.split_tp("decoder.layers.3.self_attention.linear_qkv.weight", w, 2)
    assert torch.equal(col[1], w[2:])
    norm = convert.split_tp("decoder.final_layernorm.weight", w[0], 4)
    assert all(torch.equal(s, w[0]) for s in norm)
    with pytest.raises(ValueError, match="does not split over TP=4"):
        convert.split_tp("decoder.layers.0.mlp.linear_fc2.weight", w, 4)


def test_vocab_is_padded_to_a_multiple_of_128_and_stripped_on_export():
    shape = _shape(vocab=3)
    emb = torch.arange(3.0)[:, None]
    padded = convert.to_megatron("embedding.word_embeddings.weight", {"model.embed_tokens.weight": emb}.get, shape)
    assert padded.shape == (128, 1) and padded[:3, 0].tolist() == [0, 1, 2] and not padded[3:].any()
    [(name, back)] = convert.to_hf("embedding.word_embeddings.weight", padded, shape)
    assert name == "model.embed_tokens.weight" and torch.equal(back, emb)


def _tiny_qwen2(tie: bool) -> Qwen2ForCausalLM:
    cfg = Qwen2Config(vocab_size=200, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=tie)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(cfg)


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (2, 2), (4, 4)])
def test_hf_round_trip_through_tp_and_pp_shards_is_exact(tie, tp, pp):
    model = _tiny_qwen2(tie)
    hf = {k: v.clone() for k, v in model.state_dict().items()}
    shape = Shape.from_hf_config(model.config)
    full = convert.hf_to_megatron(hf, shape)
    # What each (pp, tp) rank would hold, under stage-local layer names.
    ranks = {}
    for p in range(pp):
        layers = convert.stage_layers(shape.num_layers, pp, p)
        names = convert.megatron_param_names(shape, layers=layers, first_stage=p == 0, last_stage=p == pp - 1)
        for name in names:
            local = convert.global_to_local(name, layers.start)
            for t, shard in enumerate(convert.split_tp(name, full[name], tp)):
                ranks.setdefault((p, t), {})[local] = shard
    assert "decoder.layers.0.mlp.linear_fc2.weight" in ranks[(pp - 1, 0)]
    merged = {}
    for p in range(pp):
        offset = convert.stage_layers(shape.num_layers, pp, p).start
        for local in ranks[(p, 0)]:
            name = convert.local_to_global(local, offset)
            merged[name] = convert.merge_tp(name, [ranks[(p, t)][local] for t in range(tp)])
    back = convert.megatron_to_hf(merged, shape)
    if tie:  # HF checkpoints of tied models carry no lm_head; state_dict() lists the shared tensor
        assert torch.equal(hf.pop("lm_head.weight"), hf["model.embed_tokens.weight"])
    assert back.keys() == hf.keys()
    for name, tensor in full.items():
        assert tuple(tensor.shape) == convert.full_shape(name, shape), name
    for k in hf:
        assert torch.equal(back[k], hf[k]), k


def test_te_names_fuse_the_input_norms_into_the_linears():
    shape = Shape.from_hf_config(_tiny_qwen2(False).config)
    local = convert.megatron_param_names(shape, te=False, layers=range(1))
    te = convert.megatron_param_names(shape, te=True, layers=range(1))
    assert "decoder.layers.0.input_layernorm.weight" in local
    assert "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight" in te
    assert "decoder.layers.0.mlp.linear_fc1.layer_norm_weight" in te
    assert [convert.hf_names(n, shape) for n in te] == [convert.hf_names(n, shape) for n in local]


def test_llama_has_no_qkv_bias_and_unsupported_configs_are_named():
    llama = Shape.from_hf_config(LlamaConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                                             intermediate_size=96, vocab_size=300))
    assert not llama.qkv_bias and llama.num_kv_heads == 4 and llama.head_dim == 16 and llama.padded_vocab == 384
    with pytest.raises(ValueError, match="attention_bias"):
        Shape.from_hf_config(LlamaConfig(attention_bias=True))
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        Shape.from_hf_config({"model_type": "gpt2"})
    with pytest.raises(ValueError, match="rope_type='llama3'"):
        Shape.from_hf_config(LlamaConfig(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                          "original_max_position_embeddings": 8192}))


def test_stage_layers_and_owners_follow_megatrons_interleaving():
    assert convert.stage_layers(8, 4, 3) == range(6, 8)
    # 8 layers, PP=2, 2 virtual stages: chunks of 2 layers go to ranks 0,1,0,1.
    assert [convert.stage_layers(8, 2, r, 2, v) for v in (0, 1) for r in (0, 1)] == \
        [range(0, 2), range(2, 4), range(4, 6), range(6, 8)]
    assert convert.owner("decoder.layers.5.mlp.linear_fc2.weight", 8, 2, 2) == (0, 1)
    assert convert.owner("embedding.word_embeddings.weight", 8, 2, 2) == (0, 0)
    assert convert.owner("output_layer.weight", 8, 2, 2) == (1, 1)
    with pytest.raises(ValueError, match="num_layers=7 is not divisible by pipeline_model_parallel_size"):
        convert.stage_layers(7, 2, 0)
