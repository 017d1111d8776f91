"""Typed errors of the library; the CLI maps each family to one exit code.

Messages speak of the library's own settings, never of command-line flags:
``option`` names the setting at fault (``"threshold"``), and the CLI adds the
flag that sets it.
"""

from __future__ import annotations


class TriageError(Exception):
    """Base of every error a user can cause or fix; its message is one clear sentence."""

    def __init__(self, message: str, *, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


class UsageError(TriageError):
    """Bad input: a missing or empty folder, an output that exists, a bad option value."""


class DataError(UsageError):
    """A training or evaluation folder that cannot be used (missing, empty, one class)."""


class ModelError(TriageError):
    """No model, an unreadable model, or a model card that does not fit the model."""


class WeightsUnavailable(ModelError):
    """ImageNet weights are neither cached nor downloadable, or the given file is bad."""


class CamLayerNotFound(ModelError):
    """The Grad-CAM layer is missing from the model or is not a spatial feature map."""


class OutputError(TriageError):
    """The environment refused an output: a read-only folder, a full disk, a name too long, a permission."""


class LockHeld(TriageError):
    """Another run holds the lock on the same outputs."""


class Stopped(Exception):
    """A stop was asked for (SIGINT/SIGTERM) before anything was written; ``what`` says what was kept."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class ImageLoadError(TriageError):
    """One file could not be read as an image; `kind` is its CSV status."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def short_reason(err: BaseException) -> str:
    """The first line of an error message, cut to a CSV-friendly length."""
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."
