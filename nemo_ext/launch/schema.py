"""Typed schema of ``launcher.yaml``: a ``cluster`` section, a ``pipeline`` of named stages, ``profiles``.

The file is merged onto these dataclasses by OmegaConf (as the recipe YAML is, ``nemo_ext.config``),
so an unknown or ill-typed key fails with its full path (``pipeline.sft.nodez``) and the allowed keys.
A profile (``--profile tiny``) is a partial copy of ``cluster`` and ``pipeline`` merged on top before
``${...}`` interpolations are resolved; lists in a profile replace the base's lists whole.
``validate`` checks what types cannot (one of script/shell, counts, time format, dependencies).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException


class LaunchConfigError(ValueError):
    """A bad launcher.yaml: the message names the file, the key and what is expected."""


@dataclass
class ClusterConfig:
    partition: str | None = None  # null = the cluster's default partition
    account: str | None = None
    qos: str | None = None
    time: str = "04:00:00"  # a stage's time limit unless it sets its own (SLURM's D-HH:MM:SS forms)
    gpus_per_node: int = 0  # a stage's GPUs per node unless it sets its own; 0 = no GPU request
    container_image: str | None = None  # pyxis/enroot: every srun runs inside it (--container-image)
    container_mounts: list[str] = field(default_factory=list)  # src:dst, for --container-mounts
    setup: list[str] = field(default_factory=list)  # shell lines run in each job before its srun
    python: str = "python"  # the interpreter on the compute nodes; shell stages see it as $PYTHON
    output_root: str = "runs/launch"  # relative paths are under workdir; scripts and logs: <root>/launch/
    workdir: str | None = None  # the repository checkout jobs run in; null = launcher.yaml's directory
    job_prefix: str = "acereason"  # job names are <prefix>-<stage>
    sbatch_args: list[str] = field(default_factory=list)  # extra #SBATCH lines of every stage
    srun_args: list[str] = field(default_factory=list)  # extra srun options of every stage


@dataclass
class StageConfig:
    # Exactly one of: a Hydra entry point run with `overrides` (one process per srun task), or a shell line.
    script: str | None = None
    overrides: list[str] = field(default_factory=list)
    shell: str | None = None
    output: str | None = None  # the directory this stage writes; later stages read ${pipeline.<name>.output}
    nodes: int = 1
    gpus_per_node: int | None = None  # null = cluster.gpus_per_node
    tasks_per_node: int | None = None  # srun tasks per node; null = one per GPU for a script, else 1
    cpus_per_task: int | None = None
    time: str | None = None  # null = cluster.time
    depends_on: list[str] | None = None  # null = the previous enabled stage; [] = none
    enabled: bool = True  # false: not submitted, and dependencies on it are dropped
    env: dict[str, str] = field(default_factory=dict)  # exported in the job before srun
    sbatch_args: list[str] = field(default_factory=list)
    srun_args: list[str] = field(default_factory=list)


@dataclass
class LauncherConfig:
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    pipeline: dict[str, StageConfig] = field(default_factory=dict)


_TIME = re.compile(r"^(\d+|\d+:\d{2}|\d+:\d{2}:\d{2}|\d+-\d+|\d+-\d+:\d{2}|\d+-\d+:\d{2}:\d{2}|UNLIMITED|INFINITE)$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def _config_error(where: str, err: OmegaConfBaseException) -> LaunchConfigError:
    key = getattr(err, "full_key", "") or "?"
    message = str(err).splitlines()[0]
    if isinstance(err, ConfigKeyError) and getattr(err, "object_type", None) is not None:
        message += f" (allowed keys: {', '.join(f.name for f in fields(err.object_type))})"
    return LaunchConfigError(f"{where}: key {key!r}: {message}")


def load_launcher(path: str | Path, profile: str | None = None) -> LauncherConfig:
    """``path`` with ``profile`` merged on top, interpolations resolved, checked; ``cluster.workdir``
    defaults to the file's directory (absolute)."""
    path = Path(path)
    try:
        raw = OmegaConf.load(path)
    except FileNotFoundError as err:
        raise LaunchConfigError(f"{path}: launcher file not found") from err
    except yaml.YAMLError as err:
        raise LaunchConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, DictConfig):
        raise LaunchConfigError(f"{path}: expected a mapping with keys cluster, pipeline, profiles")
    profiles = raw.pop("profiles", None) or {}
    if not isinstance(profiles, DictConfig | dict):
        raise LaunchConfigError(f"{path}: key 'profiles': expected a mapping of profile name -> overrides")
    layers = [(str(path), raw)]
    if profile is not None:
        if profile not in profiles:
            raise LaunchConfigError(f"{path}: key 'profiles.{profile}': no such profile; "
                                    f"defined: {sorted(profiles) or 'none'}")
        layers.append((f"{path} (profile {profile!r})", profiles[profile]))
    merged = OmegaConf.structured(LauncherConfig)
    for where, layer in layers:
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as err:
            raise _config_error(where, err) from err
    try:
        cfg: LauncherConfig = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise _config_error(layers[-1][0], err) from err
    if cfg.cluster.workdir is None:
        cfg.cluster.workdir = str(path.resolve().parent)
    return validate(cfg, layers[-1][0])


def _check(ok: bool, where: str, key: str, expected: str, value) -> None:
    if not ok:
        raise LaunchConfigError(f"{where}: key {key!r}: expected {expected}, got {value!r}")


def validate(cfg: LauncherConfig, where: str = "launcher.yaml") -> LauncherConfig:
    """Checks beyond types, each error naming the key; returns ``cfg``."""
    c = cfg.cluster
    _check(bool(_TIME.match(c.time)), where, "cluster.time", "a SLURM time (HH:MM:SS, D-HH:MM:SS, ...)", c.time)
    _check(c.gpus_per_node >= 0, where, "cluster.gpus_per_node", "an integer >= 0", c.gpus_per_node)
    _check(bool(cfg.pipeline), where, "pipeline", "at least one stage", dict(cfg.pipeline))
    seen: list[str] = []
    for name, s in cfg.pipeline.items():
        key = f"pipeline.{name}"
        _check(bool(_NAME.match(name)), where, key, "a stage name of letters, digits, '_', '-', '.'", name)
        _check((s.script is None) != (s.shell is None), where, f"{key}.script/shell",
               "exactly one of them (a Hydra entry point, or a shell line)", (s.script, s.shell))
        _check(not s.overrides or s.script is not None, where, f"{key}.overrides",
               "no overrides on a shell stage (they are arguments of `script`)", s.overrides)
        _check(s.nodes >= 1, where, f"{key}.nodes", "an integer >= 1", s.nodes)
        for k in ("gpus_per_node", "tasks_per_node", "cpus_per_task"):
            v, low = getattr(s, k), 0 if k == "gpus_per_node" else 1
            _check(v is None or v >= low, where, f"{key}.{k}", f"null or an integer >= {low}", v)
        _check(s.time is None or bool(_TIME.match(s.time)), where, f"{key}.time",
               "null or a SLURM time (HH:MM:SS, D-HH:MM:SS, ...)", s.time)
        for dep in s.depends_on or []:
            _check(dep in seen, where, f"{key}.depends_on", f"names of earlier stages ({', '.join(seen) or 'none'})",
                   dep)
        seen.append(name)
    return cfg
