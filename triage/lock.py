"""An advisory lock on a run's outputs, so two cron runs never write the same files.

``fcntl.flock`` belongs to the open file: the kernel drops it when the holder
dies, however it dies, so a lock left by a killed process is simply free
again. The holder's pid in the file is only for the message.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from triage.errors import LockHeld


class OutputLock:
    """Hold ``path`` exclusively; wait up to ``wait`` seconds for another holder.

    Raises:
        LockHeld: still held by another process after ``wait`` seconds.
    """

    def __init__(self, path: Path, wait: float = 0.0, poll: float = 0.2) -> None:
        self.path = path
        self.wait = wait
        self.poll = poll
        self._fd: int | None = None

    def __enter__(self) -> "OutputLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + max(0.0, self.wait)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                    os.close(fd)
                    raise LockHeld(
                        f"Another triage run (pid {holder}) is writing these outputs "
                        f"({self.path.name}); waited {self.wait:g} s."
                    ) from None
                time.sleep(self.poll)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
