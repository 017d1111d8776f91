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
import re
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageChops, ImageFile, ImageOps, UnidentifiedImageError
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    apply_windowing,
    pixel_array,
)
from pydicom.uid import DeflatedExplicitVRLittleEndian

from triage.errors import ImageLoadError, UsageError

# Files that operating systems and file managers leave behind; never images.
JUNK_NAMES: frozenset[str] = frozenset({
    ".DS_Store", ".localized", "Icon\r", "Thumbs.db", "ehthumbs.db", "ehthumbs_vista.db",
    "desktop.ini", "Desktop.ini", "$RECYCLE.BIN",
})
# Windows treats names case-insensitively, so "THUMBS.DB" is junk too.
_JUNK_FOLDED = frozenset(name.casefold() for name in JUNK_NAMES)
# Folders that operating systems keep for deleted files and indexes; never entered.
JUNK_FOLDERS: frozenset[str] = frozenset({"$RECYCLE.BIN", ".Trashes", "System Volume Information"})
_JUNK_FOLDERS_FOLDED = frozenset(name.casefold() for name in JUNK_FOLDERS)

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".dcm", ".dicom",
)
_DICOM_EXTENSIONS = (".dcm", ".dicom")

# Images with more pixels are refused before their pixels are decoded.
MAX_PIXELS: int = 100_000_000
# Bump when decoding changes what pixels a file gives: it is part of the feature-cache key.
DECODER_VERSION = 3

# Pillow is limited to raster formats that decode in-process: EPS would run
# Ghostscript, and text-like formats (XBM, XPM) would accept plain text files.
_PILLOW_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")
# Files that start like these (or a BMP or WEBP header) are images even when
# Pillow cannot parse them.
_IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a",
                     b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# A file is identified from this many first bytes before it is read whole.
HEAD_BYTES = 4096
# The first tag group of a DICOM data set without the 128-byte preamble: file
# meta information (0002) or identification (0008), little- or big-endian.
_DICOM_FIRST_GROUPS = (b"\x02\x00", b"\x08\x00", b"\x00\x08")
# A deflated DICOM data set is checked on at most this much of its inflated start.
_DICOM_HEADER_BYTES = 4 << 20
# Longer DICOM values (the pixel data) are read only when they are used.
_DICOM_DEFER_BYTES = 64 << 10
_NOT_AN_IMAGE = "not an image (no known image or DICOM format)"
# BMP info header sizes (bytes 14-18) that Pillow reads.
_BMP_HEADER_SIZES = tuple(size.to_bytes(4, "little") for size in (12, 40, 52, 56, 64, 108, 124))
# Put before a JPEG's end marker: bytes that are not 0xff, so never a marker.
_JPEG_FILLER = bytes(range(1, 255))
# PNG colour type -> samples per pixel.
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7 passes: (first column, first row, column step, row step).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_BLOCK = 1 << 20
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_SPECIAL_FILE_KINDS = {
    stat.S_IFIFO: "a named pipe", stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
}


@dataclass(frozen=True)
class FoundFile:
    """One entry found under the input folder.

    Attributes:
        relpath: Path relative to the input folder, with ``/`` separators, as
            :func:`display_path` writes it.
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

    Directory symlinks are not followed (so a walk cannot loop); hidden and
    system folders are not entered but listed, one ``skipped`` row each.
    Nothing is opened: files are only stat'ed.

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
            relpath = prefix + display_path(entry.name)
            if not entry.is_dir(follow_symlinks=False):
                rows.append(_classify(entry, relpath, folder / entry.name, real_root))
            elif reason := _skipped_folder(entry.name):
                rows.append(FoundFile(relpath, folder / entry.name, "skipped", reason))
            else:
                pending.append((folder / entry.name, relpath + "/"))
    # One sort of the full relpaths gives the exact string order that CSV rows
    # are sorted by ("a-b" < "a/b"), which a per-level name sort would not.
    return iter(sorted(rows, key=lambda row: row.relpath))


def display_path(name: str | bytes) -> str:
    """A file name (or relative path) as text that is unique and maps back to its bytes.

    The name's bytes are read as UTF-8. A byte that is not part of valid UTF-8
    is written ``\\xHH`` (two lower-case hex digits), and a backslash in the
    name is doubled, so ``scan\\xff.jpg`` is the byte 0xff and ``scan\\\\xff.jpg``
    a name spelled with a backslash. Every other character is kept as it is,
    line breaks included. :func:`path_bytes` is the inverse.
    """
    raw = os.fsencode(name)
    # A backslash byte is never part of a multi-byte UTF-8 character.
    return raw.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


def path_bytes(text: str) -> bytes:
    """The bytes of the name or path that :func:`display_path` wrote as ``text``."""
    def unescape(match: re.Match[bytes]) -> bytes:
        escape = match.group(1)
        return b"\\" if escape == b"\\" else bytes([int(escape[1:], 16)])

    return re.sub(rb"\\(\\|x[0-9a-f]{2})", unescape, text.encode("utf-8"))


def _skipped_folder(name: str) -> str:
    """Why a folder is not entered; empty when it is."""
    if name.casefold() in _JUNK_FOLDERS_FOLDED:
        return "system folder, not entered"
    if name.startswith("."):
        return "hidden folder, not read"
    return ""


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
    """A file's SHA-256 and bytes, read-only (the first half of :func:`read_image`).

    The file is identified from its first :data:`HEAD_BYTES` bytes before it is
    read whole, so a large file that is no image is refused without reading it.

    Raises:
        ImageLoadError: the file cannot be opened or read, is not a regular
            file, or (``unsupported``) does not start like an image.
    """
    with _open_regular(path) as handle:
        head = _read(handle, HEAD_BYTES)
        if head and not looks_like_image(head, path.suffix.lower()):
            raise ImageLoadError("unsupported", _NOT_AN_IMAGE)
        handle.seek(0)
        data = _read(handle, -1)
    # The bytes are kept for decoding, so they are hashed where they lie.
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


def looks_like_image(head: bytes, suffix: str = "") -> bool:
    """Whether a file's first bytes may start an image triage reads.

    An image format's signature, or DICOM: the ``DICM`` marker at byte 128, or
    (a data set without the preamble) a name ending in ``.dcm``/``.dicom``, or
    no extension and a first tag of group 0002 or 0008.

    Args:
        head: The file's first bytes (:data:`HEAD_BYTES` of them, or all when shorter).
        suffix: The file's lower-case extension, ``""`` when it has none.
    """
    return (_has_image_signature(head)
            or head[128:132] == b"DICM"
            or suffix in _DICOM_EXTENSIONS
            or (not suffix and head[:2] in _DICOM_FIRST_GROUPS))


def _has_image_signature(head: bytes) -> bool:
    """Whether bytes start like one of the formats that Pillow decodes here."""
    return (head.startswith(_IMAGE_SIGNATURES)
            or (head[:2] == b"BM" and head[14:18] in _BMP_HEADER_SIZES)
            or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"))


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
        raise ImageLoadError("unsupported", _NOT_AN_IMAGE)
    _strict_pillow()
    image = _open_pillow(data)
    if image is not None:
        pixels, fmt = _decode_pillow(image, data)
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
        if _has_image_signature(data):
            raise ImageLoadError("unreadable", "corrupt image header") from err
        return None
    except Exception as err:  # plugins raise many types on a corrupt header
        raise ImageLoadError("unreadable", _short(err)) from err


def _decode_pillow(image: Image.Image, data: bytes) -> tuple[np.ndarray, str]:
    fmt = "JPEG" if image.format == "MPO" else str(image.format)  # MPO: a camera JPEG
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageLoadError(
            "too_large", f"{width}x{height} pixels exceeds the limit of {MAX_PIXELS:,} pixels")
    try:
        image.load()  # decode here, inside the try, so truncation is reported
        complete = _decoded_whole(image, fmt, data)
        image = ImageOps.exif_transpose(image)
        pixels = _pillow_rgb(image)
    except Exception as err:  # decoders raise OSError, SyntaxError, ValueError, ...
        raise ImageLoadError("unreadable", _short(err)) from err
    if not complete:
        raise ImageLoadError("unreadable", f"{fmt} data end early: the image decodes only in part")
    return pixels, fmt


def _decoded_whole(image: Image.Image, fmt: str, data: bytes) -> bool:
    """Whether a loaded image's data held all of its pixels.

    Pillow fills what a cut-short JPEG or PNG lacks (grey blocks, blank rows)
    without an error when the data still end with the format's end marker.
    """
    if fmt == "PNG":
        return _png_data_complete(data)
    if fmt == "JPEG":
        return _jpeg_data_complete(image, data)
    return True


def _png_data_complete(data: bytes) -> bool:
    """Whether a PNG's image data inflate to every row that its header declares.

    Pillow stops at the end of the zlib stream even when rows are missing.
    """
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    depth, colour, interlaced = data[24], data[25], data[28]
    bits = depth * _PNG_SAMPLES.get(colour, 1)
    passes = _ADAM7 if interlaced else ((0, 0, 1, 1),)
    needed = 0
    for x0, y0, dx, dy in passes:
        columns, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if columns > 0 and rows > 0:  # an empty pass has no filter bytes either
            needed += rows * (1 + (columns * bits + 7) // 8)
    inflater, got = zlib.decompressobj(), 0
    for body in _png_chunks(data, b"IDAT"):
        while got < needed:  # in bounded steps, since the data may inflate far
            out = inflater.decompress(body, _BLOCK)
            got, body = got + len(out), inflater.unconsumed_tail
            if not out:
                break
    return got >= needed


def _png_chunks(data: bytes, kind: bytes) -> Iterator[memoryview]:
    """The bodies of a PNG's chunks of one kind, in file order."""
    view, at = memoryview(data), 8
    while at + 8 <= len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        if data[at + 4:at + 8] == kind:
            yield view[at + 8:at + 8 + length]
        at += 12 + length


def _jpeg_data_complete(image: Image.Image, data: bytes) -> bool:
    """Whether a loaded JPEG's entropy-coded data reached the end of its last scan.

    libjpeg treats a marker met before the last block as the end of the data
    and leaves the rest grey, and Pillow does not report it. Filler bytes put
    before the final end marker tell the two apart: a complete image skips them
    and decodes the same, a cut one decodes them as image data and differs.
    """
    end = data.rfind(b"\xff\xd9")
    if end < 0:  # no end marker: Pillow refuses a cut file itself
        return True
    with Image.open(io.BytesIO(data[:end] + _JPEG_FILLER + data[end:]), formats=("JPEG",)) as again:
        again.load()
        return again.mode == image.mode and ImageChops.difference(again, image).getbbox() is None


def _pillow_rgb(image: Image.Image) -> np.ndarray:
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # 16- and 32-bit gray has no fixed range in practice (a 12-bit MRI stored in 16 bits uses
        # 0..4095; keeping the high byte would leave it nearly black): stretch the range used,
        # as a DICOM series without a stored window is.
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
    ds = _read_dicom(data, claims_dicom)
    frames = _check_dicom_size(ds)
    try:
        frame = pixel_array(ds, index=frames // 2)  # the middle slice best represents a series
    except Exception as err:  # no decoder for a compressed syntax, or bad pixel data
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        name = syntax.name if syntax else "unknown transfer syntax"
        raise ImageLoadError(
            "unreadable", f"cannot decode DICOM pixel data ({name}): {_short(err)}") from err
    try:
        return _dicom_rgb(frame, ds), "DICOM"
    except Exception as err:  # e.g. an invalid window width or LUT
        raise ImageLoadError("unreadable", f"bad DICOM display values ({_short(err)})") from err


def _read_dicom(data: bytes, claims_dicom: bool) -> pydicom.Dataset:
    """The data set, its pixel data left unread until it is decoded."""
    not_image = ImageLoadError("unsupported", _NOT_AN_IMAGE)
    try:
        header = _deflated_header(data)
        if header is not None:
            _check_dicom_size(header)  # before pydicom inflates the whole data set
        # force=True reads DICOM without the 128-byte preamble; it also "reads"
        # arbitrary bytes, so a dataset without pixel data is no image.
        ds = pydicom.dcmread(io.BytesIO(data), force=True, defer_size=_DICOM_DEFER_BYTES)
    except ImageLoadError:
        raise
    except Exception as err:
        if claims_dicom:
            raise ImageLoadError("unreadable", f"corrupt DICOM file ({_short(err)})") from err
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
    head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(memoryview(data)[start:], _DICOM_HEADER_BYTES)
    return pydicom.dcmread(io.BytesIO(head), force=True, stop_before_pixels=True)


def _check_dicom_size(ds: pydicom.Dataset) -> int:
    """Refuse a data set whose frames hold more than MAX_PIXELS samples; return its frame count."""
    try:
        rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        frames, samples = int(ds.get("NumberOfFrames") or 1), int(ds.get("SamplesPerPixel") or 1)
    except (TypeError, ValueError) as err:
        raise ImageLoadError("unreadable", f"bad DICOM image size ({_short(err)})") from err
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
        return frame if frame.dtype == np.uint8 else _scale(frame)

    values = apply_modality_lut(frame, ds)  # stored values -> e.g. Hounsfield units
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
