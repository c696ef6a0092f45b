"""``launcher.yaml`` -> one sbatch script per pipeline stage, chained by ``afterok`` dependencies.

    python -m nemo_ext.launch launcher.yaml [--profile tiny] [--dry-run] [--only STAGE] [--status] [--wait]

``schema`` (the typed YAML and its checks), ``render`` (pure: stages -> job plan -> script text and
sbatch command), ``marker`` (the DONE / FAILED files a job writes at its end), ``submit`` (the only
module that calls SLURM: sbatch, squeue, scancel). How to use it: docs/launch.md.

This package imports nothing heavy: a job's last line runs ``python -m nemo_ext.launch.marker``.
"""
