"""Submit the pipeline of ``launcher.yaml`` to SLURM: one sbatch job per stage, chained by afterok.

    python -m nemo_ext.launch launcher.yaml                    # submit every incomplete stage
    python -m nemo_ext.launch launcher.yaml --profile tiny     # the embedded default on one CPU node
    python -m nemo_ext.launch launcher.yaml --dry-run          # print the scripts, submit nothing
    python -m nemo_ext.launch launcher.yaml --only sft         # one stage (its dependencies must be done)
    python -m nemo_ext.launch launcher.yaml --status           # where each stage stands
    python -m nemo_ext.launch launcher.yaml --wait             # submit, then wait and report

Re-running submits only stages without a DONE marker; see docs/launch.md.
"""

from __future__ import annotations

import argparse
import sys

from nemo_ext.launch.render import plan
from nemo_ext.launch.schema import LaunchConfigError, load_launcher
from nemo_ext.launch.submit import status, submit, wait


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nemo_ext.launch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="launcher.yaml")
    p.add_argument("--profile", help="a name under `profiles:` merged over the file (e.g. tiny)")
    p.add_argument("--only", action="append", metavar="STAGE", help="submit only this stage (repeatable)")
    p.add_argument("--force", action="store_true", help="resubmit selected stages even if complete")
    p.add_argument("--dry-run", action="store_true", help="print the scripts and sbatch commands; submit nothing")
    p.add_argument("--write-scripts", metavar="DIR", help="with --dry-run: also write <stage>.sbatch files here")
    p.add_argument("--status", action="store_true", help="print each stage's state and exit")
    p.add_argument("--wait", action="store_true", help="after submitting, wait for the jobs and print the status; "
                                                       "exit 1 unless every stage is complete")
    a = p.parse_args(argv)
    if a.write_scripts and not a.dry_run:
        p.error("--write-scripts goes with --dry-run")
    source = a.config + (f" --profile {a.profile}" if a.profile else "")
    try:
        cfg = load_launcher(a.config, a.profile)
        jobs = plan(cfg)
        if not a.status:
            submit(cfg, jobs, source, a.only, a.force, a.dry_run, a.write_scripts)
            if a.dry_run or not a.wait:
                return 0
            wait(jobs)
        lines, complete = status(jobs, a.only)
    except (LaunchConfigError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines), flush=True)
    return 0 if complete or not a.wait else 1


if __name__ == "__main__":
    sys.exit(main())
