"""nemo_ext/backends/te_import.py: which cuDNN Transformer Engine is given before its import."""

import os
import warnings

import pytest

from nemo_ext.backends.te_import import _cudnn_env, cudnn_libraries, mapped_library_dir, preload_cudnn

PIP_CUDNN = "/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cudnn/lib"
MAPS = f"""\
559a21859000-559a2185b000 r--p 00000000 fe:00 260386                     /usr/bin/python3.12
7f2f90000000-7f2f90021000 rw-p 00000000 00:00 0
7f2f95000000-7f2f95100000 r-xp 00000000 fe:00 1234                       /lib/x86_64-linux-gnu/libcuda.so.1
7f2f96000000-7f2f96100000 r-xp 00000000 fe:00 4321                       {PIP_CUDNN}/libcudnn_graph.so.9
7f2f97000000-7f2f97100000 r-xp 00000000 fe:00 4322                       {PIP_CUDNN}/libcudnn.so.9
7ffd1000-7ffd2000 rw-p 00000000 00:00 0                                  [stack]
"""


def test_the_mapped_cudnn_directory_is_found_and_nothing_else_matches():
    assert mapped_library_dir("cudnn", MAPS) == PIP_CUDNN
    assert mapped_library_dir("cuda", MAPS) == "/lib/x86_64-linux-gnu"
    assert mapped_library_dir("nccl", MAPS) is None
    assert mapped_library_dir("cudnn", "") is None


PIP_WHEEL_FILES = ["libcudnn.so.9", "libcudnn_adv.so.9", "libcudnn_cnn.so.9", "libcudnn_engines_precompiled.so.9",
                   "libcudnn_engines_runtime_compiled.so.9", "libcudnn_graph.so.9", "libcudnn_heuristic.so.9",
                   "libcudnn_ops.so.9", "libcudnn_future.so.9"]


def test_every_cudnn_library_of_the_directory_is_loaded_graph_first_and_the_front_library_last(tmp_path):
    for name in PIP_WHEEL_FILES + ["libcudnn.so", "libcudnn_ops.so", "libcudnn.so.9.12.0", "libcudart.so.13", "x.h"]:
        (tmp_path / name).touch()
    assert [p.name for p in cudnn_libraries(tmp_path)] == [
        "libcudnn_graph.so.9", "libcudnn_engines_precompiled.so.9", "libcudnn_engines_runtime_compiled.so.9",
        "libcudnn_heuristic.so.9", "libcudnn_ops.so.9", "libcudnn_cnn.so.9", "libcudnn_adv.so.9",
        "libcudnn_future.so.9",  # a part this list does not know: after the known ones
        "libcudnn.so.9"]


def test_a_library_that_does_not_preload_is_reported_not_raised(tmp_path):
    for name in ("libcudnn_graph.so.9", "libcudnn.so.9"):
        (tmp_path / name).write_bytes(b"not an ELF file")
    failed = preload_cudnn(tmp_path)
    assert [f.split(":")[0] for f in failed] == ["libcudnn_graph.so.9", "libcudnn.so.9"]


@pytest.mark.parametrize("user", [None, "/usr/local/cudnn"])
def test_te_imports_with_the_loaded_cudnn_and_the_users_setting_comes_back(monkeypatch, user):
    for key in ("CUDNN_HOME", "CUDNN_PATH"):
        monkeypatch.delenv(key, raising=False)
    if user:
        monkeypatch.setenv("CUDNN_HOME", user)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _cudnn_env(PIP_CUDNN):
            assert os.environ["CUDNN_HOME"] == os.environ["CUDNN_PATH"] == PIP_CUDNN
    assert os.environ.get("CUDNN_HOME") == user and "CUDNN_PATH" not in os.environ
    # a user's other cuDNN cannot be honoured once the process has one: said, naming both
    assert [str(w.message).split(" is ignored")[0] for w in caught] == ([f"CUDNN_HOME={user}"] if user else [])
