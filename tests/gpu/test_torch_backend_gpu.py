"""The torch backend on CUDA (run on the GPU machine: ``make test-gpu``): torch's varlen flash
attention on packed batches, bf16 SFT steps, and FSDP2 over two GPUs against one."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


HAVE_TE = importlib.util.find_spec("transformer_engine") is not None


@needs_cuda
@pytest.mark.parametrize("attn", ["varlen", pytest.param("te", marks=pytest.mark.skipif(
    not HAVE_TE, reason="Transformer Engine is not installed"))])
def test_packed_attention_equals_each_sequence_alone_in_bf16(tiny_model_dir, attn):
    """``model.attn_implementation`` varlen (torch's flash-attention kernel) and te (Transformer
    Engine's cuDNN attention) on a packed bf16 row against SDPA on each sequence alone."""
    from transformers import AutoModelForCausalLM

    from nemo_ext.backends.attention import attention_name, packed_attention_kwargs
    from nemo_ext.data.batch import pack_sequences

    torch.manual_seed(0)
    name = attention_name(attn, device_type="cuda", dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=name, dtype=torch.bfloat16).cuda()
    seqs = [torch.randint(0, 400, (n,)).tolist() for n in (37, 5, 120)]
    b = pack_sequences(seqs, [[1] * len(s) for s in seqs]).to("cuda")
    packed = model.model(input_ids=b.input_ids[None], position_ids=b.position_ids[None],
                         **packed_attention_kwargs(b.cu_seqlens, b.max_seqlen)).last_hidden_state[0].float()
    model.set_attn_implementation("sdpa")
    alone = torch.cat([model.model(input_ids=torch.tensor([s], device="cuda")).last_hidden_state[0]
                       for s in seqs]).float()
    rel = (packed - alone).norm() / alone.norm()
    assert rel < 2e-2, f"relative error {rel:.3e}"


@needs_cuda
def test_fp32_weights_under_autocast_take_the_varlen_flash_kernel(tiny_model_dir):
    """One GPU without FSDP keeps fp32 weights under bf16 autocast, and HF's RoPE then returns fp32
    queries: the packed row must still reach flash attention, not the per-sequence fallback."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import AutoModelForCausalLM

    from nemo_ext.backends.attention import VARLEN_ATTENTION, packed_attention_kwargs
    from nemo_ext.data.batch import pack_sequences

    class RecordOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=VARLEN_ATTENTION).cuda()
    seqs = [torch.randint(0, 400, (n,)).tolist() for n in (37, 5, 120)]
    b = pack_sequences(seqs, [[1] * len(s) for s in seqs]).to("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16), RecordOps() as ops:
        model.model(input_ids=b.input_ids[None], position_ids=b.position_ids[None],
                    **packed_attention_kwargs(b.cu_seqlens, b.max_seqlen))
    assert any("varlen" in n or "flash_attention" in n for n in ops.names), sorted(ops.names)
    assert not any("scaled_dot_product" in n for n in ops.names), sorted(ops.names)


def _run_sft(tmp_path: Path, devices: int) -> Path:
    out = tmp_path / f"gpu{devices}"
    args = [sys.executable, str(ROOT / "recipes" / "sft.py"), f"output_dir={out}", f"trainer.devices={devices}",
            "trainer.accelerator=gpu", "trainer.max_steps=30", "trainer.global_batch_size=8",
            "data.synthetic.num_train=2000", "eval.num_problems=50", "checkpoint.save_every=0",
            "logging.progress_bar=false", "logging.tensorboard=false", "logging.log_every=1"]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _losses(run: Path) -> list[float]:
    import json

    return [json.loads(line)["train/loss"] for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]


@needs_cuda
def test_bf16_sft_on_one_gpu_lowers_the_loss(tmp_path):
    losses = _losses(_run_sft(tmp_path, 1))
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_fsdp2_on_two_gpus_follows_one_gpu(tmp_path):
    one, two = _losses(_run_sft(tmp_path, 1)), _losses(_run_sft(tmp_path, 2))
    assert len(one) == len(two) == 30
    for a, b in zip(one, two, strict=True):
        assert abs(a - b) <= 0.02 * abs(a) + 1e-3, (one, two)
