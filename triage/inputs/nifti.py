"""NIfTI volumes: their axial slice count from the header, and each slice as radiology viewers show it.

A volume is reoriented to the closest canonical orientation (RAS+: the voxel
axes point to the patient's right, anterior and superior), so the same scan
stored in any axis order or direction gives the same slices, inferior to
superior along the third axis.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from pathlib import Path

import nibabel as nib
import numpy as np

from triage.errors import ImageLoadError, short_reason
from triage.inputs.formats import MAX_PIXELS

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(name: str) -> bool:
    return name.lower().endswith(NIFTI_SUFFIXES)


def axial_count(path: Path) -> int:
    """How many axial slices the canonical volume has, from the header alone.

    Raises:
        ImageLoadError: ``unreadable``; ``unsupported`` (a 4D or 2D file);
            ``too_large`` (more than MAX_PIXELS voxels).
    """
    image = _open(path)
    shape = image.shape
    if len(shape) < 3:
        raise ImageLoadError("unsupported", "2D NIfTI image")
    if any(size > 1 for size in shape[3:]):
        raise ImageLoadError("unsupported", "4D volume")
    if math.prod(shape[:3]) > MAX_PIXELS:
        size = "x".join(str(n) for n in shape[:3])
        raise ImageLoadError("too_large", f"{size} voxels exceeds the limit of {MAX_PIXELS:,} pixels")
    axes = nib.io_orientation(image.affine)[:, 0]
    axial = np.flatnonzero(axes == 2)  # the stored axis that becomes the canonical third
    if axial.size != 1:
        raise ImageLoadError("unreadable", "the volume's affine has no axial direction")
    return int(shape[axial[0]])


def axial_slice(path: Path, index: int) -> np.ndarray:
    """Axial slice ``index`` (0: the most inferior) as a radiology viewer shows it."""
    return radiological(canonical_volume(path)[:, :, index])


def radiological(axial: np.ndarray) -> np.ndarray:
    """An axial slice of a RAS+ volume with anterior up and the patient's right on the image's left."""
    return axial.T[::-1, ::-1]


_VOLUME_LOCK = threading.Lock()


def canonical_volume(path: Path) -> np.ndarray:
    """The volume's voxels (scaled as the header says) in RAS+ order.

    The last volume read is kept, so the slices of one volume, decoded one by
    one and from several threads, cost one read of the file.
    """
    with _VOLUME_LOCK:
        return _read_canonical(path, os.stat(path).st_mtime_ns)


@functools.lru_cache(maxsize=1)
def _read_canonical(path: Path, _mtime_ns: int) -> np.ndarray:
    try:
        data = np.asanyarray(nib.as_closest_canonical(_open(path)).dataobj)
    except ImageLoadError:
        raise
    except Exception as err:  # a truncated or corrupt file
        raise ImageLoadError("unreadable", f"cannot read the NIfTI volume ({short_reason(err)})") from err
    return data.reshape(*data.shape[:2], -1)  # drop trailing axes of size 1


def _open(path: Path) -> nib.spatialimages.SpatialImage:
    try:
        return nib.load(path)
    except Exception as err:
        raise ImageLoadError("unreadable", f"not a readable NIfTI file ({short_reason(err)})") from err
