"""An isolated process that runs one untrusted program against tests, one test at a time.

Isolation (``bwrap``, Debian's bubblewrap): a fresh, read-only root that holds only what the
interpreter needs to run (its binary, standard library and site-packages, and the system's shared
libraries, all bound read-only), so the project, the data, prompt and test files, home directories
and every writable host path are simply absent; a private ``/tmp`` of ``disk_mb`` MiB (a size-limited
tmpfs) holding the working directory, gone with the sandbox; new network (no interfaces but an
unconnected loopback), pid, ipc and uts namespaces, no capabilities, a scrubbed environment, killed with
its parent. As root, the runner then drops to a fresh random uid, so the process limit counts only this
sandbox and the program cannot signal anything of root's. Resource limits (set by ``runner.py`` before
any untrusted code runs): address space, CPU seconds, processes, file size (bounds the captured output
and each file), open files, no core dumps. Where bwrap is missing or cannot create namespaces, the same
runner runs with the resource limits alone, and every reply says what that leaves exposed
(``Sandbox.warning``): the host's files (tests included), the network, the host's disk.

One runner process per sample runs all its tests, so the cost of starting the sandbox (a few tens of
ms) is paid once per sample, not per test. The per-test time limit is enforced here, in the trusted
parent: a test that does not answer in time gets the whole sandbox killed.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib
import json
import logging
import math
import os
import secrets
import select
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from nemo_ext.rewards import runner

logger = logging.getLogger(__name__)

RUNNER_SOURCE = Path(runner.__file__).read_text()
INSIDE = "/tmp/work"  # the working directory as the program sees it under bwrap
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": INSIDE,
       "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8",
       "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
NO_BWRAP_WARNING = ("SANDBOX DEGRADED: {why}; untrusted code runs with resource limits only and is not "
                    "hidden from the host: it can read every file the scorer's user can (the project, data, "
                    "prompt files and the tests with their expected outputs, so it can look answers up), "
                    "reach the network, and fill the host's disk (the working directory is a host directory "
                    "and only single files are size-limited)")
NOT_ROOT_WARNING = "; it runs as the scorer's own user, so it can also signal the scorer's processes"
ROOT_ONLY_WARNING = ("; Python's files are root-only, so programs can import only the modules of the "
                     "LiveCodeBench preamble")
STATUSES = {"ok", "time_limit", "memory_limit", "output_limit", "runtime_error", "syntax_error"}
# Shared libraries the interpreter links (libc, the dynamic loader): merged-/usr symlinks or directories.
SYSTEM_LIBRARIES = ("/lib", "/lib64", "/lib32", "/libx32", "/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/libx32")


@dataclass(frozen=True)
class SandboxConfig:
    """Limits of one sandbox. Sizes in MiB. LiveCodeBench sets no memory limit; 2 GiB fits numpy."""

    memory_mb: int = 2048  # RLIMIT_AS
    output_mb: int = 64  # RLIMIT_FSIZE: the most a test may print (and the largest file it may write)
    disk_mb: int = 256  # the private /tmp holding the working directory (a tmpfs: host memory) under bwrap
    processes: int = 64  # RLIMIT_NPROC (threads count too)
    open_files: int = 64  # RLIMIT_NOFILE
    startup_s: float = 5.0  # interpreter start + program load, on top of one test's limit
    isolation: str = "auto"  # "auto": bwrap when it works, else limits alone (warned); "rlimits": never bwrap


DEFAULT_SANDBOX = SandboxConfig()


@dataclass(frozen=True)
class Reply:
    """What one step (load or test) produced. status: ok, time_limit, memory_limit, output_limit,
    runtime_error or syntax_error; output: the test's stdout, or the JSON of a functional test's return value."""

    status: str
    output: str | None = None
    seconds: float = 0.0
    error: str = ""


@functools.cache
def preamble_exports() -> dict[str, list[str]]:
    """For each module of LiveCodeBench's preamble, the names ``from module import *`` binds."""
    exports = {}
    for name in runner.MODULES:
        module = importlib.import_module(name)
        exports[name] = list(getattr(module, "__all__", None) or (n for n in dir(module) if n[0] != "_"))
    return exports


@functools.cache
def bwrap_problem() -> str | None:
    """Why bubblewrap cannot isolate on this machine (None if it can). Probed once per process."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed"
    probe = subprocess.run(bwrap_argv(DEFAULT_SANDBOX.disk_mb) + [interpreter(), "-S", "-c", "pass"],
                           capture_output=True, timeout=30)
    if probe.returncode != 0:
        return f"bwrap does not work here ({probe.stderr.decode(errors='replace').strip()[-300:]})"
    return None


def interpreter() -> str:
    """The real interpreter binary (a virtual environment's ``python`` is a symlink into the base one)."""
    return os.path.realpath(sys.executable)


def _outermost(paths) -> list[str]:
    """Existing real paths, sorted, without those inside another one of them."""
    kept: list[str] = []
    for path in sorted({os.path.realpath(p) for p in paths if p and os.path.exists(p)}):
        if not any(path == k or path.startswith(k.rstrip(os.sep) + os.sep) for k in kept):
            kept.append(path)
    return kept


@functools.cache
def interpreter_paths() -> tuple[str, ...]:
    """Host paths the sandboxed interpreter needs, and nothing around them: its binary, standard
    library, shared libraries (``LIBDIR``: libpython, a conda environment's libraries) and
    site-packages. Not ``sys.prefix`` as a whole (``/usr`` may hold a checkout in ``/usr/src``)."""
    paths = sysconfig.get_paths()
    return tuple(_outermost([interpreter(), paths["stdlib"], paths["platstdlib"],
                             sysconfig.get_config_var("LIBDIR"), *site.getsitepackages()]))


def _library_binds() -> list[str]:
    """The system's shared libraries (libc, the dynamic loader) read-only, merged-/usr symlinks as such,
    then the interpreter's own trees. Their parent directories are made 0755 (bwrap would make them
    0700, closed to the runner's uid) and hold nothing else."""
    args: list[str] = []
    made: set[str] = set()

    def bind(path: str) -> None:
        for parent in reversed(Path(path).parents[:-1]):  # outermost first, "/" left out
            if str(parent) not in made:
                args.extend(["--perms", "0755", "--dir", str(parent)])
                made.add(str(parent))
        args.extend(["--ro-bind", path, path])

    for path in SYSTEM_LIBRARIES:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            bind(path)
    covered = _outermost(p for p in SYSTEM_LIBRARIES if not os.path.islink(p))
    for path in interpreter_paths():
        if not any(path.startswith(c + os.sep) for c in covered):
            bind(path)
    return args


def _closed_ancestor(path: str) -> str | None:
    """The outermost proper ancestor of ``path`` that other users cannot enter (no o+x), if any."""
    parts = Path(path).parts
    for i in range(1, len(parts)):
        ancestor = os.path.join(*parts[:i])
        if not os.stat(ancestor).st_mode & 0o001:
            return ancestor
    return None


def bwrap_argv(disk_mb: int) -> list[str]:
    """A fresh root holding only the libraries and the interpreter (read-only), a private ``/tmp`` of
    ``disk_mb`` MiB with the working directory in it, new namespaces, no capabilities."""
    argv = [shutil.which("bwrap") or "bwrap", "--dev", "/dev", "--remount-ro", "/dev", "--proc", "/proc",
            "--perms", "1777", "--size", str(disk_mb << 20), "--tmpfs", "/tmp", "--perms", "0777", "--dir", INSIDE]
    argv += _library_binds()  # after /tmp: an interpreter under /tmp (a CI checkout there) is bound over it
    argv += ["--remount-ro", "/",
             "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
             "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv"]
    if os.geteuid() == 0:  # the runner needs these two to drop to its own uid, then has none
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-user"]
    for key, value in ENV.items():
        argv += ["--setenv", key, value]
    return argv + ["--"]


@functools.cache
def _warn_once(message: str) -> None:
    logger.warning(message)


class Sandbox:
    """One runner process for one program. Use as a context manager; ``load`` once, then ``run`` per test.

    total_s: wall-clock budget for everything (LiveCodeBench: (per-test limit + 1) x tests + 5).
    max_input_bytes: the largest test input (the runner's file-size limit must let it write it).
    """

    def __init__(self, program: str, *, fn_name: str | None, total_s: float, max_input_bytes: int = 0,
                 config: SandboxConfig = DEFAULT_SANDBOX):
        self.program, self.fn_name, self.config = program, fn_name, config
        problem = "isolation='rlimits' was requested" if config.isolation == "rlimits" else bwrap_problem()
        self.isolation = "rlimits" if problem else "bwrap"
        self.uid = secrets.randbelow(1 << 30) + (1 << 20) if os.geteuid() == 0 else None
        self.warning = None
        if problem:
            self.warning = NO_BWRAP_WARNING.format(why=problem) + (NOT_ROOT_WARNING if self.uid is None else "")
            if self.uid is not None and any(_closed_ancestor(p) for p in interpreter_paths()):
                self.warning += ROOT_ONLY_WARNING
        self._fsize = max(config.output_mb << 20, max_input_bytes + 4096)
        self._limits = {"AS": config.memory_mb << 20, "CPU": math.ceil(total_s) + 1,
                        "NPROC": config.processes, "FSIZE": self._fsize, "NOFILE": config.open_files,
                        "CORE": 0}
        self._deadline = time.monotonic() + total_s
        self._buf = bytearray()
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> Sandbox:
        self.workdir = None  # under bwrap the working directory lives in the sandbox's own /tmp
        if self.warning:
            _warn_once(self.warning)
        python = [interpreter(), "-s", "-S", "-P", "-c", RUNNER_SOURCE]
        if self.isolation == "bwrap":
            argv, env = bwrap_argv(self.config.disk_mb) + python, None
        else:
            self.workdir = tempfile.mkdtemp(prefix="nemo-sandbox-")
            if self.uid is not None:
                os.chown(self.workdir, self.uid, self.uid)
            argv, env = python, dict(ENV, HOME=self.workdir)
        self._stderr = tempfile.TemporaryFile()  # the runner's own failures, for the verdict's message
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._stderr, env=env, cwd="/", start_new_session=True)
        for fd in (self._proc.stdin.fileno(), self._proc.stdout.fileno()):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def load(self, timeout_s: float) -> Reply:
        """Start the program: compile it (and for functional tests, run its top level and find fn_name)
        within ``timeout_s`` plus the configured startup allowance."""
        job = {"program": self.program, "fn_name": self.fn_name, "uid": self.uid, "limits": self._limits,
               "cwd": INSIDE if self.isolation == "bwrap" else self.workdir,
               "sys_path": [os.path.realpath(p) for p in site.getsitepackages()], "exports": preamble_exports(),
               "pdeathsig": self.isolation != "bwrap"}
        return self._exchange(job, timeout_s + self.config.startup_s)

    def run(self, timeout_s: float, *, stdin: str | None = None, args: list | None = None) -> Reply:
        """Run one test (stdin text, or functional arguments) within ``timeout_s`` wall seconds."""
        return self._exchange({"stdin": stdin} if args is None else {"args": args}, timeout_s)

    def close(self) -> None:
        if self._proc is not None:
            self._kill()
            self._proc.stdin.close()
            self._proc.stdout.close()
            self._stderr.close()
            self._proc = None
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def _exchange(self, message: dict, timeout_s: float) -> Reply:
        start = time.monotonic()
        deadline = min(start + timeout_s, self._deadline)
        sent = self._send((json.dumps(message) + "\n").encode(), deadline)
        reply = self._receive(deadline) if sent else None
        elapsed = time.monotonic() - start
        if reply == "timeout" or (not sent and time.monotonic() >= deadline):
            self._kill()
            return Reply("time_limit", seconds=elapsed, error=f"no answer within {deadline - start:.1f} s")
        if reply == "too_big":
            self._kill()
            return Reply("runtime_error", seconds=elapsed, error="reply larger than the output limit")
        if reply is None:
            return self._death(elapsed)
        ok = (isinstance(reply, dict) and reply.get("status") in STATUSES
              and isinstance(reply.get("output"), str | None) and isinstance(reply.get("error", ""), str))
        if not ok:  # only a program that tampered with the runner can cause this
            self._kill()
            return Reply("runtime_error", seconds=elapsed, error="malformed reply from the runner")
        return Reply(reply["status"], reply.get("output"), elapsed, reply.get("error", ""))

    def _send(self, data: bytes, deadline: float) -> bool:
        view, fd = memoryview(data), self._proc.stdin.fileno()
        while view:
            if not select.select([], [fd], [], max(0.0, deadline - time.monotonic()))[1]:
                return False
            try:
                view = view[os.write(fd, view):]
            except BrokenPipeError:
                return False
        return True

    def _receive(self, deadline: float) -> dict | str | None:
        """The next reply line: a parsed object, "timeout", "too_big", or None when the runner died."""
        fd, cap = self._proc.stdout.fileno(), 6 * self._fsize + (1 << 20)
        searched = 0
        while (newline := self._buf.find(b"\n", searched)) < 0:
            searched = len(self._buf)
            if searched > cap:
                return "too_big"
            if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                return "timeout"
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return None
            self._buf += chunk
        line = bytes(self._buf[:newline])
        del self._buf[:newline + 1]
        try:
            return json.loads(line)
        except ValueError:
            return {}

    def _death(self, elapsed: float) -> Reply:
        """The runner exited without answering: classify by how it died."""
        try:
            code = self._proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            self._kill()
            code = self._proc.returncode
        sig = -code if code < 0 else code - 128 if code > 128 else 0  # bwrap reports 128 + signal
        self._stderr.seek(max(0, os.fstat(self._stderr.fileno()).st_size - 400))
        tail = self._stderr.read().decode(errors="replace").strip()
        if sig == signal.SIGXCPU:
            return Reply("time_limit", seconds=elapsed, error="CPU time limit exceeded")
        try:
            how = f"killed by {signal.Signals(sig).name}" if sig else f"exited with status {code}"
        except ValueError:
            how = f"killed by signal {sig}"
        return Reply("runtime_error", seconds=elapsed, error=f"runner {how}: {tail}"[:600])

    def _kill(self) -> None:
        if self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._proc.wait()
        if self.isolation != "bwrap" and self.uid is not None:
            _kill_uid(self.uid)  # without a pid namespace, children may have left the process group


def _kill_uid(uid: int) -> None:
    """SIGKILL every process owned by ``uid`` (a fresh uid of one sandbox) until none is left."""
    for _ in range(100):
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and _live_owner(p) == uid]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _live_owner(pid: str) -> int | None:
    """The uid owning process ``pid``; None if it is gone or a zombie (already dead, awaiting reaping)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
        return None if state in (b"Z", b"X") else os.stat(f"/proc/{pid}").st_uid
    except (OSError, IndexError):
        return None
