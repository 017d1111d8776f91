#!/usr/bin/env python3
"""Hostile inputs: a frame-bomb DICOM's memory and planning time, and cost per slice as a series grows.

Three measures, each against a baseline measured in the same run:

1. Peak RSS of ``python3 -m triage scan`` (a subprocess, ``os.wait4`` of a small
   wrapper, as ``scan_memory.py``) on a folder holding one frame-bomb DICOM file vs
   a folder holding one ordinary DICOM slice, same throw-away model. The bomb is a
   copy of pydicom's MR_small.dcm whose header declares --bomb-frames frames of
   --bomb-side pixels while the file holds --bomb-kb KB of pixel data (200,000
   frames of 8x8 in 200 KB by default: under the pixel limit, so only the check
   that the pixel data hold what the header declares refuses it).
   Target: peak(bomb) <= 1.5 x peak(one ordinary image).
2. Seconds to plan the folder holding the bomb (``discover`` + ``plan_scan``: headers
   only) vs the folder holding the ordinary slice. Target: under --plan-target seconds.
3. Seconds per slice of planning a series and decoding every slice of it as the scan
   decodes them (``SliceDecoder``: its case's window measured once, each slice windowed
   and resized for the model; no model), for a short and a long series of generated
   16-bit slices without a stored window; and the bytes each slice pickles to (what the
   Ray engine sends per slice). Target: per-slice time(long) <= 1.5 x per-slice time(short),
   i.e. cost linear in the series' length; pickled bytes per slice independent of it.

Medians of --repeats, the measures alternating.
"""

from __future__ import annotations

import copy
import os
import pickle
import sys
from pathlib import Path

import _common as C  # before TensorFlow or triage: TF log level, private feature cache

MEMORY_TARGET = 1.5
LINEAR_TARGET = 1.5


def template() -> "object":
    import pydicom
    from pydicom.data import get_testdata_file

    return pydicom.dcmread(get_testdata_file("MR_small.dcm"))


def write_ordinary(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    template().save_as(dest / "slice.dcm")
    return dest


def write_bomb(dest: Path, frames: int, side: int, kb: int) -> Path:
    import numpy as np

    dest.mkdir(parents=True, exist_ok=True)
    ds = template()
    ds.NumberOfFrames, ds.Rows, ds.Columns = frames, side, side
    ds.PixelData = (np.arange(kb * 1024) % 251).astype(np.uint8).tobytes()
    ds.save_as(dest / "bomb.dcm")
    return dest


def write_series(dest: Path, slices: int, side: int) -> Path:
    """One axial series of ``slices`` generated 16-bit slices, no stored window, shuffled names."""
    import numpy as np
    from pydicom.uid import generate_uid

    dest.mkdir(parents=True, exist_ok=True)
    base = template()
    del base.WindowCenter, base.WindowWidth
    rng = np.random.default_rng(0)
    study, series = generate_uid(), generate_uid()
    for index, name in enumerate(rng.permutation(slices)):
        ds = copy.deepcopy(base)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ImagePositionPatient = [0.0, 0.0, 1.0 * index]
        ds.InstanceNumber = index + 1
        ds.Rows = ds.Columns = side
        ds.PixelData = (C.blob_image(rng, index % 4 == 0, side)[..., 0].astype(np.int16) * 8).tobytes()
        ds.save_as(dest / f"IM{name:06d}")
    return dest


def plan_seconds(folder: Path) -> tuple[float, int]:
    """Seconds to discover and plan ``folder``, and the rows planned."""
    from triage.inputs.discovery import discover
    from triage.scan.plan import plan_scan

    seconds, plan = C.timed(lambda: plan_scan(list(discover(folder)), {}, folder.parent))
    return seconds, plan.total


def series_per_slice(folder: Path, image_size: int) -> tuple[float, float]:
    """(seconds per slice to plan and decode every slice, pickled bytes per slice)."""
    from triage.inputs.discovery import discover
    from triage.scan.jobs import SliceDecoder, jobs_of
    from triage.scan.plan import plan_scan

    start = C.now()
    plan = plan_scan(list(discover(folder)), {}, folder.parent)
    [case] = plan.to_score
    decoder = SliceDecoder(image_size, display=False, cases={case.case_id: case})
    jobs = jobs_of(case)
    for job in jobs:
        decoder(job)
    seconds = C.now() - start
    sent = sum(len(pickle.dumps(job)) for job in jobs)
    return seconds / len(jobs), sent / len(jobs)


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--bomb-frames", type=int, default=200_000, help="frames the bomb's header declares")
    p.add_argument("--bomb-side", type=int, default=8, help="rows and columns of each declared frame")
    p.add_argument("--bomb-kb", type=int, default=200, help="KB of pixel data the bomb holds")
    p.add_argument("--plan-target", type=float, default=2.0, help="seconds the bomb may take to plan")
    p.add_argument("--short", type=int, default=1000, help="slices of the short series")
    p.add_argument("--long", type=int, default=10_000, help="slices of the long series")
    p.add_argument("--side", type=int, default=64, help="rows and columns of each series slice")
    p.add_argument("--image-size", type=int, default=64, help="model input size")
    p.add_argument("--skip-memory", action="store_true", help="measure planning and series only")
    C.add_weights(p)
    C.add_repeats(p, default=3)
    args = p.parse_args()
    if not 0 < args.short < args.long:
        p.error("need 0 < --short < --long")
    C.quiet_tensorflow()

    print(C.environment_line(bomb=f"{args.bomb_frames}x{args.bomb_side}px in {args.bomb_kb} KB",
                             series=f"{args.short}/{args.long} slices of {args.side}px",
                             image_size=args.image_size, repeats=args.repeats))
    print("# writing the folders ...", file=sys.stderr, flush=True)
    ordinary = write_ordinary(C.scratch("ordinary") / "in")
    bomb = write_bomb(C.scratch("bomb") / "in", args.bomb_frames, args.bomb_side, args.bomb_kb)
    series = {n: write_series(C.scratch(f"series{n}") / "in", n, args.side) for n in (args.short, args.long)}

    rows: list[list[object]] = []
    results: dict[str, bool] = {}
    if not args.skip_memory:
        results["memory"] = memory(args, ordinary, bomb, rows)

    plans: dict[str, list[float]] = {"ordinary": [], "bomb": []}
    per_slice: dict[int, list[float]] = {args.short: [], args.long: []}
    sent: dict[int, float] = {}
    for r in range(args.repeats):
        for name, folder in (("ordinary", ordinary), ("bomb", bomb)):
            seconds, total = plan_seconds(folder)
            plans[name].append(seconds)
        for n, folder in series.items():
            seconds, sent[n] = series_per_slice(folder, args.image_size)
            per_slice[n].append(seconds)
        slices = ", ".join(f"{n}: {C.fmt_s(v[-1])}" for n, v in per_slice.items())
        print(f"  repeat {r + 1}: bomb planned in {C.fmt_s(plans['bomb'][-1])} ({total} rows); per slice "
              f"{slices}", file=sys.stderr, flush=True)
    plan_bomb, plan_one = C.median(plans["bomb"]), C.median(plans["ordinary"])
    results["plan"] = plan_bomb <= args.plan_target
    rows.append(["plan: bomb vs one ordinary file", C.fmt_s(plan_bomb), C.fmt_s(plan_one),
                 f"{plan_bomb / plan_one:.1f}x", f"<= {args.plan_target:g} s", C.verdict(results["plan"])])
    short, long = C.median(per_slice[args.short]), C.median(per_slice[args.long])
    results["linear"] = long <= LINEAR_TARGET * short
    rows.append([f"per slice: {args.long} vs {args.short} slices", C.fmt_s(long), C.fmt_s(short),
                 f"{long / short:.2f}", f"<= {LINEAR_TARGET}", C.verdict(results["linear"])])
    rows.append([f"pickled per slice: {args.long} vs {args.short}", f"{sent[args.long]:.0f} B",
                 f"{sent[args.short]:.0f} B", f"{sent[args.long] / sent[args.short]:.2f}", "(reported)", ""])
    print(C.table(rows, ["measure", "measured", "baseline", "ratio", "target", "verdict"]))
    return 0 if all(results.values()) else 1


def memory(args: object, ordinary: Path, bomb: Path, rows: list[list[object]]) -> bool:
    """Peak RSS of a scan of the bomb vs of one ordinary slice (whole processes, same model)."""
    C.check_weights(args.backbone_weights)  # type: ignore[attr-defined]
    print("# training a throw-away model ...", file=sys.stderr, flush=True)
    model = C.train_blob_model(args.image_size, args.backbone_weights)  # type: ignore[attr-defined]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    peaks: dict[str, list[float]] = {"ordinary": [], "bomb": []}
    for r in range(args.repeats):  # type: ignore[attr-defined]
        for name, folder in (("ordinary", ordinary), ("bomb", bomb)):
            work = C.scratch("out")
            run = C.run_measured([sys.executable, "-m", "triage", "scan", str(folder), "--out",
                                  str(work / "report.pdf"), "--model", str(model), "--full", "--quiet"],
                                 env=env, cwd=work)
            if run.returncode not in (0, 1):
                print(run.output[-4000:], file=sys.stderr)
                sys.exit(f"triage scan of the {name} folder exited with {run.returncode}")
            peaks[name].append(run.peak_rss_mb)
            print(f"  repeat {r + 1}: {name} peak {run.peak_rss_mb:.0f} MB in {C.fmt_s(run.seconds)}",
                  file=sys.stderr, flush=True)
    bomb_mb, one_mb = C.median(peaks["bomb"]), C.median(peaks["ordinary"])
    ok = bomb_mb <= MEMORY_TARGET * one_mb
    rows.append(["peak RSS: bomb vs one ordinary image", f"{bomb_mb:.0f} MB", f"{one_mb:.0f} MB",
                 f"{bomb_mb / one_mb:.2f}", f"<= {MEMORY_TARGET}", C.verdict(ok)])
    return ok


if __name__ == "__main__":
    raise SystemExit(main())
