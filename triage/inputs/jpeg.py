"""A JPEG decoded once, its completeness known from the same decode.

libjpeg-turbo warns ("premature end of data segment") when a JPEG's data end
before its last block, and fills the rest with grey; Pillow does not pass the
warning on, so :mod:`triage.inputs.integrity` decodes such a file a second time to
find out. simplejpeg runs the same libjpeg-turbo with warnings raised as errors
(``strict``), so one decode gives both the pixels (identical to Pillow's: the same
library and settings, tested) and the answer. A file it cannot take (CMYK, 12-bit)
or that warns of anything decodes through Pillow and its check as before.
"""

from __future__ import annotations

import numpy as np
import simplejpeg
from PIL import Image, ImageOps

_MODES = ("RGB", "L")  # what libjpeg-turbo turns into RGB as Pillow's convert("RGB") does


def decode_whole_jpeg(image: Image.Image, data: bytes) -> np.ndarray | None:
    """RGB pixels of a complete JPEG after its EXIF orientation, or None: then Pillow decodes it.

    ``image`` is the file opened by Pillow (its header only: mode and EXIF orientation).
    """
    if image.mode not in _MODES:
        return None
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError:  # a cut-short file, or any other warning: Pillow and the full check decide
        return None
    orientation = image.getexif().get(ImageOps.ExifTags.Base.Orientation, 1)
    if orientation in (1, None) or orientation not in _TRANSPOSE:
        return pixels
    return np.asarray(Image.fromarray(pixels).transpose(_TRANSPOSE[orientation]))


# EXIF orientation -> the transposition that shows the image upright (as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
