"""Which files are images: their extensions, their first bytes, and the size limit.

A file is identified from its first :data:`HEAD_BYTES` bytes before it is read
whole, so that a large file that is no image is refused without reading it.
"""

from __future__ import annotations

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".dcm", ".dicom",
)
DICOM_EXTENSIONS = (".dcm", ".dicom")

# Images with more pixels are refused before their pixels are decoded.
MAX_PIXELS: int = 100_000_000
# A volume whose values take more bytes to decode (stored and as float64) is refused from its header.
MAX_DECODED_BYTES: int = 16 * MAX_PIXELS
# A file is identified from this many first bytes before it is read whole.
HEAD_BYTES = 4096
# The first tag group of a DICOM data set without the 128-byte preamble: file
# meta information (0002) or identification (0008), little- or big-endian.
DICOM_FIRST_GROUPS = (b"\x02\x00", b"\x08\x00", b"\x00\x08")
NOT_AN_IMAGE = "not an image (no known image or DICOM format)"

# Files that start like these (or a BMP or WEBP header) are images even when
# Pillow cannot parse them.
_IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a",
                     b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# BMP info header sizes (bytes 14-18) that Pillow reads.
_BMP_HEADER_SIZES = tuple(size.to_bytes(4, "little") for size in (12, 40, 52, 56, 64, 108, 124))


def looks_like_image(head: bytes, suffix: str = "") -> bool:
    """Whether a file's first bytes may start an image triage reads.

    An image format's signature, or DICOM: the ``DICM`` marker at byte 128, or
    (a data set without the preamble) a name ending in ``.dcm``/``.dicom``, or
    no extension and a first tag of group 0002 or 0008.

    Args:
        head: The file's first bytes (:data:`HEAD_BYTES` of them, or all when shorter).
        suffix: The file's lower-case extension, ``""`` when it has none.
    """
    return (has_image_signature(head)
            or head[128:132] == b"DICM"
            or suffix in DICOM_EXTENSIONS
            or (not suffix and head[:2] in DICOM_FIRST_GROUPS))


def has_image_signature(head: bytes) -> bool:
    """Whether bytes start like one of the formats that Pillow decodes here."""
    return (head.startswith(_IMAGE_SIGNATURES)
            or (head[:2] == b"BM" and head[14:18] in _BMP_HEADER_SIZES)
            or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"))
