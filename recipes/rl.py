"""GRPO with staged response lengths: ``python recipes/rl.py [key=value ...]``.

With no arguments it runs the embedded default's tiny schedule (recipes/conf/rl/tiny.yaml) on this
machine's CPU, starting from the SFT recipe's export (``runs/sft_tiny/hf``, written by
``python recipes/sft.py``); any other start: ``policy.init=<Hugging Face dir>``. It prints held-out
accuracy before RL and after every stage. The AceReason-Nemotron 1.1 schedule:
``python recipes/rl.py --config-name rl/acereason_7b policy.init=<SFT export>``; ``trainer.devices=N``
runs N data-parallel ranks on this node (torchrun or SLURM tasks work too).
Configs: recipes/conf/rl/*.yaml; schema: nemo_ext/config/rl.py; the loop: nemo_ext/rl/grpo.py.
"""

import hydra

from nemo_ext.config.load import load_config, register_schemas
from nemo_ext.config.rl import RLConfig, validate_rl_config
from nemo_ext.dist import launch
from nemo_ext.output_lock import OutputLocked
from nemo_ext.rl.grpo import run_rl

register_schemas({"rl_schema": RLConfig})


@hydra.main(version_base=None, config_path="conf", config_name="rl/tiny")
def main(cfg) -> None:
    rl_cfg = load_config(cfg, RLConfig, validate_rl_config)
    try:
        launch(run_rl, rl_cfg.trainer.devices, rl_cfg)
    except (FileNotFoundError, OutputLocked) as e:  # a bad path or a busy output_dir: one line, no traceback
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
