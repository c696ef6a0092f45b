"""The process inside the code sandbox: loads one untrusted program and runs its tests one at a time.

``sandbox.py`` starts it as ``python -s -S -P -c <this source>`` (inside bubblewrap where available);
it uses the standard library only, so it starts in milliseconds, and never imports ``nemo_ext``.

Protocol (JSON lines). The first line on stdin is the job ``{program, fn_name, uid, limits, cwd,
sys_path, exports, pdeathsig}``; the runner applies the resource limits, drops to ``uid`` and answers
``{"status": ...}`` once the program is compiled (and, for functional tests, loaded). Then one reply
per test line (``{"stdin": str}`` or ``{"args": list}``): ``{"status", "output", "seconds", "error"}``.
Expected outputs never enter the sandbox: the trusted parent compares, so forged replies gain nothing.

Per test, fd 0 is a fresh memfd holding the test's input and fd 1 a fresh memfd collecting its output,
so ``input()``, ``sys.stdin.buffer``, ``open(0)`` and ``os.write(1, ...)`` all behave as in a real process.
Programs run as LiveCodeBench runs them: after its import preamble; for stdin tests the whole program
runs once per test; a functional program is loaded once and ``Solution().<fn_name>`` (or the function
``fn_name``) is called per test with the JSON-decoded arguments. ``SystemExit`` is not an error. To
start fast, the preamble binds only the names the program's code mentions, each to what the full
preamble would bind (the parent sends each module's ``import *`` names); a program that looks names up
dynamically (``eval``, ``globals``, ...) gets the whole preamble.
"""

import errno
import gc
import json
import os
import resource
import signal
import sys
import time

MODULES = ("string re datetime collections heapq bisect copy math random statistics itertools functools "
           "operator io sys json builtins typing").split()
IMPORTED = [m for m in MODULES if m not in ("builtins", "typing")]  # also bound as module names
PREAMBLE = "".join(f"from {m} import *\n" for m in MODULES) + "".join(f"import {m}\n" for m in IMPORTED)
DYNAMIC = {"eval", "exec", "globals", "locals", "vars", "__import__"}
CODE = type(compile("", "", "exec"))


def global_names(code) -> set:
    """Every name the code (and the functions and classes in it) may look up as a global."""
    names, stack = set(), [code]
    while stack:
        code = stack.pop()
        names.update(code.co_names)
        stack.extend(const for const in code.co_consts if isinstance(const, CODE))
    return names


def preamble(names: set, exports: dict) -> dict:
    """The preamble's bindings of ``names``: module names win, then the last ``from m import *``."""
    namespace: dict = {}
    if names & DYNAMIC:
        exec(PREAMBLE, namespace)
        return namespace
    for name in names:
        if name in IMPORTED:
            namespace[name] = __import__(name)
            continue
        for module in reversed(MODULES):
            if name in exports[module] and hasattr(found := __import__(module), name):
                namespace[name] = getattr(found, name)
                break
    return namespace


LIMITS_HIT = {errno.EFBIG: "output limit exceeded",  # RLIMIT_FSIZE: a test's output or one file
              errno.ENOSPC: "disk limit exceeded (/tmp and the working directory are full)",  # the tmpfs size
              errno.EDQUOT: "disk limit exceeded (quota)"}


def describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno in LIMITS_HIT:
        return LIMITS_HIT[exc.errno]
    try:
        return f"{type(exc).__name__}: {exc}"[:500]
    except BaseException:  # a hostile __str__
        return type(exc).__name__


def set_limits(limits: dict) -> None:
    """limits: rlimit name (AS, CPU, NPROC, FSIZE, NOFILE, CORE) -> value; CPU gets a 1 s SIGKILL margin."""
    for name, value in limits.items():
        hard = value + 1 if name == "CPU" else value
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (value, hard))


def drop_privileges(uid, pdeathsig: bool) -> None:
    if pdeathsig:  # imported while the interpreter's files are surely readable
        import ctypes
    if uid is not None:  # we are root: become a fresh user, so NPROC counts only this sandbox
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    if pdeathsig:  # no bubblewrap --die-with-parent: ask the kernel (PR_SET_PDEATHSIG; after setuid,
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # which clears it)


def redirect(stdin_text: str) -> int:
    """Point fd 0 at a memfd holding ``stdin_text`` and fd 1 at an empty memfd; fresh sys.stdin/stdout.

    Returns the runner's own descriptor of the output memfd: readable even if the program closes fd 1.
    """
    for fd, data in ((0, stdin_text.encode("utf-8")), (1, b"")):
        memfd = os.memfd_create("stdio")
        view = memoryview(data)
        while view:
            view = view[os.write(memfd, view):]
        os.lseek(memfd, 0, os.SEEK_SET)
        if fd == 1:
            kept = os.dup(memfd)
        if memfd != fd:  # equal when the program closed ``fd`` (``open(0).read()`` does)
            os.dup2(memfd, fd)
            os.close(memfd)
    sys.stdin = open(0, encoding="utf-8", errors="replace", closefd=False)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
    return kept


def collect(kept: int, scope: dict) -> str:
    """Everything the test wrote to fd 1, after flushing what it left buffered (as process exit would)."""
    try:
        sys.stdout.flush()
        scope.clear()
        gc.collect()  # finalizers of the program's own unflushed files write now, into this output
        size = os.fstat(kept).st_size
        chunks = []
        while size > 0:
            chunk = os.pread(kept, size, sum(map(len, chunks)))
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks).decode("utf-8", errors="replace")
    finally:
        os.close(kept)


def failure(exc: BaseException) -> dict:
    """The reply for an exception the program raised."""
    if isinstance(exc, MemoryError):
        return {"status": "memory_limit", "error": "MemoryError"}
    limit_hit = isinstance(exc, OSError) and exc.errno in LIMITS_HIT
    return {"status": "output_limit" if limit_hit else "runtime_error", "error": describe(exc)}


def guarded(call):
    """Run ``call()``; return (value, reply). A process the program forked never gets past here."""
    pid = os.getpid()
    start = time.perf_counter()
    value, reply = None, {"status": "ok"}
    try:
        value = call()
    except SystemExit:
        pass
    except BaseException as exc:
        reply = failure(exc)
    if os.getpid() != pid:
        os._exit(0)
    reply["seconds"] = time.perf_counter() - start
    return value, reply


def load(code, job: dict, base: dict):
    """Prepare the compiled program (functional tests: run its top level). Returns (run one test, reply)."""
    if job["fn_name"] is None:
        def run_stdin(test):
            scope = dict(base, __name__="__main__")
            kept = redirect(test["stdin"])
            scope.update(stdin=sys.stdin, stdout=sys.stdout)
            _, reply = guarded(lambda: exec(code, scope))
            try:
                output = collect(kept, scope)
            except BaseException as exc:  # flushing what the program left buffered failed
                return dict(reply, **failure(exc)) if reply["status"] == "ok" else reply
            if reply["status"] == "ok":  # a failed test's output is not judged: not sent
                reply["output"] = output
            return reply
        return run_stdin, {"status": "ok"}

    scope = dict(base, __name__="__main__")
    os.close(redirect(""))  # what a functional program prints is not judged

    def resolve():
        exec(code, scope)
        if "class Solution" in job["program"]:
            return getattr(scope["Solution"](), job["fn_name"])
        return scope[job["fn_name"]]

    target, reply = guarded(resolve)

    def run_functional(test):
        os.close(redirect(""))
        value, reply = guarded(lambda: target(*test["args"]))
        if reply["status"] == "ok":
            try:
                reply["output"] = json.dumps(value)
            except Exception as exc:
                reply.update(output=None, error=f"return value is not JSON: {describe(exc)}")
        return reply
    return run_functional, reply


def main() -> None:
    commands = open(os.dup(0), "rb")
    replies = os.dup(1)

    def send(reply: dict) -> None:
        view = memoryview((json.dumps(reply, ensure_ascii=False) + "\n").encode("utf-8", "replace"))
        while view:
            view = view[os.write(replies, view):]

    job = json.loads(commands.readline())
    sys.path.extend(job["sys_path"])
    try:
        code = compile(job["program"], "<solution>", "exec")
    except Exception as exc:
        send({"status": "syntax_error", "error": describe(exc)})
        os._exit(0)
    # imports happen before the privilege drop, in case Python's files are root-only
    base = preamble(global_names(code), {m: set(names) for m, names in job["exports"].items()})
    sys.setrecursionlimit(50000)
    set_limits(job["limits"])
    drop_privileges(job["uid"], job["pdeathsig"])
    os.chdir(job["cwd"])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past RLIMIT_FSIZE fail with EFBIG instead
    run_test, reply = load(code, job, base)
    send(reply)
    if reply["status"] != "ok":
        os._exit(0)
    for line in commands:
        send(run_test(json.loads(line)))
    os._exit(0)


if __name__ == "__main__":
    main()
