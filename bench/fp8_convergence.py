"""FP8 against bf16 over a few hundred SFT steps: do the loss curves stay together?

    python bench/fp8_convergence.py --steps 300 --fp8-recipe tensorwise --out-dir runs/fp8_convergence

One GPU, megatron with Transformer Engine's spec, random weights of a GPU-sized Qwen2 (``--shape``
1.5b: the Qwen2.5-1.5B layers, with the tiny tokenizer's vocabulary, since the task's text uses only
its ids; ``--layers`` cuts it down), trained on the embedded synthetic task (the SFT recipe's data:
chat-formatted arithmetic with worked steps, packed into ``--bin``-token bins, ``--micro`` bins a
step). The same seed, weights and batches for every run; bf16 first (the baseline), then FP8
(``model.fp8`` = ``--fp8``) for each recipe of ``--fp8-recipe``; with ``--spread-seed N`` also bf16
at seed N (another data order and other initial weights), whose gap to bf16 is the comparison's own
noise. Reported: each run's loss curve (``losses.json``), the mean of the last ``--window`` steps'
losses against bf16's, the first steps at which the smoothed curve falls below ``THRESHOLDS`` (on a
task whose loss drops steeply once it is solved, the end-of-run gap mostly says when that drop came),
tokens/s, and a PNG of the curves.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
THRESHOLDS = (1.0, 0.5, 0.2, 0.1)  # losses (nats per token) whose first crossing each run reports


def write_model(args, out: Path) -> None:
    """config.json (1.5B layers, the tiny tokenizer's vocabulary padded to 64) and the tokenizer."""
    from nemo_ext.models.catalog import qwen2_config
    from nemo_ext.models.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    overrides = {"num_hidden_layers": args.layers} if args.layers else {}
    cfg = qwen2_config("Qwen/Qwen2.5-1.5B", vocab_size=-(-len(tokenizer) // 64) * 64, tie_word_embeddings=True,
                       max_position_embeddings=max(4096, args.bin), **overrides)
    cfg.pad_token_id = tokenizer.pad_token_id
    cfg.save_pretrained(out)
    tokenizer.save_pretrained(out)


def batches(args, model_dir: Path) -> list[list]:
    """``--steps`` steps of ``--micro`` packed bins of the synthetic task, deterministic in ``--seed``."""
    from transformers import AutoTokenizer

    from nemo_ext.data.batch import pack_sequences
    from nemo_ext.data.packing import first_fit_decreasing
    from nemo_ext.data.synthetic import make_problems
    from nemo_ext.data.tokenize import tokenize_chats

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    per_bin = max(1, args.bin // 160)  # the task's samples are ~110-200 tokens
    problems = make_problems(args.steps * args.micro * per_bin, seed=args.seed, split="train")
    samples = tokenize_chats(tokenizer, [p["question"] for p in problems], [p["output"] for p in problems],
                             ["math"] * len(problems))
    bins = first_fit_decreasing([len(s) for s in samples], args.bin)
    random.Random(args.seed).shuffle(bins)
    need = args.steps * args.micro
    if len(bins) < need:
        raise SystemExit(f"only {len(bins)} bins for {args.steps} steps x {args.micro}: raise --bin or lower --steps")
    packed = [pack_sequences([samples[i].input_ids.tolist() for i in b], [samples[i].loss_mask.tolist() for i in b])
              for b in bins[:need]]
    return [packed[i * args.micro:(i + 1) * args.micro] for i in range(args.steps)]


def configs(args):
    """(model, trainer, optimizer, schedule) of one run: ``args.recipe`` bf16 or an FP8 recipe."""
    from nemo_ext.backends.schedule import LRSchedule
    from nemo_ext.config.schema import ModelConfig, OptimConfig, Precision, TrainerConfig

    fp8 = args.recipe != "bf16"
    model = ModelConfig(transformer_impl="transformer_engine", logits_chunk_tokens=4096,
                        fp8=args.fp8 if fp8 else None, fp8_recipe=args.recipe if fp8 else "delayed")
    trainer = TrainerConfig(precision=Precision.bf16, fsdp=False, seed=args.seed)
    schedule = LRSchedule(args.lr, warmup_steps=20, total_steps=args.steps, min_lr=args.lr / 10)
    return model, trainer, OptimConfig(weight_decay=0.0), schedule


def worker(args) -> None:
    from nemo_ext.backends.megatron.backend import MegatronBackend
    from nemo_ext.sft.loss import sft_loss

    steps = batches(args, Path(args.model_dir))
    model, trainer, optim, schedule = configs(args)
    torch.manual_seed(args.seed)
    be = MegatronBackend(args.model_dir, model, trainer, optim, schedule, load_weights=False,
                         batch_sizes=(args.micro, 1))
    losses, tokens, start = [], 0, None
    for i, mbs in enumerate(steps):
        if i == 5:  # warm-up steps excluded from the rate
            torch.cuda.synchronize()
            start, tokens = time.perf_counter(), 0
        losses.append(be.train_step(mbs, sft_loss(sum(b.num_loss_tokens for b in mbs)), temperature=1.0)["loss"])
        tokens += sum(b.num_tokens for b in mbs)
    torch.cuda.synchronize()
    Path(args.result).write_text(json.dumps({"recipe": args.recipe, "seed": args.seed, "losses": losses,
                                             "tokens_per_s": tokens / (time.perf_counter() - start),
                                             "card": torch.cuda.get_device_name()}))


def smoothed(losses: list[float], window: int) -> list[float]:
    """The trailing mean of up to ``window`` losses at each step."""
    return [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
            for i in range(len(losses))]


def first_steps_below(losses: list[float], window: int, thresholds=THRESHOLDS) -> dict[float, int | None]:
    """threshold -> the first step (1-based) whose smoothed loss is below it, None if never."""
    curve = smoothed(losses, window)
    return {t: next((i + 1 for i, x in enumerate(curve) if x < t), None) for t in thresholds}


def label(result: dict, seed: int) -> str:
    return result["recipe"] + (f" (seed {result['seed']})" if result.get("seed", seed) != seed else "")


def plot(results: list[dict], window: int, seed: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        ax.plot(smoothed(r["losses"], window), lw=1.5, label=f"{label(r, seed)} ({r['tokens_per_s']:.0f} tokens/s)")
    ax.set_xlabel("step")
    ax.set_ylabel(f"SFT loss (mean of the last {window} steps)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("FP8 vs bf16: megatron + Transformer Engine, synthetic task")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def planned_runs(args) -> list[tuple[str, int]]:
    """(recipe, seed) of each run, in order: bf16 (the baseline), bf16 at ``--spread-seed``, the FP8 recipes."""
    spread = [("bf16", args.spread_seed)] if args.spread_seed is not None else []
    return [("bf16", args.seed), *spread, *[(recipe, args.seed) for recipe in args.fp8_recipe.split(",")]]


def summary(results: list[dict], window: int, seed: int) -> list[str]:
    """A line per run: the mean of its last ``window`` losses, against bf16's at ``seed``, its speed,
    and the steps at which it first fell below ``THRESHOLDS``."""
    base = next((r for r in results if r["recipe"] == "bf16" and r.get("seed", seed) == seed), None)
    lines = []
    for r in results:
        end = smoothed(r["losses"], window)[-1]
        line = f"{label(r, seed):>16}: final loss (mean of {window}) {end:.4f}, {r['tokens_per_s']:.0f} tokens/s"
        if base is not None and r is not base:
            base_end = smoothed(base["losses"], window)[-1]
            line += f", {100 * (end / base_end - 1):+.2f}% loss and {r['tokens_per_s'] / base['tokens_per_s']:.2f}x " \
                    "the speed of bf16"
        crossings = first_steps_below(r["losses"], window)
        line += "; below " + ", ".join(f"{t:g} at step {n if n is not None else '-'}" for t, n in crossings.items())
        lines.append(line)
    return lines


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--layers", type=int, default=None, help="fewer layers than the 1.5B shape's 28")
    p.add_argument("--bin", type=int, default=8192)
    p.add_argument("--micro", type=int, default=4, help="bins per step")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--fp8", choices=["hybrid", "e4m3"], default="hybrid")
    p.add_argument("--fp8-recipe", default="tensorwise", help="comma-separated: delayed, tensorwise, blockwise")
    p.add_argument("--window", type=int, default=20, help="steps averaged for the end-of-run comparison")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spread-seed", type=int, default=None,
                   help="also run bf16 at this seed (other data order and initial weights): the comparison's noise")
    p.add_argument("--out-dir", default="runs/fp8_convergence")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--recipe", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return p


def main() -> None:
    args = parser().parse_args()
    if args.worker:
        return worker(args)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = out / "model"
    write_model(args, model_dir)
    results = []
    for recipe, seed in planned_runs(args):
        name = recipe if seed == args.seed else f"{recipe}_seed{seed}"
        result = out / f"{name}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", __file__,
               "--worker", "--recipe", recipe, "--model-dir", str(model_dir), "--result", str(result), f"--seed={seed}",
               *[f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("steps", "bin", "micro", "lr", "fp8")],
               *([f"--layers={args.layers}"] if args.layers else [])]
        print("+", " ".join(cmd), flush=True)
        with open(out / f"{name}.log", "w") as log:
            if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ).returncode != 0:
                print(f"{name}: FAILED (log: {out / f'{name}.log'})", flush=True)
                continue
        results.append(json.loads(result.read_text()))
    (out / "losses.json").write_text(json.dumps(results))
    if results:
        plot(results, args.window, args.seed, out / "fp8_convergence.png")
    for line in summary(results, args.window, args.seed):
        print(line)
    print(f"card: {results[0]['card'] if results else '?'}; curves: {out / 'fp8_convergence.png'}")


if __name__ == "__main__":
    main()
