"""World discovery, process-group setup, self-launch of ``trainer.devices`` workers, seeding.

Three ways a process learns its place: torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``), SLURM
(``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``, one task per device), or neither, in which case
``launch`` starts ``trainer.devices`` workers on this node itself through torch elastic.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from nemo_ext.config.schema import Accelerator


@dataclass(frozen=True)
class World:
    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World | None:
    """The world this process was started into by torchrun or SLURM, or None."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return World(int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"]))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return World(int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)), int(env["SLURM_NTASKS"]))
    return None


def is_main_process() -> bool:
    """Whether this is rank 0 of the world torchrun or SLURM started, or a process on its own."""
    world = world_from_env()
    return world is None or world.is_main


def _slurm_master_addr() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        return "127.0.0.1"
    hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return hosts.stdout.split()[0]


def check_nodes(num_nodes: int) -> None:
    """Fail early when ``trainer.num_nodes`` disagrees with the SLURM allocation."""
    slurm_nodes = os.environ.get("SLURM_NNODES") or os.environ.get("SLURM_JOB_NUM_NODES")
    if slurm_nodes is not None and int(slurm_nodes) != num_nodes:
        raise ValueError(f"trainer.num_nodes={num_nodes} but SLURM allocated {slurm_nodes} nodes (SLURM_NNODES)")
    if slurm_nodes is None and num_nodes > 1 and world_from_env() is None:
        raise ValueError(f"trainer.num_nodes={num_nodes} needs SLURM or torchrun to start the other nodes")


def use_cuda(accelerator: Accelerator) -> bool:
    """Whether ``trainer.accelerator`` means CUDA here (``auto``: if there is a GPU)."""
    if accelerator is Accelerator.cpu or (accelerator is Accelerator.auto and not torch.cuda.is_available()):
        return False
    if not torch.cuda.is_available():
        raise RuntimeError("trainer.accelerator=gpu but CUDA is not available")
    return True


def init_distributed(world: World, use_cuda: bool) -> torch.device:
    """Join the process group of ``world`` (no-op for one process); returns this rank's device."""
    device = torch.device("cuda", world.local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world.world_size > 1 and not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", _slurm_master_addr() if "SLURM_PROCID" in os.environ else "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=world.rank, world_size=world.world_size,
                                device_id=device if use_cuda else None)
    return device


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_then_leave(entry: Callable[..., object], *args) -> None:
    """``entry(*args)``, then leave the process group it joined (``init_distributed``). A process that
    exits with gloo's or NCCL's threads still up can abort in their destructors ("terminate called
    without an active exception": exit 134 after the work is done, seen on the two-node test cluster),
    which SLURM and the launcher count as a failed job. Only after a normal return: after an error
    the peers may be gone, and the process exits as it would have."""
    entry(*args)
    _leave_vllm_groups()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _leave_vllm_groups() -> None:
    """Tear down the groups an in-process vLLM engine made (its ``parallel_state``). Left to vLLM's
    exit-time shutdown, that runs after ours are destroyed and raises "Invalid process group
    specified" (a traceback at exit, seen after the SFT recipe's generation evaluation)."""
    vllm_state = sys.modules.get("vllm.distributed.parallel_state")
    if vllm_state is not None:
        vllm_state.destroy_model_parallel()
        vllm_state.destroy_distributed_environment()


def launch(entry: Callable[..., object], devices: int, *args) -> None:
    """Run ``entry(*args)`` once per device: in this process when already placed by torchrun/SLURM or
    when ``devices == 1``, otherwise in ``devices`` workers started by torch elastic on this node;
    each leaves its process group when ``entry`` returns (``run_then_leave``).
    ``entry`` must be a module-level function and ``args`` picklable."""
    if world_from_env() is not None or devices == 1:
        run_then_leave(entry, *args)
        return
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=devices, run_id=uuid.uuid4().hex[:8],
        rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{_free_port()}", max_restarts=0,
        monitor_interval=1, start_method="spawn",
    )
    elastic_launch(config, run_then_leave)(entry, *args)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
