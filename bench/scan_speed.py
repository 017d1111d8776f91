#!/usr/bin/env python3
"""Scan throughput: the whole ``triage.scan.run.run_scan`` vs the bare batched forward pass.

The scan is timed end to end (load the model, discover, decode, resize, forward
pass, Grad-CAM of every image with ``explain="all"``, overlay PNGs, CSV and HTML;
the PDF only with --pdf). The baseline is ``model.predict_on_batch`` of the same
model on the same images, already decoded and resized, in batches of the same
size, after a warm-up call for each batch shape. Both are measured in this run,
alternating, and the median of --repeats is reported.

Target: scan images/s / bare images/s >= 0.9 (at image size 256).
"""

from __future__ import annotations

import sys

import _common as C  # before TensorFlow or triage: TF log level, private feature cache

TARGET = 0.9


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    C.add_data(p)
    p.add_argument("--images", type=int, default=None, help="images to scan [default: all of the data set]")
    p.add_argument("--image-size", type=int, default=256, help="model input size")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (both)")
    p.add_argument("--pdf", action="store_true", help="also render the PDF inside the timed scan")
    args, data = C.parse_model_bench(p, repeats=3)

    from triage.model.card import MODEL_FILE
    from triage.model.network import load_classifier
    from triage.scan.folder import ScanOptions
    from triage.scan.run import run_scan

    paths = C.dataset_images(data, args.images)
    n = len(paths)
    print(C.environment_line(images=n, image_size=args.image_size, batch_size=args.batch_size,
                             backbone=args.backbone_weights, repeats=args.repeats,
                             pdf=args.pdf))
    print("# training a throw-away model (1 epoch) ...", file=sys.stderr, flush=True)
    model_dir = C.train_small_model(data, args.image_size, args.backbone_weights,
                                    per_class=args.train_per_class)
    inputs = C.copy_images(paths, data, C.scratch("input"))

    # Baseline: the same network, images decoded and resized beforehand.
    model = load_classifier(model_dir / MODEL_FILE)
    decoded = C.decode_for_model(paths, args.image_size)
    batches = [decoded[i:i + args.batch_size] for i in range(0, n, args.batch_size)]
    bare = C.bare_forward_pass(model, batches)

    options = ScanOptions(explain="all", batch_size=args.batch_size)
    suffix = "pdf" if args.pdf else "html"
    last = {}

    def scan() -> float:
        out = C.scratch("report") / f"report.{suffix}"
        start = C.now()
        result, _ = run_scan(inputs, out, model=model_dir, options=options, full=True)
        seconds = C.now() - start
        if result.scored != n:
            sys.exit(f"scan scored {result.scored} of {n} images: {result.counts()}")
        if sum(c.heatmap is not None for c in result.rows) != n:
            sys.exit("not every image got a heat map")
        last["in_scan"] = result.seconds
        return seconds

    bare_times, scan_times, in_scan_times = [], [], []
    for r in range(args.repeats):
        bare_times.append(bare())
        scan_times.append(scan())
        in_scan_times.append(last["in_scan"])
        print(f"  repeat {r + 1}: bare {C.fmt_s(bare_times[-1])}, scan {C.fmt_s(scan_times[-1])}",
              file=sys.stderr, flush=True)

    bare_rate = n / C.median(bare_times)
    scan_rate = n / C.median(scan_times)
    in_scan_rate = n / C.median(in_scan_times)
    ratio = scan_rate / bare_rate
    rows = [
        ["bare predict_on_batch (pre-decoded)", C.fmt_s(C.median(bare_times)), f"{bare_rate:.2f}", "1.00"],
        [f"whole scan (run_scan, explain=all, {'CSV+HTML+PDF' if args.pdf else 'CSV+HTML'})",
         C.fmt_s(C.median(scan_times)), f"{scan_rate:.2f}", f"{ratio:.2f}"],
        ["  of which scan_folder (run.json 'seconds')", C.fmt_s(C.median(in_scan_times)),
         f"{in_scan_rate:.2f}", f"{in_scan_rate / bare_rate:.2f}"],
    ]
    print()
    print(C.table(rows, ["measure", "median time", "images/s", "vs bare"]))
    print()
    note = ("" if args.image_size == 256
            else f" (target is set at image size 256; this ran at {args.image_size})")
    print(f"ratio scan/bare = {ratio:.2f}  target >= {TARGET}  {C.verdict(ratio >= TARGET)}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
