"""FP8 against bf16 in one model shape's GEMMs alone: the most FP8 can give its training step.

    python bench/fp8_gemm.py --shape 7b --tokens 8192 --layers 8 --step-s 0.280
    python bench/fp8_gemm.py --shape tiny --tokens 256 --repeats 3   # a dry run: bf16 only, on the CPU

Each linear layer of a decoder layer (QKV, attention output, MLP gate+up, MLP down) and the output
layer, as a ``transformer_engine.pytorch.Linear`` of that shape (no bias), runs its forward and
backward (the input's and the weight's gradients) over ``--tokens`` tokens: in bf16 (the baseline,
in the same run) and under ``te.pytorch.autocast`` with each recipe of ``--fp8-recipe`` in the format
``--fp8``. Each FP8 recipe runs twice: the weights cast to FP8 at every pass (one micro-batch a step)
and once, then reused (``is_first_microbatch=False``: a step of several micro-batches, where TE casts
each weight once per step). Without Transformer Engine (the CPU machine) ``torch.nn.Linear`` runs the
bf16 baseline alone.

Reported per GEMM: milliseconds per pass (the mean of ``--repeats`` passes back to back after
``--warmup``, CUDA events on a GPU), TFLOP/s (6 x tokens x in x out a pass), the speedup over bf16.
Then for a step of ``--layers`` decoder layers (the shape's own by default) with the output layer in
bf16, as the megatron backend's log-prob head runs it: the step's GEMM milliseconds and their FP8
speedup. With ``--step-s``, the bf16 step's measured seconds for the same tokens
(``bench/sft_throughput.py``'s median step, one bin of ``--tokens``), also the GEMMs' share of that
step and Amdahl's bound on the step's FP8 speedup: FP8 gains what it gains in the decoder GEMMs and
nothing elsewhere (attention, norms, SwiGLU, the output layer, the optimizer), and pays its casts and
scaling-factor updates, which these timings include.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.shapes import SHAPES, shape_config  # noqa: E402

RECIPES = ("delayed", "tensorwise", "blockwise")  # TE 2.20's FP8 recipes on Hopper (mxfp8: Blackwell only)


@dataclass(frozen=True)
class Gemm:
    """One linear layer: ``name``, ``in_features`` -> ``out_features``; ``per_layer``: whether each
    decoder layer has one (the output layer does not)."""

    name: str
    in_features: int
    out_features: int
    per_layer: bool = True

    def flops(self, tokens: int) -> float:
        """Forward (1 GEMM) and backward (2 GEMMs) over ``tokens`` tokens: 6 x tokens x in x out."""
        return 6.0 * tokens * self.in_features * self.out_features


def shape_gemms(cfg) -> list[Gemm]:
    """The GEMMs of a Qwen2-style decoder layer (QKV fused, gate and up fused) and the output layer."""
    h, heads, kv_heads = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or h // heads
    return [Gemm("qkv", h, (heads + 2 * kv_heads) * head_dim), Gemm("attention_out", heads * head_dim, h),
            Gemm("mlp_gate_up", h, 2 * cfg.intermediate_size), Gemm("mlp_down", cfg.intermediate_size, h),
            Gemm("output_layer", h, cfg.vocab_size, per_layer=False)]


def step_bound(bf16_ms: dict[str, float], fp8_ms: dict[str, float], gemms: list[Gemm], layers: int,
               step_s: float | None) -> dict:
    """The GEMM milliseconds of one step of ``layers`` decoder layers and the output layer, in bf16 and
    with the decoder GEMMs in FP8 (the output layer stays bf16), their ratio, and with ``step_s`` (the
    measured bf16 step, seconds) the GEMMs' share of that step and Amdahl's bound on its FP8 speedup."""
    def step_ms(decoder: dict[str, float]) -> float:
        return sum(layers * decoder[g.name] if g.per_layer else bf16_ms[g.name] for g in gemms)

    bf16, fp8 = step_ms(bf16_ms), step_ms(fp8_ms)
    out = {"gemm_ms_bf16": bf16, "gemm_ms_fp8": fp8, "gemm_speedup": bf16 / fp8}
    if step_s:
        step_ms_bf16 = 1e3 * step_s
        if bf16 > step_ms_bf16:
            raise ValueError(f"--step-s {step_s}: shorter than the step's bf16 GEMMs alone ({bf16 / 1e3:.3f} s); "
                             f"give the bf16 step's seconds for one bin of the same --tokens")
        out.update(gemm_share=bf16 / step_ms_bf16, step_speedup_bound=step_ms_bf16 / (step_ms_bf16 - bf16 + fp8))
    return out


def fp8_recipe(name: str, fmt: str):
    from transformer_engine.common import recipe

    format_ = {"hybrid": recipe.Format.HYBRID, "e4m3": recipe.Format.E4M3}[fmt]
    return {"delayed": recipe.DelayedScaling, "tensorwise": recipe.Float8CurrentScaling,
            "blockwise": recipe.Float8BlockScaling}[name](fp8_format=format_)


def time_passes(layer, x: torch.Tensor, grad: torch.Tensor, warmup: int, repeats: int, quantized=None,
                reuse_weight_cast: bool = False) -> float:
    """Milliseconds of one forward + backward of ``layer``: the mean of ``repeats`` passes run back to
    back (the host launching ahead, as in a step) after ``warmup``; ``quantized``: a TE recipe to run
    under; ``reuse_weight_cast``: the weights' FP8 copies made at the first pass only."""
    import contextlib

    if quantized is None:
        context = contextlib.nullcontext
    else:
        import transformer_engine.pytorch as te

        def context():
            return te.autocast(enabled=True, recipe=quantized)

    def one_pass(i: int) -> None:
        kwargs = {"is_first_microbatch": i == 0} if reuse_weight_cast else {}
        with context():
            y = layer(x, **kwargs)
        y.backward(grad)
        x.grad, layer.weight.grad = None, None

    for i in range(warmup):
        one_pass(i)
    if x.is_cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for i in range(warmup, warmup + repeats):
            one_pass(i)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / repeats
    tic = time.perf_counter()
    for i in range(warmup, warmup + repeats):
        one_pass(i)
    return 1e3 * (time.perf_counter() - tic) / repeats


def variants(args) -> list[tuple[str, object, bool]]:
    """(name, TE recipe or None, reuse the weights' cast) per timed variant, bf16 first."""
    runs = [("bf16", None, False)]
    for name in args.fp8_recipe.split(",") if args.te else []:
        runs += [(name, fp8_recipe(name, args.fp8), False),
                 (f"{name}+cached_weights", fp8_recipe(name, args.fp8), True)]
    return runs


def linear(gemm: Gemm, te: bool, dtype: torch.dtype, device: torch.device):
    """A fresh layer of ``gemm``'s shape, the same weights every time (seed 0): one per variant, so that
    no recipe's FP8 state carries over into the next."""
    torch.manual_seed(0)
    if te:
        import transformer_engine.pytorch as te_pytorch

        return te_pytorch.Linear(gemm.in_features, gemm.out_features, bias=False, params_dtype=dtype, device=device)
    return torch.nn.Linear(gemm.in_features, gemm.out_features, bias=False, dtype=dtype, device=device)


def run(args) -> list[dict]:
    """One row per GEMM and variant: milliseconds a pass and TFLOP/s."""
    cfg = shape_config(args.shape, args.layers)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for gemm in shape_gemms(cfg):
        x = torch.randn(args.tokens, gemm.in_features, dtype=dtype, device=device, requires_grad=True)
        grad = torch.randn(args.tokens, gemm.out_features, dtype=dtype, device=device)
        for name, recipe_, reuse in variants(args):
            layer = linear(gemm, args.te, dtype, device)
            ms = time_passes(layer, x, grad, args.warmup, args.repeats, recipe_, reuse)
            rows.append({"gemm": gemm.name, "in": gemm.in_features, "out": gemm.out_features, "variant": name,
                         "ms": ms, "tflop_s": gemm.flops(args.tokens) / ms / 1e9})
            print(json.dumps(rows[-1]), flush=True)
            del layer
        del x, grad
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def summarize(rows: list[dict], gemms: list[Gemm], layers: int, step_s: float | None) -> list[dict]:
    """Per variant: each GEMM's speedup over bf16 and the step's (``step_bound``)."""
    ms = {(r["variant"], r["gemm"]): r["ms"] for r in rows}
    bf16 = {g.name: ms["bf16", g.name] for g in gemms}
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = {g.name: ms[variant, g.name] for g in gemms}
        out.append({"variant": variant, **{f"{g}_speedup": bf16[g] / mine[g] for g in mine},
                    **step_bound(bf16, mine, gemms, layers, step_s)})
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=["tiny", *sorted(SHAPES)], default="7b")
    p.add_argument("--layers", type=int, default=None, help="decoder layers of the step (default: the shape's)")
    p.add_argument("--tokens", type=int, default=8192, help="tokens a pass (one bin)")
    p.add_argument("--fp8", choices=["hybrid", "e4m3"], default="hybrid", help="FP8 format (model.fp8)")
    p.add_argument("--fp8-recipe", default=",".join(RECIPES), help=f"comma-separated, of {', '.join(RECIPES)}")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--step-s", type=float, default=None,
                   help="the bf16 step's measured seconds for one bin of --tokens (bench/sft_throughput.py)")
    p.add_argument("--out", default=None, help="append the rows and the summary as JSON lines here")
    return p


def main() -> None:
    args = parser().parse_args()
    unknown = set(args.fp8_recipe.split(",")) - set(RECIPES)
    if unknown:
        parser().error(f"--fp8-recipe: {', '.join(sorted(unknown))} unknown; expected some of {', '.join(RECIPES)}")
    try:
        import transformer_engine.pytorch  # noqa: F401

        args.te = torch.cuda.is_available()
    except ImportError:
        args.te = False
    if not args.te:
        print("Transformer Engine on a GPU is missing: the bf16 baseline alone, with torch.nn.Linear", flush=True)
    cfg = shape_config(args.shape, args.layers)
    rows = run(args)
    summary = summarize(rows, shape_gemms(cfg), cfg.num_hidden_layers, args.step_s)
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    if args.out:
        with open(args.out, "a") as f:
            for line in rows + [{**s, "card": card, "shape": args.shape, "layers": cfg.num_hidden_layers,
                                 "tokens": args.tokens, "fp8": args.fp8} for s in summary]:
                f.write(json.dumps(line) + "\n")
    names = [g.name for g in shape_gemms(cfg)]
    print(f"\n{'variant':>26} " + " ".join(f"{n:>13}" for n in names) + "  step GEMM ms  speedup"
          + ("  share of step  step bound" if args.step_s else ""))
    for s in summary:
        line = f"{s['variant']:>26} " + " ".join(f"{s[n + '_speedup']:>12.2f}x" for n in names)
        line += f"  {s['gemm_ms_fp8']:>12.2f}  {s['gemm_speedup']:>6.2f}x"
        if args.step_s:
            line += f"  {s['gemm_share']:>13.1%}  {s['step_speedup_bound']:>9.2f}x"
        print(line)
    print(f"card: {card}; shape {args.shape}, {cfg.num_hidden_layers} layers, {args.tokens} tokens a pass, "
          f"FP8 format {args.fp8}; output layer in bf16 in the step")


if __name__ == "__main__":
    main()
