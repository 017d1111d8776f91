"""One image file read once, hashed, and decoded to RGB pixels.

:func:`read_image` reads a file, hashes its bytes and decodes them with Pillow
or pydicom to an ``(H, W, 3)`` ``uint8`` RGB array, or raises
:class:`~triage.errors.ImageLoadError` whose ``kind`` is the file's CSV status.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from triage.errors import ImageLoadError, short_reason
from triage.inputs.dicom import decode_dicom
from triage.inputs.formats import HEAD_BYTES, MAX_PIXELS, NOT_AN_IMAGE, has_image_signature, looks_like_image
from triage.inputs.integrity import decoded_whole, png_chunks
from triage.inputs.jpeg import decode_whole_jpeg
from triage.inputs.pixels import depth_of, gray_to_rgb, require_signal, scale

# Bump when decoding changes what pixels a file gives: it is part of the feature-cache key
# and of the settings an incremental scan must match.
DECODER_VERSION = 4

# Pillow is limited to raster formats that decode in-process: EPS would run
# Ghostscript, and text-like formats (XBM, XPM) would accept plain text files.
_PILLOW_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")


# eq=False: comparing two arrays field by field has no single truth value.
@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded image.

    Attributes:
        sha256: Hex SHA-256 of the file's bytes.
        pixels: ``(H, W, 3)`` ``uint8`` RGB, C-contiguous, after EXIF rotation.
        format: Decoded format: ``JPEG``, ``PNG``, ``BMP``, ``TIFF``, ``GIF``, ``DICOM``, ...
    """

    sha256: str
    pixels: np.ndarray
    format: str

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


def read_image(path: Path) -> LoadedImage:
    """Read a file once, hash its bytes and decode them.

    Args:
        path: The file to read; it is opened read-only and never modified.

    Returns:
        The file's SHA-256 and its decoded pixels.

    Raises:
        ImageLoadError: The file cannot be read or decoded; ``kind`` is its CSV
            status. When the bytes were read, the error carries their hex
            digest as ``sha256``.
    """
    digest, data = read_file(path)
    return decode_file(path, digest, data)


def read_file(path: Path) -> tuple[str, bytes]:
    """A file's SHA-256 and bytes, read-only (the first half of :func:`read_image`).

    The file is identified from its first :data:`~triage.inputs.formats.HEAD_BYTES`
    bytes before it is read whole, so a large file that is no image is refused
    without reading it.

    Raises:
        ImageLoadError: the file cannot be opened or read, is not a regular
            file, or (``unsupported``) does not start like an image.
    """
    with _open_regular(path) as handle:
        head = _read(handle, HEAD_BYTES)
        if head and not looks_like_image(head, path.suffix.lower()):
            raise ImageLoadError("unsupported", NOT_AN_IMAGE)
        handle.seek(0)
        data = _read(handle, -1)
    # The bytes are kept for decoding, so they are hashed where they lie.
    return hashlib.sha256(data).hexdigest(), data


def read_whole(path: Path) -> tuple[str, bytes]:
    """A file's SHA-256 and bytes, read once and kept for decoding (a DICOM slice known by its header).

    Raises:
        ImageLoadError: the file cannot be opened or read, or is not a regular file.
    """
    with _open_regular(path) as handle:
        data = _read(handle, -1)
    return hashlib.sha256(data).hexdigest(), data


def decode_file(path: Path, digest: str, data: bytes) -> LoadedImage:
    """Decode bytes from :func:`read_file` (the second half of :func:`read_image`).

    Raises:
        ImageLoadError: the bytes are no image triage reads; it carries ``sha256``.
    """
    try:
        pixels, fmt = decode_bytes(data, suffix=path.suffix.lower())
    except ImageLoadError as err:
        setattr(err, "sha256", digest)  # callers read getattr(err, "sha256", None)
        raise
    return LoadedImage(sha256=digest, pixels=pixels, format=fmt)


def decode_bytes(data: bytes, suffix: str = "") -> tuple[np.ndarray, str]:
    """Decode image bytes to RGB pixels.

    Images are recognised by content: Pillow is tried first, then DICOM when
    the bytes carry the ``DICM`` marker, or when ``suffix`` is ``.dcm``,
    ``.dicom`` or empty (DICOM files without the preamble).

    Args:
        data: The whole file.
        suffix: The file's lower-case extension, ``""`` when it has none or is unknown.

    Returns:
        ``(H, W, 3)`` ``uint8`` C-contiguous RGB pixels, and the format name.

    Raises:
        ImageLoadError: ``empty``, ``unsupported``, ``unreadable`` or ``too_large``.
    """
    if not data:
        raise ImageLoadError("empty", "zero-byte file")
    if not looks_like_image(data[:HEAD_BYTES], suffix):
        raise ImageLoadError("unsupported", NOT_AN_IMAGE)
    _strict_pillow()
    image = _open_pillow(data)
    if image is not None:
        pixels, fmt = _decode_pillow(image, data)
    else:
        pixels, fmt = decode_dicom(data, suffix), "DICOM"
    return np.ascontiguousarray(pixels, dtype=np.uint8), fmt


def _open_regular(path: Path) -> io.BufferedReader:
    try:
        # O_NONBLOCK: opening a fifo for reading would otherwise wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as err:
        raise ImageLoadError("unreadable", f"could not open the file ({err.strerror})") from err
    handle = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        handle.close()
        raise ImageLoadError("unsupported", "not a regular file")
    return handle


def _read(handle: io.BufferedReader, size: int) -> bytes:
    try:
        return handle.read(size)
    except OSError as err:
        raise ImageLoadError("unreadable", f"could not read the file ({err.strerror})") from err


def _strict_pillow() -> None:
    """Pillow's process-wide switches, as this module needs them.

    WeasyPrint sets ``LOAD_TRUNCATED_IMAGES = True`` when imported, which would
    let a truncated scan through as a half-grey image: turn it back off before
    every decode. The pixel limit is checked here against MAX_PIXELS (header
    only, before decoding), so Pillow's own check, which warns at ~89M pixels
    and refuses some sizes before they can be reported, is switched off.
    """
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    Image.MAX_IMAGE_PIXELS = None


def _open_pillow(data: bytes) -> Image.Image | None:
    """Open the image lazily (header only); ``None`` when Pillow does not know the format."""
    try:
        return Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS)
    except UnidentifiedImageError as err:
        if has_image_signature(data):
            raise ImageLoadError("unreadable", "corrupt image header") from err
        return None
    except Exception as err:  # plugins raise many types on a corrupt header
        raise ImageLoadError("unreadable", short_reason(err)) from err


def _decode_pillow(image: Image.Image, data: bytes) -> tuple[np.ndarray, str]:
    fmt = "JPEG" if image.format == "MPO" else str(image.format)  # MPO: a camera JPEG
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageLoadError(
            "too_large", f"{width}x{height} pixels exceeds the limit of {MAX_PIXELS:,} pixels")
    try:
        once = decode_whole_jpeg(image, data) if image.format == "JPEG" else None
        if once is not None:  # complete, decoded once
            return np.ascontiguousarray(once), fmt
        image.load()  # decode here, inside the try, so truncation is reported
        complete = decoded_whole(image, fmt, data)
        image = ImageOps.exif_transpose(image)
        pixels = _pillow_rgb(image, data)
    except ImageLoadError:
        raise
    except Exception as err:  # decoders raise OSError, SyntaxError, ValueError, ...
        raise ImageLoadError("unreadable", short_reason(err)) from err
    if not complete:
        raise ImageLoadError("unreadable", f"{fmt} data end early: the image decodes only in part")
    return pixels, fmt


def _pillow_rgb(image: Image.Image, data: bytes) -> np.ndarray:
    """RGB pixels: gray deeper than 8 bits scaled by the depth its data use, float by its range.

    A 12-bit MRI stored in 16 bits uses 0..4095: keeping the high byte would
    leave it nearly black, and stretching its own minimum..maximum would change
    its contrast with its content. Scaled from 0..4095 (PNG's ``sBIT`` says the
    depth where present; else the smallest depth that holds the largest value),
    it looks as the same scan stored in 8 bits does.

    Raises:
        ImageLoadError: ``skipped``, for a deep image that shows nothing (see :func:`require_signal`):
            stretched, it would pass for a black one.
    """
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        values = np.asarray(image)
        require_signal(values)
        if image.mode == "F" or values.min() < 0:
            return gray_to_rgb(scale(values))
        bits = _significant_bits(data) or depth_of(values)
        return gray_to_rgb(scale(values, 0, (1 << bits) - 1))
    # As Keras's load_img(color_mode="rgb") does: alpha dropped, not composited.
    return np.array(image.convert("RGB"))


def _significant_bits(data: bytes) -> int | None:
    """The bits a gray PNG's samples use, from its ``sBIT`` chunk; None when it has none."""
    if not data.startswith(b"\x89PNG"):
        return None
    for body in png_chunks(data, b"sBIT"):
        if len(body) and 1 <= body[0] <= 16:
            return int(body[0])
    return None
