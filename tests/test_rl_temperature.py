"""Temperature control on the temperature-adjusted entropy (nemo_ext/rl/temperature.py)."""

import pytest
import torch

from nemo_ext.config.rl import TemperatureConfig, TemperatureMode
from nemo_ext.rl.temperature import TemperatureController, adaptive_step, mean_entropy, nearest_to_target


def test_mean_entropy_over_response_tokens_only():
    assert mean_entropy(torch.tensor([0.2, 0.4, 9.0]), torch.tensor([1.0, 1.0, 0.0])) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        mean_entropy(torch.tensor([1.0]), torch.tensor([0.0]))


def test_probe_picks_the_temperature_nearest_the_target():
    # the paper's ablation: T=0.6 below 0.2, T=0.85 around 0.3, T=1.0 at 0.4
    assert nearest_to_target({0.6: 0.15, 0.85: 0.28, 1.0: 0.41}, 0.3) == 0.85
    assert nearest_to_target({0.9: 0.4, 0.7: 0.2}, 0.3) == 0.7  # a tie goes to the lower temperature


def test_adaptive_step_is_proportional_and_bounded():
    cfg = TemperatureConfig(mode=TemperatureMode.adaptive, gain=0.5, max_step=0.05, min=0.5, max=1.5)
    assert adaptive_step(1.0, 0.36, cfg) == pytest.approx(0.97)  # 0.5 * (0.3 - 0.36) = -0.03
    assert adaptive_step(1.0, 0.10, cfg) == pytest.approx(1.05)  # +0.1 bounded to +0.05
    assert adaptive_step(1.0, 0.90, cfg) == pytest.approx(0.95)  # -0.3 bounded to -0.05
    assert adaptive_step(1.49, 0.0, cfg) == pytest.approx(1.5)  # within [min, max]
    assert adaptive_step(0.52, 2.0, cfg) == pytest.approx(0.5)


def test_controller_modes_and_state():
    fixed = TemperatureController.start(TemperatureConfig(value=0.85))
    assert not fixed.needs_probe and fixed.observe(0.9) == 0.85
    adaptive = TemperatureController.start(TemperatureConfig(mode=TemperatureMode.adaptive, value=1.0))
    assert adaptive.observe(0.1) == pytest.approx(1.05) and adaptive.observe(0.1) == pytest.approx(1.1)
    probe = TemperatureController.start(TemperatureConfig(mode=TemperatureMode.probe, value=1.0))
    assert probe.needs_probe
    assert probe.set_probe({0.6: 0.1, 0.8: 0.31, 1.0: 0.5}) == 0.8
    assert not probe.needs_probe and probe.observe(0.9) == 0.8  # probe mode holds its pick
    restored = TemperatureController.start(TemperatureConfig(mode=TemperatureMode.probe, value=1.0))
    restored.load_state_dict(probe.state_dict())
    assert (restored.temperature, restored.needs_probe) == (0.8, False)
    with pytest.raises(ValueError, match="temperature.value"):
        TemperatureController.start(TemperatureConfig(value=2.0, max=1.5))
