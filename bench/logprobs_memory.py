"""Peak memory of the chunked token log-probs (``nemo_ext.backends.logprobs``) against full logits.

    PYTHONPATH=. .venv/bin/python bench/logprobs_memory.py [--tokens 4096] [--vocab 152064] [--chunk 128]

One long sequence: hidden states [T, H] and Qwen2.5's vocabulary (152,064 rows). Two passes, as the
RL loop runs them: ``train`` (log-probs of the targets at temperature 0.85, summed, backward into
hidden states and output embedding) and ``logprobs`` (no-grad log-probs and entropies, the old
log-prob pass). Each variant runs in a fresh subprocess; its figure is the rise of the process's
peak resident memory (ru_maxrss) over the level reached after building the inputs, so both sides
are measured the same way. The baseline, in the same run: the naive computation that materializes
the full [T, V] logits. Also checked: both give the same values (and gradients).
Target (issue 4): chunked peak at most 1/8 of the naive one.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from nemo_ext.backends.logprobs import token_logprobs

TEMPERATURE = 0.85


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def naive(hidden, weight, targets, with_entropy: bool):
    logp_TV = torch.log_softmax((hidden @ weight.t()) / TEMPERATURE, dim=-1)
    logp = logp_TV.gather(1, targets[:, None]).squeeze(1)
    return logp, (-(logp_TV.exp() * logp_TV).sum(-1) if with_entropy else None)


def run_variant(variant: str, mode: str, tokens: int, vocab: int, hidden_size: int, chunk: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    hidden = (torch.randn(tokens, hidden_size, generator=gen) / hidden_size**0.5).requires_grad_(mode == "train")
    weight = torch.randn(vocab, hidden_size, generator=gen).requires_grad_(mode == "train")
    targets = torch.randint(0, vocab, (tokens,), generator=gen)
    before = peak_mib()
    start = time.perf_counter()
    with torch.set_grad_enabled(mode == "train"):
        if variant == "naive":
            logp, entropy = naive(hidden, weight, targets, with_entropy=mode == "logprobs")
        else:
            logp, entropy = token_logprobs(hidden, weight, targets, TEMPERATURE, chunk,
                                           with_entropy=mode == "logprobs")
        if mode == "train":
            logp.sum().backward()
    seconds = time.perf_counter() - start
    checksum = [float(logp.sum()), float(entropy.sum()) if entropy is not None else 0.0,
                float(hidden.grad.sum()) if mode == "train" else 0.0,
                float(weight.grad.abs().sum()) if mode == "train" else 0.0]
    return {"peak_rise_mib": peak_mib() - before, "seconds": seconds, "checksum": checksum}


def measure(variant: str, mode: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, mode, "--tokens", str(args.tokens), "--vocab",
           str(args.vocab), "--hidden", str(args.hidden), "--chunk", str(args.chunk)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=152064)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "MODE"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_variant(*args.child, args.tokens, args.vocab, args.hidden, args.chunk)))
        return
    print(f"T={args.tokens} tokens, V={args.vocab}, H={args.hidden}, chunk={args.chunk}, "
          f"full fp32 logits = {args.tokens * args.vocab * 4 / 2**20:.0f} MiB")
    print("| pass | naive peak rise (MiB) | chunked peak rise (MiB) | chunked / naive | naive s | chunked s |")
    print("|---|---|---|---|---|---|")
    for mode in ("train", "logprobs"):
        base, chunked = measure("naive", mode, args), measure("chunked", mode, args)
        for a, b in zip(base["checksum"], chunked["checksum"], strict=True):
            assert abs(a - b) <= 1e-3 * max(1.0, abs(a)), f"{mode}: chunked {b} != naive {a}"
        ratio = chunked["peak_rise_mib"] / base["peak_rise_mib"]
        print(f"| {mode} | {base['peak_rise_mib']:.0f} | {chunked['peak_rise_mib']:.0f} | {ratio:.3f} "
              f"(1/{1 / ratio:.1f}) | {base['seconds']:.2f} | {chunked['seconds']:.2f} |")


if __name__ == "__main__":
    main()
