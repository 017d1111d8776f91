#!/usr/bin/env python3
"""What the familiarity check costs a scan, and how that cost grows with the training set.

1. A whole scan (``run_scan``, ``explain="none"``) of --images generated scans
   with the check on, against the same scan with ``--no-familiarity``: the
   same model, folder and batch size, alternating, median of --repeats.
   Goal: at most 3% slower.
2. The check alone per batch (the intensity statistics of the batch and the
   k-nearest-neighbour queries) with an index of 250, 1,000 and 10,000
   training images, against the forward pass of one batch of the same model.
   Goal: flat (the forward pass dominates at every size).
"""

from __future__ import annotations

import sys

import _common as C  # before TensorFlow or triage: TF log level, private feature cache

GOAL = 1.03


def whole_scan(model, folder, n: int, batch_size: int, repeats: int) -> tuple[float, float]:
    """Median seconds of a scan with the check and without it."""
    from triage.scan.folder import ScanOptions
    from triage.scan.run import run_scan

    def scan(familiarity: bool) -> float:
        out = C.scratch("report") / "report.html"
        options = ScanOptions(explain="none", batch_size=batch_size, familiarity=familiarity)
        start = C.now()
        result, _ = run_scan(folder, out, model=model, options=options, full=True)
        if result.scored != n:
            sys.exit(f"scan scored {result.scored} of {n}: {result.counts()}")
        return C.now() - start

    scan(True)  # warm the file cache and the libraries
    on, off = [], []
    for r in range(repeats):
        on.append(scan(True))
        off.append(scan(False))
        print(f"  repeat {r + 1}: with {C.fmt_s(on[-1])}, without {C.fmt_s(off[-1])}", file=sys.stderr,
              flush=True)
    return C.median(on), C.median(off)


def check_alone(model_dir, image_size: int, batch_size: int, sizes: list[int], repeats: int) -> list[list]:
    """Per batch: the check with indexes of ``sizes`` entries, and the forward pass."""
    import numpy as np

    from triage.engine.inference import load_for_inference
    from triage.model.familiarity import STATISTICS, Familiarity, image_statistics

    loaded = load_for_inference(model_dir, "cpu")
    rng = np.random.default_rng(0)
    batch = rng.uniform(0, 255, (batch_size, image_size, image_size, 3)).astype(np.float32)
    loaded.forward.run_with_features(batch)
    forward = C.median(C.timed(lambda: loaded.forward.run_with_features(batch))[0] for _ in range(repeats))
    _, pooled, _ = loaded.forward.run_with_features(batch)
    rows = [["forward pass (one batch)", "", C.fmt_s(forward), "1.000"]]
    for size in sizes:
        index = Familiarity.fit(rng.normal(size=(size, pooled.shape[1])),
                                rng.uniform(0, 1, (size, len(STATISTICS))), np.arange(size))
        index.distances(pooled, image_statistics(batch))  # builds the neighbour index once
        seconds = C.median(C.timed(lambda i=index: i.distances(pooled, image_statistics(batch)))[0]
                           for _ in range(max(repeats, 5)))
        rows.append([f"familiarity check, index of {size:,} images", size, C.fmt_s(seconds),
                     f"{seconds / forward:.4f}"])
    return rows


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1000, help="generated scans in the scanned folder")
    p.add_argument("--image-size", type=int, default=256, help="model input size")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    p.add_argument("--index-sizes", default="250,1000,10000", help="training-set sizes for part 2")
    C.add_weights(p)
    C.add_repeats(p, default=3)
    args = p.parse_args()
    C.quiet_tensorflow()
    C.check_weights(args.backbone_weights)

    print(C.environment_line(images=args.images, image_size=args.image_size, batch_size=args.batch_size,
                             backbone=args.backbone_weights, repeats=args.repeats))
    print("# training a throw-away model on generated scans ...", file=sys.stderr, flush=True)
    model = C.train_blob_model(args.image_size, args.backbone_weights)
    folder = C.write_blob_images(C.scratch("input"), args.images, size=128, seed=3)
    with_check, without = whole_scan(model, folder, args.images, args.batch_size, args.repeats)
    ratio = with_check / without
    print()
    rows = [["scan without the check", C.fmt_s(without), f"{args.images / without:.2f}", "1.000"],
            ["scan with the check", C.fmt_s(with_check), f"{args.images / with_check:.2f}", f"{ratio:.3f}"]]
    print(C.table(rows, ["measure", "median time", "images/s", "time vs without"]))
    print(f"ratio with/without = {ratio:.3f}  goal <= {GOAL}  {C.verdict(ratio <= GOAL)}")
    print()
    sizes = [int(s) for s in args.index_sizes.split(",")]
    print(C.table(check_alone(model, args.image_size, args.batch_size, sizes, args.repeats),
                  ["per batch", "index size", "median time", "vs forward pass"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
