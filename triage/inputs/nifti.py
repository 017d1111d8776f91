"""NIfTI volumes: found by content, checked from the header, each axial slice shown as viewers show it.

A volume is reoriented to the closest canonical orientation (RAS+: the voxel
axes point to the patient's right, anterior and superior), so the same scan
stored in any axis order or direction gives the same slices, inferior to
superior along the third axis.

Everything that can be known from the header is checked before a voxel is
read: the shape, the voxel type, the bytes the volume decodes to, an affine
that places it in space, and that the file holds the data the header
declares. A volume is then read once for all its slices, and a volume that
fails to read fails once.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

import nibabel as nib
import numpy as np

from triage.errors import ImageLoadError, short_reason
from triage.inputs.formats import HEAD_BYTES, MAX_DECODED_BYTES, MAX_PIXELS, has_image_signature

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_GZIP_MAGIC = b"\x1f\x8b"
_HEAD_BYTES = 548  # a NIfTI-1 header (348 bytes) or a NIfTI-2 header (540) and its extension flag
_CHUNK = 1 << 20


@dataclass(frozen=True)
class VolumeHeader:
    """What the header says a volume is: its axial slices and the bytes reading it takes."""

    slices: int
    decoded_bytes: int


def is_nifti(path: Path) -> bool:
    """Whether a file is a single-file NIfTI-1 or NIfTI-2 volume (gzipped or not).

    Told by its content, whatever its name; a file named ``.nii`` or
    ``.nii.gz`` whose content is too short or too damaged to tell is one too,
    unless it starts like another image format.
    """
    try:
        with open(path, "rb") as raw:
            start = raw.read(HEAD_BYTES)
    except OSError:
        return False  # the file's own row says why it cannot be read
    head = start
    if start[:2] == _GZIP_MAGIC:
        try:
            head = zlib.decompressobj(wbits=31).decompress(start, _HEAD_BYTES)
        except zlib.error:
            head = b""  # too damaged to tell by content
    if _nifti_class(head) is not None:
        return True
    return path.name.lower().endswith(NIFTI_SUFFIXES) and not has_image_signature(start)


def read_header(path: Path) -> VolumeHeader:
    """The volume's axial slice count and decoded size, from the header alone, every check passed.

    Raises:
        ImageLoadError: ``unreadable`` (a corrupt header, no voxels, no place in space, data missing
            from the file); ``unsupported`` (not a 3D volume); ``too_large``.
    """
    with _volume(path) as image:
        header = image.header
        shape = tuple(int(n) for n in header.get_data_shape())
        _check_shape(shape)
        dtype = header.get_data_dtype()
        decoded = _decoded_bytes(shape, dtype)
        affine = image.affine
        if affine is None or not np.all(np.isfinite(affine)):
            raise ImageLoadError("unreadable", "the volume's place in space (its affine) is not finite")
        offset = int(image.dataobj.offset)  # where the voxels start, as nibabel reads them
    axes = nib.io_orientation(affine)[:, 0]
    axial = np.flatnonzero(axes == 2)  # the stored axis that becomes the canonical third
    if axial.size != 1:
        raise ImageLoadError("unreadable", "the volume's affine has no axial direction")
    _check_stored(path, offset + math.prod(shape) * dtype.itemsize)
    return VolumeHeader(int(shape[axial[0]]), decoded)


def _check_shape(shape: tuple[int, ...]) -> None:
    size = "x".join(str(n) for n in shape)
    if len(shape) < 3:
        raise ImageLoadError("unsupported", f"a {len(shape)}D NIfTI image ({size}), not a volume")
    if min(shape) < 1:
        raise ImageLoadError("unreadable", f"the volume has no voxels ({size})")
    dims = max(3, max(axis + 1 for axis, n in enumerate(shape) if n > 1))
    if dims > 3:
        raise ImageLoadError("unsupported", f"a {dims}D volume ({size}): only 3D volumes are scored")
    if math.prod(shape) > MAX_PIXELS:
        raise ImageLoadError("too_large", f"{size} voxels exceeds the limit of {MAX_PIXELS:,} pixels")


def _decoded_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Bytes reading the volume takes: its stored voxels and their float64 values (or magnitudes)."""
    if dtype.fields is not None:  # RGB and other records
        raise ImageLoadError("unsupported", f"a volume of {dtype} voxels, not of single values")
    decoded = math.prod(shape) * (dtype.itemsize + 8)
    if decoded > MAX_DECODED_BYTES:
        raise ImageLoadError("too_large", f"{'x'.join(map(str, shape))} voxels of {dtype} decode to "
                                          f"{decoded:,} bytes, over the limit of {MAX_DECODED_BYTES:,}")
    return decoded


def _check_stored(path: Path, needed: int) -> None:
    """The file holds the bytes its header declares (a gzipped one: decompressed only if it must be)."""
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == _GZIP_MAGIC
        size = handle.seek(0, os.SEEK_END)
        if gzipped and size >= 4:  # the trailer holds the decompressed size, modulo 2**32
            handle.seek(-4, os.SEEK_END)
            if int.from_bytes(handle.read(4), "little") >= needed:
                return
    stored = _gunzipped_size(path, needed) if gzipped else size
    if stored < needed:
        raise ImageLoadError("unreadable", f"the header declares {needed:,} bytes of data, but the file "
                                           f"holds {stored:,} (cut short, or a copy in progress?)")


def _gunzipped_size(path: Path, needed: int) -> int:
    """Bytes the gzipped file decompresses to, counted up to ``needed`` without keeping them."""
    total = 0
    try:
        with gzip.open(path, "rb") as handle:
            while total < needed and (chunk := handle.read(_CHUNK)):
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as err:  # cut short, or corrupt
        raise ImageLoadError("unreadable", f"the compressed volume is cut short or corrupt "
                                           f"({short_reason(err)})") from err
    return total


def axial_slice(path: Path, index: int) -> np.ndarray:
    """Axial slice ``index`` (0: the most inferior) as a radiology viewer shows it."""
    return radiological(canonical_volume(path)[:, :, index])


def radiological(axial: np.ndarray) -> np.ndarray:
    """An axial slice of a RAS+ volume with anterior up and the patient's right on the image's left."""
    return axial.T[::-1, ::-1]


_VOLUME_LOCK = threading.Lock()
_last: tuple[tuple[Path, int], np.ndarray | ImageLoadError] | None = None


def canonical_volume(path: Path) -> np.ndarray:
    """The volume's voxels (scaled as the header says; magnitudes of complex ones) in RAS+ order.

    The last volume read is kept, and so is its failure: the slices of one
    volume, decoded one by one and from several threads, cost one read of the
    file, and a file that cannot be read is read once.
    """
    global _last
    key = (path, os.stat(path).st_mtime_ns)
    with _VOLUME_LOCK:
        if _last is None or _last[0] != key:
            _last = None  # let the previous volume go before the next is read
            try:
                _last = key, _read_canonical(path)
            except ImageLoadError as err:
                _last = key, err
        kept = _last[1]
    if isinstance(kept, ImageLoadError):
        raise ImageLoadError(kept.kind, kept.reason)
    return kept


def _read_canonical(path: Path) -> np.ndarray:
    try:
        with _volume(path) as image:
            data = np.asanyarray(nib.as_closest_canonical(image).dataobj)
    except ImageLoadError:
        raise
    except Exception as err:  # a truncated or corrupt file
        raise ImageLoadError("unreadable", f"cannot read the NIfTI volume ({short_reason(err)})") from err
    if np.iscomplexobj(data):
        data = np.abs(data)
    return data.reshape(*data.shape[:2], -1)  # drop trailing axes of size 1


@contextlib.contextmanager
def _volume(path: Path) -> Iterator[nib.Nifti1Image]:
    """The volume of an open file, its voxels read only when used (while the file is open)."""
    try:
        handle = _open(path)
    except OSError as err:
        raise ImageLoadError("unreadable", f"could not open the file ({err.strerror})") from err
    with handle:
        try:
            kind = _nifti_class(handle.read(_HEAD_BYTES))
            if kind is None:
                raise ValueError("no NIfTI-1 or NIfTI-2 header")
            handle.seek(0)
            image = kind.from_stream(handle)
        except Exception as err:  # nibabel and gzip raise many types on a bad header
            raise ImageLoadError("unreadable", f"not a readable NIfTI file ({short_reason(err)})") from err
        yield image


def _open(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed when it is gzipped (whatever its name)."""
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == _GZIP_MAGIC
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _nifti_class(head: bytes) -> type[nib.Nifti1Image] | None:
    """NIfTI-1 or NIfTI-2 from a (decompressed) header: its size field and magic, either byte order."""
    if len(head) >= 348 and head[344:348] == b"n+1\x00" and 348 in _sizes(head):
        return nib.Nifti1Image
    if len(head) >= 540 and head[4:8] == b"n+2\x00" and 540 in _sizes(head):
        return nib.Nifti2Image
    return None


def _sizes(head: bytes) -> tuple[int, int]:
    return int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")
