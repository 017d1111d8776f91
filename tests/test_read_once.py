"""Each file read and decoded once: DICOM slices hashed and parsed from one read, JPEG decoded once."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from pydicom.uid import generate_uid
from test_series import cases_of

import triage.inputs.integrity
from triage.inputs.decode import decode_bytes
from triage.inputs.jpeg import decode_whole_jpeg
from triage.testing import mr_slice

proc_io = Path("/proc/self/io")
needs_proc = pytest.mark.skipif(not proc_io.exists(),
                                reason="bytes read are counted in /proc/self/io (Linux)")


def _bytes_read() -> int:
    return int(next(line.split()[1] for line in proc_io.read_text().splitlines() if line.startswith("rchar")))


def _series(folder: Path, n: int, window: bool) -> list[Path]:
    series, study = generate_uid(), generate_uid()
    edits = {} if window else {"WindowCenter": None, "WindowWidth": None}
    return [mr_slice(folder / f"IM{k}", study=study, series=series, z=2.5 * k, instance=k + 1, **edits)
            for k in range(n)]


@needs_proc
@pytest.mark.parametrize("window, reads", [(True, 1), (False, 2)])
def test_a_series_slice_is_read_once_and_a_windowless_series_twice(tmp_path: Path, window: bool,
                                                                   reads: int) -> None:
    from triage.scan.jobs import SliceDecoder, jobs_of

    files = _series(tmp_path, 6, window)
    (case,) = cases_of(tmp_path)
    assert (case.window is not None) == window
    size = sum(path.stat().st_size for path in files)
    decoder = SliceDecoder(32, display=True, cases={case.case_id: case})
    decoder(jobs_of(case)[0])  # first use: pydicom's lazy imports read files of their own
    decoder = SliceDecoder(32, display=True, cases={case.case_id: case})  # its windows not yet measured
    before = _bytes_read()
    decoded = [decoder(job) for job in jobs_of(case)]
    read = _bytes_read() - before
    assert all(d.pixels is not None and d.extra.sha256 for d in decoded)
    # The file's size once (twice without a stored window: the window needs every slice first),
    # with a little room for what else the process reads meanwhile.
    assert reads * size <= read < (reads + 0.25) * size


def _jpeg(pixels: np.ndarray, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", **save)
    return buffer.getvalue()


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ImageOps.ExifTags.Base.Orientation] = orientation
    return exif.tobytes()


@pytest.mark.parametrize("mode, save", [
    ("RGB", {"quality": 90}), ("RGB", {"quality": 95, "subsampling": 0}), ("L", {"quality": 80}),
    ("RGB", {"quality": 85, "progressive": True}), *[("RGB", {"exif": _exif(o)}) for o in range(2, 9)],
])
def test_a_complete_jpeg_decodes_once_to_pillows_pixels(mode: str, save: dict,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)
    data = _jpeg(pixels if mode == "RGB" else pixels[..., 0], **save)
    with Image.open(io.BytesIO(data)) as image:
        expected = np.array(ImageOps.exif_transpose(image).convert("RGB"))
    checks = []
    monkeypatch.setattr(triage.inputs.integrity, "_jpeg_data_complete", lambda *a: checks.append(a) or True)
    decoded, fmt = decode_bytes(data, ".jpg")
    assert fmt == "JPEG" and checks == []  # no second decode
    np.testing.assert_array_equal(decoded, expected)


def test_a_cut_jpeg_is_still_found_out() -> None:
    rng = np.random.default_rng(4)
    data = _jpeg(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), quality=95)
    cut = data[:len(data) // 2] + b"\xff\xd9"
    with Image.open(io.BytesIO(cut)) as image:
        assert decode_whole_jpeg(image, cut) is None  # libjpeg-turbo warned: Pillow and the check decide
    with pytest.raises(Exception, match="decodes only in part"):
        decode_bytes(cut, ".jpg")


def test_a_job_carries_its_slice_and_window_not_its_case(tmp_path: Path) -> None:
    """A Ray job pickles to the same size whatever its series' length (it once carried the whole case)."""
    import pickle

    from triage.inputs.cases import Case, Slice
    from triage.scan.jobs import jobs_of

    def sizes(n: int) -> list[int]:
        slices = tuple(Slice(tmp_path / f"IM{k:04d}", f"IM{k:04d}", None, k, "s") for k in range(n))
        return [len(pickle.dumps(job)) for job in jobs_of(Case("s", "series", slices), (0.0, 99.0))]

    short, long = sizes(3), sizes(300)
    assert max(long) - min(short) <= 4  # only the slice index's digits differ
    assert pickle.loads(pickle.dumps(jobs_of(Case("s", "series", ()), (1.0, 2.0)))) == []
