"""Inputs and Hugging Face references the megatron checks share: the CPU tests
(tests/test_megatron_model_cpu.py) and the GPU workers (tests/gpu/megatron_worker.py)."""

from __future__ import annotations

import torch

from nemo_ext.data.batch import PackedBatch, pack_sequences


def random_batches(n: int, lengths=(37, 120, 5, 64), vocab: int = 400, seed: int = 0) -> list[PackedBatch]:
    """``n`` packed batches of random token sequences, the last two thirds of each trained."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        seqs = [torch.randint(0, vocab, (L,), generator=g).tolist() for L in lengths]
        out.append(pack_sequences(seqs, [[0] * (L // 3) + [1] * (L - L // 3) for L in lengths]))
    return out


def hf_reference_grads(model_dir: str, batches: list[PackedBatch], total: int,
                       device: torch.device | str = "cuda") -> tuple[float, dict[str, torch.Tensor]]:
    """The SFT loss (summed -log p of the trained targets / ``total``) and every parameter's gradient,
    from the Hugging Face model itself (fp32, each sequence alone, full-vocabulary log-softmax): the
    reference for megatron's gradients."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").to(device)
    loss = 0.0
    for batch in batches:
        bounds = batch.cu_seqlens.tolist()
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            logits = hf(batch.input_ids[a:b][None].to(device)).logits[0].float()
            logp = torch.log_softmax(logits, -1).gather(1, batch.targets[a:b].to(device)[:, None]).squeeze(1)
            seq_loss = -(logp * batch.loss_mask[a:b].to(device)).sum() / total
            seq_loss.backward()
            loss += float(seq_loss.detach())
    return loss, {name: p.grad.float().cpu() for name, p in hf.named_parameters() if p.grad is not None}


@torch.no_grad()
def hf_logprobs_and_entropy(model_dir: str, batches: list[PackedBatch], temperature: float) -> list[torch.Tensor]:
    """Per batch [2, T]: log p(target) and the entropy (nats) of softmax(logits / temperature), from the
    Hugging Face model (fp32, each sequence alone) on the CPU."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    out = []
    for batch in batches:
        bounds = batch.cu_seqlens.tolist()
        logp_TV = torch.cat([torch.log_softmax(hf(batch.input_ids[a:b][None]).logits[0] / temperature, -1)
                             for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
        target = logp_TV.gather(1, batch.targets[:, None]).squeeze(1)
        out.append(torch.stack([target, -(logp_TV.exp() * logp_TV).sum(-1)]))
    return out
