#!/usr/bin/env python3
"""Ray engine scaling: marginal images/s of `triage scan --engine ray`, 1 and 2 workers, over local.

Each scan is a whole process, ``python -m triage scan DIR --engine E [--workers W] --full
--explain none --device cpu --quiet`` (HTML report, CSVs), on a small and a large folder of
the shared set's images (copied into a temporary folder), with one throw-away model.
Marginal images/s = (n_large - n_small) / (t_large - t_small), so start-up cancels; the fixed
cost of each engine is what is left at zero images, t_small - n_small / marginal rate, and the
ray engine's start-up (ray start, actor start: TensorFlow imported and the model loaded in
each actor) is its fixed cost over the local engine's. A bare ``ray.init`` + ``ray.shutdown``
is timed too, to tell ray start from actor start. Each engine scans the small and the large folder
back to back (its marginal rate is measured over adjacent runs, so a change of the machine's load
weighs less), engines in turn, same images, one run; --repeats N takes medians of the rates and
costs, the engines' order reversed every other repeat, and the ratio to local is the median of each
repeat's ratio. The large folder's CSVs of every engine are compared row by row.

Same total threads: TensorFlow's intra-op threads, the ones the forward pass runs on
(``TF_NUM_INTRAOP_THREADS``; ``OMP_NUM_THREADS`` does not change them, and Ray sets it to 1 in
its workers anyway), number --threads (default: the CPUs) in every run: the local process gets
all of them, each of W actors --threads / W. Decoding (threads of the local process, CPU tasks
of Ray) and TensorFlow's inter-op threads are left at their defaults in both.

Then the driver's own costs, which more workers do not spread: discovery and planning per file
(``discover`` + ``plan_scan``, file system cache warm) on --driver-files copies of the shared set's
images, and on as many DICOM files (series of --series-slices slices of ``volume_speed.py``, whose
headers are read and grouped); and writing the overlay and display copy of one flagged image
(``HeatmapWriter``). The report's cost is ``bench/report_speed.py``'s. And a CPU task's work per
image (``triage.scan.jobs.SliceDecoder`` without display copies, as a Ray decode task runs it: read,
hash, decode, resize), with the bytes it sends on: the model input to an actor, the file's facts to the
driver (and the display copy it sent before, with every image); and the pickled size of a job of a
300-slice DICOM series (its slice and the series' window) against a job that carried its whole case.

Target: ray/local marginal images/s >= 0.85 for each worker count, same total threads.
"""

from __future__ import annotations

import argparse
import csv
import os
import pickle
import shutil
import sys
from pathlib import Path

import _common as C  # before TensorFlow or triage: TF log level, private feature cache
from volume_speed import write_series

TARGET = 0.85
RAY_START = ("import ray, sys; ray.init(num_cpus=int(sys.argv[1]), include_dashboard=False, "
             "log_to_driver=False); ray.shutdown()")


def scan_seconds(folder: Path, model: Path, engine: str, workers: int, threads: int, out: Path,
                 args: argparse.Namespace) -> float:
    command = [sys.executable, "-m", "triage", "scan", str(folder), "--out", str(out / "report.html"),
               "--model", str(model), "--full", "--explain", args.explain, "--device", "cpu",
               "--batch-size", str(args.batch_size), "--engine", engine, "--quiet"]
    if engine == "ray":
        command += ["--workers", str(workers)]
    env = {**os.environ, "TF_NUM_INTRAOP_THREADS": str(threads)}
    run = C.run_measured(command, env=env)
    if run.returncode != 0:
        sys.exit(f"{' '.join(command[2:])} exited {run.returncode}:\n{run.output[-2000:]}")
    return run.seconds


def csv_rows(path: Path) -> list[tuple[str, str, float | None]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [(row["path"], row["status"], float(row["probability"]) if row["probability"] else None)
                for row in csv.DictReader(handle)]


def compare(local: Path, ray: Path) -> float:
    """Max |p_ray - p_local| over the rows; exits when the rows differ otherwise."""
    a, b = csv_rows(local / "report.csv"), csv_rows(ray / "report.csv")
    if [(r[0], r[1], r[2] is None) for r in a] != [(r[0], r[1], r[2] is None) for r in b]:
        sys.exit(f"the CSVs of {local} and {ray} differ in their rows")
    return max((abs(x[2] - y[2]) for x, y in zip(a, b) if x[2] is not None), default=0.0)


def plan_seconds(folder: Path, files: int, repeats: int) -> float:
    """Seconds per file of ``discover`` + ``plan_scan`` on ``folder`` (median)."""
    from triage.inputs.discovery import discover
    from triage.scan.plan import plan_scan

    report = C.scratch("driver-report")
    return C.median(C.timed(lambda: plan_scan(list(discover(folder)), {}, report))[0]
                    for _ in range(repeats)) / files


def decode_costs(paths: list[Path], image_size: int, repeats: int) -> tuple[float, float, float, float]:
    """Seconds per image of a decode task's work; bytes per image to an actor and to the driver, and
    what the driver got before (a display copy with every image's facts)."""
    from triage.engine.predictor import decode_image
    from triage.inputs.cases import image_case
    from triage.inputs.discovery import discover
    from triage.scan.jobs import SliceDecoder, jobs_of

    found = {item.path: item for item in discover(paths[0].parent.parent)}
    jobs = [job for path in paths for job in jobs_of(image_case(found[path]))]
    decode = SliceDecoder(image_size).without_display()  # what a Ray decode task runs
    seconds = C.median(C.timed(lambda: [decode(job) for job in jobs])[0] for _ in range(repeats)) / len(paths)
    decoded = [decode(job) for job in jobs]
    to_actor = C.mean(d.pixels.nbytes for d in decoded)
    to_driver = C.mean(len(pickle.dumps(d.extra)) for d in decoded)
    before = C.mean(len(pickle.dumps(decode_image(p, image_size).extra)) for p in paths)
    return seconds, to_actor, to_driver, before


def job_bytes(slices: int) -> tuple[float, float]:
    """Pickled bytes of one job of a ``slices``-slice DICOM series: now (its slice and window) and as
    a job carrying its whole case was."""
    from triage.inputs.cases import build_cases
    from triage.inputs.discovery import discover
    from triage.scan.jobs import jobs_of

    folder = write_series(C.scratch("job-series"), 1, slices, 16)
    (case,) = build_cases(list(discover(folder)))[0]
    jobs = jobs_of(case, (0.0, 1.0))
    return (C.mean(len(pickle.dumps(job)) for job in jobs),
            C.mean(len(pickle.dumps((case, s))) for s in case.slices))


def driver_costs(data: Path, args: argparse.Namespace) -> tuple[float, float, float, int]:
    """Seconds per file of discovery and planning (images, DICOM); per flagged image of its overlay."""
    import numpy as np

    from triage.engine.heatmaps import HeatmapWriter
    from triage.inputs.decode import read_image
    from triage.model.preprocess import display_copy

    paths = C.dataset_images(data)
    folder = C.scratch("driver")
    for i in range(args.driver_files):
        source = paths[i % len(paths)]
        shutil.copyfile(source, folder / f"{i:06d}{source.suffix.lower()}")
    plan = plan_seconds(folder, args.driver_files, args.repeats + 2)
    series = max(1, args.driver_files // args.series_slices)
    dicom = write_series(C.scratch("driver-dicom"), series, args.series_slices, 64)
    plan_dicom = plan_seconds(dicom, series * args.series_slices, args.repeats + 2)

    images = [display_copy(read_image(p).pixels) for p in paths[:args.overlays]]
    cam = np.random.default_rng(0).random((args.image_size // 16,) * 2).astype(np.float32)

    def write() -> None:
        folder = C.scratch("overlays")
        writer = HeatmapWriter(folder, folder, "bench")
        for i, pixels in enumerate(images):
            writer.submit(f"{i:020d}", pixels, cam)
        writer.close()

    overlay = C.median(C.timed(write)[0] for _ in range(args.repeats + 2))
    return plan, plan_dicom, overlay / len(images), len(images)


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    C.add_data(p)
    p.add_argument("--image-size", type=int, default=256, help="model input size")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    p.add_argument("--small", type=int, default=32, help="images of the small folder")
    p.add_argument("--large", type=int, default=160, help="images of the large folder")
    p.add_argument("--workers", default="1,2", help="ray worker counts, comma-separated")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="TensorFlow intra-op threads in all: the local process's, split among the actors")
    p.add_argument("--explain", default="none", choices=["none", "flagged"], help="scan --explain")
    p.add_argument("--driver-files", type=int, default=2000, help="files of the discovery timing")
    p.add_argument("--series-slices", type=int, default=100, help="slices per DICOM series there")
    p.add_argument("--overlays", type=int, default=50, help="flagged images of the overlay timing")
    p.add_argument("--flagged-share", type=float, default=0.1,
                   help="share of flagged images in the driver's ceiling")
    args, data = C.parse_model_bench(p, repeats=1)
    workers = [int(w) for w in args.workers.split(",")]
    for w in workers:
        if args.threads % w:
            sys.exit(f"--threads {args.threads} does not split evenly among {w} workers")
    engines = [("local", 1)] + [("ray", w) for w in workers]
    sizes = {"small": args.small, "large": args.large}
    print(C.environment_line(image_size=args.image_size, batch_size=args.batch_size, small=args.small,
                             large=args.large, threads=args.threads, explain=args.explain,
                             backbone=args.backbone_weights, repeats=args.repeats))
    print("# training a throw-away model (1 epoch) ...", file=sys.stderr, flush=True)
    model = C.train_small_model(data, args.image_size, args.backbone_weights, per_class=args.train_per_class)
    folders = {k: C.copy_images(C.dataset_images(data, n), data, C.scratch(f"scan-{k}"))
               for k, n in sizes.items()}

    times: dict[tuple[str, int, str], list[float]] = {}
    outs: dict[tuple[str, int], Path] = {}
    for repeat in range(args.repeats):
        for engine, w in engines if repeat % 2 == 0 else engines[::-1]:
            for size in sizes:  # back to back, so a change of the machine's load weighs less
                out = C.scratch("report")
                seconds = scan_seconds(folders[size], model, engine, w, args.threads // w, out, args)
                times.setdefault((engine, w, size), []).append(seconds)
                if size == "large":
                    outs[engine, w] = out
                print(f"  repeat {repeat + 1}: {engine} x{w} {size} ({sizes[size]}) {C.fmt_s(seconds)}, "
                      f"load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    cpus = str(max(args.threads, max(workers) + 1))  # what the scan's local Ray gets
    ray_start = C.median(C.run_measured([sys.executable, "-c", RAY_START, cpus]).seconds
                         for _ in range(args.repeats))

    n = args.large - args.small
    rows, ratios, fixed, rates = [], {}, {}, {}
    for engine, w in engines:
        pairs = list(zip(times[engine, w, "small"], times[engine, w, "large"]))
        small, large = C.median(t for t, _ in pairs), C.median(t for _, t in pairs)
        rates[engine, w] = [n / (b - a) for a, b in pairs]
        rate = C.median(rates[engine, w])
        fixed[engine, w] = C.median(a - args.small * (b - a) / n for a, b in pairs)
        ratios[engine, w] = C.median(r / base for r, base in zip(rates[engine, w], rates["local", 1]))
        label = "local" if engine == "local" else f"ray, {w} worker{'s' * (w > 1)}"
        rows.append([label, f"{w} x {args.threads // w}", C.fmt_s(small), C.fmt_s(large), f"{rate:.2f}",
                     f"{ratios[engine, w]:.2f}", C.fmt_s(fixed[engine, w]),
                     "" if engine == "local" else C.fmt_s(fixed[engine, w] - fixed["local", 1])])
    print()
    print(C.table(rows, ["engine", "threads", f"t({args.small})", f"t({args.large})", "marginal img/s",
                         "vs local", "fixed cost", "start-up over local"]))
    print()
    for engine, w in engines[1:]:
        print(f"outputs ray x{w} vs local ({args.large} images): same rows, max |dp| = "
              f"{compare(outs['local', 1], outs[engine, w]):.1e}")
    print(f"ray start alone (import ray, ray.init, ray.shutdown in a bare process): {C.fmt_s(ray_start)}")
    for engine, w in engines[1:]:
        each = ", ".join(f"{r / base:.2f}" for r, base in zip(rates[engine, w], rates["local", 1]))
        print(f"ratio ray x{w}/local marginal images/s = {ratios[engine, w]:.2f} (per repeat {each})  "
              f"target >= {TARGET}  {C.verdict(ratios[engine, w] >= TARGET)}")

    print("# driver costs ...", file=sys.stderr, flush=True)
    plan, plan_dicom, overlay, n_overlays = driver_costs(data, args)
    decode, to_actor, to_driver, before = decode_costs(C.dataset_images(data, args.large), args.image_size,
                                                       args.repeats + 2)
    job_now, job_before = job_bytes(300)
    job_short, _ = job_bytes(30)
    per_image = plan + args.flagged_share * overlay
    print()
    print(C.table([
        [f"decode task: read, decode, resize ({args.large} images)", C.fmt_s(decode),
         f"{1 / decode:,.0f} images/s", f"{to_actor / 1e6:.2f} MB to an actor, {to_driver / 1e3:.2f} kB "
         f"to the driver (before: {before / 1e6:.2f} MB, a display copy with every image)"],
        ["a job of a 300-slice series, pickled", "", "", f"{job_now:,.0f} B (30 slices: {job_short:,.0f} B; "
         f"before: {job_before / 1e6:.2f} MB, its whole case)"],
        [f"discovery + planning ({args.driver_files} images)", C.fmt_s(plan), f"{1 / plan:,.0f} files/s"],
        [f"discovery + planning (DICOM, series of {args.series_slices})", C.fmt_s(plan_dicom),
         f"{1 / plan_dicom:,.0f} files/s"],
        [f"overlay + display copy ({n_overlays} flagged images)", C.fmt_s(overlay),
         f"{1 / overlay:,.0f} images/s"],
        [f"discovery + overlays, {args.flagged_share:.0%} flagged (per image)", C.fmt_s(per_image),
         f"{1 / per_image:,.0f} images/s"],
    ], ["per item (one core)", "time", "rate", "bytes"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
