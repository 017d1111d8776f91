"""Finding image files in a folder, and decoding them to RGB pixels.

:func:`discover` lists every file under the input folder with a status for the
ones that must not be read (hidden, system, special files, links that leave the
folder). :func:`read_image` reads one file once, hashes it and decodes it with
Pillow or pydicom to an ``(H, W, 3)`` ``uint8`` RGB array, or raises
:class:`~triage.errors.ImageLoadError` whose ``kind`` is the file's CSV status.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, apply_windowing

from triage.errors import ImageLoadError, UsageError

# Files that operating systems and file managers leave behind; never images.
JUNK_NAMES: frozenset[str] = frozenset({
    ".DS_Store", ".localized", "Icon\r", "Thumbs.db", "ehthumbs.db", "ehthumbs_vista.db",
    "desktop.ini", "Desktop.ini", "$RECYCLE.BIN",
})
# Windows treats names case-insensitively, so "THUMBS.DB" is junk too.
_JUNK_FOLDED = frozenset(name.casefold() for name in JUNK_NAMES)

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".dcm", ".dicom",
)
_DICOM_EXTENSIONS = (".dcm", ".dicom")

# Images with more pixels are refused before their pixels are decoded.
MAX_PIXELS: int = 100_000_000

# Pillow is limited to raster formats that decode in-process: EPS would run
# Ghostscript, and text-like formats (XBM, XPM) would accept plain text files.
_PILLOW_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")
# Files that start like these are images even when Pillow cannot parse them.
_IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a",
                     b"II*\x00", b"MM\x00*")
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_SPECIAL_FILE_KINDS = {
    stat.S_IFIFO: "a named pipe", stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
}


@dataclass(frozen=True)
class FoundFile:
    """One entry found under the input folder.

    Attributes:
        relpath: Path relative to the input folder, with ``/`` separators.
        path: Absolute path to open; for an accepted symlink, its resolved target.
        status: ``None`` when the file is to be read, else its CSV status.
        reason: Human reason when ``status`` is set.
        size: ``st_size`` of the (target) file when ``status`` is ``None``.
        mtime_ns: ``st_mtime_ns`` of the (target) file when ``status`` is ``None``.
    """

    relpath: str
    path: Path
    status: str | None
    reason: str = ""
    size: int | None = None
    mtime_ns: int | None = None


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


def discover(root: Path) -> Iterator[FoundFile]:
    """Walk ``root`` recursively and list every file found, sorted by relpath.

    Directory symlinks are not followed (so a walk cannot loop) and hidden
    directories are not entered. Nothing is opened: files are only stat'ed.

    Args:
        root: The input folder.

    Returns:
        An iterator over one :class:`FoundFile` per entry, in ``relpath`` order.

    Raises:
        UsageError: ``root`` is not a folder that can be listed.
    """
    base = Path(os.path.abspath(root))
    if not base.is_dir():
        raise UsageError(f"The input folder {root} does not exist or is not a folder.")
    real_root = base.resolve()
    rows: list[FoundFile] = []
    pending: list[tuple[Path, str]] = [(base, "")]  # a stack, not recursion: trees can be deep
    while pending:
        folder, prefix = pending.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as err:
            if not prefix:
                raise UsageError(
                    f"The input folder {root} cannot be listed: {err.strerror}.") from err
            rows.append(FoundFile(prefix[:-1], folder, "unreadable",
                                  f"folder could not be listed ({err.strerror})"))
            continue
        for entry in entries:
            relpath = prefix + _printable(entry.name)
            if entry.is_dir(follow_symlinks=False):
                if not entry.name.startswith("."):
                    pending.append((folder / entry.name, relpath + "/"))
            else:
                rows.append(_classify(entry, relpath, folder / entry.name, real_root))
    # One sort of the full relpaths gives the exact string order that CSV rows
    # are sorted by ("a-b" < "a/b"), which a per-level name sort would not.
    return iter(sorted(rows, key=lambda row: row.relpath))


def _printable(name: str) -> str:
    # Non-UTF-8 names come back from the OS with surrogates that cannot be
    # written to a UTF-8 CSV; show their bytes as escapes instead.
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _classify(entry: os.DirEntry[str], relpath: str, path: Path, real_root: Path) -> FoundFile:
    """The row for one non-directory entry (a directory symlink included)."""
    name = entry.name
    if name.casefold() in _JUNK_FOLDED:
        return FoundFile(relpath, path, "skipped", "system file, not read")
    if name.startswith("._"):
        return FoundFile(relpath, path, "skipped", "macOS metadata file (._*), not read")
    if name.startswith("."):
        return FoundFile(relpath, path, "skipped", "hidden file, not read")
    if entry.is_symlink():
        return _classify_link(relpath, path, real_root)
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError as err:
        return FoundFile(relpath, path, "unreadable", f"could not stat the file ({err.strerror})")
    return _by_mode(relpath, path, info, "")


def _classify_link(relpath: str, path: Path, real_root: Path) -> FoundFile:
    """The row for a symlink: read only when it resolves to a regular file inside the root."""
    try:
        target = Path(os.path.realpath(path, strict=True))
        info = os.stat(target)
    except OSError as err:  # dangling (ENOENT) or a loop (ELOOP)
        return FoundFile(relpath, path, "link_broken", f"symbolic link is broken ({err.strerror})")
    if not target.is_relative_to(real_root):
        what = "folder" if stat.S_ISDIR(info.st_mode) else "file"
        return FoundFile(relpath, path, "link_outside",
                         f"symbolic link to a {what} outside the input folder, not read")
    if stat.S_ISDIR(info.st_mode):
        return FoundFile(relpath, path, "skipped", "symbolic link to a folder, not followed")
    # Open the checked target, not the link, which could be changed in between.
    return _by_mode(relpath, target, info, "symbolic link to ")


def _by_mode(relpath: str, path: Path, info: os.stat_result, prefix: str) -> FoundFile:
    if stat.S_ISREG(info.st_mode):
        return FoundFile(relpath, path, None, size=info.st_size, mtime_ns=info.st_mtime_ns)
    # Opening a fifo or a device could block or never end, so these are not read.
    kind = _SPECIAL_FILE_KINDS.get(stat.S_IFMT(info.st_mode), "a special file")
    return FoundFile(relpath, path, "unsupported", f"{prefix}{kind}, not a regular file")


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
    """A file's SHA-256 and bytes, read once, read-only (the first half of :func:`read_image`).

    Raises:
        ImageLoadError: the file cannot be opened or read, or is not a regular file.
    """
    data = _read_bytes(path)
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


def _read_bytes(path: Path) -> bytes:
    try:
        # O_NONBLOCK: opening a fifo for reading would otherwise wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as err:
        raise ImageLoadError("unreadable", f"could not open the file ({err.strerror})") from err
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageLoadError("unsupported", "not a regular file")
        try:
            return handle.read()
        except OSError as err:
            raise ImageLoadError("unreadable", f"could not read the file ({err.strerror})") from err


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
    _strict_pillow()
    image = _open_pillow(data)
    if image is not None:
        pixels, fmt = _decode_pillow(image)
    else:
        pixels, fmt = _decode_dicom(data, suffix)
    return np.ascontiguousarray(pixels, dtype=np.uint8), fmt


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
        if data.startswith(_IMAGE_SIGNATURES):
            raise ImageLoadError("unreadable", "corrupt image header") from err
        return None
    except Exception as err:  # plugins raise many types on a corrupt header
        raise ImageLoadError("unreadable", _short(err)) from err


def _decode_pillow(image: Image.Image) -> tuple[np.ndarray, str]:
    fmt = "JPEG" if image.format == "MPO" else str(image.format)  # MPO: a camera JPEG
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageLoadError(
            "too_large", f"{width}x{height} pixels exceeds the limit of {MAX_PIXELS:,} pixels")
    try:
        image.load()  # decode here, inside the try, so truncation is reported
        image = ImageOps.exif_transpose(image)
        return _pillow_rgb(image), fmt
    except Exception as err:  # decoders raise OSError, SyntaxError, ValueError, ...
        raise ImageLoadError("unreadable", _short(err)) from err


def _pillow_rgb(image: Image.Image) -> np.ndarray:
    if image.mode.startswith("I;16"):
        # Keep the high byte, as tf.io.decode_png(..., dtype=tf.uint8) does.
        gray = (np.asarray(image) >> 8).astype(np.uint8)
    elif image.mode in ("I", "F"):
        # 32-bit samples have no fixed range, so stretch what is there.
        gray = _scale(np.asarray(image, dtype=np.float64))
    else:
        # As Keras's load_img(color_mode="rgb") does: alpha dropped, not composited.
        return np.array(image.convert("RGB"))
    return np.repeat(gray[:, :, np.newaxis], 3, axis=2)


def _scale(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Map ``lo..hi`` (default: the array's min..max) linearly onto 0..255 ``uint8``."""
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo = float(values.min()) if lo is None else lo
    hi = float(values.max()) if hi is None else hi
    if hi <= lo:  # a flat image has no contrast to show
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip(np.rint((values - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def _decode_dicom(data: bytes, suffix: str) -> tuple[np.ndarray, str]:
    claims_dicom = data[128:132] == b"DICM" or suffix in _DICOM_EXTENSIONS
    not_image = ImageLoadError("unsupported", "not an image (no known image or DICOM format)")
    if not claims_dicom and suffix:
        raise not_image
    try:
        # force=True reads DICOM without the 128-byte preamble; it also "reads"
        # arbitrary bytes, so a dataset without pixel data is no image.
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as err:
        if claims_dicom:
            raise ImageLoadError("unreadable", f"corrupt DICOM file ({_short(err)})") from err
        raise not_image from err
    if not any(keyword in ds for keyword in _PIXEL_DATA_KEYWORDS):
        if claims_dicom:
            raise ImageLoadError("unreadable", "DICOM file has no pixel data")
        raise not_image

    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows * columns > MAX_PIXELS:
        raise ImageLoadError(
            "too_large", f"{columns}x{rows} pixels exceeds the limit of {MAX_PIXELS:,} pixels")
    try:
        frames = ds.pixel_array
    except Exception as err:  # no decoder for a compressed syntax, or bad pixel data
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        name = syntax.name if syntax else "unknown transfer syntax"
        raise ImageLoadError(
            "unreadable", f"cannot decode DICOM pixel data ({name}): {_short(err)}") from err
    try:
        return _dicom_rgb(frames, ds), "DICOM"
    except Exception as err:  # e.g. an invalid window width or LUT
        raise ImageLoadError("unreadable", f"bad DICOM display values ({_short(err)})") from err


def _dicom_rgb(frames: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    if int(ds.get("NumberOfFrames") or 1) > 1:
        frames = frames[len(frames) // 2]  # the middle slice best represents a series
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        frames = apply_color_lut(frames, ds)
    if frames.ndim == 3:  # colour; pydicom has already converted YBR to RGB
        return frames if frames.dtype == np.uint8 else _scale(frames)

    values = apply_modality_lut(frames, ds)  # stored values -> e.g. Hounsfield units
    values = apply_voi_lut(values, ds, prefer_lut=False)
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        # The window maps onto a fixed output range; a probe far below and far
        # above it reads that range back, so the window is shown as intended.
        lo, hi = apply_windowing(np.array([-np.inf, np.inf]), ds)
        gray = _scale(values, float(lo), float(hi))
    else:
        gray = _scale(values)
    if photometric == "MONOCHROME1":  # MONOCHROME1: low values are white
        gray = 255 - gray
    return np.repeat(gray[:, :, np.newaxis], 3, axis=2)


def _short(err: BaseException) -> str:
    """The first line of an error message, cut to a CSV-friendly length."""
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."
