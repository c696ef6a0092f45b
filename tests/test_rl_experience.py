"""Rollout groups -> packed micro-batches and their statistics; RL prompt files (nemo_ext/rl)."""

import json
import math
from dataclasses import dataclass

import pytest
import torch

from nemo_ext.config.rl import AdvantageConfig, AdvantageEstimator, StageConfig, Task
from nemo_ext.data.prompts import render_prompt
from nemo_ext.rl.experience import Group, build_experience, logprob_pass_stats, step_tensors
from nemo_ext.rl.prompts import RLPrompt, load_stage_prompts


@dataclass
class FakeCompletion:  # the fields of nemo_ext.generation.Completion the loop reads
    token_ids: list[int]
    logprobs: list[float]
    truncated: bool


PROMPT = RLPrompt("p", Task.math, "text", "7")


def group() -> Group:
    return Group(PROMPT, [1, 2], [FakeCompletion([3, 4], [-0.1, -0.2], False), FakeCompletion([5], [-0.3], True)],
                 rewards=[1.0, 0.0], passed=[True, False])


def test_step_tensors():
    t = step_tensors([group()])
    assert t.rewards.tolist() == [[1.0, 0.0]] and t.passed.tolist() == [[True, False]]
    assert t.truncated.tolist() == [[False, True]] and t.lengths.tolist() == [[2, 1]]


def experience(group_: Group, micro_batch_tokens: int, estimator: str = "dr_grpo", overlong_filter: bool = True):
    """dr_grpo: the advantages are r - mean, easy to write down."""
    return build_experience([group_], AdvantageConfig(estimator=AdvantageEstimator(estimator)), overlong_filter,
                            micro_batch_tokens, max_response_len=4)


def test_experience_is_built_on_one_torch_thread_and_the_count_restored():
    """build_experience runs its tensor work on one thread (parallel regions from 32,768 elements stall
    on a busy host) and hands the process its own thread count back; the micro-batches are the same on
    any count, here with a response past that size."""
    long = Group(PROMPT, [1, 2], [FakeCompletion(list(range(40_000)), [-0.5] * 40_000, False),
                                  FakeCompletion([5], [-0.3], False)], rewards=[1.0, 0.0], passed=[True, False])
    seen = []

    class Recording(FakeCompletion):
        @property
        def token_ids(self):  # read while building: the thread count of that moment
            seen.append(torch.get_num_threads())
            return self._ids

        @token_ids.setter
        def token_ids(self, ids):
            self._ids = ids

    process_threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a count to come back to, other than the one set inside
    try:
        recorded = Group(PROMPT, [1, 2], [Recording(c.token_ids, c.logprobs, c.truncated) for c in long.completions],
                         long.rewards, long.passed)
        one = build_experience([recorded], AdvantageConfig(), False, 32_768, 40_000)
        assert set(seen) == {1} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(process_threads)
    default = build_experience([long], AdvantageConfig(), False, 32_768, 40_000, threads=None)
    for a, b in zip(one.trained, default.trained, strict=True):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.loss_mask, b.loss_mask)
        assert all(torch.equal(a.token_fields[k], b.token_fields[k]) for k in b.token_fields)


def test_the_experience_batch_is_built_once_from_the_rewards():
    # rewards [1, 0]: dr_grpo advantages [0.5, -0.5]; the second response is truncated, so overlong
    # filtering gives it weight 0 (its reward still entered the mean)
    batch = experience(group(), micro_batch_tokens=4)
    assert batch.responses.rewards.tolist() == [[1.0, 0.0]]
    assert batch.advantages_NG.tolist() == [[0.5, -0.5]] and batch.weights_NG.tolist() == [[1.0, 0.0]]
    (first,), (second,) = batch.trained, batch.untrained  # 4 + 3 > 4 tokens: two bins
    # sequence [1, 2, 3, 4]: position j predicts token j + 1; response tokens 3 and 4 are trained
    assert first.input_ids.tolist() == [1, 2, 3, 4] and first.targets.tolist() == [2, 3, 4, 0]
    assert first.loss_mask.tolist() == [0, 1, 1, 0]
    assert first.token_fields["advantages"].tolist() == [0, 0.5, 0.5, 0]
    assert first.token_fields["weights"].tolist() == [0, 1, 1, 0]
    assert torch.allclose(first.token_fields["rollout_logprobs"], torch.tensor([0, -0.1, -0.2, 0]))
    assert second.input_ids.tolist() == [1, 2, 5] and second.token_fields["weights"].tolist() == [0, 0, 0]
    # the normalizer counts every micro-batch's weighted tokens (2 + 0), the metrics only the trained ones
    assert (batch.normalizer.tokens, batch.normalizer.sequences, batch.normalizer.metric_tokens) == (2.0, 1, 2.0)
    (both,) = experience(group(), micro_batch_tokens=7, overlong_filter=False).trained
    assert both.cu_seqlens.tolist() == [0, 4, 7] and both.token_fields["weights"].tolist() == [0, 1, 1, 0, 0, 1, 0]


def test_responses_without_a_gradient_term_are_packed_apart():
    # weight 0 (filtered) and advantage 0 (equal rewards) go to their own micro-batch even though
    # everything fits in one; they count in the normalizer, not in the metrics' tokens
    batch = experience(group(), micro_batch_tokens=7)
    ((live,), (dead,)) = batch.trained, batch.untrained
    assert live.input_ids.tolist() == [1, 2, 3, 4] and dead.input_ids.tolist() == [1, 2, 5]
    equal = Group(PROMPT, [1, 2], group().completions, rewards=[1.0, 1.0], passed=[True, True])
    batch = experience(equal, micro_batch_tokens=7, overlong_filter=False)
    assert batch.trained == [] and batch.advantages_NG.tolist() == [[0.0, 0.0]]
    assert (batch.normalizer.tokens, batch.normalizer.metric_tokens) == (3.0, 0.0)


def test_log_prob_pass_entropy_and_mismatch():
    (mb,) = experience(Group(PROMPT, [1, 2], group().completions, [0.0, 0.0], [False, False]), 7,
                       overlong_filter=False).untrained
    # trainer log-probs at the 3 response tokens (positions 1, 2, 5): -0.1 (equal), -0.2 + ln 2, -0.3
    trainer = torch.tensor([9.0, -0.1, -0.2 + math.log(2), 9.0, 9.0, -0.3, 9.0])
    entropy = torch.tensor([9.0, 0.2, 0.4, 9.0, 9.0, 0.6, 9.0])
    stats = logprob_pass_stats([mb], [(trainer, entropy)]).metrics()
    assert "old_logprobs" not in mb.token_fields  # on-policy: the loss takes the current ones
    assert stats["entropy"] == pytest.approx(0.4)
    # k3 at log-ratio ln 2: 2 - 1 - ln 2; the other two tokens 0
    assert stats["mismatch/kl"] == pytest.approx((1 - math.log(2)) / 3, rel=1e-5)
    assert stats["mismatch/max_abs"] == pytest.approx(math.log(2), rel=1e-5)


def test_prompt_files_math_and_code(tmp_path):
    math_file = tmp_path / "math.jsonl"
    math_file.write_text(json.dumps({"id": "a", "question": "1+1?", "answer": "2"}) + "\n\n"
                         + json.dumps({"question": "2+2?", "answer": 4}) + "\n")
    prompts = load_stage_prompts(StageConfig(name="m", data=str(math_file), steps=1), seed=0)
    assert list(prompts) == ["a", "3"]  # a missing id defaults to the line number
    assert prompts["3"].reference == "4" and prompts["a"].text == render_prompt("1+1?", "math")
    code_file = tmp_path / "code.jsonl"
    tests = [{"input": "1\n", "output": "2\n", "testtype": "stdin"}]
    code_file.write_text(json.dumps({"id": "c", "question": "Add one.", "tests": tests}) + "\n")
    code = load_stage_prompts(StageConfig(name="c", task=Task.code, data=str(code_file), steps=1), seed=0)
    assert code["c"].reference == tests and code["c"].text == render_prompt("Add one.", "code")


@pytest.mark.parametrize("line, message", [
    ('{"question": "q"}', "line.jsonl:2: missing key 'answer'"),
    ('{"question": 3, "answer": "1"}', "line.jsonl:2: key 'question' has type int"),
    ("not json", "line.jsonl:2: not valid JSON"),
    ('{"id": "a", "question": "q", "answer": "1"}', "line.jsonl:2: duplicate id 'a'"),
])
def test_bad_prompt_lines_name_file_line_and_key(tmp_path, line, message):
    path = tmp_path / "line.jsonl"
    path.write_text(json.dumps({"id": "a", "question": "q", "answer": "1"}) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=message):
        load_stage_prompts(StageConfig(name="m", data=str(path), steps=1), seed=0)


def test_synthetic_prompts_are_deterministic():
    stage = StageConfig(name="s", num_prompts=5, steps=1)
    a, b = load_stage_prompts(stage, seed=3), load_stage_prompts(stage, seed=3)
    assert list(a) == [f"synthetic-{i}" for i in range(5)] and a == b
