#!/usr/bin/env python3
"""Report rendering: seconds to write the PDF (and the HTML) of 100 flagged scans, and PDF size.

Scans --images real images of the data set with threshold 0, so every one is
flagged and gets a Grad-CAM overlay (``triage.scan.folder.scan_folder``; not timed),
then times ``triage.report.write_pdf`` and ``write_html`` on that ScanResult,
median of --repeats.

Target: PDF < 15 MB. (The render time has no target; it is reported.)
"""

from __future__ import annotations

import sys

import _common as C  # before TensorFlow or triage: TF log level, private feature cache

SIZE_TARGET_MB = 15.0


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    C.add_data(p)
    p.add_argument("--images", type=int, default=100, help="images scanned, all flagged")
    p.add_argument("--image-size", type=int, default=64,
                   help="model input size (the overlays keep each image's own size either way)")
    p.add_argument("--max-cases", type=int, default=200, help="write_pdf max_cases")
    args, data = C.parse_model_bench(p, repeats=3)

    from triage.engine.inference import load_for_inference
    from triage.report import write_html, write_pdf
    from triage.scan.folder import ScanOptions, scan_folder

    paths = C.dataset_images(data, args.images)
    print(C.environment_line(images=len(paths), image_size=args.image_size,
                             max_cases=args.max_cases, backbone=args.backbone_weights,
                             repeats=args.repeats))
    print("# training a throw-away model and scanning with threshold 0 ...", file=sys.stderr, flush=True)
    model_dir = C.train_small_model(data, args.image_size, args.backbone_weights,
                                    per_class=args.train_per_class)
    inputs = C.copy_images(paths, data, C.scratch("input"))
    out = C.scratch("report")
    options = ScanOptions(threshold=0.0, explain="flagged")
    result = scan_folder(inputs, load_for_inference(model_dir, options.device), options,
                         heatmap_dir=out / "report_heatmaps", report_dir=out)
    flagged = len(result.flagged)
    with_overlay = sum(c.heatmap is not None for c in result.flagged)
    if flagged != len(paths) or with_overlay != flagged:
        sys.exit(f"expected {len(paths)} flagged scans with overlays, "
                 f"got {flagged} ({with_overlay} with overlays)")

    pdf, html = out / "report.pdf", out / "report.html"
    pdf_times, html_times = [], []
    for r in range(args.repeats):
        pdf_times.append(C.timed(lambda: write_pdf(result, pdf, max_cases=args.max_cases))[0])
        html_times.append(C.timed(lambda: write_html(result, html))[0])
        print(f"  repeat {r + 1}: pdf {C.fmt_s(pdf_times[-1])}, html {C.fmt_s(html_times[-1])}",
              file=sys.stderr, flush=True)
    pdf_mb = pdf.stat().st_size / 1e6
    html_mb = html.stat().st_size / 1e6
    shown = min(flagged, args.max_cases)
    overlays_mb = sum(f.stat().st_size for f in (out / "report_heatmaps").iterdir()) / 1e6
    rows = [
        ["PDF (write_pdf)", C.fmt_s(C.median(pdf_times)), C.fmt_s(C.median(pdf_times) / shown),
         f"{pdf_mb:.2f} MB", f"{shown} cases"],
        ["  first PDF of the process (cold)", C.fmt_s(pdf_times[0]), C.fmt_s(pdf_times[0] / shown),
         "", "includes WeasyPrint's first-use setup (fonts)"],
        ["HTML (write_html)", C.fmt_s(C.median(html_times)), C.fmt_s(C.median(html_times) / flagged),
         f"{html_mb:.2f} MB", f"+ {overlays_mb:.1f} MB of overlay/original files beside it"],
    ]
    print()
    print(C.table(rows, ["output", "median time", "per case", "size", "note"]))
    print()
    print(f"PDF size = {pdf_mb:.2f} MB  target < {SIZE_TARGET_MB:.0f} MB  "
          f"{C.verdict(pdf_mb < SIZE_TARGET_MB)}")
    print(f"peak RSS of this process: {C.peak_rss_self_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
