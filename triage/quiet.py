"""Quiet runs: the libraries' start-up chatter off the console, one-line summaries.

Under cron every line on stdout or stderr is mailed. Unless ``verbose``,
TensorFlow's C++ start-up lines are discarded and the Python log records and
warnings of TensorFlow, absl, Keras and the other libraries go to the log file
only (WARNING and above), never to the console. With ``verbose`` the libraries
print as they do by default.

TensorFlow's C++ lines and what silences each:

- ``I... cpu_feature_guard.cc] This TensorFlow binary is optimized to use ...``,
  ``E... cuda_platform.cc] failed call to cuInit`` (a machine without a GPU), and on
  a GPU the device, cuDNN and XLA lines (``Created device``, ``Loaded cuDNN
  version``, ``Compiled cluster using XLA``):
  ``TF_CPP_MIN_LOG_LEVEL=3`` (2 still lets the ``E`` lines through).
- ``WARNING: All log messages before absl::InitializeLog() is called are written
  to STDERR``, ``I... port.cc] oneDNN custom operations are on``, ``I...
  cudart_stub.cc] Could not find cuda drivers``, and on a GPU ``E... Unable to
  register cuDNN/cuFFT/cuBLAS factory``, ``computation_placer.cc]`` and ``TF-TRT``: these
  are written while TensorFlow's libraries load, before absl logging is set up,
  and no environment variable silences them (``TF_CPP_MIN_LOG_LEVEL`` is not yet
  read; ``TF_ENABLE_ONEDNN_OPTS=0`` would hide the oneDNN line only by changing the
  arithmetic). They are discarded by pointing file descriptor 2 at a temporary
  file while TensorFlow is imported; if the import fails, that text is written to
  stderr after all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator

_handlers: list[logging.Handler] = []
_verbose = [True]  # until silence_libraries says otherwise (the library used on its own prints)


class _OneLine(logging.Formatter):
    """Log-file lines for library records: one line each, like the rest of the log."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(part.strip() for part in super().format(record).splitlines() if part.strip())


def silence_libraries(verbose: bool, log_file: Path | None = None) -> None:
    """Route library messages; call before TensorFlow is imported (then it imports it)."""
    root = logging.getLogger()
    for handler in _handlers:
        root.removeHandler(handler)
        handler.close()
    _handlers.clear()
    if verbose:
        _handlers.append(logging.StreamHandler(sys.stderr))
        _handlers[-1].setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
    if log_file:
        _handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
        _handlers[-1].setFormatter(_OneLine("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if not _handlers:
        _handlers.append(logging.NullHandler())
    for handler in _handlers:
        handler.setLevel(logging.WARNING)
        root.addHandler(handler)  # a root handler also stops TensorFlow adding its own stderr one
    logging.captureWarnings(not verbose)  # warnings.warn -> the "py.warnings" logger -> the log file
    _verbose[0] = verbose
    if verbose:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if "tensorflow" not in sys.modules:
        _import_tensorflow_quietly()


@contextlib.contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """File descriptor 2 (native code's stderr too) into a list of lines, filled on exit."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines.extend(captured.read().decode(errors="replace").splitlines(keepends=True))


def _import_tensorflow_quietly() -> None:
    try:
        with _stderr_captured() as lines:
            import keras  # noqa: F401  (imports TensorFlow)
    except BaseException:
        sys.stderr.write("".join(lines))  # a failed import shows what TensorFlow said
        raise


@contextlib.contextmanager
def native_lines_to_log(name: str) -> Iterator[None]:
    """While a library starts native code that writes to file descriptor 2 (Ray's core worker),
    send those lines to the log file at INFO, unless verbose. Nothing is lost: they are logged.
    """
    if _verbose[0]:
        yield
        return
    try:
        with _stderr_captured() as lines:
            yield
    finally:
        for line in lines:
            if line.strip():
                logging.getLogger(name).info("%s", line.strip())
