#!/usr/bin/env python3
"""Peak memory of ``triage scan`` on eight 100-megapixel PNGs vs one: it must stay bounded.

Huge scans compress to almost nothing (a flat background, one disc), so a folder
of a few hundred KB can hold gigabytes of pixels. Decoding reserves its bytes
from a shared budget (an image larger than the budget decodes alone), the model
input is resized without a full-size float copy, and only a display copy
(1024 px at most) is kept for the overlay. The peak RSS of each ``python3 -m
triage scan`` child is read from ``os.wait4``.

Target: peak(eight) <= 1.25 x peak(one).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import _common as C  # before TensorFlow or triage: TF log level, private feature cache

TARGET = 1.25


def write_huge_pngs(folder: Path, n: int, side: int) -> Path:
    """``n`` different ``side`` x ``side`` PNGs: dark, with a bright disc somewhere."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = Image.new("RGB", (side, side), (20, 20, 20))
        centre, radius = side // 4 + i * side // (2 * max(n, 1)), side // 10
        ImageDraw.Draw(image).ellipse([centre - radius, centre - radius, centre + radius,
                                       centre + radius], fill=(230, 230, 230))
        image.save(folder / f"huge{i}.png", compress_level=9)
        del image
    return folder


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--side", type=int, default=10000, help="side of the generated PNGs (10000 = 100 MP)")
    p.add_argument("--many", type=int, default=8, help="images in the large scan")
    p.add_argument("--image-size", type=int, default=64, help="model input size")
    C.add_weights(p)
    C.add_repeats(p, default=1)
    args = p.parse_args()
    C.quiet_tensorflow()
    C.check_weights(args.backbone_weights)
    print(C.environment_line(side=args.side, many=args.many, image_size=args.image_size,
                             backbone=args.backbone_weights, repeats=args.repeats))
    print("# writing huge PNGs and training a throw-away model ...", file=sys.stderr, flush=True)
    every = write_huge_pngs(C.scratch("huge-many"), args.many, args.side)
    one = C.scratch("huge-one")
    os.link(every / "huge0.png", one / "huge0.png")
    sizes = sorted(f.stat().st_size for f in every.iterdir())
    model_dir = C.train_blob_model(args.image_size, args.backbone_weights)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}

    def scan(folder: Path) -> C.ChildRun:
        work = C.scratch("out")
        cmd = [sys.executable, "-m", "triage", "scan", str(folder), "--out", str(work / "report.html"),
               "--model", str(model_dir), "--explain", "all", "--threshold", "0", "--full", "--quiet"]
        run = C.run_measured(cmd, env=env, cwd=work)
        if run.returncode != 0:
            print(run.output[-4000:], file=sys.stderr)
            sys.exit(f"triage scan of {folder.name} exited with {run.returncode}")
        return run

    runs: dict[str, list[C.ChildRun]] = {"one": [], "many": []}
    for _ in range(args.repeats):
        runs["one"].append(scan(one))
        runs["many"].append(scan(every))
    peaks = {name: C.median(r.peak_rss_mb for r in measured) for name, measured in runs.items()}
    rows = [[1, f"{peaks['one']:.0f} MB", C.fmt_s(C.median(r.seconds for r in runs["one"]))],
            [args.many, f"{peaks['many']:.0f} MB", C.fmt_s(C.median(r.seconds for r in runs["many"]))]]
    ratio = peaks["many"] / peaks["one"]
    print(f"files on disk: {sizes[0] / 1024:.0f}-{sizes[-1] / 1024:.0f} KB each, "
          f"{args.side}x{args.side} px ({args.side * args.side / 1e6:.0f} MP)")
    print(C.table(rows, ["images", "peak RSS (wait4)", "wall time"]))
    print(f"ratio peak {args.many}/1 = {ratio:.3f}  target <= {TARGET:.2f}  {C.verdict(ratio <= TARGET)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
