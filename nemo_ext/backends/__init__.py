"""Training backends behind one interface (``base.Backend``): torch (HF models) and megatron-core."""

from __future__ import annotations

import torch

from nemo_ext.backends.base import Backend
from nemo_ext.backends.schedule import LRSchedule
from nemo_ext.config.schema import BackendName, ModelConfig, OptimConfig, TrainerConfig


def build_backend(name: BackendName, model_path: str, model_cfg: ModelConfig, trainer_cfg: TrainerConfig,
                  optim_cfg: OptimConfig, schedule: LRSchedule, device: torch.device, *,
                  batch_sizes: tuple[int, int] | None = None, tokenizer: str | None = None) -> Backend:
    """The ``name`` backend on the Hugging Face weights at ``model_path``, its optimizer on ``schedule``
    (megatron-core is imported only when asked for).

    batch_sizes: (packed bins per step over all ranks, bins per micro-batch) when the loop hands a
    fixed number of micro-batches per step (SFT), which megatron checks against its layout at start;
    None for a varying number (RL's token budget). tokenizer: a path other than ``model_path``'s.
    """
    if name == BackendName.megatron:
        try:
            from nemo_ext.backends.megatron.backend import MegatronBackend
        except ModuleNotFoundError as e:
            if not (e.name or "").startswith("megatron"):
                raise
            raise ModuleNotFoundError(f"backend=megatron needs megatron-core, which does not import ({e}): "
                                      "pip install -e '.[gpu]' on a GPU machine (docs/megatron.md); on a CPU "
                                      "use backend=torch") from e

        return MegatronBackend(model_path, model_cfg, trainer_cfg, optim_cfg, schedule, device=device,
                               batch_sizes=batch_sizes, tokenizer=tokenizer)
    from nemo_ext.backends.torch_backend import TorchBackend

    return TorchBackend(model_path, model_cfg, trainer_cfg, optim_cfg, schedule, device, tokenizer=tokenizer)
