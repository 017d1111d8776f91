#!/usr/bin/env python3
"""Peak memory of ``triage scan`` on 2,000 images vs 200: it must stay flat.

Generates small PNGs (128x128 by default, every third with a bright blob), trains
a throw-away model on generated images, then runs ``python3 -m triage scan`` as a
subprocess on --small and on --large images with the same model and settings
(``--explain all`` by default, so every image gets a heat map; PDF + HTML + CSV).
The peak RSS of each child is read from ``os.wait4``'s rusage (its ``ru_maxrss``)
and cross-checked by polling ``/proc/PID/status`` VmHWM while it runs.

Target: peak(--large) <= 1.2 x peak(--small).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import _common as C  # before TensorFlow or triage: TF log level, private feature cache

TARGET = 1.20


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--large", type=int, default=2000, help="images in the large scan")
    p.add_argument("--small", type=int, default=200, help="images in the small scan")
    p.add_argument("--png-size", type=int, default=128, help="side of the generated PNGs")
    p.add_argument("--image-size", type=int, default=64, help="model input size")
    p.add_argument("--batch-size", type=int, default=16, help="scan --batch-size")
    p.add_argument("--explain", choices=["all", "flagged", "none"], default="all",
                   help="scan --explain")
    p.add_argument("--html-only", action="store_true", help="write an HTML report, no PDF")
    C.add_weights(p)
    C.add_repeats(p, default=1)
    args = p.parse_args()
    if not 0 < args.small < args.large:
        p.error("need 0 < --small < --large")
    C.quiet_tensorflow()
    C.check_weights(args.backbone_weights)

    print(C.environment_line(small=args.small, large=args.large, png_size=args.png_size,
                             image_size=args.image_size, batch_size=args.batch_size,
                             explain=args.explain, pdf=not args.html_only,
                             backbone=args.backbone_weights, repeats=args.repeats))
    print("# generating images and training a throw-away model ...", file=sys.stderr, flush=True)
    folders = {n: C.write_blob_images(C.scratch(f"scan{n}"), n, size=args.png_size, seed=7)
               for n in (args.small, args.large)}  # same seed: the small set is the large one's start
    model_dir = C.train_blob_model(args.image_size, args.backbone_weights)
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONWARNINGS"] = "ignore"

    def scan(n: int) -> C.ChildRun:
        work = C.scratch("out")
        out = work / ("report.html" if args.html_only else "report.pdf")
        cmd = [sys.executable, "-m", "triage", "scan", str(folders[n]), "--out", str(out),
               "--model", str(model_dir), "--explain", args.explain, "--batch-size",
               str(args.batch_size), "--full", "--quiet"]
        run = C.run_measured(cmd, env=env, cwd=work)
        if run.returncode != 0:
            print(run.output[-4000:], file=sys.stderr)
            sys.exit(f"triage scan of {n} images exited with {run.returncode}")
        heatmaps = sum(1 for f in Path(out.with_suffix("").as_posix() + "_heatmaps").glob("*_gradcam.png"))
        if args.explain == "all" and heatmaps != n:
            sys.exit(f"scan of {n} images wrote {heatmaps} heat maps")
        return run

    runs: dict[int, list[C.ChildRun]] = {args.small: [], args.large: []}
    for r in range(args.repeats):
        for n in (args.small, args.large):
            runs[n].append(scan(n))
            last = runs[n][-1]
            print(f"  repeat {r + 1}: {n} images, peak {last.peak_rss_mb:.0f} MB, "
                  f"{C.fmt_s(last.seconds)}", file=sys.stderr, flush=True)

    rows = []
    peaks = {}
    for n, measured in runs.items():
        peaks[n] = C.median(r.peak_rss_mb for r in measured)
        seconds = C.median(r.seconds for r in measured)
        rows.append([n, f"{peaks[n]:.0f} MB", f"{C.median(r.polled_hwm_mb for r in measured):.0f} MB",
                     C.fmt_s(seconds), f"{n / seconds:.1f}"])
    ratio = peaks[args.large] / peaks[args.small]
    print()
    print(C.table(rows, ["images", "peak RSS (wait4)", "peak RSS (polled VmHWM)", "wall time",
                         "images/s (whole process)"]))
    print()
    print(f"ratio peak {args.large}/{args.small} = {ratio:.3f}  target <= {TARGET:.2f} "
          f"(+{100 * (TARGET - 1):.0f}%)  {C.verdict(ratio <= TARGET)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
