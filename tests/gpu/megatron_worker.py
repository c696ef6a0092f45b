"""One process of a megatron GPU check, started by ``torchrun`` from tests/gpu/test_megatron_gpu.py.

    torchrun --nproc-per-node N tests/gpu/megatron_worker.py SCENARIO --model DIR --out FILE [--tp T --pp P ...]

Scenarios (rank 0 writes FILE, a torch.save'd dict):
  hf_logits  megatron logits / log-probs vs the HF model on the same weights, and the HF export round trip
  grads      loss and full HF-named gradients of two packed micro-batches (fp32), for layout comparisons
  ckpt_save  two SFT steps, a checkpoint through CheckpointManager, the log-probs and the next step's loss
  ckpt_load  load that checkpoint (at another layout), the same log-probs and next-step loss
  sft        N SFT steps on the embedded arithmetic task: the loss curve (megatron, then the torch backend)
  rl_update  one GRPO update (grpo.update_policy) on fixed rollouts through the RL setup's own rank
             pinning and policy construction: metrics and the weights synced to the rollout engine
             (megatron, then, in one process, the torch backend)
  packed_vs_alone  log-probs of a packed row against each of its sequences alone (fp32, bf16)

``--impl`` picks the layer spec (``model.transformer_impl``): Transformer Engine's or the local one.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, AutoTokenizer

from nemo_ext.backends.schedule import LRSchedule
from nemo_ext.checkpoint import CheckpointManager
from nemo_ext.config.schema import ModelConfig, OptimConfig, Precision, TrainerConfig
from nemo_ext.data.batch import PackedBatch, pack_sequences
from nemo_ext.sft.loss import sft_loss
from tests.megatron_reference import hf_reference_grads, random_batches


def backend(args, precision: str, steps: int = 100, lr: float = 1e-3):
    # megatron-core is imported here, not at the top: the RL scenario pins each rank's GPU first, and
    # the RL recipe imports it no earlier either
    from nemo_ext.backends.megatron.backend import MegatronBackend

    model = ModelConfig(tensor_model_parallel_size=args.tp, pipeline_model_parallel_size=args.pp,
                        context_parallel_size=args.cp, sequence_parallel=args.sp, transformer_impl=args.impl,
                        keep_logits=args.keep_logits, fp8=args.fp8,
                        gradient_accumulation_fusion=None if args.grad_accum_fusion is None
                        else args.grad_accum_fusion == "on")
    trainer = TrainerConfig(precision=Precision(precision), grad_clip=1.0, seed=1234)
    return MegatronBackend(args.model, model, trainer, OptimConfig(), LRSchedule(lr, 5, steps, lr / 10),
                           batch_sizes=(args.micro, 1))


def hf_logits(args) -> dict:
    """Per precision: ||logits_mc - logits_hf|| / ||logits_hf|| over the packed sequences."""
    from nemo_ext.backends.megatron.micro import to_micro

    result = {}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        be = backend(args, precision)
        hf = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, attn_implementation="sdpa").cuda()
        batch = random_batches(1)[0]
        micro = to_micro(batch, batch.num_tokens, be.device, be.rope)
        with torch.no_grad():
            logits = be.chunks[0](micro.input_ids, micro.position_ids, None, packed_seq_params=micro.packed)
            logits = logits[0, :, : be.shape.vocab].float()
            bounds = batch.cu_seqlens.tolist()
            ref = torch.cat([hf(batch.input_ids[a:b][None].cuda()).logits[0].float()
                             for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
        [(logp, _)] = be.logprobs([batch], temperature=1.0)
        ref_logp = torch.log_softmax(ref, -1).gather(1, batch.targets.cuda()[:, None]).squeeze(1).cpu()
        mask = batch.loss_mask.bool()
        export = Path(args.out).with_suffix(f".{precision}.hf")
        be.export_hf(export)
        exported = AutoModelForCausalLM.from_pretrained(export, dtype=dtype).state_dict()
        original = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).state_dict()
        result[precision] = {
            "logits_rel_err": float((logits - ref).norm() / ref.norm()),
            "logp_max_abs_err": float((logp - ref_logp)[mask].abs().max()),
            "export_max_abs_diff": max(float((exported[k].float() - v.float()).abs().max())
                                       for k, v in original.items()),
            "export_keys_equal": exported.keys() == original.keys(),
            "impl": be.impl,
        }
        del be, hf
        _reset_megatron()
    return result


def packed_vs_alone(args) -> dict:
    """Log-probs and entropies of one packed row against each of its sequences packed alone, in fp32
    and bf16: attention must not cross the packed sequences' boundaries."""
    result = {}
    for precision in ("fp32", "bf16"):
        be = backend(args, precision)
        batch = random_batches(1)[0]
        [(logp, entropy)] = be.logprobs([batch], temperature=1.0)
        bounds = batch.cu_seqlens.tolist()
        singles = [pack_sequences([batch.input_ids[a:b].tolist()], [batch.loss_mask[a:b].tolist()])
                   for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        alone = be.logprobs(singles, temperature=1.0)
        logp_alone = torch.cat([lp for lp, _ in alone])
        entropy_alone = torch.cat([e for _, e in alone])
        result[precision] = {"logp_max_abs_diff": float((logp - logp_alone).abs().max()),
                             "entropy_max_abs_diff": float((entropy - entropy_alone).abs().max()),
                             "impl": be.impl}
        del be
        _reset_megatron()
    return result


def _reset_megatron() -> None:
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    torch.cuda.empty_cache()


def grads(args) -> dict:
    be = backend(args, "fp32")
    batches = random_batches(args.micro)
    total = sum(b.num_loss_tokens for b in batches)
    out = be.forward_backward(batches, sft_loss(total), temperature=1.0)
    named = {name: g.float().cpu() for name, g in be.hf_grads()}
    fused = sum(bool(getattr(m, "fuse_wgrad_accumulation", False)) for chunk in be.chunks for m in chunk.modules())
    # TE marks a weight whose gradient its GEMM added into main_grad (DDP then skips its own add);
    # the mark lasts until the next step zeroes the buffers
    added_in_gemm = sum(bool(getattr(p, "grad_added_to_main_grad", False)) for c in be.chunks for p in c.parameters())
    result = {"loss": out["loss"], "grads": named, "impl": be.impl, "fused_layers": fused,
              "added_in_gemm": added_in_gemm}
    if dist.get_world_size() == 1:
        result["hf_loss"], result["hf_grads"] = hf_reference_grads(args.model, batches, total, "cuda")
    return result


def logprobs(args) -> dict:
    """Log-probs and entropies of two packed batches, and one training step's loss, at ``--precision``."""
    be = backend(args, args.precision)
    batches = random_batches(2)
    pairs = be.logprobs(batches, temperature=1.0)
    out = be.train_step(batches, sft_loss(sum(b.num_loss_tokens for b in batches)), temperature=1.0)
    return {"logp": torch.cat([lp for lp, _ in pairs]), "entropy": torch.cat([e for _, e in pairs]),
            "mask": torch.cat([b.loss_mask for b in batches]).bool(), "loss": out["loss"],
            "grad_norm": out["grad_norm"]}


def ckpt_save(args) -> dict:
    be = backend(args, args.precision)
    batches = random_batches(args.micro)
    loss_fn = sft_loss(sum(b.num_loss_tokens for b in batches))
    for _ in range(2):
        be.train_step(batches, loss_fn, temperature=1.0)
    CheckpointManager(Path(args.ckpt), keep_last=1, is_main=dist.get_rank() == 0).save(be, 2, {"data_position": 2})
    [(logp, entropy)] = be.logprobs(batches[:1], temperature=1.0)
    return {"logp": logp, "entropy": entropy, "next_loss": be.train_step(batches, loss_fn, temperature=1.0)["loss"],
            "impl": be.impl}


def ckpt_load(args) -> dict:
    be = backend(args, args.precision)
    extra = be.load(CheckpointManager(Path(args.ckpt), keep_last=1, is_main=dist.get_rank() == 0).latest())
    batches = random_batches(args.micro)
    [(logp, entropy)] = be.logprobs(batches[:1], temperature=1.0)
    loss_fn = sft_loss(sum(b.num_loss_tokens for b in batches))
    return {"logp": logp, "entropy": entropy, "extra": extra, "step": be.step,
            "next_loss": be.train_step(batches, loss_fn, temperature=1.0)["loss"], "impl": be.impl}


def sft_batches(model_dir: str, steps: int, per_step: int, bin_size: int = 1024) -> list[list[PackedBatch]]:
    """``steps`` global batches of ``per_step`` packed bins of the embedded task's teacher outputs."""
    from nemo_ext.data.packing import first_fit_decreasing
    from nemo_ext.data.synthetic import make_problems
    from nemo_ext.data.tokenize import tokenize_chats

    tok = AutoTokenizer.from_pretrained(model_dir)
    problems = make_problems(steps * per_step * 8, seed=0, split="train")
    samples = tokenize_chats(tok, [p["question"] for p in problems], [p["output"] for p in problems],
                             ["math"] * len(problems))
    samples = [s.truncated(bin_size) for s in samples]
    bins = first_fit_decreasing([len(s) for s in samples], bin_size)
    random.Random(0).shuffle(bins)
    packed = [pack_sequences([samples[i].input_ids.tolist() for i in b], [samples[i].loss_mask.tolist() for i in b])
              for b in bins[: steps * per_step]]
    if len(packed) < steps * per_step:
        raise ValueError(f"only {len(packed)} bins for {steps} x {per_step}")
    return [packed[i * per_step:(i + 1) * per_step] for i in range(steps)]


def _train(be, steps_batches) -> list[float]:
    losses = []
    for mbs in steps_batches:
        tokens = sum(b.num_loss_tokens for b in mbs)  # DP = 1: this rank's bins are the global batch
        losses.append(be.train_step(mbs, sft_loss(tokens), temperature=1.0)["loss"])
    return losses


def sft(args) -> dict:
    """Megatron's loss curve, then (one process only) the torch backend's on the same bins, or the
    error that stopped it (recorded, so the megatron curve survives a torch-backend failure)."""
    steps_batches = sft_batches(args.model, args.steps, args.micro)
    be = backend(args, "bf16", steps=args.steps, lr=args.lr)
    result = {"megatron": _train(be, steps_batches), "impl": be.impl}
    del be
    if dist.get_world_size() == 1:
        from nemo_ext.backends.torch_backend import TorchBackend

        trainer = TrainerConfig(precision=Precision.bf16, fsdp=False)
        try:
            tb = TorchBackend(args.model, ModelConfig(), trainer,
                              OptimConfig(), LRSchedule(args.lr, 5, args.steps, args.lr / 10), torch.device("cuda", 0))
            result["torch"] = _train(tb, steps_batches)
        except Exception as e:  # noqa: BLE001 - reported by the test that compares the two
            result["torch_error"] = f"{type(e).__name__}: {e}"
    return result


def rl_groups(num_prompts: int = 6, group_size: int = 4, vocab: int = 400, seed: int = 0) -> list:
    """Scored rollout groups as the loop would hold them, without vLLM: random prompt and response
    tokens, random rollout log-probs, rewards alternating within a group (the last group all equal,
    so its micro-batch joins only the log-prob pass), some responses truncated (overlong filter)."""
    from nemo_ext.config.rl import Task
    from nemo_ext.generation import Completion
    from nemo_ext.rl.experience import Group
    from nemo_ext.rl.prompts import RLPrompt

    g = torch.Generator().manual_seed(seed)
    groups = []
    for i in range(num_prompts):
        prompt_ids = torch.randint(0, vocab, (int(torch.randint(8, 30, (1,), generator=g)),), generator=g).tolist()
        completions = []
        for j in range(group_size):
            n = int(torch.randint(4, 60, (1,), generator=g))
            truncated = (i + j) % 5 == 0
            completions.append(Completion("", torch.randint(0, vocab, (n,), generator=g).tolist(),
                                          (-3 * torch.rand(n, generator=g)).tolist(),
                                          "length" if truncated else "stop", truncated))
        rewards = [0.0] * group_size if i == num_prompts - 1 else [float(j % 2) for j in range(group_size)]
        groups.append(Group(RLPrompt(f"p{i}", Task.math, "", "0"), prompt_ids, completions, rewards,
                            [r > 0 for r in rewards]))
    return groups


class WeightSink:
    """The rollout engine's part in ``update_policy`` where vLLM is not installed (the GPU machine):
    sleeps, and takes the synced weights (draining the iterator, a collective under megatron)."""

    def __init__(self):
        self.weights: dict[str, torch.Tensor] = {}

    def sleep(self) -> None:
        pass

    def load_weights(self, weights) -> None:
        self.weights = {name: t.float().cpu().clone() for name, t in weights}

    def wake(self) -> None:
        pass


def rl_update(args) -> dict:
    from nemo_ext.config.rl import PolicyConfig, RLConfig, RLTrainerConfig, StageConfig
    from nemo_ext.config.schema import Accelerator, BackendName
    from nemo_ext.rl import grpo
    from nemo_ext.rl.setup import build_policy, build_update, join_ranks
    from nemo_ext.rl.stages import stage_lr_schedule

    stage = StageConfig(max_response_len=64, group_size=4, lr=1e-3, steps=1)
    trainer = RLTrainerConfig(precision=Precision.fp32, accelerator=Accelerator.gpu, fsdp=False, grad_clip=1.0,
                              seed=1234)

    def one_update(backend_name: BackendName, device=None) -> dict:
        cfg = RLConfig(backend=backend_name, trainer=trainer, stages=[stage],
                       model=ModelConfig(tensor_model_parallel_size=args.tp, transformer_impl=args.impl),
                       policy=PolicyConfig(init=args.model, micro_batch_tokens=160))
        device = device or join_ranks(cfg)
        policy = build_policy(cfg, Path(args.model), device)
        policy.reset_optimizer(stage_lr_schedule(stage))  # as a stage begins
        sink = WeightSink()
        update = build_update(cfg, policy, sink)
        initial = {name: t.float().cpu().clone() for name, t in policy.hf_weights()}
        metrics = grpo.update_policy(update, stage, rl_groups(), 1.0, grpo.PhaseTimer())
        return {"metrics": metrics, "weights": sink.weights, "initial": initial,
                "replicas": update.share.replicas, "device": str(device), "impl": getattr(policy, "impl", "torch")}

    result = {"megatron": one_update(BackendName.megatron)}
    result["impl"] = result["megatron"].pop("impl")
    if dist.get_world_size() == 1:
        _reset_megatron()
        result["torch"] = one_update(BackendName.torch, torch.device("cuda", 0))
    return result


SCENARIOS = {"hf_logits": hf_logits, "grads": grads, "logprobs": logprobs, "ckpt_save": ckpt_save,
             "ckpt_load": ckpt_load, "sft": sft, "rl_update": rl_update, "packed_vs_alone": packed_vs_alone}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--ckpt", default=None)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--cp", type=int, default=1)
    p.add_argument("--sp", action="store_true")
    p.add_argument("--keep-logits", action="store_true", help="model.keep_logits")
    p.add_argument("--impl", default="auto", help="model.transformer_impl: auto, transformer_engine or local")
    p.add_argument("--fp8", default=None, help="model.fp8: hybrid or e4m3 (TE spec)")
    p.add_argument("--grad-accum-fusion", choices=("on", "off"), default=None,
                   help="model.gradient_accumulation_fusion (default: the config's, on with TE's spec)")
    p.add_argument("--micro", type=int, default=2, help="micro-batches (packed bins) per step")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--lr", type=float, default=3e-3)
    args = p.parse_args()
    result = SCENARIOS[args.scenario](args)
    if dist.get_rank() == 0:
        torch.save(result, args.out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
