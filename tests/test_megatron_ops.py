"""The pure-torch pieces of the megatron backend: layout checks, packed attention, vocab-parallel log-probs."""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

from nemo_ext.backends.megatron.convert import Shape
from nemo_ext.backends.megatron.fallback_kernels import foreach_l2_norm, foreach_scale, use_fused_torch_adam
from nemo_ext.backends.megatron.layout import plan_layout
from nemo_ext.backends.megatron.vocab_parallel import vocab_parallel_logprobs
from nemo_ext.backends.varlen import packed_causal_attention
from tests.helpers import run_gloo_ranks

SHAPE_7B = Shape(num_layers=28, hidden=3584, num_heads=28, num_kv_heads=4, head_dim=128, ffn=18944,
                 vocab=152064, tie_embeddings=False, qkv_bias=True)


def _layout(**kw):
    args = dict(world_size=8, gpus_present=8, tp=2, pp=1, cp=1, vpp=None, sequence_parallel=True,
                global_batch_size=64, micro_batch_size=1)
    return plan_layout(SHAPE_7B, **{**args, **kw})


def test_layout_derives_data_parallel_size():
    layout = _layout(tp=2, pp=2)
    assert (layout.tp, layout.pp, layout.dp, layout.world_size) == (2, 2, 2, 8)
    assert layout.pad_multiple() == 2


@pytest.mark.parametrize("overrides,message", [
    (dict(tp=8), "num_attention_heads=28 is not divisible by tensor_model_parallel_size=8"),
    (dict(tp=1, pp=3, world_size=3, gpus_present=3, sequence_parallel=False, global_batch_size=3),
     "num_hidden_layers=28 is not divisible by pipeline stages PP x VPP = 3 x 1 = 3"),
    (dict(global_batch_size=6), "global_batch_size=6 is not divisible by DP x micro batch = 4 x 1 = 4"),
    (dict(world_size=16), "16 processes need 16 GPUs but 8 are present"),
    (dict(tp=3), "world size 8 is not divisible by TP x PP x CP = 3 x 1 x 1 = 3"),
    (dict(tp=1), "sequence_parallel=true needs tensor_model_parallel_size > 1"),
    (dict(vpp=2), "virtual_pipeline_model_parallel_size=2 needs pipeline_model_parallel_size >= 2"),
    (dict(pp=2, vpp=2, global_batch_size=None),  # RL: micro-batches per step vary
     "virtual_pipeline_model_parallel_size=2 needs at least PP=2 micro-batches per step, and this loop's count "
     "varies (RL)"),
])
def test_invalid_layouts_fail_with_their_numbers(overrides, message):
    with pytest.raises(ValueError, match="invalid megatron layout") as err:
        _layout(**overrides)
    assert message in str(err.value)


def test_a_varying_batch_count_skips_the_batch_size_checks():
    assert _layout(global_batch_size=None).dp == 4  # any number of micro-batches per step (RL)


def test_packed_attention_equals_each_sequence_alone_with_grouped_kv():
    torch.manual_seed(0)
    lengths = [3, 5, 1]
    cu = torch.tensor([0, 3, 8, 9], dtype=torch.int32)
    q, k, v = torch.randn(9, 4, 8), torch.randn(9, 2, 8), torch.randn(9, 2, 8)
    out = packed_causal_attention(q, k, v, cu, max(lengths))
    for a, b in [(0, 3), (3, 8), (8, 9)]:
        L = b - a
        kk, vv = k[a:b].repeat_interleave(2, dim=1), v[a:b].repeat_interleave(2, dim=1)  # [L, 4, 8]
        scores = torch.einsum("qhd,khd->hqk", q[a:b], kk) / math.sqrt(8)
        scores = scores.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
        ref = torch.einsum("hqk,khd->qhd", scores.softmax(-1), vv)
        torch.testing.assert_close(out[a:b], ref, rtol=1e-5, atol=1e-5)
    # The first token of each sequence sees only itself: its output is its own value.
    torch.testing.assert_close(out[3], v[3].repeat_interleave(2, dim=0))


def _reference(h, w, t, temperature, vocab_size):
    z = (h.double() @ w.double().t())[:, :vocab_size] / temperature
    logp = torch.log_softmax(z, -1)
    return logp.gather(1, t[:, None]).squeeze(1), -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("keep_logits", [False, True], ids=["recomputed", "kept"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_logprobs_match_log_softmax_with_padded_vocab_and_chunks(compiled, keep_logits):
    torch.manual_seed(0)
    h = torch.randn(7, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(12, 16, dtype=torch.float64, requires_grad=True)  # 10 real ids + 2 padded rows
    t = torch.tensor([0, 9, 3, 3, 5, 1, 8])
    logp, _ = vocab_parallel_logprobs(h, w, t, vocab_size=10, temperature=0.7, chunk_tokens=3, compiled=compiled,
                                      keep_logits=keep_logits)
    ref, ref_entropy = _reference(h, w, t, 0.7, 10)
    torch.testing.assert_close(logp.double(), ref, rtol=1e-6, atol=1e-6)
    # Hand value for token 0: z_y - logsumexp(z) over the 10 real ids only.
    z0 = (h[0] @ w[:10].t()) / 0.7
    assert abs(float(logp[0].detach()) - float((z0[0] - torch.logsumexp(z0, 0)).detach())) < 1e-6
    g = torch.randn(7, dtype=torch.float64)
    gh, gw = torch.autograd.grad((logp.double() * g).sum(), (h, w))
    rh, rw = torch.autograd.grad((ref * g).sum(), (h, w))
    torch.testing.assert_close(gh, rh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw, rw, rtol=1e-5, atol=1e-6)
    assert not gw[10:].any()  # padded rows get no gradient
    with torch.no_grad():
        lp, ent = vocab_parallel_logprobs(h, w, t, vocab_size=10, temperature=0.7, chunk_tokens=3,
                                          with_entropy=True, compiled=compiled)
    torch.testing.assert_close(lp.double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ent.double(), ref_entropy, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("keep_logits", [False, True], ids=["recomputed", "kept"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_entropy_under_grad_leaves_logprobs_and_gradients_as_without(compiled, keep_logits):
    """The RL training forward (``with_entropy`` under autograd): the plain path's log-probs and
    gradients, the true entropies, which carry no gradient."""
    torch.manual_seed(4)
    h = torch.randn(9, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(12, 16, dtype=torch.float64, requires_grad=True)  # 10 real ids + 2 padded rows
    t, g = torch.randint(0, 10, (9,)), torch.randn(9, dtype=torch.float64)
    kw = dict(vocab_size=10, temperature=0.7, chunk_tokens=4, compiled=compiled, keep_logits=keep_logits)
    plain, none = vocab_parallel_logprobs(h, w, t, **kw)
    logp, entropy = vocab_parallel_logprobs(h, w, t, with_entropy=True, **kw)
    assert none is None and logp.requires_grad and not entropy.requires_grad
    _, ref_entropy = _reference(h.detach(), w.detach(), t, 0.7, 10)
    torch.testing.assert_close(logp, plain, rtol=0, atol=1e-6)
    torch.testing.assert_close(entropy.double(), ref_entropy, rtol=1e-5, atol=1e-5)
    grads = [torch.autograd.grad((x.double() * g).sum(), (h, w)) for x in (plain, logp)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
        assert a.abs().max() > 1e-2  # a real gradient


def _inputs():
    torch.manual_seed(1)
    h, w = torch.randn(6, 8, dtype=torch.float64), torch.randn(12, 8, dtype=torch.float64)
    return h, w, torch.tensor([0, 9, 6, 2, 7, 5]), torch.randn(6, dtype=torch.float64)


def _tp_worker(rank: int, out_dir: str, keep_logits: bool = False):
    """Per rank: log-probs, entropies and gradients, with and without entropies under grad, and the
    no-grad pass's entropies."""
    h, w, t, g = _inputs()
    kw = dict(vocab_start=rank * w.shape[0] // 2, vocab_size=10, chunk_tokens=4, group=dist.group.WORLD)
    results = {}
    for with_entropy in (False, True):
        shard = w.chunk(2)[rank].clone().requires_grad_(True)
        hh = h.clone().requires_grad_(True)
        logp, ent = vocab_parallel_logprobs(hh, shard, t, keep_logits=keep_logits, with_entropy=with_entropy, **kw)
        (logp * g).sum().backward()
        results[with_entropy] = (logp.detach(), ent, hh.grad, shard.grad)
    with torch.no_grad():
        results["no_grad"] = vocab_parallel_logprobs(h, w.chunk(2)[rank], t, with_entropy=True, **kw)
    torch.save(results, f"{out_dir}/rank{rank}.pt")


@pytest.mark.parametrize("keep_logits", [False, True], ids=["recomputed", "kept"])
def test_two_tensor_parallel_ranks_equal_one_full_vocabulary(tmp_path, keep_logits):
    run_gloo_ranks(functools.partial(_tp_worker, keep_logits=keep_logits), tmp_path)
    h, w, t, g = _inputs()
    hr, wr = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    ref, ref_entropy = _reference(hr, wr, t, 1.0, 10)
    (ref * g).sum().backward()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for rank, result in enumerate(ranks):
        for logp in (result[False][0], result[True][0], result["no_grad"][0]):
            torch.testing.assert_close(logp.double(), ref.detach(), rtol=1e-6, atol=1e-6)
        for ent in (result[True][1], result["no_grad"][1]):  # the TP all-reduce of each rank's part
            torch.testing.assert_close(ent.double(), ref_entropy.detach(), rtol=1e-5, atol=1e-5)
        assert result[False][1] is None
        for with_entropy in (False, True):
            torch.testing.assert_close(result[with_entropy][3], wr.grad.chunk(2)[rank], rtol=1e-5, atol=1e-6)
    # Each rank returns its partial hidden gradient; megatron's TP region all-reduces them.
    for with_entropy in (False, True):
        torch.testing.assert_close(ranks[0][with_entropy][2] + ranks[1][with_entropy][2], hr.grad,
                                   rtol=1e-5, atol=1e-6)


def test_packed_rope_equals_hf_rotary_per_sequence():
    from transformers import Qwen2Config
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding, apply_rotary_pos_emb

    from nemo_ext.backends.varlen import apply_rope, rope_cos_sin

    torch.manual_seed(0)
    q, k = torch.randn(9, 4, 16), torch.randn(9, 2, 16)
    positions = torch.tensor([0, 1, 2, 0, 1, 2, 3, 4, 0])  # sequences of 3, 5 and 1 tokens
    cos, sin = rope_cos_sin(positions, 16, 1e6, torch.float32)
    rq, rk = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    hf = Qwen2RotaryEmbedding(Qwen2Config(hidden_size=64, num_attention_heads=4, head_dim=16, rope_theta=1e6))
    for a, b in [(0, 3), (3, 8), (8, 9)]:
        pos = torch.arange(b - a)[None]
        hcos, hsin = hf(q[None, a:b], pos)
        eq, ek = apply_rotary_pos_emb(q[a:b].transpose(0, 1)[None], k[a:b].transpose(0, 1)[None], hcos, hsin)
        torch.testing.assert_close(rq[a:b], eq[0].transpose(0, 1), rtol=0, atol=1e-6)
        torch.testing.assert_close(rk[a:b], ek[0].transpose(0, 1), rtol=0, atol=1e-6)
    torch.testing.assert_close(rq[3], q[3])  # position 0 is not rotated


def test_fused_adam_steps_like_the_foreach_one_and_resumes_from_loaded_state():
    """megatron's fallback AdamW switched to the fused kernel takes the same steps, also after its
    state came back through ``load_state_dict`` (``step`` counters as CPU tensors)."""
    torch.manual_seed(3)
    init = torch.randn(5, 4)
    grads = [torch.randn(5, 4) for _ in range(4)]

    def run(fused: bool):
        param = torch.nn.Parameter(init.clone())
        opt = torch.optim.AdamW([param], lr=0.1, weight_decay=0.01, foreach=True)
        holder = SimpleNamespace(chained_optimizers=[SimpleNamespace(optimizer=opt)])
        for i, g in enumerate(grads):
            if i == 2:  # "resume": a fresh optimizer loads the saved state
                saved = opt.state_dict()
                opt = torch.optim.AdamW([param], lr=0.1, weight_decay=0.01, foreach=True)
                opt.load_state_dict(saved)
                holder.chained_optimizers[0].optimizer = opt
            if fused:
                use_fused_torch_adam(holder)
            param.grad = g.clone()
            opt.step()
        return param.detach(), opt

    reference, _ = run(fused=False)
    fused, opt = run(fused=True)
    assert opt.param_groups[0]["fused"] and not opt.param_groups[0]["foreach"]
    assert float(opt.state[opt.param_groups[0]["params"][0]]["step"]) == 4.0
    torch.testing.assert_close(fused, reference, rtol=1e-6, atol=1e-6)
    assert not torch.equal(fused, init)

    sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)  # TE / apex stand in: untouched
    use_fused_torch_adam(SimpleNamespace(optimizer=sgd))
    assert "fused" not in sgd.param_groups[0] or not sgd.param_groups[0]["fused"]


def test_foreach_kernels_keep_apex_multi_tensor_contracts():
    """The stand-ins for apex's multi_tensor_l2norm / multi_tensor_scale that megatron's clipping
    calls when neither TE nor apex is present: values, shapes, in place vs copy, tensor scales."""
    torch.manual_seed(4)
    grads = [torch.randn(3, 4), torch.randn(7), torch.randn(2, 2, 2)]
    flag = torch.zeros(1, dtype=torch.int)
    total, per_tensor = foreach_l2_norm(2048, flag, [grads], True)
    assert total.shape == (1,) and total.dtype == torch.float32
    torch.testing.assert_close(total[0], torch.cat([g.flatten() for g in grads]).norm())
    torch.testing.assert_close(per_tensor, torch.stack([g.norm() for g in grads]))
    assert foreach_l2_norm(2048, flag, [grads], False)[1] is None
    assert float(foreach_l2_norm(2048, flag, [[]], False)[0]) == 0.0

    copies = [torch.empty_like(g) for g in grads]
    foreach_scale(2048, flag, [grads, copies], 0.5)  # dst = src * scale, src untouched
    for g, c in zip(grads, copies, strict=True):
        torch.testing.assert_close(c, g * 0.5)
    before = [g.clone() for g in grads]
    foreach_scale(2048, flag, [grads, grads], torch.tensor([0.25]))  # clipping: in place, tensor coeff
    for g, b in zip(grads, before, strict=True):
        torch.testing.assert_close(g, b * 0.25)
