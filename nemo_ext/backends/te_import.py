"""Importing Transformer Engine so that it uses the cuDNN this process already has.

TE loads cuDNN itself when imported, preferring a system or toolkit copy (``CUDNN_HOME``,
``CUDNN_PATH``, ``CUDA_HOME``, ``/usr/local/cuda``, then the loader's path) over the one pip's torch
brings (the ``nvidia-cudnn`` wheel). Once torch has loaded its own (``import torch`` maps
``libcudnn.so.9``, SDPA's cuDNN attention adds ``libcudnn_graph``), a system that holds another 9.x
gives the process parts of both: a cuDNN sub-library not loaded yet (``libcudnn_cnn``) is found by
name on the loader's path, the system's, and binds to torch's ``libcudnn_graph``, and TE's import
fails inside the dynamic loader (the GPU machine, 2026-12-02: ``libcudnn_cnn.so.9: undefined symbol
..., version libcudnn_graph.so.9``). Pointing TE at torch's directory (``CUDNN_PATH``) was not enough
on its own: TE then loads ``libcudnn.so`` from there, already loaded, and the sub-library is still
looked up by name. So before TE's import every cuDNN library of the directory already mapped into
the process is loaded, graph first; a later lookup of any of them by name then finds the loaded one.
A library that does not preload is left to TE's loading, as before, and named if TE's import fails.
With no cuDNN in the process yet, TE's own search is left alone (torch then shares TE's copy).
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

# cuDNN 9's libraries in the order their dependencies need: graph first, the front library last
CUDNN_LOAD_ORDER = ("graph", "engines_precompiled", "engines_runtime_compiled", "heuristic", "ops", "cnn", "adv")
_VERSIONED_CUDNN = re.compile(r"^libcudnn(?:_([a-z_]+))?\.so\.\d+$")


def mapped_library_dir(name: str, maps: str) -> str | None:
    """The directory of the first ``lib<name>*.so*`` file in ``maps`` (``/proc/self/maps`` text)."""
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)  # address, perms, offset, device, inode, path (absent if anonymous)
        if len(fields) == 6:
            path = Path(fields[5].strip())
            if path.name.startswith(f"lib{name}") and ".so" in path.name:
                return str(path.parent)
    return None


def cudnn_libraries(directory: Path) -> list[Path]:
    """The cuDNN libraries of ``directory`` (``libcudnn[_part].so.<major>``), in ``CUDNN_LOAD_ORDER``;
    parts it does not know go after the known ones, ``libcudnn.so`` itself last."""
    found = [(m.group(1), p) for p in directory.iterdir() if (m := _VERSIONED_CUDNN.match(p.name))]
    rank = {part: i for i, part in enumerate(CUDNN_LOAD_ORDER)}
    return [p for part, p in sorted(found, key=lambda f: (rank.get(f[0], len(rank)) if f[0] else len(rank) + 1,
                                                          f[1].name))]


def preload_cudnn(directory: Path) -> list[str]:
    """Load ``cudnn_libraries(directory)`` into the process's global namespace. Best effort: a library
    that does not load is left to TE's own loading, as before; returns what failed, and why."""
    failed = []
    for library in cudnn_libraries(directory):
        try:
            ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            failed.append(f"{library.name}: {e}")
    return failed


@contextmanager
def _cudnn_env(directory: str) -> Iterator[None]:
    """``CUDNN_HOME`` and ``CUDNN_PATH`` set to ``directory`` while TE imports, the user's values back
    after. A user's other choice cannot be honoured: this process has a cuDNN already."""
    saved = {k: os.environ.get(k) for k in ("CUDNN_HOME", "CUDNN_PATH")}
    for key, value in saved.items():
        if value and Path(value).resolve() != Path(directory).resolve():
            warnings.warn(f"{key}={value} is ignored for Transformer Engine's import: this process has loaded the "
                          f"cuDNN in {directory} already, and two cuDNN builds in one process do not load",
                          stacklevel=3)
        os.environ[key] = directory
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def import_transformer_engine() -> ModuleType:
    """``transformer_engine.pytorch``, loaded with the process's cuDNN (module docstring). Raises
    ImportError where TE is not installed, RuntimeError naming the fix where its libraries fail to load."""
    if "transformer_engine.pytorch" in sys.modules:  # loaded already: its cuDNN is chosen
        return sys.modules["transformer_engine.pytorch"]
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux: nothing to align
        maps = ""
    directory = mapped_library_dir("cudnn", maps)
    failed = []
    try:
        if directory is None:
            import transformer_engine.pytorch as te
        else:
            failed = preload_cudnn(Path(directory))
            with _cudnn_env(directory):
                import transformer_engine.pytorch as te
    except OSError as e:
        raise RuntimeError(
            f"Transformer Engine's libraries failed to load: {e}. Two different cuDNN builds in one process "
            f"(pip's, with torch, and a system one) do this; this process had loaded {directory or 'no cuDNN'} "
            f"before{' (of which these did not preload: ' + '; '.join(failed) + ')' if failed else ''}. Import "
            "Transformer Engine before torch runs any cuDNN kernel, or remove one of the two cuDNN "
            "installations") from e
    return te


def te_available() -> bool:
    """Whether Transformer Engine imports here (``import_transformer_engine``; it stays imported)."""
    try:
        import_transformer_engine()
    except ImportError:
        return False
    return True
