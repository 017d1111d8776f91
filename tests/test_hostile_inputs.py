"""Inputs made to break a scan: bombs, huge non-images, cut-short images, odd names and folders."""

from __future__ import annotations

import io
import itertools
import os
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from triage.errors import ImageLoadError
from triage.inputs import dicom, formats
from triage.inputs.decode import decode_bytes, read_image
from triage.inputs.discovery import discover, display_path, path_bytes
from triage.results.records import ModelSummary, Row, ScanResult
from triage.results.tables import read_csv, write_csv
from triage.testing import png_bytes, write_dicom


def load_error(path: Path) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        read_image(path)
    return info.value


def noise(height: int = 64, width: int = 64) -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (height, width, 3), dtype=np.uint8)


# --- DICOM: the pixel budget counts frames and samples, before any pixel is decoded -------------


def dicom_bytes(frames: int, rows: int, columns: int, *, syntax: str = ExplicitVRLittleEndian,
                samples: int = 1) -> bytes:
    """A DICOM file of ``frames`` black frames with one bright pixel each (a frame with no signal is not
    scored): 16-bit grey, or 8-bit RGB with 3 ``samples``."""
    pixels = np.zeros((frames, rows, columns, 3), np.uint8) if samples == 3 else \
        np.zeros((frames, rows, columns), np.uint16)
    pixels[:, 0, 0] = 200
    buffer = io.BytesIO()
    write_dicom(buffer, pixels, syntax=syntax, NumberOfFrames=frames)
    return buffer.getvalue()


@pytest.fixture
def no_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(dicom, "pixel_array", refuse)


def test_dicom_frames_count_against_the_pixel_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_pixel_decoding: None,
) -> None:
    monkeypatch.setattr(dicom, "MAX_PIXELS", 40)
    path = tmp_path / "series.dcm"
    path.write_bytes(dicom_bytes(frames=3, rows=4, columns=4))  # 16 pixels a frame, 48 in all
    err = load_error(path)
    assert (err.kind, err.reason) == ("too_large", "4x4 pixels x 3 frames exceeds the limit of 40 pixels")

    path.write_bytes(dicom_bytes(frames=1, rows=4, columns=4, samples=3))  # 48 samples
    err = load_error(path)
    assert (err.kind, err.reason) == ("too_large", "4x4 pixels x 3 samples exceeds the limit of 40 pixels")


def test_deflated_dicom_bomb_is_refused_from_its_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_pixel_decoding: None,
) -> None:
    data = dicom_bytes(frames=200, rows=128, columns=128, syntax=DeflatedExplicitVRLittleEndian)
    assert len(data) < 40_000  # 6.5 MB of pixels, deflated
    (tmp_path / "bomb.dcm").write_bytes(data)
    monkeypatch.setattr(dicom, "MAX_PIXELS", 1_000_000)

    def no_whole_inflate(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("the whole data set was inflated")

    monkeypatch.setattr(zlib, "decompress", no_whole_inflate)  # what pydicom inflates it with
    err = load_error(tmp_path / "bomb.dcm")
    assert (err.kind, err.reason) == (
        "too_large", "128x128 pixels x 200 frames exceeds the limit of 1,000,000 pixels")


def test_dicom_within_the_limit_decodes_only_its_middle_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded: list[object] = []
    real = dicom.pixel_array

    def spy(ds: object, index: int | None = None) -> np.ndarray:
        decoded.append(index)
        return real(ds, index=index)

    monkeypatch.setattr(dicom, "pixel_array", spy)
    for syntax in (ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        name = f"{syntax.name}.dcm"
        (tmp_path / name).write_bytes(dicom_bytes(frames=5, rows=6, columns=7, syntax=syntax))
        loaded = read_image(tmp_path / name)
        assert (loaded.format, loaded.width, loaded.height) == ("DICOM", 7, 6)
    assert decoded == [2, 2]


# --- a file is identified from its first bytes ------------------------------------------------


@pytest.mark.parametrize("name", ["huge.txt", "huge.jpg", "huge"])
def test_a_huge_non_image_is_refused_without_reading_it(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with path.open("wb") as handle:
        handle.write(b"patient notes, not pixels\n" * 100)
        handle.truncate(3 * 2**30)  # sparse: 3 GB that take no disk
    tracemalloc.start()
    try:
        with pytest.raises(ImageLoadError) as info:
            read_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"{peak:,} bytes allocated"
    assert info.value.kind == "unsupported"
    assert info.value.reason.startswith("not an image")
    assert getattr(info.value, "sha256", None) is None  # never read whole, so never hashed


def test_images_are_recognised_from_their_signatures(tmp_path: Path) -> None:
    rgb = noise(4, 5)
    for fmt in ("PNG", "JPEG", "GIF", "TIFF", "BMP", "WEBP"):
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, fmt)
        assert formats.looks_like_image(buffer.getvalue()[:formats.HEAD_BYTES]), fmt
        (tmp_path / f"scan-{fmt}").write_bytes(buffer.getvalue())  # no extension to go by
        assert read_image(tmp_path / f"scan-{fmt}").format == fmt
    for signature, image, options in (
        (b"MM\x00*", Image.fromarray(np.arange(6, dtype=">u2").reshape(2, 3)), {}),  # big-endian
        (b"II+\x00", Image.fromarray(rgb), {"big_tiff": True}),
    ):
        buffer = io.BytesIO()
        image.save(buffer, "TIFF", **options)
        assert buffer.getvalue()[:4] == signature
        assert read_image(_write(tmp_path / "scan-tiff", buffer.getvalue())).format == "TIFF"
    with pytest.raises(ImageLoadError) as info:
        decode_bytes(b"BM is not always a bitmap" * 10, ".bmp")
    assert info.value.kind == "unsupported"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- an image that decodes only in part is unreadable -----------------------------------------


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("kept", [0.5, 0.97])
def test_cut_jpeg_with_an_end_marker_appended_is_unreadable(
    tmp_path: Path, progressive: bool, kept: float,
) -> None:
    buffer = io.BytesIO()
    Image.fromarray(noise()).save(buffer, "JPEG", quality=90, progressive=progressive)
    whole = buffer.getvalue()
    path = _write(tmp_path / "cut.jpg", whole[:int(len(whole) * kept)] + b"\xff\xd9")
    err = load_error(path)
    assert err.kind == "unreadable"
    assert err.reason == "JPEG data end early: the image decodes only in part"

    read_image(_write(path, whole))  # the whole file is fine
    read_image(_write(path, whole + b"camera trailer \xff\xd9 after the end"))


def png_from_rows(pixels: np.ndarray, rows: bytes, *, interlaced: bool = False) -> bytes:
    """An RGB PNG of ``pixels``' size whose IDAT holds ``rows`` (filtered scanlines), then IEND."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    height, width = pixels.shape[:2]
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, int(interlaced))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def scanlines(pixels: np.ndarray) -> bytes:
    return b"".join(b"\x00" + row.tobytes() for row in pixels)  # filter 0 on every row


def adam7_scanlines(pixels: np.ndarray) -> bytes:
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
              (0, 1, 1, 2))
    return b"".join(scanlines(pixels[y0::dy, x0::dx]) for x0, y0, dx, dy in passes
                    if pixels[y0::dy, x0::dx].size)


@pytest.mark.parametrize("interlaced", [False, True])
def test_png_whose_data_hold_part_of_the_rows_is_unreadable(tmp_path: Path, interlaced: bool) -> None:
    pixels = noise(13, 11)  # not a multiple of 8, so some Adam7 passes are narrow
    rows = adam7_scanlines(pixels) if interlaced else scanlines(pixels)
    whole = read_image(_write(tmp_path / "whole.png", png_from_rows(pixels, rows, interlaced=interlaced)))
    np.testing.assert_array_equal(whole.pixels, pixels)

    last_row = 1 + 11 * 3  # in both layouts the last scanline is a full-width one
    part = png_from_rows(pixels, rows[:-last_row], interlaced=interlaced)  # a whole row short
    err = load_error(_write(tmp_path / "part.png", part))
    assert (err.kind, err.reason) == ("unreadable", "PNG data end early: the image decodes only in part")
    assert load_error(_write(tmp_path / "half.png", png_from_rows(pixels, rows[:len(rows) // 2]))).kind \
        == "unreadable"


def test_png_after_weasyprint_still_refuses_missing_rows(tmp_path: Path) -> None:
    from PIL import ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = True  # as WeasyPrint sets it when imported
    pixels = noise(8, 8)
    three_rows = scanlines(pixels)[:3 * (1 + 8 * 3)]
    err = load_error(_write(tmp_path / "part.png", png_from_rows(pixels, three_rows)))
    assert err.kind == "unreadable"


# --- hidden and system folders are counted, not dropped ---------------------------------------


def test_hidden_and_system_folders_get_one_skipped_row_each(tmp_path: Path) -> None:
    png = png_bytes(noise(4, 4))
    folders = (".cache", "$RECYCLE.BIN", "$Recycle.Bin", ".Trashes", "System Volume Information")
    for folder in folders:
        (tmp_path / "sub" / folder / "deep").mkdir(parents=True)
        (tmp_path / "sub" / folder / "deep" / "scan.png").write_bytes(png)
    (tmp_path / "sub" / "scan.png").write_bytes(png)
    rows = {row.relpath: (row.status, row.reason) for row in discover(tmp_path)}
    system = ("skipped", "system folder, not entered")
    assert rows == {
        "sub/.cache": ("skipped", "hidden folder, not read"), "sub/$RECYCLE.BIN": system,
        "sub/$Recycle.Bin": system, "sub/.Trashes": system, "sub/System Volume Information": system,
        "sub/scan.png": (None, ""),
    }


# --- every name gets its own path string, and the CSV keeps it whole --------------------------


def test_display_path_round_trips_and_never_collides() -> None:
    names = [b"scan\xff.jpg", b"scan\\xff.jpg", b"scan\\\\xff.jpg", b"back\\", b"caf\xc3\xa9.png",
             b"caf\xe9.png", b"\xed\xa0\x80.png", b"cr\r.png", b"a/b\\c/\x80"]
    shown = [display_path(name) for name in names]
    assert len(set(shown)) == len(names)
    assert [path_bytes(text) for text in shown] == names
    assert shown[:3] == ["scan\\xff.jpg", "scan\\\\xff.jpg", "scan\\\\\\\\xff.jpg"]
    assert shown[4] == "café.png" and shown[5] == "caf\\xe9.png"
    assert display_path(os.fsdecode(b"scan\xff.jpg")) == shown[0]  # str names from the OS too


@pytest.mark.parametrize("name", ["C:\\scans\\brain.png", "\\\\server\\share\\x.png", "back\\", "tab\t.png",
                                  "x\\xAB.png", "caf\u00e9 \u00fc\u00df.png", "\\x-rays\\a.png"])
def test_a_name_that_is_valid_text_is_written_as_it_is(name: str) -> None:
    assert display_path(name) == name
    assert path_bytes(name) == name.encode("utf-8")


def test_only_what_is_not_text_is_escaped_and_every_name_maps_back() -> None:
    """Every name of up to five pieces from an alphabet of escape-like parts round-trips, none collide."""
    alphabet = [b"\\", b"x", b"f", b"0", b"a", b"\xff", b"\n", b"\xc3\xa9"]
    seen: dict[str, bytes] = {}
    for length in range(1, 6):
        for parts in itertools.product(alphabet, repeat=length):
            name = b"".join(parts)
            text = display_path(name)
            assert path_bytes(text) == name
            assert seen.setdefault(text, name) == name
            assert "\n" not in text and "\r" not in text
            assert text.encode("utf-8")  # valid text, no lone surrogate


def summary() -> ModelSummary:
    return ModelSummary(id="m", path="/m", sha256="0" * 64, version="1", threshold=0.5, image_size=32,
                        backbone_weights="random", trained_on="data", trained_at="now",
                        val_sensitivity=None, val_specificity=None)


def test_odd_names_get_distinct_rows_that_lead_back_to_their_files(tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    png = png_bytes(noise(4, 4))
    names = [b"scan\xff.jpg", b"scan\\xff.jpg", b"scan\r1.png", b"scan\n2.png", b"a,b.png",
             b'say "cheese".png', b"plain.png"]
    for name in names:
        (root / os.fsdecode(name)).write_bytes(png)
    rows = list(discover(root))
    assert len({row.relpath for row in rows}) == len(names)
    for row in rows:
        assert root / os.fsdecode(path_bytes(row.relpath)) == row.path
        assert row.path.read_bytes() == png


def test_csv_reads_back_every_name_exactly(tmp_path: Path) -> None:
    names = ["scan\r1.png", "scan\n2.png", "scan\r\n3.png", "Icon\r", "a,b.png", 'say "cheese".png',
             "scan\\xff.jpg", " padded .png", "plain.png"]
    result = ScanResult(
        input_dir="in", model=summary(), threshold=0.5, cam_layer="c", explain="flagged",
        started_at="s", finished_at="f", seconds=1.0,
        rows=tuple(Row(name, "unreadable", reason=f"why\r{name}") for name in names))
    write_csv(result, tmp_path / "report.csv")
    back = read_csv(tmp_path / "report.csv")
    assert [(row["path"], row["reason"]) for row in back] == [(name, f"why\r{name}") for name in names]
