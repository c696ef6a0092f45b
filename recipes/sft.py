"""Supervised fine-tuning: ``python recipes/sft.py [key=value ...]``.

With no arguments it trains the embedded default (a tiny Qwen2 on the synthetic arithmetic task) on
this machine's CPU in a few minutes. The AceReason-Nemotron 1.1 SFT of Qwen2.5-Math-7B:
``python recipes/sft.py --config-name sft/acereason_7b trainer.devices=8``. Before any rank starts,
the model and the packed shards are checked (nemo_ext/sft/preflight.py); a problem ends the run with
exit status 1. Configs: recipes/conf/sft/*.yaml; schema: nemo_ext/config/schema.py.
"""

from functools import partial

import hydra

from nemo_ext.config.load import as_schema, load_config, register_schemas
from nemo_ext.config.schema import SFTConfig
from nemo_ext.dist import launch
from nemo_ext.output_lock import OutputLocked
from nemo_ext.preflight import PreflightError
from nemo_ext.sft.loop import run_sft
from nemo_ext.sft.preflight import check_sft_inputs

register_schemas()


@hydra.main(version_base=None, config_path="conf", config_name="sft/tiny")
def main(cfg) -> None:
    sft_cfg = load_config(cfg, partial(as_schema, schema=SFTConfig))
    try:
        check_sft_inputs(sft_cfg)  # every input, before any rank or model is built
        launch(run_sft, sft_cfg.trainer.devices, sft_cfg)
    except (PreflightError, FileNotFoundError, OutputLocked) as e:  # bad inputs or a busy output_dir: no traceback
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
