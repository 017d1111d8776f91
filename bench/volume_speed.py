#!/usr/bin/env python3
"""Series speed: scanning DICOM series of N slices vs the bare batched forward pass of the same N slices.

The series are generated from pydicom's MR_small.dcm: every slice a copy with its
own UIDs and position, its pixels replaced by a generated 'scan' of --pixels side
(every fourth with a bright disc), no stored window (so each series' window is
measured from all its slices), files named in shuffled order without an extension.
The scan is ``triage.scan.folder.scan_folder`` with the model loaded beforehand: header
reading and grouping, ordering, one window per series, decoding, the forward pass,
the case scores, and Grad-CAM of the top --top-k slices of every flagged case with
their overlays written (threshold 0: every case is flagged, the most Grad-CAM a scan
of these series can do). The baseline is ``model.predict_on_batch`` of the same
model on the same slices, already decoded and resized, in batches of the same size,
every batch shape traced before timing. A scan with ``explain="none"`` is timed too,
to show what the Grad-CAM costs. The three alternate; the median of --repeats is
reported, after one untimed scan (tracing).

Target: scan time / bare time <= 1.1.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import _common as C  # before TensorFlow or triage: TF log level, private feature cache

TARGET = 1.1


def write_series(dest: Path, series: int, slices: int, side: int, seed: int = 0) -> Path:
    """``series`` axial series of ``slices`` slices each, in one study, under ``dest/sNN/``."""
    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    template = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    del template.WindowCenter, template.WindowWidth
    rng = np.random.default_rng(seed)
    study = generate_uid()
    for s in range(series):
        folder = dest / f"s{s:02d}"
        folder.mkdir(parents=True)
        uid = generate_uid()
        for index, name in enumerate(rng.permutation(slices)):
            ds = copy.deepcopy(template)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.ImagePositionPatient = [0.0, 0.0, 2.5 * index]
            ds.InstanceNumber = index + 1
            pixels = C.blob_image(rng, tumour=index % 4 == 0, size=side)[..., 0].astype(np.int16) * 8
            ds.Rows, ds.Columns = side, side
            ds.PixelData = pixels.tobytes()
            ds.save_as(folder / f"IM{name:04d}")
    return dest


def decoded_slices(folder: Path, image_size: int) -> "object":
    """(N, S, S, 3) float32 of every slice, decoded with its series' window and resized as triage does."""
    import numpy as np

    from triage.inputs.cases import CaseWindows, build_cases, decode_slice
    from triage.inputs.discovery import discover
    from triage.model.preprocess import resize_for_model

    cases, _ = build_cases(list(discover(folder)))
    windows = CaseWindows()  # each series' window measured once, as a scan measures it
    return np.stack([resize_for_model(decode_slice(s, case, windows), image_size)
                     for case in cases for s in case.slices])


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--series", type=int, default=4, help="series to scan")
    p.add_argument("--slices", type=int, default=24, help="slices per series")
    p.add_argument("--pixels", type=int, default=256, help="side of each generated slice")
    p.add_argument("--image-size", type=int, default=256, help="model input size")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (both)")
    p.add_argument("--top-k", type=int, default=3, help="slices of a flagged case explained")
    C.add_weights(p)
    C.add_repeats(p, default=3)
    args = p.parse_args()
    C.quiet_tensorflow()
    C.check_weights(args.backbone_weights)
    import numpy as np

    from triage.engine.inference import load_for_inference
    from triage.model.card import MODEL_FILE
    from triage.model.network import load_classifier
    from triage.scan.folder import ScanOptions, scan_folder

    n = args.series * args.slices
    print(C.environment_line(series=args.series, slices=args.slices, pixels=args.pixels,
                             image_size=args.image_size, batch_size=args.batch_size, top_k=args.top_k,
                             backbone=args.backbone_weights, repeats=args.repeats))
    print("# training a throw-away model ...", file=sys.stderr, flush=True)
    model_dir = C.train_blob_model(args.image_size, args.backbone_weights)
    inputs = write_series(C.scratch("series"), args.series, args.slices, args.pixels)

    model = load_classifier(model_dir / MODEL_FILE)
    slices = decoded_slices(inputs, args.image_size)
    batches = np.array_split(slices, range(args.batch_size, n, args.batch_size))
    bare = C.bare_forward_pass(model, batches)

    loaded = load_for_inference(model_dir, "cpu")
    explained = ScanOptions(threshold=0.0, explain="flagged", batch_size=args.batch_size, top_k=args.top_k)
    plain = ScanOptions(threshold=0.0, explain="none", batch_size=args.batch_size)

    def scan(options: ScanOptions) -> float:
        out = C.scratch("report")
        start = C.now()
        result = scan_folder(inputs, loaded, options, heatmap_dir=out / "heatmaps", report_dir=out)
        seconds = C.now() - start
        cases = [case for case in result.cases if case.kind == "series"]
        if result.scored != n or len(cases) != args.series or not all(c.flagged for c in cases):
            sys.exit(f"scan scored {result.scored} of {n} slices in {len(cases)} series: {result.counts()}")
        maps = sum(row.heatmap is not None for row in result.rows)
        if options.explain == "flagged" and maps != args.series * min(args.top_k, args.slices):
            sys.exit(f"{maps} heat maps, expected the top {args.top_k} of each series")
        return seconds

    scan(explained)  # untimed: traces the forward pass and the Grad-CAM tail
    times: dict[str, list[float]] = {"bare": [], "scan": [], "plain": []}
    for r in range(args.repeats):
        times["bare"].append(bare())
        times["scan"].append(scan(explained))
        times["plain"].append(scan(plain))
        print(f"  repeat {r + 1}: " + ", ".join(f"{k} {C.fmt_s(v[-1])}" for k, v in times.items()),
              file=sys.stderr, flush=True)

    bare_s, scan_s, plain_s = (C.median(times[k]) for k in ("bare", "scan", "plain"))
    ratio = scan_s / bare_s
    rows = [
        ["bare predict_on_batch (pre-decoded slices)", C.fmt_s(bare_s), f"{n / bare_s:.2f}", "1.00"],
        [f"scan_folder, top {args.top_k} of every series explained", C.fmt_s(scan_s), f"{n / scan_s:.2f}",
         f"{ratio:.2f}"],
        ["scan_folder, explain none", C.fmt_s(plain_s), f"{n / plain_s:.2f}", f"{plain_s / bare_s:.2f}"],
    ]
    print()
    print(C.table(rows, ["measure", "median time", "slices/s", "vs bare"]))
    print()
    print(f"ratio scan/bare = {ratio:.2f}  target <= {TARGET}  {C.verdict(ratio <= TARGET)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
