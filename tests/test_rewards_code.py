"""Code reward: extraction, LiveCodeBench's comparisons, and the sandbox against hostile programs.

Every adversarial program runs in a real sandbox (bubblewrap here; the Makefile's ``sysdeps`` installs
it) and must end with the verdict written next to it, after which an honest program still passes.
"""

import json
import os
import socket
import sys
import textwrap
from pathlib import Path

import pytest

from nemo_ext.rewards import runner
from nemo_ext.rewards.code import extract_code, score_code, stdin_output_matches, validate_tests
from nemo_ext.rewards.sandbox import Sandbox, SandboxConfig, bwrap_problem, preamble_exports

ADD = [{"input": "1 2\n", "output": "3\n", "testtype": "stdin"},
       {"input": "5 7\n", "output": "12", "testtype": "stdin"}]
ADD_PROGRAM = "a, b = map(int, input().split())\nprint(a + b)"


def respond(program: str) -> str:
    return f"<think>\nI'll write it.\n```python\nprint('draft')\n```\n</think>\n```python\n{program}\n```\n"


def stdin_test(stdin: str, output: str) -> list[dict]:
    return [{"input": stdin, "output": output, "testtype": "stdin"}]


def assert_scorer_alive():
    assert score_code(respond(ADD_PROGRAM), ADD).verdict == "accepted"


def test_bwrap_is_available():
    assert bwrap_problem() is None, "install bubblewrap (make sysdeps): the sandbox would run degraded"


# --- extraction and comparison ------------------------------------------------------------------

@pytest.mark.parametrize("response, expected", [
    (respond("print(1)"), "print(1)\n"),
    ("</think>```python\nprint(1)\n```\ntext\n```python\nprint(2)\n```", "print(2)\n"),  # the last block
    ("</think>```py\nx = 1\n```", "x = 1\n"),
    ("</think>```Python3\nx = 2\n```", "x = 2\n"),
    ("</think>```python\nprint('```')\n```", "print('```')\n"),  # a fence inside a line is not a fence
    ("<think>```python\nprint(1)\n```</think> done", None),  # block only inside <think>
    ("<think>```python\nprint(1)\n```", None),  # no </think>
    ("</think>```\nprint(1)\n```", None),  # untagged block
    ("</think>```python\n```", None),  # empty block
])
def test_extract_code(response, expected):
    assert extract_code(response) == expected


@pytest.mark.parametrize("output, expected, same", [
    ("3\n", "3", True),
    ("0.50\n", "0.5", True),  # Decimal equality
    ("1e1", "10", True),
    ("0.333333", "0.3333333", False),  # no tolerance
    ("1 2  \r\n3", "1 2\n3\n", True),  # stripped lines, CRLF
    ("1  2", "1 2", True),  # token by token
    ("YES", "yes", False),
    ("1\n2", "1 2", False),  # line counts differ
    ("", "", True),
])
def test_stdin_output_matches(output, expected, same):
    assert stdin_output_matches(output, expected) is same


@pytest.mark.parametrize("tests, message", [
    ([], "non-empty list"),
    ([{"output": "1", "testtype": "stdin"}], "tests[0]: key 'input'"),
    ([{"input": "1", "output": "1", "testtype": "file"}], "tests[0]: key 'testtype'"),
    ([{"input": "1", "output": "1", "testtype": "functional"}], "tests[0]: functional tests need 'fn_name'"),
    ([{"input": "[1,", "output": "1", "testtype": "functional", "fn_name": "f"}], "must be JSON"),
    (ADD + [{"input": "1", "output": "1", "testtype": "functional", "fn_name": "f"}], "mixes test kinds"),
])
def test_validate_tests_names_the_problem(tests, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_tests(tests)


# --- judging ------------------------------------------------------------------------------------

@pytest.mark.parametrize("program", [
    ADD_PROGRAM,
    "a, b = map(int, open(0).read().split())\nprint(a + b)",  # reads fd 0 directly
    "import os\na, b = map(int, sys.stdin.buffer.read().split())\nos.write(1, str(a + b).encode())",
    "def main():\n    print(sum(map(int, stdin.readline().split())))\nif __name__ == '__main__':\n    main()",
    "out = open(1, 'w')\nout.write(str(sum(map(int, input().split()))))",  # flushed at "exit"
    "import sys\nprint(sum(map(int, input().split())))\nsys.exit(0)",  # exit after printing is fine
])
def test_stdin_accepted(program):
    v = score_code(respond(program), ADD)
    assert (v.reward, v.verdict, v.extracted) == (1.0, "accepted", program + "\n"), v.meta
    assert v.meta["passed"] == 2 and v.meta["isolation"] == "bwrap"


def test_preamble_binds_what_the_full_preamble_binds():
    full: dict = {}
    exec(runner.PREAMBLE, full)
    names = set(full) - {"__builtins__"} - runner.DYNAMIC  # a dynamic name selects the full preamble
    exports = {m: set(n) for m, n in preamble_exports().items()}
    lean = runner.preamble(names, exports)
    assert set(lean) == names and all(lean[n] is full[n] for n in names)
    assert runner.preamble({"pow", "datetime", "deque"}, exports) == {
        "pow": pow, "datetime": full["datetime"], "deque": full["deque"]}  # builtins.pow; the module


@pytest.mark.parametrize("program", [
    "q = deque(map(int, input().split()))\nh: List[int] = []\nheappush(h, gcd(q[0], q[1]))\nprint(h[0])",
    "print(pow(2, 10, 1000) // 8 + int(math.sqrt(0)))",  # builtins.pow, not math.pow
    "print(datetime.date(2024, 1, 3).day)",  # the module datetime, not the class
    "print(eval('gcd(6, 9)'))",  # a dynamic lookup gets the whole preamble
    "a, b = map(int, stdin.readline().split())\nprint(b - a)",
])
def test_preamble_names(program):
    assert score_code(respond(program), stdin_test("6 9\n", "3")).verdict == "accepted"


def test_stops_at_first_failure():
    program = "n = int(input())\nif n == 3:\n    while True: pass\nprint(n if n == 1 else -n)"
    tests = stdin_test("1", "1") + stdin_test("2", "2") + stdin_test("3", "3")
    v = score_code(respond(program), tests, timeout_s=1.0)
    # had the third test run, it would have looped until the time limit
    assert (v.verdict, v.meta["failed_test"], v.meta["passed"]) == ("wrong_answer", 1, 1)


def functional(fn_name, *cases):
    return [{"input": i, "output": o, "testtype": "functional", "fn_name": fn_name} for i, o in cases]


TWO_SUM = functional("twoSum", ("[2,7,11,15]\n9", "[0, 1]"), ("[3,2,4]\n6", "[1, 2]"))


@pytest.mark.parametrize("program, verdict", [
    ("class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n"
     "        seen = {}\n        for i, x in enumerate(nums):\n            if target - x in seen:\n"
     "                return (seen[target - x], i)\n            seen[x] = i", "accepted"),  # tuple -> list
    ("def twoSum(nums, target):\n    return [0, 1]", "wrong_answer"),  # right on test 0 only
    ("class Solution:\n    def other(self): pass", "runtime_error"),  # no such method
    ("def twoSum(nums, target):\n    return {0, 1}", "wrong_answer"),  # a set has no JSON form
])
def test_functional(program, verdict):
    assert score_code(respond(program), TWO_SUM).verdict == verdict


def test_functional_exact_equality():
    tests = functional("half", ("3", "1.5"), ("4", "2"))
    assert score_code(respond("def half(x):\n    return x / 2"), tests).verdict == "accepted"  # 2.0 == 2
    tests = functional("third", ("1", "0.333333"))
    assert score_code(respond("def third(x):\n    return x / 3"), tests).verdict == "wrong_answer"


@pytest.mark.parametrize("program, verdict", [
    ("print(", "syntax_error"),
    ("def f(:\n    pass", "syntax_error"),
    ("print(1 / 0)", "runtime_error"),
    ("print(0)", "wrong_answer"),
])
def test_verdicts(program, verdict):
    v = score_code(respond(program), ADD)
    assert (v.reward, v.verdict) == (0.0, verdict), v.meta


def test_no_code():
    v = score_code("<think>```python\nprint(3)\n```", ADD)
    assert (v.verdict, v.extracted, v.meta["reason"]) == ("no_code", None, "no </think>")


# --- the adversarial suite ----------------------------------------------------------------------

ADVERSARIAL = {
    "fork bomb": ("import os\nwhile True:\n    os.fork()", "runtime_error"),
    "infinite loop": ("while True:\n    pass", "time_limit"),
    "memory bomb": ("x = bytearray(8 * 2**30)", "memory_limit"),
    "memory bomb, gradual": ("x = []\nwhile True:\n    x.append(' ' * 2**24)", "memory_limit"),
    "gigabytes of output": ("s = 'x' * 2**20\nwhile True:\n    sys.stdout.write(s)", "output_limit"),
    "sys.exit before printing": ("import sys\nsys.exit(0)\nprint(3)", "wrong_answer"),
    "deep recursion": ("def f(n):\n    return f(n + 1)\nf(0)", "runtime_error"),
    "deep C recursion": ("import functools\nsys.setrecursionlimit(10**9)\n@functools.lru_cache(None)\n"
                         "def f(n):\n    return 0 if n == 0 else f(n - 1) + 1\nprint(f(10**7))",
                         "runtime_error"),
    "input past end of stdin": ("input()\ninput()", "runtime_error"),
}


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_adversarial_contained(name):
    program, verdict = ADVERSARIAL[name]
    # 2 s is plenty, but filling 2 GiB before MemoryError may take longer on a loaded machine
    v = score_code(respond(program), stdin_test("3\n", "3"), timeout_s=10.0 if "memory" in name else 2.0)
    assert (v.reward, v.verdict) == (0.0, verdict), v.meta
    assert_scorer_alive()


def test_gigabytes_of_output_is_cut_at_the_limit():
    v = score_code(respond(ADVERSARIAL["gigabytes of output"][0]), stdin_test("", "x"))
    assert v.meta["error"] == "output limit exceeded"


PROBES = textwrap.dedent("""
    import glob, os, signal, socket
    lines = sys.stdin.read().split()
    host_file, port = lines[0], int(lines[1])

    def attempt(fn):
        try:
            fn()
            return "done"
        except OSError:
            return "blocked"

    def write(path):
        with open(path, "w") as f:
            f.write("pwned")

    print(attempt(lambda: write(host_file)))                          # a host path, outside the workdir
    print(attempt(lambda: write("/etc/pwned")))                        # the read-only root
    print(attempt(lambda: write("./scratch.txt")))                     # the working directory is writable
    print(attempt(lambda: socket.create_connection(("127.0.0.1", port), timeout=1)))
    secret = any("s3cr3t-token" in v for v in os.environ.values())
    for path in glob.glob("/proc/*/environ"):
        try:
            secret |= b"s3cr3t-token" in open(path, "rb").read()
        except OSError:
            pass
    print("leaked" if secret else "hidden")
    for pid in (os.getppid(), 1, -1):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    print("alive")
""")


def test_isolation_probes(tmp_path, monkeypatch):
    monkeypatch.setenv("SCORER_SECRET", "s3cr3t-token")
    host_file = tmp_path / "pwned.txt"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    expected = "blocked\nblocked\ndone\nblocked\nhidden\nalive"
    v = score_code(respond(PROBES), stdin_test(f"{host_file} {port}", expected))
    assert v.verdict == "accepted", v.meta
    assert not host_file.exists()
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody ever connected
    listener.close()
    assert_scorer_alive()


@pytest.mark.parametrize("isolation", ["auto", "rlimits"])
def test_working_directory_is_fresh_and_removed(isolation):
    program = "import os\nprint(len(os.listdir('.')))\nopen('left-behind', 'w').write('x')"
    config = SandboxConfig(isolation=isolation)
    with Sandbox(program, fn_name=None, total_s=20, config=config) as box:
        workdir = box.workdir
        # bubblewrap: in the sandbox's own /tmp, nothing on the host; the fallback: a host temp dir
        assert (workdir is None) == (isolation == "auto")
        assert box.load(5).status == "ok"
        assert box.run(5, stdin="").output == "0\n"
        assert box.run(5, stdin="").output == "1\n"  # the same sample's tests share it ...
    assert workdir is None or not os.path.exists(workdir)  # ... and it is gone afterwards
    v = score_code(respond(program), stdin_test("", "0"), config=config)
    assert v.verdict == "accepted"  # a new sample: empty


# --- what the sandbox shows, and how much it may write -------------------------------------------

SEARCH_HOST = textwrap.dedent("""
    import json, os
    token = input().strip()
    system = {"/proc", "/sys", "/dev", "/usr", "/lib", "/lib64", "/lib32", "/libx32"}  # nothing of ours there
    skip = {".git", "__pycache__", "site-packages", ".pyenv", ".cache", "node_modules"}
    for root, dirs, files in os.walk("/"):
        dirs[:] = [d for d in dirs if d not in skip and os.path.join(root, d) not in system]
        for name in files:
            try:
                with open(os.path.join(root, name), "rb") as f:
                    data = f.read(1 << 20)
            except OSError:
                continue
            for line in data.splitlines():
                if token.encode() in line:
                    try:
                        print(json.loads(line)["tests"][0]["output"])
                        sys.exit(0)
                    except (ValueError, KeyError, IndexError, TypeError):
                        pass
    print("not found")
""")


def plant_prompt_files(tmp_path) -> tuple[str, str, list[Path]]:
    """An RL prompt row with a fresh test (token in, secret out), written where such files live: the
    project checkout, the home directory, a temp dir. Returns (token, secret, paths)."""
    token, secret = f"probe-{os.urandom(8).hex()}", os.urandom(8).hex()
    row = json.dumps({"id": token, "question": "echo", "tests": [{"input": token + "\n", "output": secret,
                                                                  "testtype": "stdin"}]})
    project = Path(__file__).resolve().parents[1]
    paths = [project / f".{token}.jsonl", Path.home() / f".{token}.jsonl", tmp_path / f"{token}.jsonl"]
    for path in paths:
        path.write_text(row + "\n")
    return token, secret, paths


def test_a_program_that_searches_the_host_for_its_tests_finds_nothing(tmp_path):
    token, secret, planted = plant_prompt_files(tmp_path)
    try:
        v = score_code(respond(SEARCH_HOST), stdin_test(token + "\n", secret), timeout_s=120.0)
        assert (v.reward, v.verdict) == (0.0, "wrong_answer"), v.meta
        listing = "import os\nfor p in sys.stdin.read().split():\n    print(os.path.exists(p))"
        project = Path(__file__).resolve().parents[1]
        hidden = [*planted, project / "nemo_ext", project / "tests", Path(json.__file__)]
        with Sandbox(listing, fn_name=None, total_s=20) as box:
            assert box.load(5).status == "ok"
            seen = box.run(5, stdin=" ".join(map(str, hidden))).output.split()
        visible = [str(p) for p, shown in zip(hidden, seen, strict=True) if shown == "True"]
        assert visible == [json.__file__]  # only the interpreter's files (the stdlib's json, say) exist
    finally:
        for path in planted:
            path.unlink()


def test_only_the_interpreter_and_the_libraries_are_visible():
    from nemo_ext.rewards.sandbox import SYSTEM_LIBRARIES, interpreter_paths

    # every file outside the bound trees (which are not entered) and /proc, /dev
    walk = textwrap.dedent("""
        import os
        bound = set(sys.stdin.read().split())
        for root, dirs, files in os.walk("/"):
            dirs[:] = [d for d in dirs if os.path.join(root, d) not in bound]
            print(*(os.path.join(root, f) for f in files if os.path.join(root, f) not in bound), sep="\\n")
    """)
    bound = [*SYSTEM_LIBRARIES, *interpreter_paths(), "/proc", "/dev"]
    with Sandbox(walk, fn_name=None, total_s=60) as box:
        assert box.load(5).status == "ok"
        reply = box.run(50, stdin=" ".join(bound))
    assert reply.status == "ok", reply.error
    assert reply.output.split() == []
    assert os.path.realpath(sys.executable) in interpreter_paths()  # the binary is bound, nothing around it


FILL = textwrap.dedent("""
    import errno, os
    written, chunk, error = 0, b"x" * (4 << 20), "none"
    mounts = {os.stat(d).st_dev for d in ("/tmp", ".", os.environ["HOME"])}
    try:
        for i in range(24):  # at most 96 MiB, in 4 MiB files spread over /tmp, the working dir and $HOME
            with open(("/tmp", ".", os.environ["HOME"])[i % 3] + f"/fill{i}", "wb") as f:
                f.write(chunk)
            written += len(chunk)
    except OSError as e:
        error = errno.errorcode[e.errno]
    st = os.statvfs("/tmp")
    print(written >> 20, error, st.f_blocks * st.f_frsize >> 20, len(mounts))
""")


def test_tmp_and_working_directory_are_limited_together():
    config = SandboxConfig(disk_mb=16)
    with Sandbox(FILL, fn_name=None, total_s=60, config=config) as box:
        assert box.load(10).status == "ok"
        reply = box.run(50, stdin="")
    written_mb, error, size_mb, filesystems = reply.output.split()
    # one 16 MiB tmpfs holds /tmp, the working dir and $HOME: at most 16 MiB written, then the disk is full
    assert (error, int(size_mb), filesystems) == ("ENOSPC", 16, "1") and 12 <= int(written_mb) <= 16, reply.output


def test_filling_the_disk_gets_output_limit():
    program = "i = 0\nwhile i < 24:\n    open(f'/tmp/f{i}' if i % 2 else f'f{i}', 'wb').write(b'x' * (4 << 20))\n" \
              "    i += 1\nprint(3)"
    v = score_code(respond(program), stdin_test("", "3"), config=SandboxConfig(disk_mb=16))
    assert (v.verdict, v.meta["error"]) == ("output_limit", "disk limit exceeded (/tmp and the working "
                                                            "directory are full)"), v.meta


def test_without_bwrap_falls_back_to_rlimits_loudly(caplog):
    config = SandboxConfig(isolation="rlimits")
    v = score_code(respond(ADD_PROGRAM), ADD, config=config)
    assert (v.verdict, v.meta["isolation"]) == ("accepted", "rlimits")
    warning = v.meta["warning"]
    assert warning.startswith("SANDBOX DEGRADED")
    # it says what it cannot hide: the host's files (the tests among them), the network, the disk
    for exposed in ("read every file", "the tests with their expected outputs", "network", "host's disk"):
        assert exposed in warning
    for name in ("infinite loop", "memory bomb", "fork bomb"):
        program, verdict = ADVERSARIAL[name]
        v = score_code(respond(program), stdin_test("", "3"), timeout_s=1.0, config=config)
        assert (v.verdict, v.meta["warning"]) == (verdict, warning), v.meta  # in every verdict
    assert_scorer_alive()
