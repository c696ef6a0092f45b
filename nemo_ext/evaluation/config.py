"""The evaluation run's settings and the command line shared by ``eval/*``:

    CHECKPOINT [BENCHMARK ...] [key=value ...]

Keys are the fields of ``EvalConfig`` (``samples=2 max_new_tokens=256 tensor_parallel_size=2
output_dir=...``), or ``benchmarks.<name>.<key>=value`` to change one registry entry for this run
(``benchmarks.aime24.source.path=/data/aime24.jsonl``). An unknown or ill-typed key is an error naming
it. With no benchmark named, the registry's ``default_gpu`` list runs on a GPU machine, ``default_cpu``
(the embedded task) on a CPU one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nemo_ext.evaluation.registry import BenchmarkSpec, config_error, load_registry

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REGISTRY = REPO_ROOT / "eval" / "benchmarks.yaml"
DEFAULT_PUBLISHED = REPO_ROOT / "eval" / "published.yaml"


@dataclass
class EvalConfig:
    checkpoint: str = ""  # a Hugging Face model directory
    benchmarks: list[str] = field(default_factory=list)  # empty = the registry's default list
    benchmarks_file: str = str(DEFAULT_REGISTRY)
    output_dir: str | None = None  # default runs/eval/<model_name>
    model_name: str | None = None  # row label in reports; default from the checkpoint path
    # Overrides of every selected benchmark's own setting; null = keep the registry's.
    samples: int | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    limit: int | None = None  # evaluate only the first N problems of each benchmark (smoke tests)
    seed: int = 0  # base of every sample's seed
    # engine
    tensor_parallel_size: int = 1
    max_model_len: int | None = None  # null = the model's own context length
    gpu_memory_utilization: float = 0.85
    # scoring
    reward_workers: int | None = None  # null = one per CPU core


def default_model_name(checkpoint: str) -> str:
    """``runs/sft/hf`` -> ``sft``; ``/models/AceReason-7B`` -> ``AceReason-7B``."""
    path = Path(checkpoint.rstrip("/"))
    return path.parent.name if path.name in ("hf", "export", "") and path.parent.name else path.name


def parse_args(argv: list[str]) -> tuple[EvalConfig, list[str]]:
    """The run config from ``CHECKPOINT [BENCHMARK ...] [key=value ...]``, plus the registry overrides
    (the ``benchmarks.*`` keys, as a dotlist)."""
    if not argv or "=" in argv[0] or argv[0].startswith("-"):
        raise SystemExit("usage: CHECKPOINT [BENCHMARK ...] [key=value ...]")
    names = [a for a in argv[1:] if "=" not in a]
    pairs = [a for a in argv[1:] if "=" in a]
    registry_overrides = [p for p in pairs if p.startswith("benchmarks.")]
    run_overrides = [p for p in pairs if not p.startswith("benchmarks.")]
    try:
        merged = OmegaConf.merge(OmegaConf.structured(EvalConfig), OmegaConf.from_dotlist(run_overrides))
        cfg: EvalConfig = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise config_error("command line", err) from err
    cfg.checkpoint = argv[0]
    cfg.benchmarks = names or cfg.benchmarks
    cfg.model_name = cfg.model_name or default_model_name(cfg.checkpoint)
    cfg.output_dir = cfg.output_dir or str(Path("runs") / "eval" / cfg.model_name)
    return cfg, registry_overrides


def check_checkpoint(checkpoint: str) -> None:
    """Fail naming ``checkpoint`` unless it is a Hugging Face model directory, or a hub name
    (``org/model``, which only a machine with hub access can load)."""
    path = Path(checkpoint)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint}: not a Hugging Face model directory (no config.json)")
        return
    if path.exists() or checkpoint.startswith((".", "/", "~")) or checkpoint.count("/") != 1:
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist (expected a Hugging Face model directory, "
                                "such as runs/sft_tiny/hf, or a hub name org/model)")


def resolve_benchmarks(cfg: EvalConfig, registry_overrides: list[str]) -> dict[str, BenchmarkSpec]:
    """The selected registry entries with this run's overrides applied, in the order asked."""
    registry = load_registry(cfg.benchmarks_file, registry_overrides)
    names = cfg.benchmarks or (registry.default_gpu if _has_gpu() else registry.default_cpu)
    unknown = [n for n in names if n not in registry.benchmarks]
    if unknown:
        raise KeyError(f"{cfg.benchmarks_file}: unknown benchmark(s) {unknown}; "
                       f"known: {sorted(registry.benchmarks)}")
    out = {}
    for name in names:
        spec = registry.benchmarks[name]
        overrides = {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens}
        sampling = replace(spec.sampling, **{k: v for k, v in overrides.items() if v is not None})
        out[name] = replace(spec, sampling=sampling, samples=cfg.samples or spec.samples)
    return out


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()
