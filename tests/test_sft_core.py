"""The SFT building blocks against naive references: packed attention, chunked log-probs and their
gradients, the packed-batch layout, and loss accumulation over micro-batches."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from nemo_ext.backends.attention import TE_ATTENTION, VARLEN_ATTENTION, attention_name, packed_attention_kwargs
from nemo_ext.backends.logprobs import token_logprobs
from nemo_ext.backends.schedule import LRSchedule
from nemo_ext.backends.te_import import te_available
from nemo_ext.data.batch import pack_sequences
from nemo_ext.sft.loss import sft_loss


def test_pack_sequences_shifts_targets_and_mask_within_each_sequence():
    b = pack_sequences([[1, 2, 3], [4, 5]], [[0, 1, 1], [0, 1]], {"adv": [[0.0, 0.5, 0.75], [0.0, 2.0]]})
    assert b.input_ids.tolist() == [1, 2, 3, 4, 5]
    assert b.position_ids.tolist() == [0, 1, 2, 0, 1]
    assert b.cu_seqlens.tolist() == [0, 3, 5]
    assert b.targets.tolist() == [2, 3, 0, 5, 0]  # no target across the boundary
    assert b.loss_mask.tolist() == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert b.token_fields["adv"].tolist() == [0.5, 0.75, 0.0, 2.0, 0.0]
    assert b.max_seqlen == 3 and b.num_loss_tokens == 3


def test_packed_attention_equals_each_sequence_alone(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=VARLEN_ATTENTION)
    seqs = [torch.randint(0, 400, (n,)).tolist() for n in (7, 3, 11)]
    b = pack_sequences(seqs, [[1] * len(s) for s in seqs])
    packed = model.model(input_ids=b.input_ids[None], position_ids=b.position_ids[None],
                         **packed_attention_kwargs(b.cu_seqlens, b.max_seqlen)).last_hidden_state[0]
    packed.sum().backward()
    packed_grad = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
    model.zero_grad()

    model.set_attn_implementation("sdpa")
    alone = torch.cat([model.model(input_ids=torch.tensor([s])).last_hidden_state[0] for s in seqs])
    alone.sum().backward()
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed_grad, model.model.layers[0].self_attn.q_proj.weight.grad, rtol=1e-4, atol=1e-5)


def test_attention_names_refuse_what_cannot_run():
    """model.attn_implementation: an unknown value is refused naming the key and the choices; te is
    refused where it cannot run (off CUDA, in fp32, or without Transformer Engine: this machine), at
    model load."""
    cuda_bf16 = dict(device_type="cuda", dtype=torch.bfloat16)
    assert attention_name("varlen", **cuda_bf16) == VARLEN_ATTENTION
    expected = r"model.attn_implementation='flash3'; expected one of \['auto', 'te', 'varlen'\]"
    with pytest.raises(ValueError, match=expected):
        attention_name("flash3", **cuda_bf16)
    for device_type, dtype in (("cpu", torch.float32), ("cpu", torch.bfloat16), ("cuda", torch.float32)):
        with pytest.raises(ValueError, match=f"runs on CUDA in bf16 or fp16; this model computes in {dtype} on "
                                             f"{device_type}"):
            attention_name("te", device_type=device_type, dtype=dtype)
    if not te_available():
        with pytest.raises(ValueError, match="model.attn_implementation=te needs Transformer Engine"):
            attention_name("te", **cuda_bf16)
    else:
        assert attention_name("te", **cuda_bf16) == TE_ATTENTION


@pytest.mark.parametrize("te_imports", [False, True])
def test_auto_attention_takes_te_only_where_it_runs_and_was_measured(monkeypatch, te_imports):
    """auto: TE's cuDNN attention on CUDA of compute capability 9.0 or later (where it was measured
    faster) in bf16 or fp16 where Transformer Engine imports, the varlen kernel everywhere else
    (whether TE imports is varied by hand: it cannot run on this machine)."""
    monkeypatch.setattr("nemo_ext.backends.attention.te_available", lambda: te_imports)
    places = [("cpu", None), ("cuda", (8, 0)), ("cuda", (9, 0)), ("cuda", (10, 0))]
    chosen = {(device_type, capability, dtype): attention_name("auto", device_type=device_type, dtype=dtype,
                                                               compute_capability=capability)
              for device_type, capability in places for dtype in (torch.float32, torch.bfloat16, torch.float16)}
    te_where = {("cuda", capability, dtype) for capability in ((9, 0), (10, 0))
                for dtype in (torch.bfloat16, torch.float16)} if te_imports else set()
    assert {key for key, name in chosen.items() if name == TE_ATTENTION} == te_where
    assert all(name == VARLEN_ATTENTION for key, name in chosen.items() if key not in te_where)


@pytest.mark.parametrize("keep_logits", [False, True], ids=["recomputed", "kept"])
def test_chunked_logprobs_and_gradients_equal_naive(keep_logits):
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    temperature = 0.7
    logp, _ = token_logprobs(hidden, weight, targets, temperature, chunk_tokens=8, keep_logits=keep_logits)
    (logp * torch.linspace(0, 1, 37, dtype=torch.float64)).sum().backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None

    naive = torch.log_softmax(hidden @ weight.t() / temperature, -1).gather(1, targets[:, None]).squeeze(1)
    (naive * torch.linspace(0, 1, 37, dtype=torch.float64)).sum().backward()
    # the chunked path computes logits in fp32 whatever the input dtype
    torch.testing.assert_close(logp, naive.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grads[0], hidden.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1], weight.grad, rtol=1e-5, atol=1e-5)


def test_chunked_entropy_equals_naive():
    torch.manual_seed(1)
    hidden, weight = torch.randn(20, 8), torch.randn(30, 8)
    _, entropy = token_logprobs(hidden, weight, torch.zeros(20, dtype=torch.long), 1.3, 6, with_entropy=True)
    p = torch.softmax(hidden @ weight.t() / 1.3, -1)
    torch.testing.assert_close(entropy, -(p * p.log()).sum(-1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("keep_logits", [False, True], ids=["recomputed", "kept"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_entropy_under_grad_leaves_logprobs_and_gradients_as_without(compiled, keep_logits):
    """The RL training forward (``with_entropy`` under autograd): the plain path's log-probs and
    gradients, and the no-grad pass's entropies, which carry no gradient."""
    torch.manual_seed(3)
    hidden, weight = torch.randn(29, 16, requires_grad=True), torch.randn(40, 16, requires_grad=True)
    targets, g = torch.randint(0, 40, (29,)), torch.linspace(-1, 1, 29)
    kw = dict(temperature=0.7, chunk_tokens=8, compiled=compiled, keep_logits=keep_logits)
    plain, none = token_logprobs(hidden, weight, targets, **kw)
    logp, entropy = token_logprobs(hidden, weight, targets, with_entropy=True, **kw)
    with torch.no_grad():
        no_grad_logp, no_grad_entropy = token_logprobs(hidden, weight, targets, with_entropy=True, **kw)
    assert none is None and logp.requires_grad and not entropy.requires_grad
    torch.testing.assert_close(logp, plain, rtol=0, atol=1e-6)
    torch.testing.assert_close(no_grad_logp, plain.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(entropy, no_grad_entropy, rtol=0, atol=1e-6)
    p = torch.softmax(hidden.detach() @ weight.detach().t() / 0.7, -1)
    torch.testing.assert_close(entropy, -(p * p.log()).sum(-1), rtol=1e-5, atol=1e-5)
    grads = [torch.autograd.grad((x * g).sum(), (hidden, weight)) for x in (plain, logp)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
        assert a.abs().max() > 1e-2  # a real gradient


def test_compiled_chunks_equal_eager_ones():
    torch.manual_seed(2)
    hidden, weight = torch.randn(45, 16, requires_grad=True), torch.randn(60, 16, requires_grad=True)
    targets = torch.randint(0, 60, (45,))
    eager = token_logprobs(hidden, weight, targets, 0.8, chunk_tokens=16)[0]
    compiled = token_logprobs(hidden, weight, targets, 0.8, chunk_tokens=16, compiled=True)[0]
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    grads = [torch.autograd.grad(x.sum(), (hidden, weight)) for x in (eager, compiled)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        e_logp, e_ent = token_logprobs(hidden, weight, targets, 0.8, 16, with_entropy=True)
        c_logp, c_ent = token_logprobs(hidden, weight, targets, 0.8, 16, with_entropy=True, compiled=True)
    torch.testing.assert_close(c_logp, e_logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c_ent, e_ent, rtol=1e-5, atol=1e-5)


def test_sft_loss_over_micro_batches_adds_up_to_the_full_batch():
    torch.manual_seed(2)
    seqs = [[1, 2, 3, 4], [5, 6, 7], [8, 9], [10, 11, 12, 13, 14]]
    masks = [[0, 1, 1, 1], [0, 0, 1], [0, 1], [0, 1, 1, 0, 1]]
    full = pack_sequences(seqs, masks)
    halves = [pack_sequences(seqs[:2], masks[:2]), pack_sequences(seqs[2:], masks[2:])]
    total = full.num_loss_tokens
    logp_full = -torch.rand(full.num_tokens)
    loss_full, _ = sft_loss(total)(logp_full, full)
    split = [halves[0].num_tokens]
    parts = torch.split(logp_full, [split[0], full.num_tokens - split[0]])
    loss_parts = sum(sft_loss(total)(lp, mb)[0] for lp, mb in zip(parts, halves, strict=True))
    torch.testing.assert_close(loss_parts, loss_full)
    assert total == 8
    expected = -(logp_full * full.loss_mask).sum() / 8
    torch.testing.assert_close(loss_full, expected)


def test_lr_schedule_warmup_then_cosine_to_min():
    cosine = LRSchedule(lr=2.0, warmup_steps=10, total_steps=110, min_lr=0.2)
    assert cosine.factor(0) == 0.1 and cosine.lr_at(0) == 0.2
    assert cosine.factor(9) == 1.0
    assert abs(cosine.factor(60) - 0.55) < 1e-12  # halfway down the cosine
    assert abs(cosine.lr_at(110) - 0.2) < 1e-12 and abs(cosine.lr_at(500) - 0.2) < 1e-12
    constant = LRSchedule.constant(3.0, warmup_steps=4)  # an RL stage: warmup, then lr for good
    assert [constant.lr_at(s) for s in (0, 3, 4, 10_000)] == [0.75, 3.0, 3.0, 3.0]


def test_compiled_backend_trains_like_the_eager_one(tiny_model_dir):
    """trainer.compile: dynamic shapes take rows of new lengths without error, and the steps match
    eager ones (fp32 on CPU: equal up to the fused kernels' rounding)."""
    from nemo_ext.backends.torch_backend import TorchBackend
    from nemo_ext.config.schema import ModelConfig, OptimConfig, TrainerConfig

    torch.manual_seed(0)
    rows = []
    for lengths in [(30, 17, 9), (41, 5), (12, 12, 12, 3)]:
        seqs = [torch.randint(0, 400, (n,)).tolist() for n in lengths]
        rows.append(pack_sequences(seqs, [[1] * len(s) for s in seqs]))
    runs = {}
    for compiled in (False, True):
        model_cfg = ModelConfig(logits_chunk_tokens=16)
        backend = TorchBackend(str(tiny_model_dir), model_cfg,
                               TrainerConfig(compile=compiled, activation_checkpointing=compiled),
                               OptimConfig(), LRSchedule(1e-3, 1, 10, 1e-4), torch.device("cpu"))
        losses = [backend.train_step([b], sft_loss(b.num_loss_tokens), temperature=1.0)["loss"] for b in rows]
        runs[compiled] = losses, backend.hf_model.model.layers[0].mlp.down_proj.weight.detach().clone()
    torch.testing.assert_close(runs[True][0], runs[False][0], rtol=1e-5, atol=1e-5)
    # Adam's update of a near-zero gradient is sensitive to its rounding: compare the whole matrix
    weight_error = (runs[True][1] - runs[False][1]).norm() / runs[False][1].norm()
    assert weight_error < 1e-5, weight_error
    assert runs[True][0][0] != runs[True][0][1]  # real steps, not a constant


def test_backend_calls_require_the_temperature_and_the_backend_declares_its_tokenizer(tiny_model_dir):
    """A log-prob pass or an update that forgets the temperature must fail, not use T = 1 silently."""
    import pytest

    from nemo_ext.backends.torch_backend import TorchBackend
    from nemo_ext.config.schema import ModelConfig, OptimConfig, TrainerConfig

    backend = TorchBackend(str(tiny_model_dir), ModelConfig(), TrainerConfig(), OptimConfig(),
                           LRSchedule.constant(1e-3), torch.device("cpu"))
    batch = pack_sequences([[5, 6, 7, 8]], [[0, 1, 1, 1]])
    with pytest.raises(TypeError, match="temperature"):
        backend.logprobs([batch])
    with pytest.raises(TypeError, match="temperature"):
        backend.train_step([batch], sft_loss(batch.num_loss_tokens))
    (hot,), (cold,) = backend.logprobs([batch], temperature=2.0), backend.logprobs([batch], temperature=0.5)
    assert not torch.allclose(hot[0], cold[0])  # the argument reaches the log-softmax
    assert backend.tokenizer("1 + 1", add_special_tokens=False)["input_ids"]  # the policy's own tokenizer
