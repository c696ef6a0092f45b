"""nemo_ext/backends/te_import.py: which cuDNN Transformer Engine is pointed at before its import."""

from nemo_ext.backends.te_import import cudnn_for_te, mapped_library_dir

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


def test_te_gets_the_loaded_cudnn_unless_the_user_chose_one():
    assert cudnn_for_te({}, MAPS) == PIP_CUDNN
    assert cudnn_for_te({"CUDNN_PATH": "/usr/local/cudnn"}, MAPS) is None
    assert cudnn_for_te({"CUDNN_HOME": "/usr/local/cudnn"}, MAPS) is None
    # no cuDNN in the process yet: TE's own search decides, and torch then shares TE's copy
    assert cudnn_for_te({}, MAPS.replace("libcudnn", "libother")) is None
