"""An advisory lock on a run's outputs, so two cron runs never write the same files.

``fcntl.flock`` belongs to the open file: the kernel drops it when the holder
dies, however it dies, so a lock left by a killed process is simply free
again. The holder's pid and start time in the file are only for the message.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Callable

from triage.errors import LockHeld, Stopped

log = logging.getLogger(__name__)


class OutputLock:
    """Hold ``path`` exclusively; wait up to ``wait`` seconds for another holder.

    Args:
        path: The lock file (created when missing; never deleted).
        wait: Seconds to wait for another holder.
        poll: Seconds between tries while waiting.
        should_stop: Polled while waiting; True gives up at once (SIGINT/SIGTERM).

    Raises:
        LockHeld: still held by another process after ``wait`` seconds.
        Stopped: ``should_stop`` said stop while waiting.
    """

    def __init__(self, path: Path, wait: float = 0.0, poll: float = 0.2,
                 should_stop: Callable[[], bool] = lambda: False) -> None:
        self.path = path
        self.wait = wait
        self.poll = poll
        self.should_stop = should_stop
        self._fd: int | None = None

    def _holder(self, fd: int) -> str:
        """Who holds the lock, from the file: "pid 123, started 2026-11-25 19:45:28 UTC"."""
        for _ in range(5):  # the holder writes it just after taking the lock
            text = os.pread(fd, 200, 0).decode(errors="replace").strip()
            if text:
                pid, _, started = text.partition(" ")
                return f"pid {pid}" + (f", started {started}" if started else "")
            time.sleep(0.05)
        return "pid unknown"

    def __enter__(self) -> "OutputLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + max(0.0, self.wait)
        waiting = False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockHeld(
                            f"Another triage run ({self._holder(fd)}) is writing these outputs "
                            f"({self.path.parent / self.path.name}); waited {self.wait:g} s."
                        ) from None
                    if not waiting:
                        log.info("another triage run (%s) holds %s: waiting up to %g s",
                                 self._holder(fd), self.path, self.wait)
                        waiting = True
                    if self.should_stop():
                        raise Stopped("stopped while waiting for the lock; no output was changed") from None
                    time.sleep(min(self.poll, max(0.0, deadline - time.monotonic())))
        except BaseException:
            os.close(fd)
            raise
        if waiting:
            log.info("the other run is done: lock taken")
        started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {started}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
