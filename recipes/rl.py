"""GRPO with staged response lengths: ``python recipes/rl.py [key=value ...]``.

With no arguments it runs the embedded default's tiny schedule (recipes/conf/rl/tiny.yaml) on this
machine's CPU, starting from the SFT recipe's export (``runs/sft_tiny/hf``, written by
``python recipes/sft.py``); any other start: ``policy.init=<Hugging Face dir>``. It prints held-out
accuracy before RL and after every stage. The AceReason-Nemotron 1.1 schedule:
``python recipes/rl.py --config-name rl/acereason_7b policy.init=<SFT export>``; ``trainer.devices=N``
runs N data-parallel ranks on this node (torchrun or SLURM tasks work too). Before any rank starts,
every stage's inputs are checked (nemo_ext/rl/preflight.py); a problem ends the run with exit status 1.
Configs: recipes/conf/rl/*.yaml; schema: nemo_ext/config/rl.py; the loop: nemo_ext/rl/grpo.py.
"""

import hydra

from nemo_ext.config.load import load_config, register_schemas
from nemo_ext.config.rl import RL_HYDRA_SCHEMA, as_rl_config
from nemo_ext.dist import launch
from nemo_ext.output_lock import OutputLocked
from nemo_ext.preflight import PreflightError
from nemo_ext.rl.grpo import run_rl
from nemo_ext.rl.preflight import check_rl_inputs

register_schemas({"rl_schema": RL_HYDRA_SCHEMA})


@hydra.main(version_base=None, config_path="conf", config_name="rl/tiny")
def main(cfg) -> None:
    rl_cfg = load_config(cfg, as_rl_config)
    try:
        check_rl_inputs(rl_cfg)  # every input, before any rank or model is built
        launch(run_rl, rl_cfg.trainer.devices, rl_cfg)
    except (PreflightError, FileNotFoundError, OutputLocked) as e:  # bad inputs or a busy output_dir: no traceback
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
