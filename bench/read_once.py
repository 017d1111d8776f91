#!/usr/bin/env python3
"""Reads and decodes per file: DICOM series bytes read per slice, and JPEG decode time, before and now.

DICOM: ``--series`` generated series of ``--slices`` slices (``volume_speed.write_series``:
copies of pydicom's MR_small.dcm, generated ``--pixels`` px scans), once with a stored
window and once without. Each slice's job decoded as a scan decodes it
(``triage.scan.jobs.SliceDecoder``), the bytes the process read counted from
``/proc/self/io`` (rchar, page cache included: reads, not disk transfers) and divided by
the files' total size. "Before" is the decoding the scan did until now, run here from
the same functions: the file hashed on its own, then parsed again by pydicom
(``triage.inputs.cases.decode_slice``), the window of a windowless series measured from
every slice first.

JPEG: every JPEG of the shared set decoded by ``triage.inputs.decode.decode_bytes`` now
(one libjpeg-turbo decode with its warnings raised) and before (Pillow's decode, then the
cut-short check's second decode with filler bytes), from bytes in memory, alternating,
median of --repeats per image; and the share of a PNG's decode that its check's second
inflate takes.

Targets: bytes read per slice = 1.0 x the file's size (stored window); JPEG now/before
decode time < 1 (reported).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import _common as C  # before TensorFlow or triage: TF log level, private feature cache
from volume_speed import write_series


def _rchar() -> int:
    text = Path("/proc/self/io").read_text()
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith("rchar")))


def dicom_reads(folder: Path) -> tuple[float, float, int]:
    """(bytes read now / size, before / size, slices) over every series under ``folder``."""
    from triage.hashing import sha256_file
    from triage.inputs.cases import CaseWindows, build_cases, decode_slice
    from triage.inputs.discovery import discover
    from triage.scan.jobs import SliceDecoder, jobs_of

    cases = build_cases(list(discover(folder)))[0]
    size = sum(s.path.stat().st_size for case in cases for s in case.slices)
    slices = sum(len(case.slices) for case in cases)
    by_id = {case.case_id: case for case in cases}
    SliceDecoder(256, display=False, cases=by_id)(jobs_of(cases[0])[0])  # lazy imports read files first

    def now() -> None:
        decoder = SliceDecoder(256, display=False, cases=by_id)  # each window measured once, in this run
        for case in cases:
            for job in jobs_of(case):
                decoder(job)

    def before() -> None:
        windows = CaseWindows()
        for case in cases:
            for slice_ in case.slices:
                sha256_file(slice_.path)
                decode_slice(slice_, case, windows)

    found = []
    for run in (now, before):
        start = _rchar()
        run()
        found.append((_rchar() - start) / size)
    return found[0], found[1], slices


def jpeg_times(paths: list[Path], repeats: int) -> tuple[float, float, int]:
    """Median ms per JPEG now and before (the cut-short check's second decode)."""
    import triage.inputs.jpeg
    from triage.inputs import decode

    jpegs = [p.read_bytes() for p in paths if p.suffix.lower() in (".jpg", ".jpeg")]

    def before() -> None:
        real = decode.decode_whole_jpeg
        decode.decode_whole_jpeg = lambda image, data: None  # Pillow, then the second decode
        try:
            for data in jpegs:
                decode.decode_bytes(data, ".jpg")
        finally:
            decode.decode_whole_jpeg = real

    def now() -> None:
        for data in jpegs:
            decode.decode_bytes(data, ".jpg")

    assert triage.inputs.jpeg  # the module whose one decode is measured
    times = _alternate({"now": now, "before": before}, repeats)
    return times["now"] / len(jpegs) * 1e3, times["before"] / len(jpegs) * 1e3, len(jpegs)


def png_check_share(paths: list[Path], repeats: int) -> tuple[float, int]:
    """The PNG check's inflate as a share of a whole PNG decode."""
    from triage.inputs import decode, integrity

    pngs = [p.read_bytes() for p in paths if p.suffix.lower() == ".png"]
    if not pngs:
        return float("nan"), 0

    def whole() -> None:
        for data in pngs:
            decode.decode_bytes(data, ".png")

    def check() -> None:
        for data in pngs:
            integrity._png_data_complete(data)

    times = _alternate({"whole": whole, "check": check}, repeats)
    return times["check"] / times["whole"], len(pngs)


def _alternate(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            seconds[name].append(C.timed(run)[0])
    return {name: C.median(values) for name, values in seconds.items()}


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    C.add_data(p)
    p.add_argument("--series", type=int, default=4, help="DICOM series per kind")
    p.add_argument("--slices", type=int, default=24, help="slices per series")
    p.add_argument("--pixels", type=int, default=256, help="side of the generated slices")
    C.add_repeats(p, default=5)
    args = p.parse_args()
    data = C.check_data(args.data)
    print(C.environment_line(series=args.series, slices=args.slices, pixels=args.pixels,
                             repeats=args.repeats))
    rows = []
    for window in (True, False):
        folder = write_series(C.scratch("series"), args.series, args.slices, args.pixels)
        if window:
            _store_window(folder)
        now, before, n = dicom_reads(folder)
        rows.append([f"DICOM, {'stored' if window else 'no stored'} window ({n} slices)",
                     f"{now:.2f} x size", f"{before:.2f} x size",
                     C.verdict(now < 1.05) if window else "(reported)"])
    paths = C.dataset_images(data)
    now_ms, before_ms, n = jpeg_times(paths, args.repeats)
    rows.append([f"JPEG decode, ms per image ({n} of the shared set)", f"{now_ms:.2f}", f"{before_ms:.2f}",
                 f"{now_ms / before_ms:.2f}x"])
    share, n_png = png_check_share(paths, args.repeats)
    rows.append([f"PNG: the check's inflate / whole decode ({n_png})", f"{share:.2f}", "", "(reported)"])
    print(C.table(rows, ["measure", "now", "before", "verdict"]))
    return 0


def _store_window(folder: Path) -> None:
    import pydicom

    for path in folder.rglob("IM*"):
        ds = pydicom.dcmread(path)
        ds.WindowCenter, ds.WindowWidth = 500, 1000
        ds.save_as(path)


if __name__ == "__main__":
    sys.exit(main())
