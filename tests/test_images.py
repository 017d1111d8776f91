"""Tests for triage.inputs: discovering files and decoding every supported kind of image."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import JPEG2000

from triage.errors import ImageLoadError, UsageError
from triage.inputs import decode, dicom, discovery
from triage.inputs.decode import decode_bytes, read_image
from triage.inputs.discovery import FoundFile, discover
from triage.results.records import STATUSES
from triage.testing import png_bytes, write_dicom


def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def save(image: Image.Image, path: Path, **options: object) -> Path:
    image.save(path, **options)
    return path


def load_error(path: Path) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        read_image(path)
    assert info.value.kind in STATUSES
    return info.value


def check_pixels(pixels: np.ndarray, height: int, width: int) -> None:
    assert pixels.shape == (height, width, 3)
    assert pixels.dtype == np.uint8
    assert pixels.flags.c_contiguous


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width x height 1-bit pixels (a would-be bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


# --- Pillow formats -------------------------------------------------------------------------


def test_png_8bit_rgb_exact_with_hash(tmp_path: Path) -> None:
    pixels = rng().integers(0, 256, (12, 16, 3), dtype=np.uint8)
    path = save(Image.fromarray(pixels), tmp_path / "a.png")
    loaded = read_image(path)
    check_pixels(loaded.pixels, 12, 16)
    np.testing.assert_array_equal(loaded.pixels, pixels)
    assert (loaded.width, loaded.height, loaded.format) == (16, 12, "PNG")
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def _from_depth(values: np.ndarray, bits: int) -> np.ndarray:
    """What the same scan stored in 8 bits holds: values of ``bits`` bits mapped onto 0..255."""
    return np.rint(values.astype(np.float64) / ((1 << bits) - 1) * 255).astype(np.uint8)


def test_png_16bit_gray_scales_by_its_depth_and_rgb_keeps_high_byte(tmp_path: Path) -> None:
    gray16 = rng().integers(0, 65536, (9, 7), dtype=np.uint16)
    gray16[0, 0] = 65535
    loaded = read_image(save(Image.fromarray(gray16), tmp_path / "g16.png"))
    check_pixels(loaded.pixels, 9, 7)
    for channel in range(3):
        np.testing.assert_array_equal(loaded.pixels[:, :, channel], _from_depth(gray16, 16))

    rgb16 = rng().integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    ok, encoded = cv2.imencode(".png", rgb16[:, :, ::-1])  # OpenCV writes BGR
    assert ok
    (tmp_path / "rgb16.png").write_bytes(encoded.tobytes())
    np.testing.assert_array_equal(read_image(tmp_path / "rgb16.png").pixels, rgb16 >> 8)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("lesion", [4095.0, 3000.0, 2100.0])
def test_12_bit_mri_in_16_bits_decodes_like_its_8_bit_version(tmp_path: Path, suffix: str,
                                                              lesion: float) -> None:
    """A 12-bit scan (0..4095) stored in 16 bits looks as in 8 bits, whatever its brightest value:
    neither cut to its high byte (nearly black) nor stretched to its own range (other contrast)."""
    scan = np.zeros((64, 64), dtype=np.float64)
    yy, xx = np.mgrid[:64, :64]
    scan[(yy - 32) ** 2 + (xx - 32) ** 2 < 500] = 1500.0
    scan[(yy - 28) ** 2 + (xx - 38) ** 2 < 40] = lesion  # the bright lesion
    twelve_bit = scan.astype(np.uint16)
    eight_bit = np.rint(scan / 4095 * 255).astype(np.uint8)
    wide = read_image(save(Image.fromarray(twelve_bit), tmp_path / f"twelve{suffix}")).pixels
    narrow = read_image(save(Image.fromarray(eight_bit), tmp_path / f"eight{suffix}")).pixels
    assert np.abs(wide.astype(int) - narrow.astype(int)).max() <= 1


def _with_sbit(png: bytes, bits: int) -> bytes:
    """A PNG with an sBIT chunk (significant bits of gray) put after its header."""
    body = b"sBIT" + bytes([bits])
    chunk = (1).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")
    return png[:33] + chunk + png[33:]


def test_a_png_depth_comes_from_its_sbit_chunk_where_present(tmp_path: Path) -> None:
    values = np.tile(np.arange(0, 1001, 10, dtype=np.uint16), (4, 1))  # largest 1000: fits 10 bits
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    (tmp_path / "plain.png").write_bytes(buffer.getvalue())
    (tmp_path / "sbit.png").write_bytes(_with_sbit(buffer.getvalue(), 12))
    np.testing.assert_array_equal(read_image(tmp_path / "plain.png").pixels[..., 0], _from_depth(values, 10))
    np.testing.assert_array_equal(read_image(tmp_path / "sbit.png").pixels[..., 0], _from_depth(values, 12))


@pytest.mark.parametrize("values", [np.full((8, 8), 3000, np.uint16), np.full((8, 8), np.nan, np.float32)])
def test_a_deep_gray_image_with_no_signal_is_skipped_not_scored_black(tmp_path: Path,
                                                                      values: np.ndarray) -> None:
    err = load_error(save(Image.fromarray(values), tmp_path / "flat.tif"))
    assert err.kind == "skipped" and err.reason.startswith("no signal")


def test_palette_png_maps_through_palette(tmp_path: Path) -> None:
    palette = rng().integers(0, 256, (256, 3), dtype=np.uint8)
    indices = rng().integers(0, 256, (8, 10), dtype=np.uint8)
    image = Image.frombytes("P", (10, 8), indices.tobytes())
    image.putpalette(palette.ravel().tolist())
    loaded = read_image(save(image, tmp_path / "p.png"))
    np.testing.assert_array_equal(loaded.pixels, palette[indices])


def test_alpha_is_dropped_not_composited(tmp_path: Path) -> None:
    rgba = rng().integers(0, 256, (6, 6, 4), dtype=np.uint8)
    loaded = read_image(save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png"))
    np.testing.assert_array_equal(loaded.pixels, rgba[:, :, :3])

    la = rng().integers(0, 256, (4, 5, 2), dtype=np.uint8)
    loaded = read_image(save(Image.fromarray(la, "LA"), tmp_path / "la.png"))
    np.testing.assert_array_equal(loaded.pixels, np.repeat(la[:, :, :1], 3, axis=2))


def test_grayscale_and_1bit_are_replicated(tmp_path: Path) -> None:
    gray = rng().integers(0, 256, (7, 3), dtype=np.uint8)
    loaded = read_image(save(Image.fromarray(gray, "L"), tmp_path / "l.png"))
    check_pixels(loaded.pixels, 7, 3)
    np.testing.assert_array_equal(loaded.pixels, np.repeat(gray[:, :, None], 3, axis=2))

    bits = rng().integers(0, 2, (5, 9), dtype=np.uint8).astype(bool)
    loaded = read_image(save(Image.fromarray(bits), tmp_path / "one.png"))
    np.testing.assert_array_equal(loaded.pixels[:, :, 1], np.where(bits, 255, 0))


def test_jpeg_baseline_and_progressive(tmp_path: Path) -> None:
    y, x = np.mgrid[0:32, 0:48]
    smooth = np.dstack([x * 5, y * 7, (x + y) * 3]).astype(np.uint8)
    for name, progressive in (("base.jpg", False), ("prog.jpeg", True)):
        path = save(Image.fromarray(smooth), tmp_path / name, quality=95, progressive=progressive)
        with Image.open(path) as written:
            assert ("progressive" in written.info) is progressive
        loaded = read_image(path)
        check_pixels(loaded.pixels, 32, 48)
        assert loaded.format == "JPEG"
        assert np.abs(loaded.pixels.astype(int) - smooth).mean() < 3


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path: Path) -> None:
    cyan = Image.new("CMYK", (8, 8), (255, 0, 0, 0))
    loaded = read_image(save(cyan, tmp_path / "cmyk.jpg", quality=95))
    assert loaded.format == "JPEG"
    assert np.abs(loaded.pixels.astype(int) - [0, 255, 255]).max() <= 8


def test_exif_orientation_6_rotates_clockwise(tmp_path: Path) -> None:
    stored = np.zeros((10, 20, 3), dtype=np.uint8)  # 20 wide, 10 tall, top half white
    stored[:5] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = save(Image.fromarray(stored), tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    loaded = read_image(path)
    check_pixels(loaded.pixels, 20, 10)  # displayed 10 wide, 20 tall
    # Turned clockwise, the stored top edge becomes the right edge.
    assert loaded.pixels[:, 5:].mean() > 240 and loaded.pixels[:, :5].mean() < 15
    expected = np.rot90(stored, k=-1)
    assert np.abs(loaded.pixels.astype(int) - expected).mean() < 4


def test_bmp_tiff16_gif_and_float_tiff(tmp_path: Path) -> None:
    rgb = rng().integers(0, 256, (6, 5, 3), dtype=np.uint8)
    loaded = read_image(save(Image.fromarray(rgb), tmp_path / "x.bmp"))
    assert loaded.format == "BMP"
    np.testing.assert_array_equal(loaded.pixels, rgb)

    gray16 = rng().integers(0, 16384, (4, 6), dtype=np.uint16)
    gray16[0, 0] = 16383
    loaded = read_image(save(Image.fromarray(gray16), tmp_path / "x.tif"))
    assert loaded.format == "TIFF"
    np.testing.assert_array_equal(loaded.pixels[:, :, 2], _from_depth(gray16, 14))

    frames = [Image.new("RGB", (4, 4), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = save(frames[0], tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with Image.open(path) as written:
        assert written.n_frames == 2
    loaded = read_image(path)
    assert loaded.format == "GIF"
    np.testing.assert_array_equal(loaded.pixels[0, 0], [255, 0, 0])  # the first frame

    floats = np.array([[0.0, 1.0, 2.0, 4.0]], dtype=np.float32)
    loaded = read_image(save(Image.fromarray(floats, "F"), tmp_path / "f.tiff"))
    np.testing.assert_array_equal(loaded.pixels[0, :, 0], [0, 64, 128, 255])


def test_image_without_extension_is_found_by_content(tmp_path: Path) -> None:
    pixels = rng().integers(0, 256, (3, 4, 3), dtype=np.uint8)
    (tmp_path / "scan").write_bytes(png_bytes(pixels))
    loaded = read_image(tmp_path / "scan")
    assert loaded.format == "PNG"
    np.testing.assert_array_equal(loaded.pixels, pixels)
    assert decode_bytes(png_bytes(pixels))[1] == "PNG"


# --- failures -------------------------------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    err = load_error(tmp_path / "empty.png")
    assert (err.kind, err.reason) == ("empty", "zero-byte file")
    assert getattr(err, "sha256") == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("after_weasyprint", [False, True])
def test_truncated_png_and_jpeg_are_unreadable(tmp_path: Path, after_weasyprint: bool) -> None:
    if after_weasyprint:  # WeasyPrint turns Pillow's LOAD_TRUNCATED_IMAGES on when imported
        import weasyprint  # noqa: F401
        from PIL import ImageFile

        ImageFile.LOAD_TRUNCATED_IMAGES = True
    noise = rng().integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for name in ("cut.png", "cut.jpg"):
        buffer = io.BytesIO()
        Image.fromarray(noise).save(buffer, "PNG" if name.endswith("png") else "JPEG")
        data = buffer.getvalue()[: len(buffer.getvalue()) // 2]
        (tmp_path / name).write_bytes(data)
        err = load_error(tmp_path / name)
        assert err.kind == "unreadable", (name, err.reason)
        assert err.reason
        assert getattr(err, "sha256") == hashlib.sha256(data).hexdigest()
    for cut in (12, 20, 40):  # inside and just after the IHDR chunk: Pillow cannot identify it
        (tmp_path / "head.png").write_bytes(png_bytes(noise)[:cut])
        assert load_error(tmp_path / "head.png").kind == "unreadable", cut


@pytest.mark.parametrize("name", ["notes.txt", "fake.jpg", "README", "fake.dcm"])
def test_text_is_not_an_image(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("patient notes, not pixels\n" * 20)
    err = load_error(tmp_path / name)
    if name.endswith(".dcm"):  # claims to be DICOM, so it is a broken one
        assert err.kind == "unreadable"
    else:
        assert err.kind == "unsupported"
        assert err.reason.startswith("not an image")


def test_read_image_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")
    err = load_error(tmp_path / "pipe.png")
    assert (err.kind, err.reason) == ("unsupported", "not a regular file")
    assert getattr(err, "sha256", None) is None  # nothing was read


def test_bombs_are_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "big.png").write_bytes(png_header_only(12000, 12000))
    with warnings.catch_warnings(record=True) as caught:  # keeps the active filters
        err = load_error(tmp_path / "big.png")
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert err.kind == "too_large"
    assert "12000x12000 pixels exceeds the limit of 100,000,000" in err.reason

    (tmp_path / "huge.png").write_bytes(png_header_only(20000, 20000))  # over Pillow's own limit
    err = load_error(tmp_path / "huge.png")
    assert err.kind == "too_large"
    assert "20000x20000 pixels exceeds" in err.reason

    monkeypatch.setattr(decode, "MAX_PIXELS", 99)
    path = save(Image.new("RGB", (10, 10)), tmp_path / "small.png")
    err = load_error(path)
    assert (err.kind, err.reason) == ("too_large", "10x10 pixels exceeds the limit of 99 pixels")
    monkeypatch.setattr(decode, "MAX_PIXELS", 100)
    assert read_image(path).width == 10


# --- DICOM ----------------------------------------------------------------------------------


def windowed(stored: np.ndarray, slope: float, intercept: float, center: float,
             width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 LINEAR windowing onto 0..255, written out independently."""
    value = stored * slope + intercept
    out = ((value - (center - 0.5)) / (width - 1) + 0.5) * 255
    out[value <= center - 0.5 - (width - 1) / 2] = 0
    out[value > center - 0.5 + (width - 1) / 2] = 255
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def test_dicom_rescale_and_window(tmp_path: Path) -> None:
    stored = np.array([[0, 700, 760, 1000], [1100, 1240, 1260, 4000]], dtype=np.uint16)
    window = {"RescaleSlope": 2, "RescaleIntercept": -1000, "WindowCenter": 1000,
              "WindowWidth": 1001}
    path = write_dicom(tmp_path / "mr.dcm", stored, **window)
    loaded = read_image(path)
    assert loaded.format == "DICOM"
    check_pixels(loaded.pixels, 2, 4)
    expected = windowed(stored.astype(float), 2, -1000, 1000, 1001)
    np.testing.assert_array_equal(loaded.pixels[:, :, 0], expected)
    assert expected[0, 0] == 0 and expected[1, 3] == 255 and 0 < expected[1, 0] < 255

    inverted = write_dicom(tmp_path / "mono1.dcm", stored, PhotometricInterpretation="MONOCHROME1",
                           **window)
    np.testing.assert_array_equal(read_image(inverted).pixels[:, :, 1], 255 - expected)


def test_dicom_without_window_is_stretched(tmp_path: Path) -> None:
    stored = np.array([[100, 200], [300, 500]], dtype=np.uint16)
    loaded = read_image(write_dicom(tmp_path / "plain.dicom", stored))
    np.testing.assert_array_equal(loaded.pixels[:, :, 0], [[0, 64], [128, 255]])


def test_dicom_rgb_multiframe_and_no_extension(tmp_path: Path) -> None:
    rgb = rng().integers(0, 256, (3, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(read_image(write_dicom(tmp_path / "rgb.dcm", rgb)).pixels, rgb)

    frames = np.stack([np.full((4, 4), value, dtype=np.uint16) for value in (100, 500, 900)])
    frames[:, 0, 0] = 0  # one dark pixel each
    path = write_dicom(tmp_path / "series", frames, NumberOfFrames=3, WindowCenter=500,
                       WindowWidth=801)
    loaded = read_image(path)  # no extension: found by the DICM marker
    check_pixels(loaded.pixels, 4, 4)
    assert (loaded.pixels[1:] == 128).all() and (loaded.pixels[0, 0] == 0).all()  # the middle frame, 500

    bare = write_dicom(tmp_path / "bare.dcm", frames[0], preamble=False)
    assert bare.read_bytes()[128:132] != b"DICM"
    assert (read_image(bare).pixels[1:] == 255).all()  # read by extension; stretched without a window

    flat = write_dicom(tmp_path / "flat.dcm", np.full((4, 4), 700, dtype=np.uint16))
    err = load_error(flat)  # shown, it would pass for a black or gray scan
    assert (err.kind, err.reason) == ("skipped", "no signal: every pixel is 700")


def test_dicom_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_dicom(tmp_path / "nopix.dcm", np.zeros((2, 2), np.uint16))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    err = load_error(path)
    assert (err.kind, err.reason) == ("unreadable", "DICOM file has no pixel data")

    path = write_dicom(tmp_path / "j2k.dcm", np.zeros((2, 2), np.uint16))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEG2000  # garbage in a syntax that needs a decoder
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00\x01\x02\x03" * 4])
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    err = load_error(path)
    assert err.kind == "unreadable"
    assert "JPEG 2000" in err.reason

    monkeypatch.setattr(dicom, "MAX_PIXELS", 10)
    err = load_error(write_dicom(tmp_path / "big.dcm", np.zeros((4, 4), np.uint16)))
    assert (err.kind, err.reason) == ("too_large", "4x4 pixels exceeds the limit of 10 pixels")


# --- discover -------------------------------------------------------------------------------


def build_tree(tmp_path: Path) -> tuple[Path, Path, dict[str, str | None]]:
    """An input folder with one of everything; returns (root, outside, expected statuses)."""
    root, outside = tmp_path / "in", tmp_path / "outside"
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / ".git").mkdir()
    outside.mkdir()
    pixels = rng().integers(0, 256, (8, 8, 3), dtype=np.uint8)
    png = png_bytes(pixels)
    odd = "scan 01 ünï <>&\"'.png"
    (root / "a.png").write_bytes(png)
    (root / odd).write_bytes(png)
    save(Image.fromarray(pixels), root / "nested" / "deeper" / "b.jpg")
    (root / "nested" / "c.bmp").write_bytes(b"")
    (root / "noext").write_bytes(png)
    (root / "notes.txt").write_text("hello")
    (root / "fake.jpg").write_text("not a jpeg")
    for hidden in (".hidden.png", ".DS_Store", "Thumbs.db", "desktop.ini", "._a.png"):
        (root / hidden).write_bytes(png)
    (root / ".git" / "config").write_text("[core]")
    (root / ".git" / "inside.png").write_bytes(png)
    (outside / "secret.png").write_bytes(png)
    os.symlink("a.png", root / "link_in.png")
    os.symlink(outside / "secret.png", root / "link_out.png")
    os.symlink("missing.png", root / "dangling.png")
    os.symlink("loop_b", root / "loop_a")
    os.symlink("loop_a", root / "loop_b")
    os.symlink("nested", root / "dirlink")
    os.symlink(outside, root / "dirlink_out")
    os.mkfifo(root / "pipe")
    expected: dict[str, str | None] = {
        "a.png": None, odd: None, "nested/deeper/b.jpg": None, "nested/c.bmp": None,
        "noext": None, "notes.txt": None, "fake.jpg": None, "link_in.png": None,
        ".hidden.png": "skipped", ".DS_Store": "skipped", "Thumbs.db": "skipped",
        "desktop.ini": "skipped", "._a.png": "skipped", "dirlink": "skipped", ".git": "skipped",
        "link_out.png": "link_outside", "dirlink_out": "link_outside",
        "dangling.png": "link_broken", "loop_a": "link_broken", "loop_b": "link_broken",
        "pipe": "unsupported",
    }
    return root, outside, expected


def snapshot(*folders: Path) -> dict[Path, tuple[bytes, int]]:
    files = [p for folder in folders for p in folder.rglob("*")
             if p.is_file() and not p.is_symlink() and not p.is_fifo()]
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


def test_discover_accounts_for_every_file_once(tmp_path: Path) -> None:
    root, outside, expected = build_tree(tmp_path)
    before = snapshot(root, outside)
    rows = list(discover(root))
    relpaths = [row.relpath for row in rows]
    assert relpaths == sorted(expected)  # each once, in relpath order, nothing from inside .git
    assert {row.relpath: row.status for row in rows} == expected
    assert [row.relpath for row in discover(root)] == relpaths  # stable
    for row in rows:
        assert row.status is None or row.status in STATUSES
        assert row.path.is_absolute()
        assert bool(row.reason) == (row.status is not None)
        if row.status is None:
            info = row.path.stat()
            assert (row.size, row.mtime_ns) == (info.st_size, info.st_mtime_ns)
        else:
            assert row.size is None and row.mtime_ns is None
    by_path = {row.relpath: row for row in rows}
    assert by_path["link_in.png"].path == (root / "a.png").resolve()
    assert "not followed" in by_path["dirlink"].reason
    assert by_path[".git"].reason == "hidden folder, not read"

    outcomes: dict[str, str] = {}
    hashes: dict[str, str] = {}
    for row in rows:
        if row.status is None:
            try:
                loaded = read_image(row.path)
                outcomes[row.relpath], hashes[row.relpath] = "ok", loaded.sha256
            except ImageLoadError as err:
                outcomes[row.relpath] = err.kind
    assert outcomes == {
        "a.png": "ok", "scan 01 ünï <>&\"'.png": "ok", "nested/deeper/b.jpg": "ok",
        "nested/c.bmp": "empty", "noext": "ok", "notes.txt": "unsupported",
        "fake.jpg": "unsupported", "link_in.png": "ok",
    }
    assert hashes["link_in.png"] == hashes["a.png"] == hashes["noext"]
    assert snapshot(root, outside) == before  # nothing written, no mtime touched


def test_discover_through_a_symlinked_root(tmp_path: Path) -> None:
    root, _, expected = build_tree(tmp_path)
    alias = tmp_path / "alias"
    os.symlink(root, alias)
    assert {row.relpath: row.status for row in discover(alias)} == expected


def test_discover_reports_unreadable_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "x.png").write_bytes(b"x")
    (tmp_path / "z.png").write_bytes(b"z")
    real_scandir = os.scandir

    def scandir(path: Path) -> object:  # root bypasses chmod, so refuse by hand
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(discovery.os, "scandir", scandir)
    rows = list(discover(tmp_path))
    assert [(r.relpath, r.status) for r in rows] == [("locked", "unreadable"), ("z.png", None)]
    assert "Permission denied" in rows[0].reason


def test_discover_rejects_a_missing_root(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        discover(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError):
        discover(tmp_path / "file")


def test_found_file_is_frozen(tmp_path: Path) -> None:
    row = FoundFile("a", tmp_path / "a", None)
    with pytest.raises(AttributeError):
        row.status = "skipped"  # type: ignore[misc]
