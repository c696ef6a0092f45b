"""The code reward of AceReason-Nemotron (arXiv 2505.16400 sec. 3, reused in 2506.13284): 1 if the last
python block after ``</think>`` passes every test within the time limit, else 0.

Tests are judged as LiveCodeBench judges them (../shared/FACTS.md): stdin tests compare the stripped
output line by line, a line matching exactly or else token by token as equal ``decimal.Decimal`` values
(``0.5`` == ``0.50``, no tolerance); functional tests call ``Solution().<fn_name>`` (or the function
``fn_name``) with one JSON value per input line and compare the JSON of the return value with ``==``
(tuples become lists). 6 s per test by default, (6 + 1) x tests + 5 s in all; the first failure stops.

A test is ``{"input": str, "output": str, "testtype": "stdin" | "functional"}``, and a functional test
also carries ``"fn_name": str``. Left out: LiveCodeBench's patching of ``open``/``input`` builtins (the
sandbox redirects the real file descriptors instead) and its "reliability guard" (the sandbox is one).
"""

from __future__ import annotations

import json
import re
import time
from decimal import Decimal, InvalidOperation

from nemo_ext.rewards.common import Verdict, after_think
from nemo_ext.rewards.sandbox import DEFAULT_SANDBOX, Sandbox, SandboxConfig

_PYTHON_BLOCK = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\r?\n(.*?)^[ \t]*```",
                           re.DOTALL | re.IGNORECASE | re.MULTILINE)
TEST_TYPES = ("stdin", "functional")


def extract_code(response: str) -> str | None:
    """The last ```python (or python3, py) block after ``</think>``; None if absent or empty."""
    final = after_think(response)
    blocks = _PYTHON_BLOCK.findall(final) if final is not None else []
    return blocks[-1] if blocks and blocks[-1].strip() else None


def validate_tests(tests: list[dict]) -> list[dict]:
    """Check a sample's tests; return copies with functional ``args`` and ``expected`` decoded.

    Raises ValueError naming the test index and key. All tests of a sample share one type (and, if
    functional, one ``fn_name``), since one program is loaded once for all of them.
    """
    if not isinstance(tests, list) or not tests:
        raise ValueError(f"tests must be a non-empty list of test dicts, got {type(tests).__name__}")
    checked = []
    for i, test in enumerate(tests):
        if not isinstance(test, dict):
            raise ValueError(f"tests[{i}]: expected a dict, got {type(test).__name__}")
        for key in ("input", "output"):
            if not isinstance(test.get(key), str):
                raise ValueError(f"tests[{i}]: key {key!r} must be a string, got {test.get(key)!r:.60}")
        if test.get("testtype") not in TEST_TYPES:
            raise ValueError(f"tests[{i}]: key 'testtype' must be one of {TEST_TYPES}, "
                             f"got {test.get('testtype')!r}")
        test = dict(test)
        if test["testtype"] == "functional":
            if not isinstance(test.get("fn_name"), str) or not test["fn_name"].isidentifier():
                raise ValueError(f"tests[{i}]: functional tests need 'fn_name', a Python identifier, "
                                 f"got {test.get('fn_name')!r}")
            try:
                test["args"] = [json.loads(line) for line in test["input"].split("\n") if line.strip()]
                test["expected"] = json.loads(test["output"])
            except ValueError as e:
                raise ValueError(f"tests[{i}]: functional 'input' lines and 'output' must be JSON: {e}"
                                 ) from e
        checked.append(test)
    kinds = {(t["testtype"], t.get("fn_name")) for t in checked}
    if len(kinds) > 1:
        raise ValueError(f"tests: one sample mixes test kinds {sorted(kinds, key=str)}")
    return checked


def _decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(token) for token in line.split()]
    except InvalidOperation:
        return None


def stdin_output_matches(output: str, expected: str) -> bool:
    """LiveCodeBench's stdin comparison: same number of stripped lines, each equal as text or as Decimals."""
    got = [line.strip() for line in output.strip().split("\n")]
    want = [line.strip() for line in expected.strip().split("\n")]
    if len(got) != len(want):
        return False
    for g, w in zip(got, want, strict=True):
        if g != w and ((dg := _decimals(g)) is None or dg != _decimals(w)):
            return False
    return True


def _passes(test: dict, output: str | None) -> bool:
    if output is None:  # a functional return value that has no JSON form
        return False
    if test["testtype"] == "stdin":
        return stdin_output_matches(output, test["output"])
    return json.loads(output) == test["expected"]


def score_code(response: str, tests: list[dict], timeout_s: float = 6.0, *,
               config: SandboxConfig = DEFAULT_SANDBOX) -> Verdict:
    """Score one response: run its last python block in a sandbox against ``tests`` (see module doc).

    timeout_s: wall seconds per test; the sample's total is (timeout_s + 1) x len(tests) + 5.
    Raises ValueError for malformed tests (a data error, not the model's).
    """
    start = time.perf_counter()
    tests = validate_tests(tests)
    code = extract_code(response)
    if code is None:
        reason = "no </think>" if after_think(response) is None else "no python block after </think>"
        return Verdict(0.0, "no_code", None, time.perf_counter() - start, {"reason": reason})
    fn_name = tests[0].get("fn_name") if tests[0]["testtype"] == "functional" else None
    total_s = (timeout_s + 1) * len(tests) + 5
    max_input = max(len(t["input"].encode()) for t in tests)
    with Sandbox(code, fn_name=fn_name, total_s=total_s, max_input_bytes=max_input, config=config) as box:
        meta = {"isolation": box.isolation, "tests": len(tests), "passed": 0}
        if box.warning:
            meta["warning"] = box.warning
        reply = box.load(timeout_s)
        failed = None if reply.status == "ok" else (reply.status, None, reply.error)
        for i, test in enumerate(tests if failed is None else []):
            reply = box.run(timeout_s, stdin=test["input"], args=test.get("args"))
            if reply.status != "ok":
                failed = (reply.status, i, reply.error)
            elif not _passes(test, reply.output):
                failed = ("wrong_answer", i, reply.error)
            if failed:
                break
            meta["passed"] += 1
    if failed:
        meta.update(failed_test=failed[1], error=failed[2])
    verdict = failed[0] if failed else "accepted"
    return Verdict(float(not failed), verdict, code, time.perf_counter() - start, meta)
