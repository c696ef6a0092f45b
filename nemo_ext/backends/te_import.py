"""Importing Transformer Engine so that it uses the cuDNN this process already has.

TE loads cuDNN itself when imported, preferring a system or toolkit copy (``CUDNN_HOME``,
``CUDNN_PATH``, ``CUDA_HOME``, ``/usr/local/cuda``, then the loader's path) over the one pip's torch
brings (the ``nvidia-cudnn`` wheel). Where torch has already loaded its own (SDPA's cuDNN attention
does, on Hopper) and the system holds another 9.x, the process ends up with parts of both, and TE's
import fails inside the dynamic loader (seen on the GPU machine, 2026-12-02: ``libcudnn_cnn.so.9:
undefined symbol ..., version libcudnn_graph.so.9``). So before importing TE, a cuDNN already mapped
into the process is handed to TE as ``CUDNN_PATH``; otherwise TE's own search is left alone.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType


def mapped_library_dir(name: str, maps: str) -> str | None:
    """The directory of the first ``lib<name>*.so*`` file in ``maps`` (``/proc/self/maps`` text)."""
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)  # address, perms, offset, device, inode, path (absent if anonymous)
        if len(fields) == 6:
            path = Path(fields[5].strip())
            if path.name.startswith(f"lib{name}") and ".so" in path.name:
                return str(path.parent)
    return None


def cudnn_for_te(environ: Mapping[str, str], maps: str) -> str | None:
    """The ``CUDNN_PATH`` to set before TE's import, or None to leave TE's search alone (a cuDNN path
    already set by the user, or none loaded yet)."""
    if environ.get("CUDNN_HOME") or environ.get("CUDNN_PATH"):
        return None
    return mapped_library_dir("cudnn", maps)


def import_transformer_engine() -> ModuleType:
    """``transformer_engine.pytorch``, loaded with the process's cuDNN (module docstring). Raises
    ImportError where TE is not installed, RuntimeError naming the fix where its libraries fail to load."""
    if "transformer_engine.pytorch" in sys.modules:  # loaded already: its cuDNN is chosen
        return sys.modules["transformer_engine.pytorch"]
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux: nothing to align
        maps = ""
    path = cudnn_for_te(os.environ, maps)
    if path is not None:
        os.environ["CUDNN_PATH"] = path
    try:
        import transformer_engine.pytorch as te
    except OSError as e:
        raise RuntimeError(
            f"Transformer Engine's libraries failed to load: {e}. Two different cuDNN builds in one process "
            "(pip's, with torch, and a system one) do this: set CUDNN_PATH to the directory of the cuDNN torch "
            "uses (python -c 'import nvidia.cudnn, os; print(os.path.dirname(nvidia.cudnn.__file__))'/lib), "
            "or import Transformer Engine before torch runs any cuDNN kernel") from e
    return te
