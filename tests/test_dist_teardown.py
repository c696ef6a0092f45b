"""``dist.run_then_leave``: the entry's process group is left when it returns, kept when it raises."""

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
