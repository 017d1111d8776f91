"""Stored values (16-bit, float, Hounsfield units, ...) mapped onto 8-bit display pixels."""

from __future__ import annotations

import numpy as np


def scale(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Map ``lo..hi`` (default: the array's min..max) linearly onto 0..255 ``uint8``."""
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo = float(values.min()) if lo is None else lo
    hi = float(values.max()) if hi is None else hi
    if hi <= lo:  # a flat image has no contrast to show
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip(np.rint((values - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """An ``(H, W)`` gray image as ``(H, W, 3)`` RGB with three equal channels."""
    return np.repeat(gray[:, :, np.newaxis], 3, axis=2)
