#!/usr/bin/env python3
"""bf16 over fp32 on this CPU: scan and feature-extraction throughput, and parity on the shared set.

Throughput: ``python -m triage scan DIR --precision P --full --quiet --device cpu`` as a
whole process (import, model load, decode, forward pass, Grad-CAM of the flagged scans,
overlays, CSV, HTML) on a small and a large folder of the shared set's images; and
``python -m triage train DIR --precision P --no-cache --epochs 1`` the same way (its time
is the frozen backbone's feature extraction, the head's one epoch is negligible).
Whole-process images/s are on the large folder; marginal images/s are
(n_large - n_small) / (t_large - t_small), so start-up cancels. fp32 and bf16 alternate,
same images, in this one run; --repeats N takes medians.

Parity: the parity model of ``bench/_reference.py`` (VGG19 with seeded He-normal weights,
logit layer rescaled on the first 64 images of the shared set so that its logits have
median 0 and std 2, so probabilities spread over (0, 1)), every image of the shared set
decoded as triage decodes it, batches of --batch-size padded as a scan pads them:
max and median |p_bf16 - p_fp32|, decisions that flip at threshold 0.5, and the Pearson
correlation of each image's Grad-CAM maps. The scan throughput uses this model too (about
half the scans flagged, so Grad-CAM runs on them). --write-reference also writes
``bench/gpu_reference.json`` for ``bench/gpu_check.sh``.

Target: bf16/fp32 scan throughput >= 1.8 at image size 256 (whole process and marginal).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

import _common as C  # before TensorFlow or triage: TF log level, private feature cache
import _reference as R

TARGET = 1.8
THRESHOLD = 0.5
SPREAD_IMAGES = 64
REFERENCE_IMAGES = 64


def parity_model(data: Path, image_size: int, batch_size: int) -> tuple[Path, dict]:
    """A model folder holding the parity model (the card of a throw-away triage model)."""
    from triage.model.card import MODEL_FILE
    from triage.train.training import TrainConfig, train_model

    folder = C.scratch("model") / "parity"
    train_model(C.labelled_subset(data, 10), folder, TrainConfig(
        epochs=1, image_size=image_size, backbone_weights="random", cache=False, precision="bf16",
        val_split=0.5))
    spread = C.decode_for_model(C.dataset_images(data, SPREAD_IMAGES), image_size)
    logit = R.spread_logit(R.build(image_size), spread, batch_size)
    model = R.build(image_size, logit)
    model.save(folder / MODEL_FILE)
    return folder, {"logit_kernel": logit[0].ravel().tolist(), "logit_bias": logit[1].tolist(),
                    "weights_sha256": R.weights_sha256(model)}


def score(loaded: Any, images: Any, batch_size: int) -> tuple[Any, Any]:
    """Probabilities and Grad-CAM maps of every image, batches padded as a scan pads them."""
    import numpy as np

    probabilities, maps = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        n = len(batch)
        if n < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - n, *batch.shape[1:]), batch.dtype)])
        activations, p = loaded.predict(batch)
        probabilities.append(p[:n])
        maps.append(loaded.gradcam.heatmaps(activations)[:n])
    return np.concatenate(probabilities), np.concatenate(maps)


def parity(folder: Path, paths: list[Path], image_size: int, batch_size: int) -> dict:
    import numpy as np

    from triage.engine.inference import load_for_inference

    images = C.decode_for_model(paths, image_size)
    result = {}
    for precision in ("fp32", "bf16"):
        loaded = load_for_inference(folder, "cpu", precision=precision)
        start = C.now()
        p, maps = score(loaded, images, batch_size)
        seconds = C.now() - start
        result[precision] = (p, maps, seconds)
        print(f"  parity {precision}: {len(paths)} images in {C.fmt_s(seconds)}", file=sys.stderr, flush=True)
    (p32, m32, _), (p16, m16, _) = result["fp32"], result["bf16"]
    difference = np.abs(p16 - p32)
    flipped = [paths[i].name for i in np.flatnonzero((p32 >= THRESHOLD) != (p16 >= THRESHOLD))]
    both = [i for i in range(len(paths)) if m32[i].std() > 0 and m16[i].std() > 0]
    correlation = np.array([np.corrcoef(m32[i].ravel(), m16[i].ravel())[0, 1] for i in both])
    return {"n": len(paths), "p32": p32, "max": difference.max(), "median": np.median(difference),
            "flipped": flipped, "near": int((np.abs(p32 - THRESHOLD) < difference.max()).sum()),
            "cam_n": len(both), "cam_median": np.median(correlation), "cam_min": correlation.min(),
            "cam_p05": np.percentile(correlation, 5)}


def write_reference(folder: Path, facts: dict, image_size: int, batch_size: int, path: Path) -> None:
    """fp32 (and bf16) CPU probabilities of the generated reference images, for gpu_check.sh."""
    import keras
    import tensorflow as tf

    from triage.engine.inference import load_for_inference

    images = R.images(REFERENCE_IMAGES, image_size)
    probabilities = {}
    for precision in ("fp32", "bf16"):
        loaded = load_for_inference(folder, "cpu", precision=precision)
        probabilities[precision] = [round(float(p), 7) for p in score(loaded, images, batch_size)[0]]
    R.write_reference(path, {
        "about": "bench/gpu_check.sh parity reference, written by bench/precision.py --write-reference",
        "seed": R.SEED, "image_size": image_size, "n_images": REFERENCE_IMAGES, "batch_size": batch_size,
        "threshold": THRESHOLD, **facts,
        "made_with": {"tensorflow": tf.__version__, "keras": keras.__version__, "device": "cpu"},
        "probabilities_fp32_cpu": probabilities["fp32"], "probabilities_bf16_cpu": probabilities["bf16"],
    })
    print(f"# wrote {path}", file=sys.stderr)


def run_process(args: list[str]) -> float:
    run = C.run_measured([sys.executable, "-m", "triage", *args, "--quiet"])
    if run.returncode not in (0, 1):
        sys.exit(f"triage {' '.join(args)} exited {run.returncode}:\n{run.output[-2000:]}")
    return run.seconds


def throughput(folder: Path, data: Path, args: argparse.Namespace) -> dict:
    """Seconds of the whole scan and train processes, per precision and folder size (medians)."""
    sizes = {"small": args.small, "large": args.large}
    scan_in = {k: C.copy_images(C.dataset_images(data, n), data, C.scratch(f"scan-{k}"))
               for k, n in sizes.items()}
    train_in = {k: C.labelled_subset(data, n // 2) for k, n in sizes.items()}
    times: dict[tuple[str, str, str], list[float]] = {}
    for repeat in range(args.repeats):
        for size in ("small", "large"):
            for precision in ("fp32", "bf16"):
                out = C.scratch("report")
                scan = ["scan", str(scan_in[size]), "--out", str(out / "report.html"), "--model", str(folder),
                        "--precision", precision, "--device", "cpu", "--full", "--threshold", str(THRESHOLD),
                        "--batch-size", str(args.batch_size)]
                train = ["train", str(train_in[size]), "--out", str(C.scratch("model") / "m"),
                         "--backbone-weights", "random", "--image-size", str(args.image_size),
                         "--epochs", "1", "--no-cache", "--val-split", "0.5", "--precision", precision]
                for kind, command in (("scan", scan), ("train", train)):
                    seconds = run_process(command)
                    times.setdefault((kind, size, precision), []).append(seconds)
                    print(f"  repeat {repeat + 1}: {kind} {size} ({sizes[size]}) {precision} "
                          f"{C.fmt_s(seconds)}", file=sys.stderr, flush=True)
    return {key: C.median(values) for key, values in times.items()}


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    C.add_data(p)
    p.add_argument("--image-size", type=int, default=256, help="model input size")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    p.add_argument("--small", type=int, default=16, help="images of the small folder")
    p.add_argument("--large", type=int, default=64, help="images of the large folder")
    p.add_argument("--parity-images", type=int, default=None, help="images for parity [default: all]")
    p.add_argument("--write-reference", nargs="?", const=R.REFERENCE_FILE, type=Path, default=None,
                   metavar="FILE", help=f"also write the GPU check's reference [{R.REFERENCE_FILE.name}]")
    p.add_argument("--skip-throughput", action="store_true", help="parity only")
    C.add_repeats(p, default=1)
    args = p.parse_args()
    data = C.check_data(args.data)
    C.quiet_tensorflow()
    from triage.errors import UsageError
    from triage.model.network import choose_precision

    try:
        choose_precision("bf16", on_gpu=False)
    except UsageError as exc:
        sys.exit(f"bench/precision.py needs a CPU with native bfloat16: {exc}")
    paths = C.dataset_images(data, args.parity_images)
    print(C.environment_line(image_size=args.image_size, batch_size=args.batch_size, small=args.small,
                             large=args.large, parity_images=len(paths), repeats=args.repeats))
    print("# building the parity model ...", file=sys.stderr, flush=True)
    folder, facts = parity_model(data, args.image_size, args.batch_size)
    if args.write_reference:
        write_reference(folder, facts, args.image_size, args.batch_size, args.write_reference)
    found = parity(folder, paths, args.image_size, args.batch_size)
    rows, ratios = [], []
    if not args.skip_throughput:
        t = throughput(folder, data, args)
        for kind in ("scan", "train"):
            for label, n, f32, b16 in (
                    (f"whole process ({args.large} images)", args.large,
                     t[kind, "large", "fp32"], t[kind, "large", "bf16"]),
                    (f"marginal ({args.large} - {args.small} images)", args.large - args.small,
                     t[kind, "large", "fp32"] - t[kind, "small", "fp32"],
                     t[kind, "large", "bf16"] - t[kind, "small", "bf16"])):
                ratio = f32 / b16
                target = kind == "scan"
                if target:
                    ratios.append(ratio)
                rows.append([f"{kind}: {label}", C.fmt_s(f32), C.fmt_s(b16), f"{n / f32:.2f}",
                             f"{n / b16:.2f}", f"{ratio:.2f}",
                             C.verdict(ratio >= TARGET) if target else "(reported)"])
        print()
        print(C.table(rows, ["measure", "fp32", "bf16", "fp32 img/s", "bf16 img/s", "bf16/fp32",
                             f">= {TARGET}"]))
    p32 = found["p32"]
    print()
    print(f"parity on {found['n']} images of {args.data.name}, threshold {THRESHOLD}: fp32 probabilities "
          f"{p32.min():.3f}..{p32.max():.3f} (median {float(C.median(p32)):.3f}), "
          f"{int((p32 >= THRESHOLD).sum())} flagged")
    print(C.table([
        ["max |p_bf16 - p_fp32|", f"{found['max']:.4f}"],
        ["median |p_bf16 - p_fp32|", f"{found['median']:.5f}"],
        ["decisions flipped at the threshold", f"{len(found['flipped'])} of {found['n']}"
         + (f" ({', '.join(found['flipped'])})" if found["flipped"] else "")],
        ["fp32 probabilities within max |dp| of the threshold", str(found["near"])],
        [f"Grad-CAM map correlation, {found['cam_n']} images: median", f"{found['cam_median']:.4f}"],
        ["  5th percentile / min", f"{found['cam_p05']:.4f} / {found['cam_min']:.4f}"],
    ], ["parity", "bf16 vs fp32"]))
    if ratios:
        note = "" if args.image_size == 256 else f" (target set at 256 px; this ran at {args.image_size})"
        print(f"\nscan bf16/fp32 = {', '.join(f'{r:.2f}' for r in ratios)} (whole process, marginal)  "
              f"target >= {TARGET}  {C.verdict(min(ratios) >= TARGET)}{note}")
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
