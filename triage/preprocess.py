"""The one preprocessing path shared by training, evaluation and scanning.

Decoded RGB pixels are resized to a square, bilinearly and without keeping the
aspect ratio or antialiasing, as ``keras.utils.image_dataset_from_directory``
does; the VGG19 mean subtraction lives inside the model itself (the
``vgg19_preprocess`` layer, see :func:`triage.model.preprocess_layer`), so a
saved model takes raw 0-255 RGB.
"""

from __future__ import annotations

import cv2
import numpy as np

# Bump when anything here changes: it is part of the feature-cache key.
PREPROCESS_VERSION = 1


def resize_for_model(pixels: np.ndarray, image_size: int) -> np.ndarray:
    """Resize (H, W, 3) uint8 RGB to (S, S, 3) float32 in 0..255.

    OpenCV's INTER_LINEAR on float input uses half-pixel centres with no
    antialiasing, the same sampling as ``tf.image.resize(method="bilinear")``
    that Keras's directory loader applies.
    """
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) pixels, got shape {pixels.shape}")
    image = pixels.astype(np.float32)
    if image.shape[:2] == (image_size, image_size):
        return image
    return cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_LINEAR)
