"""Rewards of AceReason-Nemotron: math answer verification and sandboxed code execution.

``score_math`` / ``score_code`` score one response in this process; ``RewardPool`` scores many in
parallel worker processes with hard time limits. RL rollouts and evaluation use the same functions.
"""

from nemo_ext.rewards.code import score_code
from nemo_ext.rewards.common import Verdict
from nemo_ext.rewards.math import score_math
from nemo_ext.rewards.pool import RewardPool

__all__ = ["RewardPool", "Verdict", "score_code", "score_math"]
