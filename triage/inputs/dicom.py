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
from pydicom.uid import DeflatedExplicitVRLittleEndian

from triage.errors import ImageLoadError, short_reason
from triage.inputs.formats import DICOM_EXTENSIONS, MAX_PIXELS, NOT_AN_IMAGE
from triage.inputs.pixels import gray_to_rgb, scale

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
    frames = _check_size(ds)
    try:
        frame = pixel_array(ds, index=frames // 2)
    except Exception as err:  # no decoder for a compressed syntax, or bad pixel data
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        name = syntax.name if syntax else "unknown transfer syntax"
        raise ImageLoadError(
            "unreadable", f"cannot decode DICOM pixel data ({name}): {short_reason(err)}") from err
    try:
        return _dicom_rgb(frame, ds)
    except Exception as err:  # e.g. an invalid window width or LUT
        raise ImageLoadError("unreadable", f"bad DICOM display values ({short_reason(err)})") from err


def _read_dicom(data: bytes, claims_dicom: bool) -> pydicom.Dataset:
    """The data set, its pixel data left unread until it is decoded."""
    not_image = ImageLoadError("unsupported", NOT_AN_IMAGE)
    try:
        header = _deflated_header(data)
        if header is not None:
            _check_size(header)  # before pydicom inflates the whole data set
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


def _deflated_header(data: bytes) -> pydicom.Dataset | None:
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


def _check_size(ds: pydicom.Dataset) -> int:
    """Refuse a data set whose frames hold more than MAX_PIXELS samples; return its frame count."""
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


def _dicom_rgb(frame: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        frame = apply_color_lut(frame, ds)
    if frame.ndim == 3:  # colour; pydicom has already converted YBR to RGB
        return frame if frame.dtype == np.uint8 else scale(frame)

    values = apply_modality_lut(frame, ds)  # stored values -> e.g. Hounsfield units
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
