"""Stored values (16-bit, float, Hounsfield units, ...) mapped onto 8-bit display pixels."""

from __future__ import annotations

import numpy as np

from triage.errors import ImageLoadError

# Bit depths that scanners store gray values in; a 16-bit image whose largest value fits in fewer
# bits is read as that many (12-bit MRI is stored in 16-bit PNG and TIFF).
STORED_DEPTHS = (8, 10, 12, 14, 16)


def scale(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Map ``lo..hi`` (default: the array's min..max) linearly onto 0..255 ``uint8``."""
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo = float(values.min()) if lo is None else lo
    hi = float(values.max()) if hi is None else hi
    if hi <= lo:  # a flat image has no contrast to show
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip(np.rint((values - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def depth_of(values: np.ndarray) -> int:
    """The smallest of :data:`STORED_DEPTHS` (or more bits) that holds the largest value."""
    largest = int(values.max())
    return next((bits for bits in STORED_DEPTHS if largest < 1 << bits), largest.bit_length())


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """An ``(H, W)`` gray image as ``(H, W, 3)`` RGB with three equal channels."""
    return np.repeat(gray[:, :, np.newaxis], 3, axis=2)


def require_signal(values: np.ndarray) -> None:
    """Refuse an image that shows nothing: no value is a number, or every pixel is the same.

    Stretched or windowed onto display pixels, such an image would pass for a
    black one; it gets the status ``skipped`` and a reason instead.

    Raises:
        ImageLoadError: ``skipped``, with a reason that says which.
    """
    samples = values.reshape(-1, values.shape[-1]) if values.ndim == 3 else values.reshape(-1, 1)
    if samples.dtype.kind == "f":
        finite = np.isfinite(samples).all(axis=1)
        if not finite.any():
            raise ImageLoadError("skipped", "no signal: no pixel value is a number")
        samples = samples[finite] if not finite.all() else samples
    first = samples[0]
    if (samples.min(axis=0) == first).all() and (samples.max(axis=0) == first).all():
        shown = ", ".join(f"{value:g}" for value in first.tolist())
        shown = shown if len(first) == 1 else f"({shown})"
        raise ImageLoadError("skipped", f"no signal: every pixel is {shown}")
