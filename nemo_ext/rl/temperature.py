"""Training-temperature control on the temperature-adjusted entropy.

AceReason-Nemotron 1.1 (arXiv 2506.13284; ../shared/PAPER.md "temperature rule" row) chooses the
rollout temperature so that the temperature-adjusted entropy stays near 0.3: T = 0.6 kept it below
0.2 and explored too little, T = 1.0 started at 0.4 and was unstable, T = 0.85 (0.26 -> 0.38) was
best. The paper gives no formula; here the temperature-adjusted entropy is the mean, over response
tokens, of the entropy (nats) of the temperature-scaled next-token distribution softmax(z / T),
measured on the rollouts themselves (the trainer's update forward and log-prob pass return it at no
extra cost).

Three modes per stage: ``fixed`` (the configured T), ``probe`` (at stage start roll out a probe
batch at each candidate T and keep the one whose entropy is nearest the target), ``adaptive`` (start
at the configured T and after each step move T by gain * (target - entropy), at most max_step,
within [min, max]; entropy rises with T). Left out: entropy bonuses or entropy-based token
selection (the paper uses none), and any schedule other than this proportional correction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from nemo_ext.config.rl import TemperatureConfig, TemperatureMode


def mean_entropy(entropy_T: torch.Tensor, mask_T: torch.Tensor) -> float:
    """Temperature-adjusted entropy (nats/token): the mask-weighted mean of entropy_T ([T] each)."""
    total = float(mask_T.sum())
    if total == 0:
        raise ValueError("mean_entropy needs at least one response token")
    return float((entropy_T * mask_T).sum()) / total


def nearest_to_target(measured: Mapping[float, float], target: float) -> float:
    """The temperature whose measured entropy is nearest ``target``; a tie goes to the lower one."""
    if not measured:
        raise ValueError("the probe measured no temperature")
    return min(sorted(measured), key=lambda t: abs(measured[t] - target))


def adaptive_step(temperature: float, entropy: float, cfg: TemperatureConfig) -> float:
    """One bounded proportional correction of the temperature toward the target entropy."""
    change = cfg.gain * (cfg.target_entropy - entropy)
    change = max(-cfg.max_step, min(cfg.max_step, change))
    return max(cfg.min, min(cfg.max, temperature + change))


@dataclass
class TemperatureController:
    """The stage's temperature, its mode's state, and the exact state for resuming."""

    cfg: TemperatureConfig
    temperature: float
    probed: bool = False

    @classmethod
    def start(cls, cfg: TemperatureConfig) -> TemperatureController:
        if not cfg.min <= cfg.value <= cfg.max:
            raise ValueError(f"temperature.value {cfg.value} outside [temperature.min, temperature.max]")
        return cls(cfg=cfg, temperature=cfg.value)

    @property
    def needs_probe(self) -> bool:
        return self.cfg.mode is TemperatureMode.probe and not self.probed

    def set_probe(self, measured: Mapping[float, float]) -> float:
        """Adopt the probe's pick from ``measured`` (temperature -> mean entropy)."""
        self.temperature = nearest_to_target(measured, self.cfg.target_entropy)
        self.probed = True
        return self.temperature

    def observe(self, entropy: float) -> float:
        """The step's measured entropy; returns the temperature for the next step."""
        if self.cfg.mode is TemperatureMode.adaptive:
            self.temperature = adaptive_step(self.temperature, entropy, self.cfg)
        return self.temperature

    def state_dict(self) -> dict:
        return {"temperature": self.temperature, "probed": self.probed}

    def load_state_dict(self, state: Mapping) -> None:
        self.temperature = float(state["temperature"])
        self.probed = bool(state["probed"])
