"""RewardPool: input order, per-sample isolation, and workers that hang or die get replaced."""

import os
import signal
import time
from pathlib import Path

import pytest

from nemo_ext.rewards import RewardPool, Verdict, score_math
from nemo_ext.rewards.pool import tally_errors


def boxed(answer: str) -> str:
    return f"<think>\nwork\n</think>\nSo $\\boxed{{{answer}}}$."


def program(source: str) -> str:
    return f"<think>\nok\n</think>\n```python\n{source}\n```"


@pytest.fixture(scope="module")
def pool():
    with RewardPool(workers=2, math_timeout_s=2.0, code_timeout_s=2.0, grace_s=1.0) as p:
        yield p


def test_math_results_in_input_order(pool):
    cases = [  # (boxed answer or None for no box, gold, verdict)
        ("\\frac12", "0.5", "accepted"), ("0.5", "\\frac{1}{2}", "accepted"), ("3", "4", "wrong_answer"),
        ("x = 4", "4", "accepted"), (None, "1", "no_answer"), ("[1,2)", "[1,2)", "accepted"),
        ("\\{2,1\\}", "\\{1,2\\}", "accepted"), ("033", "33", "accepted"), ("(2,1)", "(1,2)", "wrong_answer"),
    ] * 3 + [("9^{9^{9^{9}}}", "1", "time_limit")]
    responses = [boxed(b) if b is not None else "<think>x</think> 1" for b, _, _ in cases]
    verdicts = pool.score("math", responses, [gold for _, gold, _ in cases])
    assert [v.verdict for v in verdicts] == [verdict for _, _, verdict in cases]
    assert [v.reward for v in verdicts] == [float(verdict == "accepted") for _, _, verdict in cases]
    assert [v.extracted for v in verdicts] == [b for b, _, _ in cases]
    assert verdicts[4].meta == score_math(responses[4], "1").meta == {"reason": "no \\boxed{} after </think>"}


def test_code_results_in_input_order(pool):
    tests = [{"input": "2\n", "output": "4", "testtype": "stdin"}]
    sources = ["print(int(input()) * 2)", "print(5)", "while True: pass", "print(",
               "import os\nif os.fork() == 0:\n    os._exit(0)\nprint(int(input()) + 2)", "x = bytearray(2**34)"]
    verdicts = pool.score("code", [program(s) for s in sources], [tests] * len(sources))
    assert [v.verdict for v in verdicts] == ["accepted", "wrong_answer", "time_limit", "syntax_error",
                                             "accepted", "memory_limit"]


def test_a_session_scores_samples_as_they_arrive(pool):
    """Samples added one at a time with polls between them (as generation finishes them) get the
    verdicts of one batch call, in the order added; the workers start on them before the last one
    arrives."""
    cases = [("\\frac12", "0.5"), ("3", "4"), (None, "1"), ("033", "33"), ("(2,1)", "(1,2)"), ("x = 4", "4")] * 2
    responses = [boxed(b) if b is not None else "<think>x</think> 1" for b, _ in cases]
    golds = [gold for _, gold in cases]
    pool.score("math", [boxed("1")], ["1"])  # the workers have started
    session = pool.session("math")
    for i, (response, gold) in enumerate(zip(responses, golds, strict=True)):
        assert session.add(response, gold) == i
        time.sleep(0.05)  # the next sample is still being generated
        session.poll()
    # verdicts a worker gave before results() was asked for (the unboxed ones need no worker)
    early = sum(v is not None for v, (box, _) in zip(session.state.results, cases, strict=True) if box is not None)
    verdicts = session.results()
    assert [v.verdict for v in verdicts] == [v.verdict for v in pool.score("math", responses, golds)]
    assert [v.verdict for v in verdicts][:3] == ["accepted", "wrong_answer", "no_answer"]
    assert early >= 1
    with RewardPool(workers=2, math_timeout_s=2.0, grace_s=1.0) as own:  # not the shared pool: it is disturbed
        with pytest.raises(RuntimeError, match="generation failed"), own.session("math") as broken:
            broken.add(boxed("9^{9^{9^{9}}}"), "1")  # a slow one, still running when the error comes
            while not any(slot.pending for slot in own._slots):
                broken.poll()  # until the worker (once started) has it
                time.sleep(0.01)
            raise RuntimeError("generation failed")
        # its worker was replaced: the next scoring gets only its own answers (else the slow sample's
        # late "time_limit" would land on position 0, which the other worker has scored meanwhile)
        assert [v.verdict for v in own.score("math", responses[:2], golds[:2])] == ["accepted", "wrong_answer"]
    with pytest.raises(ValueError, match="task must be one of"):
        pool.session("poetry")
    with pytest.raises(ValueError, match=r"references\[0\]"):
        pool.session("code").add(program("print(1)"), [{"input": "1"}])  # a test without an output


def test_hung_worker_is_killed_and_replaced(pool):
    before = pool.pids
    os.kill(before[0], signal.SIGSTOP)  # a worker that never answers again
    start = time.monotonic()
    verdicts = pool.score("math", [boxed("1"), boxed("2"), boxed("3")], ["1", "2", "4"])
    # the stopped worker took the first run of samples: its head timed out, the rest was rescored
    assert sorted(v.verdict for v in verdicts) == ["accepted", "time_limit", "wrong_answer"]
    assert verdicts[2].verdict == "wrong_answer"
    assert time.monotonic() - start < 30
    assert pool.pids[0] != before[0] and pool.pids[1] == before[1]
    assert [v.verdict for v in pool.score("math", [boxed("5")] * 4, ["5"] * 4)] == ["accepted"] * 4


def test_dead_worker_is_replaced(pool):
    victim = pool.pids[1]
    os.kill(victim, signal.SIGKILL)
    while Path(f"/proc/{victim}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
        time.sleep(0.01)  # dead (a zombie until the pool reaps it), so its pipe is closed
    verdicts = pool.score("math", [boxed(str(i)) for i in range(6)], [str(i) for i in range(6)])
    assert [v.verdict for v in verdicts] == ["accepted"] * 6
    assert victim not in pool.pids


def test_tally_errors():
    verdicts = [Verdict(0.0, "error", "x", 0.1, {"errors": ["TypeError: a", "TypeError: b"]}),
                Verdict(1.0, "accepted", "y", 0.1, {"errors": ["ValueError: c"]}),
                Verdict(0.0, "wrong_answer", "z", 0.1, {})]
    assert tally_errors(verdicts) == {"TypeError": 2, "ValueError": 1}


def test_bad_arguments(pool):
    with pytest.raises(ValueError, match="task must be one of"):
        pool.score("physics", ["x"], ["y"])
    with pytest.raises(ValueError, match="2 responses but 1 references"):
        pool.score("math", ["a", "b"], ["1"])
    with pytest.raises(ValueError, match=r"references\[1\]: tests\[0\]: key 'testtype'"):
        pool.score("code", [program("print(1)")] * 2,
                   [[{"input": "", "output": "1", "testtype": "stdin"}], [{"input": "", "output": "1"}]])
    with pytest.raises(ValueError, match="workers must be >= 1"):
        RewardPool(workers=0)
