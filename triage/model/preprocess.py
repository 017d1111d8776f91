"""The one preprocessing path shared by training, evaluation and scanning.

Decoded RGB pixels are resized to a square, bilinearly and without keeping the
aspect ratio or antialiasing, as ``keras.utils.image_dataset_from_directory``
does; the VGG19 mean subtraction lives inside the model itself (the
``vgg19_preprocess`` layer, see :func:`triage.model.network.preprocess_layer`), so a
saved model takes raw 0-255 RGB.

Display copies for reports and overlays are made here too: at most
:data:`DISPLAY_MAX_SIDE` pixels on a side, so nothing downstream holds a
full-resolution image.
"""

from __future__ import annotations

import cv2
import numpy as np

# Bump when anything here changes: it is part of the feature-cache key.
PREPROCESS_VERSION = 1
VGG_BGR_MEAN = (103.939, 116.779, 123.68)  # Caffe-style, as keras.applications.vgg19.preprocess_input
DISPLAY_MAX_SIDE = 1024  # overlays and report images larger than this are downscaled


def resize_for_model(pixels: np.ndarray, image_size: int) -> np.ndarray:
    """Resize (H, W, 3) uint8 RGB to (S, S, 3) float32 in 0..255.

    The sampling and arithmetic of ``tf.image.resize(method="bilinear")``
    (half-pixel centres, no antialiasing, edges clamped), which Keras's
    directory loader applies. Bilinear sampling without antialiasing reads at
    most two rows and two columns per output pixel, so only those are gathered
    and converted to float: a 100-megapixel scan costs no full-size float copy.
    """
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) pixels, got shape {pixels.shape}")
    if pixels.shape[:2] == (image_size, image_size):
        return pixels.astype(np.float32)
    row0, row1, row_lerp = _sample_points(pixels.shape[0], image_size)
    col0, col1, col_lerp = _sample_points(pixels.shape[1], image_size)
    col_lerp = col_lerp[None, :, None]
    upper, lower = pixels[row0], pixels[row1]
    top_left, top_right = upper[:, col0].astype(np.float32), upper[:, col1].astype(np.float32)
    bottom_left, bottom_right = lower[:, col0].astype(np.float32), lower[:, col1].astype(np.float32)
    top = top_left + (top_right - top_left) * col_lerp
    bottom = bottom_left + (bottom_right - bottom_left) * col_lerp
    return top + (bottom - top) * row_lerp[:, None, None]


def _sample_points(source: int, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: the two source indices it reads and the weight of the second."""
    scale = np.float32(source) / np.float32(target)
    centres = (np.arange(target, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(centres)
    low = np.clip(floor, 0, source - 1).astype(np.intp)
    high = np.clip(np.ceil(centres), 0, source - 1).astype(np.intp)
    return low, high, (centres - floor).astype(np.float32)


def display_copy(pixels: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> np.ndarray:
    """The image for overlays and reports: downscaled (area averaging) to ``max_side`` at most."""
    scale = max_side / max(pixels.shape[:2])
    if scale >= 1:
        return pixels
    size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
