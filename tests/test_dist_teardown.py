"""``dist.run_then_leave``: the entry's process group is left when it returns, kept when it raises, and
an in-process vLLM engine's groups are left with it (no traceback at exit)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import sys
    import torch.distributed as td
    from nemo_ext.dist import run_then_leave

    def join(store, fail):
        td.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{store}")
        if fail:
            raise RuntimeError("the entry failed")

    store, fail = sys.argv[1], sys.argv[2] == "fail"
    try:
        run_then_leave(join, store, fail)
    except RuntimeError:
        pass
    print("initialized after" if td.is_initialized() else "left")
""")


def _run(tmp_path: Path, mode: str) -> str:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / f"store_{mode}"), mode], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def test_the_group_is_left_after_a_normal_return(tmp_path):
    assert _run(tmp_path, "ok") == "left"


def test_the_group_is_kept_after_an_error(tmp_path):
    assert _run(tmp_path, "fail") == "initialized after"


VLLM_SCRIPT = textwrap.dedent("""
    import sys
    import torch.distributed as td
    from nemo_ext.dist import run_then_leave

    def generate(store, model):
        from vllm import SamplingParams
        from nemo_ext.generation import build_engine

        td.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{store}")
        llm = build_engine(model, max_model_len=128)
        [out] = llm.generate(["1 + 1 ="], SamplingParams(max_tokens=2, temperature=0.0), use_tqdm=False)
        assert len(out.outputs[0].token_ids) == 2

    run_then_leave(generate, sys.argv[1], sys.argv[2])
    print("initialized after" if td.is_initialized() else "left")
""")


def test_an_in_process_vllm_engine_leaves_with_the_group(tmp_path, tiny_model_dir):
    """The SFT recipe's evaluation builds vLLM's engine in the trainer's process; its exit-time
    shutdown ran after our group was gone and printed "Invalid process group specified"."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), VLLM_ENABLE_V1_MULTIPROCESSING="0", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", VLLM_SCRIPT, str(tmp_path / "store"), str(tiny_model_dir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "left"
    assert "Traceback" not in proc.stderr and "Invalid process group" not in proc.stderr, proc.stderr[-3000:]
