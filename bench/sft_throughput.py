"""SFT training throughput (tokens/s, MFU) of the backends on one model shape and the same packed data.

    python bench/sft_throughput.py --backend megatron,torch,hf_baseline --shape 1.5b
    python bench/sft_throughput.py --backend megatron --shape 7b --tp 2 --gpus 2 --bin 8192 --no-optimizer

Each backend runs in its own process (``torchrun`` for megatron), on random weights and random tokens
(never all zeros) with sequence lengths drawn log-normally around a median of ~4K, packed first-fit-
decreasing into bins of ``--bin`` tokens; every backend sees the same sequences. One step = ``--micro``
bins (forward, backward, optimizer step unless ``--no-optimizer``); ``--warmup`` steps, then the timed
ones, synchronized. Reported per backend: tokens/s, per-GPU model TFLOP/s and MFU, peak memory, and the
ratio to the first backend listed.

Model FLOPs = 6 x matmul params x tokens + 6 x layers x hidden x sum(len^2) (causal attention, recompute
not counted; the input embedding, a lookup, is not a matmul: ``models.hf_config.matmul_parameters``), as
the trainers log it; MFU = model FLOP/s per GPU / the card's dense bf16 peak (``observe.PEAK_FLOPS``:
989 TFLOP/s for H100 and H200 SXM).
Backends: ``megatron[_te|_local][_compile][_keep][_fused|_unfused][_fp8]``: the layer spec (default: Transformer
Engine's where it imports, as ``backend=megatron`` picks; ``_te`` / ``_local`` force one),
``trainer.compile=true`` (each decoder layer under torch.compile), ``model.keep_logits=true`` (the output
layer's logits kept for the backward instead of recomputed), ``model.gradient_accumulation_fusion``
true or false (TE's weight-gradient GEMMs add into the fp32 gradient buffer themselves; neither flag:
the config's default, on with TE's spec), and FP8 in the format
``--fp8`` with each recipe of ``--fp8-recipe`` (comma-separated: one run per recipe; TE 2.20 on Hopper
has delayed, tensorwise and blockwise); torch (eager); torch_compile (``trainer.compile=true``);
torch_compile_fsdp (the same with FSDP2's bf16 parameters on one rank), each torch one with every
attention of ``--attention`` (comma-separated: one run each); hf_baseline. On running out of
memory a backend is retried with more recompute (``oom_fallbacks``).
hf_baseline is the plain Hugging Face way: each sequence alone (a padded batch of 1), sdpa attention,
gradient checkpointing, fp32 master weights + bf16 autocast, fused AdamW, one optimizer step per bin.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.shapes import SHAPES, shape_config  # noqa: E402
from nemo_ext.backends.attention import ATTENTION  # noqa: E402
from nemo_ext.garbage_collection import PauseRecorder, collect_between_steps  # noqa: E402

GC_PAUSES = PauseRecorder()  # the collections during the timed steps
STEP_LOSSES: list[float] = []  # every step's loss (warm-up too), where the backend returns it


def hf_config(shape: str, layers: int | None):
    """The cataloged architecture (random weights), RoPE base 1e6, 32K context, ``layers`` if given."""
    cfg = shape_config(shape, layers, max_position_embeddings=32768)
    cfg.layer_types = ["full_attention"] * cfg.num_hidden_layers
    return cfg


def make_bins(args, vocab: int) -> list[list[list[int]]]:
    """Bins of token-id sequences, deterministic in ``--seed``."""
    from nemo_ext.data.packing import first_fit_decreasing

    rng = np.random.default_rng(args.seed)
    needed = (args.warmup + args.steps) * args.micro
    longest = min(args.bin, args.max_len or args.bin)
    lengths = np.clip(rng.lognormal(np.log(4096), 0.6, size=needed * args.bin // 256), 256, longest).astype(int)
    packed = first_fit_decreasing(lengths, args.bin)  # FFD opens bins longest-first: pick bins at random
    bins = [packed[i] for i in rng.choice(len(packed), size=needed, replace=False)]
    return [[rng.integers(0, vocab, size=lengths[i]).tolist() for i in b] for b in bins]


def step_flops(cfg, bins) -> float:
    """Model FLOPs of ``bins`` (``observe.model_flops`` over their sequences, the trainers' own MFU)."""
    from nemo_ext.models.hf_config import matmul_parameters
    from nemo_ext.observe import model_flops

    lengths = [len(s) for b in bins for s in b]
    return model_flops(matmul_parameters(cfg), cfg.num_hidden_layers, cfg.hidden_size, lengths)


# ---------------------------------------------------------------------------------------------
# Workers: one backend each, in its own process
# ---------------------------------------------------------------------------------------------

def _packed(bins):
    from nemo_ext.data.batch import pack_sequences

    return [pack_sequences(b, [[1] * len(s) for s in b]) for b in bins]


def _steps(args, bins):
    return [bins[i * args.micro:(i + 1) * args.micro] for i in range(args.warmup + args.steps)]


def _timed(args, steps, run_step) -> list[float]:
    """Seconds per timed step (after ``--warmup`` steps); with ``--worker-logs``, the last step runs again
    under the profiler and its CUDA kernel table goes to ``<logs>/<backend>.profile.txt``."""
    times = []
    with collect_between_steps(args.gc_interval) as collector:  # as the SFT loop does (trainer.gc_interval)
        for i, step in enumerate(steps):
            torch.cuda.synchronize()
            if i == args.warmup:
                gc.callbacks.append(GC_PAUSES)
            t0 = time.perf_counter()
            out = run_step(step)
            torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
            if isinstance(out, dict):  # the backends' train_step: variants of one backend should agree
                STEP_LOSSES.append(out["loss"])
            collector.after_step(i + 1)
        if GC_PAUSES in gc.callbacks:
            gc.callbacks.remove(GC_PAUSES)
    if args.worker_logs and int(os.environ.get("RANK", 0)) == 0:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            run_step(steps[-1])
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=90)
        name = args.worker + (f".{args.fp8_recipe}" if "fp8" in args.worker.split("_") else "")
        (Path(args.worker_logs) / f"{name}.profile.txt").write_text(table)
    return times


def megatron_variant(name: str) -> dict:
    """``megatron[_te|_local][_compile][_keep][_fused|_unfused][_fp8]`` -> the layer spec, layer
    compilation, kept logits, the fused gradient accumulation (neither: the config's default, on with
    TE's spec), FP8 on or off."""
    parts = name.split("_")
    flags = set(parts[1:])
    if parts[0] != "megatron" or not flags <= {"te", "local", "compile", "keep", "fused", "unfused", "fp8"} \
            or {"te", "local"} <= flags or {"fused", "unfused"} <= flags:
        raise ValueError(f"backend {name!r}: expected megatron[_te|_local][_compile][_keep][_fused|_unfused][_fp8]")
    impl = "transformer_engine" if "te" in flags else "local" if "local" in flags else "auto"
    fused = True if "fused" in flags else False if "unfused" in flags else None
    return {"impl": impl, "compile_layers": "compile" in flags, "keep_logits": "keep" in flags,
            "fused_accumulation": fused, "fp8": "fp8" in flags}


def _configs(args, model_dir: str):
    from nemo_ext.backends.schedule import LRSchedule
    from nemo_ext.config.schema import ModelConfig, OptimConfig, Precision, TrainerConfig

    model = ModelConfig(tensor_model_parallel_size=args.tp, sequence_parallel=args.tp > 1,
                        logits_chunk_tokens=args.logits_chunk, attn_implementation=args.attention)
    trainer = TrainerConfig(precision=Precision.bf16, activation_checkpointing=args.recompute == "full", fsdp=False)
    return model, trainer, OptimConfig(), LRSchedule(1e-5, 2, 100, 1e-6)


def work_megatron(args, model_dir: str, bins, impl: str = "auto", compile_layers: bool = False,
                  keep_logits: bool = False, fused_accumulation: bool | None = None, fp8: bool = False
                  ) -> tuple[list[float], dict]:
    """A ``megatron_variant``; also returns the spec it ran and its FP8 setting."""
    from nemo_ext.backends.megatron.backend import MegatronBackend
    from nemo_ext.sft.loss import sft_loss

    model, trainer, optim, schedule = _configs(args, model_dir)
    model.transformer_impl, model.keep_logits = impl, keep_logits
    model.gradient_accumulation_fusion = fused_accumulation
    if fp8:
        model.fp8, model.fp8_recipe = args.fp8, args.fp8_recipe
    trainer.compile = compile_layers
    recompute = None if args.recompute == "none" else args.recompute
    be = MegatronBackend(model_dir, model, trainer, optim, schedule, load_weights=False, recompute=recompute,
                         batch_sizes=(args.micro, 1))
    run = be.forward_backward if args.no_optimizer else be.train_step
    times = _timed(args, _steps(args, _packed(bins)),
                   lambda mbs: run(mbs, sft_loss(sum(b.num_loss_tokens for b in mbs)), temperature=1.0))
    return times, {"impl": be.impl, "fp8": model.fp8, "fp8_recipe": model.fp8_recipe if model.fp8 else None}


def work_torch(args, model_dir: str, bins, compile_layers: bool = False, fsdp: bool = False
               ) -> tuple[list[float], dict]:
    """The torch backend, eager; also returns the attention kernel it resolved. ``--recompute full``:
    activation checkpointing of every layer; ``selective`` (compiled only): the partitioner's activation
    memory budget ``--memory-budget``."""
    import torch.distributed as dist

    from nemo_ext.backends.torch_backend import TorchBackend
    from nemo_ext.sft.loss import sft_loss

    if args.no_optimizer:
        raise ValueError("--no-optimizer is for megatron only")
    if args.recompute == "selective" and not compile_layers:
        raise ValueError("selective recompute of the torch backend needs compile (torch_compile*)")
    model, trainer, optim, schedule = _configs(args, model_dir)
    trainer.compile = compile_layers
    if args.recompute == "selective":
        trainer.activation_memory_budget = args.memory_budget
    if fsdp:  # FSDP2 on a one-rank group: bf16 parameters through its mixed-precision policy, no autocast
        dist.init_process_group("nccl", device_id=torch.device("cuda", 0))
        trainer.fsdp = True
    be = TorchBackend(model_dir, model, trainer, optim, schedule, torch.device("cuda", 0))
    times = _timed(args, _steps(args, _packed(bins)),
                   lambda mbs: be.train_step(mbs, sft_loss(sum(b.num_loss_tokens for b in mbs)), temperature=1.0))
    return times, {"attention_kernel": be.attention}


def work_torch_compile(args, model_dir: str, bins) -> tuple[list[float], dict]:
    """The torch backend with ``trainer.compile=true``: each decoder layer and the log-prob chunks
    under torch.compile (dynamic shapes)."""
    return work_torch(args, model_dir, bins, compile_layers=True)


def work_torch_compile_fsdp(args, model_dir: str, bins) -> tuple[list[float], dict]:
    """torch_compile with FSDP2's bf16 parameters (one rank) instead of fp32 weights under autocast."""
    return work_torch(args, model_dir, bins, compile_layers=True, fsdp=True)


def work_hf_baseline(args, model_dir: str, bins) -> tuple[list[float], dict]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").cuda()
    model.gradient_checkpointing_enable({"use_reentrant": False})
    model.config.use_cache = False
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

    def step(step_bins):
        for seqs in step_bins:
            tokens = sum(len(s) for s in seqs)
            for s in seqs:
                ids = torch.tensor([s], device="cuda")
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = model(input_ids=ids, labels=ids).loss
                (loss * (len(s) - 1) / tokens).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _timed(args, _steps(args, bins), step), {}


def worker(args) -> None:
    import torch.distributed as dist

    from nemo_ext.models.hf_config import num_parameters
    from nemo_ext.observe import PEAK_FLOPS, peak_flops

    cfg = hf_config(args.shape, args.layers)
    bins = make_bins(args, cfg.vocab_size)
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.reset_peak_memory_stats()
    if args.worker.startswith("megatron"):
        times, setting = work_megatron(args, args.model_dir, bins, **megatron_variant(args.worker))
    else:
        times, setting = globals()[f"work_{args.worker}"](args, args.model_dir, bins)
    timed_bins = bins[args.warmup * args.micro:]
    flops = step_flops(cfg, timed_bins)
    tokens = sum(len(s) for b in timed_bins for s in b)
    ngpu = args.gpus if args.worker.startswith("megatron") else 1
    total = sum(times)
    peak = peak_flops(torch.device("cuda")) or PEAK_FLOPS["H100"]  # an unlisted card: MFU against an H100
    label = args.worker + (f"[{setting['fp8_recipe']}]" if setting.get("fp8") else "")
    if args.worker.startswith("torch") and args.attention != "auto":
        label += f"[{args.attention}]"
    result = dict(backend=label, **setting, shape=args.shape, layers=cfg.num_hidden_layers,
                  tp=args.tp if ngpu > 1 else 1, gpus=ngpu, bin=args.bin, recompute=args.recompute,
                  optimizer=not args.no_optimizer, params=num_parameters(cfg), tokens_per_s=tokens / total,
                  median_step_s=statistics.median(times), step_s=[round(t, 4) for t in times],
                  gc_pauses_s=[round(t, 4) for g, t in GC_PAUSES.pauses if g == 2 or t > 0.01],
                  losses=[round(x, 5) for x in STEP_LOSSES],
                  tflops_per_gpu=flops / total / ngpu / 1e12, mfu=flops / total / ngpu / peak,
                  peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30, card=torch.cuda.get_device_name())
    if int(os.environ.get("RANK", 0)) == 0:
        Path(args.result).write_text(json.dumps(result))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Orchestrator
# ---------------------------------------------------------------------------------------------

def write_model_dir(args, out: Path, weights: bool) -> None:
    """config.json (+ random bf16 weights, made on the GPU, for the HF-based backends)."""
    cfg = hf_config(args.shape, args.layers)
    if not weights:
        cfg.save_pretrained(out)
        return
    code = (f"import sys, torch; sys.path.insert(0, {str(ROOT)!r}); from bench.sft_throughput import hf_config; "
            "from transformers import AutoModelForCausalLM; torch.manual_seed(0); "
            f"cfg = hf_config({args.shape!r}, {args.layers!r}); cfg.dtype = torch.bfloat16\n"
            "with torch.device('cuda'): m = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)\n"
            f"m.save_pretrained({str(out)!r})")
    subprocess.run([sys.executable, "-c", code], check=True)


def oom_fallbacks(backend: str) -> list[str]:
    """The recompute settings to try next, in order, when ``backend`` runs out of memory."""
    if backend == "hf_baseline":
        return []  # always checkpoints every layer
    return ["full"] if backend == "torch" else ["selective", "full"]


# The driver's own options (the FP8 ones, the attention and recompute are handed over per run, by
# ``run_backend``); every other one is a setting its workers get.
DRIVER_ONLY = {"backend", "out", "worker", "model_dir", "result", "fp8", "fp8_recipe", "recompute", "attention"}


def worker_settings(args) -> list[str]:
    """``args``' settings as the workers' command-line options (``bench.worker_args``)."""
    from bench.worker_args import worker_settings as settings

    return settings(parser(), args, DRIVER_ONLY)


def planned_runs(args) -> list[tuple[str, str | None, str | None]]:
    """(backend, FP8 recipe, attention) of each run: every recipe of ``--fp8-recipe`` for a ``*_fp8``
    backend, every attention of ``--attention`` for a torch one; None where the setting does not apply."""
    from bench.worker_args import comma_separated

    attentions = comma_separated("--attention", args.attention, ATTENTION)
    return [(b, recipe, attention) for b in args.backend.split(",")
            for recipe in (args.fp8_recipe.split(",") if "fp8" in b.split("_") else [None])
            for attention in (attentions if b.startswith("torch") else [None])]


def run_backend(args, backend: str, model_dir: Path, result: Path, fp8_recipe: str | None = None,
                attention: str | None = None) -> dict | None:
    nproc = args.gpus if backend.startswith("megatron") else 1
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", __file__,
           "--worker", backend, "--model-dir", str(model_dir), "--result", str(result)]
    cmd += ["--fp8", args.fp8, "--fp8-recipe", fp8_recipe] if fp8_recipe else []
    cmd += ["--attention", attention] if attention else []
    name = ".".join([backend, *filter(None, [fp8_recipe, attention])])
    cmd += worker_settings(args)
    cmd += ["--recompute", args.recompute]  # last: the OOM retry below replaces it
    for recompute in dict.fromkeys([args.recompute, *oom_fallbacks(backend)]):
        run_cmd = [*cmd[:-1], recompute] if cmd[-2] == "--recompute" else cmd
        print("+", " ".join(run_cmd), flush=True)
        # recompiles in the worker's log: the first suspect when one timed step is slower than the rest
        env = {**os.environ, "TORCH_LOGS": os.environ.get("TORCH_LOGS", "recompiles")}
        proc = subprocess.run(run_cmd, capture_output=True, text=True, env=env)
        if args.worker_logs:
            Path(args.worker_logs, f"{name}.{recompute}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode == 0:
            return json.loads(result.read_text())
        oom = "OutOfMemoryError" in proc.stderr or "out of memory" in proc.stderr
        print(f"{name} (recompute {recompute}): {'OUT OF MEMORY' if oom else 'FAILED'}\n{proc.stderr[-3000:]}",
              flush=True)
        if not oom:
            break
    return None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="megatron,torch,hf_baseline", help="comma-separated; the first is the baseline")
    p.add_argument("--shape", choices=sorted(SHAPES), default="1.5b")
    p.add_argument("--layers", type=int, default=None, help="override the number of layers (a model that fits)")
    p.add_argument("--bin", type=int, default=16384)
    p.add_argument("--max-len", type=int, default=None, help="longest sequence (default: the bin size)")
    p.add_argument("--micro", type=int, default=1, help="bins per optimizer step")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--gpus", type=int, default=1, help="GPUs for megatron (TP x DP)")
    p.add_argument("--recompute", choices=["none", "selective", "full"], default="none")
    p.add_argument("--logits-chunk", type=int, default=4096, help="model.logits_chunk_tokens")
    p.add_argument("--memory-budget", type=float, default=0.5,
                   help="torch_compile* with --recompute selective: trainer.activation_memory_budget")
    p.add_argument("--no-optimizer", action="store_true", help="forward + backward only (megatron)")
    p.add_argument("--attention", default="auto",
                   help="model.attn_implementation of the torch backends, comma-separated: one run each (auto, "
                        "varlen: torch's flash-attention varlen kernel, te: Transformer Engine's cuDNN attention)")
    p.add_argument("--fp8", choices=["hybrid", "e4m3"], default="hybrid", help="model.fp8 of the *_fp8 backends")
    p.add_argument("--fp8-recipe", default="tensorwise",
                   help="model.fp8_recipe of the *_fp8 backends, comma-separated: one run each "
                        "(delayed, tensorwise, blockwise)")
    p.add_argument("--worker-logs", default=None, help="a directory for each worker's log and kernel profile (created)")
    p.add_argument("--gc-interval", type=int, default=100,
                   help="trainer.gc_interval: steps between Python garbage collections; 0 = Python's own")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="append the results as JSON lines here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return p


def main() -> None:
    p = parser()
    args = p.parse_args()
    if args.gc_interval < 0:
        p.error(f"--gc-interval must be >= 0 (0 = Python's own collector), got {args.gc_interval}")
    if args.worker:
        return worker(args)
    backends = args.backend.split(",")
    for b in backends:
        if b.startswith("megatron"):
            megatron_variant(b)  # a bad name fails here, before any model is built
        elif f"work_{b}" not in globals():
            raise SystemExit(f"--backend {b!r}: unknown (see the module docstring)")
    runs = planned_runs(args)
    if args.worker_logs:
        Path(args.worker_logs).mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        write_model_dir(args, model_dir, weights=any(not b.startswith("megatron") for b in backends))
        for b, recipe, attention in runs:
            r = run_backend(args, b, model_dir, Path(tmp) / f"{b}.{recipe}.{attention}.json", recipe, attention)
            if r:
                results.append(r)
                print(json.dumps(r), flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(r) + "\n")
    print(f"\n{'backend':<12} {'layout':<14} {'tokens/s':>10} {'TFLOP/s/GPU':>12} {'MFU':>6} {'mem GiB':>8} "
          f"{'ratio':>6} {'steps (s)'}")
    for r in results:
        layout = f"{r['gpus']}gpu tp{r['tp']} {r['recompute'][:4]}"
        ratio = r["tokens_per_s"] / r["gpus"] / (results[0]["tokens_per_s"] / results[0]["gpus"])
        # tokens/s is over all timed steps: a slow step (a recompile, a new kernel plan) shows here
        steps = " ".join(f"{t:.3f}" for t in r["step_s"])
        print(f"{r['backend']:<12} {layout:<14} {r['tokens_per_s']:>10.0f} {r['tflops_per_gpu']:>12.1f} "
              f"{r['mfu']:>6.1%} {r['peak_mem_gib']:>8.1f} {ratio:>6.2f} {steps}")
    if results:
        print(f"card: {results[0]['card']}; shape {args.shape} ({results[0]['params'] / 1e9:.2f}B params, "
              f"{results[0]['layers']} layers); ratio = per-GPU tokens/s / {results[0]['backend']}'s")


if __name__ == "__main__":
    main()
