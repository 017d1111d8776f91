"""Whether a decoded PNG or JPEG held all of its pixels.

Pillow fills what a cut-short JPEG or PNG lacks (grey blocks, blank rows)
without an error when the data still end with the format's end marker, so
these checks read the data themselves.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator

from PIL import Image, ImageChops

# Put before a JPEG's end marker: bytes that are not 0xff, so never a marker.
_JPEG_FILLER = bytes(range(1, 255))
# PNG colour type -> samples per pixel.
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7 passes: (first column, first row, column step, row step).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_BLOCK = 1 << 20


def decoded_whole(image: Image.Image, fmt: str, data: bytes) -> bool:
    """Whether a loaded image's data held all of its pixels (checked for PNG and JPEG)."""
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
    for body in png_chunks(data, b"IDAT"):
        while got < needed:  # in bounded steps, since the data may inflate far
            out = inflater.decompress(body, _BLOCK)
            got, body = got + len(out), inflater.unconsumed_tail
            if not out:
                break
    return got >= needed


def png_chunks(data: bytes, kind: bytes) -> Iterator[memoryview]:
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
