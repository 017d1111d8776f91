"""One DICOM file's bytes decoded to RGB pixels: its middle frame, in its stored window.

The pixel limit is checked from the header before any pixel is decoded, and a
deflated data set from the start of its inflated data before pydicom inflates
it whole. :mod:`triage.inputs.dicom_series` reads series of files; this module
reads one file on its own.
"""

from __future__ import annotations

import io
import zlib

import numpy as np
import pydicom
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    apply_windowing,
    pixel_array,
)
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import DeflatedExplicitVRLittleEndian

from triage.errors import ImageLoadError, short_reason
from triage.inputs.formats import DICOM_EXTENSIONS, MAX_PIXELS, NOT_AN_IMAGE
from triage.inputs.pixels import gray_to_rgb, require_signal, scale

# Longer DICOM values (the pixel data) are read only when they are used.
DICOM_DEFER_BYTES = 64 << 10
# A deflated DICOM data set is checked on at most this much of its inflated start.
_HEADER_BYTES = 4 << 20
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def decode_dicom(data: bytes, suffix: str) -> np.ndarray:
    """A DICOM file's middle frame as RGB pixels (the middle slice best represents a series).

    Raises:
        ImageLoadError: ``unsupported`` (not DICOM), ``unreadable`` or ``too_large``.
    """
    claims_dicom = data[128:132] == b"DICM" or suffix in DICOM_EXTENSIONS
    ds = _read_dicom(data, claims_dicom)
    frames = check_size(ds)
    _check_value(ds)
    try:
        frame = pixel_array(ds, index=frames // 2)
    except Exception as err:  # no decoder for a compressed syntax, or bad pixel data
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        name = syntax.name if syntax else "unknown transfer syntax"
        raise ImageLoadError(
            "unreadable", f"cannot decode DICOM pixel data ({name}): {short_reason(err)}") from err
    try:
        return _dicom_rgb(frame, ds)
    except ImageLoadError:
        raise
    except Exception as err:  # e.g. an invalid window width or LUT
        raise ImageLoadError("unreadable", f"bad DICOM display values ({short_reason(err)})") from err


def _check_value(ds: pydicom.Dataset) -> None:
    """The pixel data of a data set read whole hold what its header declares."""
    element = ds[next(keyword for keyword in _PIXEL_DATA_KEYWORDS if keyword in ds)]
    size = len(element.value or b"")
    check_pixel_data(ds, None if element.is_undefined_length else size, size)


def _read_dicom(data: bytes, claims_dicom: bool) -> pydicom.Dataset:
    """The data set, its pixel data left unread until it is decoded."""
    not_image = ImageLoadError("unsupported", NOT_AN_IMAGE)
    try:
        header = deflated_header(data)
        if header is not None:
            check_size(header)  # before pydicom inflates the whole data set
        # force=True reads DICOM without the 128-byte preamble; it also "reads"
        # arbitrary bytes, so a dataset without pixel data is no image.
        ds = pydicom.dcmread(io.BytesIO(data), force=True, defer_size=DICOM_DEFER_BYTES)
    except ImageLoadError:
        raise
    except Exception as err:
        if claims_dicom:
            raise ImageLoadError("unreadable", f"corrupt DICOM file ({short_reason(err)})") from err
        raise not_image from err
    if not any(keyword in ds for keyword in _PIXEL_DATA_KEYWORDS):
        if claims_dicom:
            raise ImageLoadError("unreadable", "DICOM file has no pixel data")
        raise not_image
    return ds


def deflated_header(data: bytes) -> pydicom.Dataset | None:
    """The elements of a deflated data set read from the start of its inflated data.

    pydicom inflates such a data set whole before it reads any element, and a
    small file may inflate to gigabytes of pixels. ``None`` when the data set is
    not deflated (or has no file meta group length to find where it starts).
    """
    meta = 132 if data[128:132] == b"DICM" else 0
    if data[meta:meta + 8] != b"\x02\x00\x00\x00UL\x04\x00":  # (0002,0000) group length
        return None
    start = meta + 12 + int.from_bytes(data[meta + 8:meta + 12], "little")
    if data.find(DeflatedExplicitVRLittleEndian.encode(), meta, start) < 0:
        return None
    head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(memoryview(data)[start:], _HEADER_BYTES)
    return pydicom.dcmread(io.BytesIO(head), force=True, stop_before_pixels=True)


def check_size(ds: pydicom.Dataset) -> int:
    """Refuse a data set whose frames hold more than MAX_PIXELS samples; return its frame count.

    Raises:
        ImageLoadError: ``too_large``, or ``unreadable`` for sizes that are not counts.
    """
    try:
        rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        frames, samples = int(ds.get("NumberOfFrames") or 1), int(ds.get("SamplesPerPixel") or 1)
    except (TypeError, ValueError) as err:
        raise ImageLoadError("unreadable", f"bad DICOM image size ({short_reason(err)})") from err
    if min(rows, columns, frames, samples) < 0:
        raise ImageLoadError("unreadable", "bad DICOM image size (a negative count)")
    if rows * columns * frames * samples > MAX_PIXELS:
        size = f"{columns}x{rows} pixels"
        size += f" x {frames} frames" if frames > 1 else ""
        size += f" x {samples} samples" if samples > 1 else ""
        raise ImageLoadError("too_large", f"{size} exceeds the limit of {MAX_PIXELS:,} pixels")
    return max(frames, 1)


def check_pixel_data(ds: pydicom.Dataset, length: int | None, available: int) -> None:
    """Refuse pixel data that do not hold what the header declares, before any is decoded.

    Args:
        ds: The data set (its header is enough).
        length: The length the pixel data element declares; None when undefined (compressed frames).
        available: The bytes the file holds from the start of that value.

    Raises:
        ImageLoadError: ``unreadable``, with the counts in its reason.
    """
    frames = check_size(ds)
    if length is None:  # each compressed frame takes an item of at least 8 bytes
        if 8 * frames > available:
            raise ImageLoadError("unreadable", f"{frames:,} compressed frames cannot fit in the "
                                               f"{available:,} bytes left in the file")
        return
    if length > available:
        raise ImageLoadError("unreadable", f"the file is cut short: its pixel data declare {length:,} bytes, "
                                           f"{available:,} are left")
    try:
        expected = get_expected_length(ds)
    except (AttributeError, TypeError, ValueError):  # a missing attribute: decoding says which
        return
    frame_bytes = max(expected // frames, 1)
    if length < expected or length - expected >= frame_bytes:  # less than a frame more is padding
        raise ImageLoadError("unreadable", f"the pixel data hold {length:,} bytes, but the header declares "
                                           f"{expected:,} ({_frames_text(ds, frames)})")


def _frames_text(ds: pydicom.Dataset, frames: int) -> str:
    size = f"{ds.get('Columns')}x{ds.get('Rows')} pixels of {ds.get('BitsAllocated')} bits"
    return f"{frames:,} frames of {size}" if frames > 1 else size


def _dicom_rgb(frame: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        frame = apply_color_lut(frame, ds)
    if frame.ndim == 3:  # colour; pydicom has already converted YBR to RGB
        if frame.dtype == np.uint8:
            return frame
        require_signal(frame)
        return scale(frame)

    values = apply_modality_lut(frame, ds)  # stored values -> e.g. Hounsfield units
    require_signal(values)
    values = apply_voi_lut(values, ds, prefer_lut=False)
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        # The window maps onto a fixed output range; a probe far below and far
        # above it reads that range back, so the window is shown as intended.
        lo, hi = apply_windowing(np.array([-np.inf, np.inf]), ds)
        gray = scale(values, float(lo), float(hi))
    else:
        gray = scale(values)
    if photometric == "MONOCHROME1":  # MONOCHROME1: low values are white
        gray = 255 - gray
    return gray_to_rgb(gray)
