"""One run per output: a lock file beside the output path, held while the run writes, naming its holder.

``OutputLock(path)`` takes ``<parent>/.<name>.lock`` (beside the output, so it survives an output
directory that is replaced atomically, and works for a file output too) with ``flock`` and writes the
holder's PID, host and start time into it. A second run into the same output is refused at once with
``OutputLocked``, naming the holder. The kernel drops a ``flock`` when its holder dies, however it dies
(also on NFS), so a lock file left behind by a killed run is held by nobody: the next run takes it over
and logs a warning naming the dead holder. Released (and the file removed) by ``release``, on leaving a
``with`` block, or when the object is collected.

Within one process the lock is re-entrant: a process never waits on itself (a run retried in the same
process while the old one's frame is still referenced by a traceback).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)

_HELD: dict[str, list] = {}  # lock file path -> [fd, holders in this process]


class OutputLocked(RuntimeError):
    """Another live run holds the lock of this output."""


def lock_file(output: str | Path) -> Path:
    """Where the lock of ``output`` lives (symlinks resolved, so two spellings of a path share it)."""
    path = Path(output).resolve()
    return path.parent / f".{path.name}.lock"


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"PID {info['pid']} on host {info['host']} (since {info['started']})"
    except (ValueError, KeyError, TypeError):
        return "an unknown holder"


class OutputLock:
    """Hold the lock of ``output`` (see the module docstring). ``enabled=False`` holds nothing: for the
    ranks of a distributed run other than the first, which write through it."""

    def __init__(self, output: str | Path, enabled: bool = True):
        self.output, self.path = Path(output), lock_file(output)
        self._held = False
        if enabled:
            self._acquire()

    def _acquire(self) -> None:
        key = str(self.path)
        if key in _HELD:
            _HELD[key][1] += 1
            self._held = True
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(os.pread(fd, 4096, 0).decode(errors="replace"))
                os.close(fd)
                raise OutputLocked(f"{self.output} is in use by another run: {holder} holds {self.path}; "
                                   "wait for it to finish or write elsewhere") from None
            except OSError as e:  # a file system without flock (ENOLCK, EOPNOTSUPP)
                os.close(fd)
                log.warning("%s: cannot lock (%s): concurrent runs into %s are not refused", self.path, e,
                            self.output)
                return
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:  # released and removed between our open and our flock
                same_file = False
            if same_file:
                break
            os.close(fd)
        if previous := os.pread(fd, 4096, 0).decode(errors="replace").strip():
            log.warning("%s: taking over a stale lock (%s): that run is gone without releasing it",
                        self.path, _holder(previous))
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode() + b"\n", 0)
        _HELD[key] = [fd, 1]
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        key = str(self.path)
        _HELD[key][1] -= 1
        if _HELD[key][1] == 0:
            fd, _ = _HELD.pop(key)
            self.path.unlink(missing_ok=True)  # still under the lock: a newcomer re-checks the inode
            os.close(fd)

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown: the kernel drops the lock anyway
            pass
