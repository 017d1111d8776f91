#!/usr/bin/env python3
"""Reduced precisions against fp32 on this CPU: scan throughput, and decisions with the safety net.

For each precision this CPU runs (fp32; bf16 with native bfloat16; int8 where the
openvino extra is installed): ``python -m triage scan DIR --precision P --full --quiet
--device cpu`` as a whole process (import, model load, decode, forward pass, the fp32
safety net's re-scoring, Grad-CAM of the flagged scans, overlays, CSV, HTML) on a small
and a large folder of the shared set's images; marginal images/s are
(n_large - n_small) / (t_large - t_small), so start-up cancels. The precisions alternate,
same images, in this one run; --repeats N takes medians. Each reduced precision is also
timed without its net (a copy of the model whose card says margin 0): what the net costs.

Decisions: a scan of every image of the shared set in each precision, with and without
the net, its flags compared with fp32's at threshold 0.5: decisions that differ (goal 0
with the net) and the share of images the net scored again in fp32.

The model is the parity model of ``bench/_reference.py`` (VGG19 with seeded He-normal
weights, logit layer rescaled on the first 64 images of the shared set so that its logits
have median 0 and std 2, so probabilities spread over (0, 1) and about half are flagged).
Its card names every fifth image of the shared set as its validation part, and ``triage
precisions`` measures each precision's margin there (int8 calibrated on the other images).
It is a harsh case for the net: its random features tell the images apart by little, and
its logit layer is scaled up to spread them, which scales every rounding error with them.
``--model trained`` instead takes the model ``triage train`` makes of the shared set (random
VGG19 backbone, as no ImageNet weights can be had here; 30 epochs), its margins measured by
``triage precisions`` on its own validation part, and scans at its card's threshold: a
head fitted as triage fits it, whose logits move little under rounding.
--write-reference also writes ``bench/gpu_reference.json`` for ``bench/gpu_check.sh``.

Targets (image size 256): bf16/fp32 >= 1.8 where bf16 is native; int8/fp32 >= 2.5 on a CPU
with AVX-512 VNNI or AMX; 0 decisions different from fp32's with the net, everywhere.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

import _common as C  # before TensorFlow or triage: TF log level, private feature cache
import _reference as R

TARGETS = {"bf16": 1.8, "int8": 2.5}
THRESHOLD = 0.5
SPREAD_IMAGES = 64
REFERENCE_IMAGES = 64
VALIDATION_EVERY = 5  # every fifth image of the shared set is the parity model's validation part
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def parity_model(data: Path, image_size: int, batch_size: int) -> tuple[Path, dict]:
    """A model folder holding the parity model (the card of a throw-away triage model), its card's
    validation part every fifth image of the shared set."""
    import dataclasses

    from triage.model.card import MODEL_FILE, read_card, write_card
    from triage.train.training import TrainConfig, train_model

    folder = C.scratch("model") / "parity"
    train_model(C.labelled_subset(data, 10), folder, TrainConfig(
        epochs=1, image_size=image_size, backbone_weights="random", cache=False, val_split=0.5))
    spread = C.decode_for_model(C.dataset_images(data, SPREAD_IMAGES), image_size)
    logit = R.spread_logit(R.build(image_size), spread, batch_size)
    model = R.build(image_size, logit)
    model.save(folder / MODEL_FILE)
    card = read_card(folder)
    validation = tuple(p.relative_to(data).as_posix() for p in C.dataset_images(data)[::VALIDATION_EVERY])
    write_card(dataclasses.replace(card, split=dataclasses.replace(card.split, validation_files=validation),
                                   threshold=THRESHOLD), folder)
    return folder, {"logit_kernel": logit[0].ravel().tolist(), "logit_bias": logit[1].tolist(),
                    "weights_sha256": R.weights_sha256(model)}


def trained_model(data: Path, image_size: int) -> Path:
    """The model ``triage train`` makes of the shared set, random backbone (see ``--model``)."""
    from triage.train.training import TrainConfig, train_model

    folder = C.scratch("model") / "trained"
    train_model(data, folder, TrainConfig(epochs=30, image_size=image_size, backbone_weights="random",
                                          cache=False))
    return folder


def without_net(folder: Path) -> Path:
    """A copy of the model folder whose card gives every reduced precision margin 0: no safety net."""
    import dataclasses

    from triage.model.card import read_card, write_card

    copy = C.scratch("model") / "no-net"
    shutil.copytree(folder, copy, dirs_exist_ok=True)
    card = read_card(copy)
    write_card(dataclasses.replace(card, fast_paths=tuple(dataclasses.replace(p, margin=0.0)
                                                          for p in card.fast_paths)), copy)
    return copy


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


def scan(folder: Path, model: Path, precision: str, batch_size: int,
         threshold: float = THRESHOLD) -> tuple[float, dict[str, dict]]:
    """Seconds of a whole scan process, and its rows by path."""
    from triage.results.tables import read_csv

    out = C.scratch("report")
    seconds = run_process(["scan", str(folder), "--out", str(out / "report.html"), "--model", str(model),
                           "--precision", precision, "--device", "cpu", "--full",
                           "--threshold", str(threshold), "--batch-size", str(batch_size)])
    rows = {row["path"]: row for row in read_csv(out / "report.csv") if row["status"] == "ok"}
    shutil.rmtree(out, ignore_errors=True)
    return seconds, rows


def runs_here(card: Any) -> list[str]:
    """fp32 and each reduced precision the card measured that this CPU runs."""
    from triage.model.network import cpu_has_bf16

    return ["fp32"] + [p.precision for p in card.fast_paths if p.precision != "bf16" or cpu_has_bf16()]


def configurations(precisions: list[str], model: Path, bare: Path) -> list[tuple[str, str, Path]]:
    """(label, precision, model folder): each precision with its net, each reduced one also without."""
    found = [(p, p, model) for p in precisions]
    return found + [(f"{p} without net", p, bare) for p in precisions if p != "fp32"]


def throughput(configs: list[tuple[str, str, Path]], data: Path, args: argparse.Namespace) -> dict:
    """Median seconds of whole scans per configuration and folder size, alternating."""
    sizes = {"small": args.small, "large": args.large}
    folders = {k: C.copy_images(C.dataset_images(data, n), data, C.scratch(f"scan-{k}"))
               for k, n in sizes.items()}
    times: dict[tuple[str, str], list[float]] = {}
    for repeat in range(args.repeats):
        for size in ("small", "large"):
            for label, precision, model in configs:
                seconds = scan(folders[size], model, precision, args.batch_size, args.threshold)[0]
                times.setdefault((label, size), []).append(seconds)
                print(f"  repeat {repeat + 1}: {size} ({sizes[size]}) {label} {C.fmt_s(seconds)}",
                      file=sys.stderr, flush=True)
    return {key: C.median(values) for key, values in times.items()}


def decisions(configs: list[tuple[str, str, Path]], data: Path, batch_size: int,
              threshold: float) -> dict[str, dict]:
    """Every image of the shared set in each configuration: differences from fp32's flags, re-scored."""
    rows = {label: scan(data, model, precision, batch_size, threshold)[1]
            for label, precision, model in configs}
    exact = rows["fp32"]
    found = {}
    for label, precision, _ in configs:
        mine = rows[label]
        differ = sorted(path for path, row in mine.items() if row["flagged"] != exact[path]["flagged"])
        rescored = sum(row["precision"] == "fp32" for row in mine.values()) if precision != "fp32" else 0
        dp = [abs(float(row["probability"]) - float(exact[path]["probability"]))
              for path, row in mine.items()]
        found[label] = {"n": len(mine), "differ": differ, "rescored": rescored, "max_dp": max(dp)}
        print(f"  decisions {label}: {len(differ)} differ, {rescored} re-scored", file=sys.stderr, flush=True)
    return found


def forward_rates(data: Path, image_size: int, batch_size: int, repeats: int) -> dict[str, float]:
    """Images/s of the forward pass alone (no decode, no Grad-CAM), in this process, of the parity
    model in each precision this CPU runs, on one batch of the shared set's images; the precisions
    alternate, median of ``repeats``. The int8 network is quantised on 32 images: its speed does
    not depend on how well it is calibrated."""
    from triage.engine.forward import ForwardPass
    from triage.model.network import cpu_has_bf16, with_precision
    from triage.model.openvino import openvino_available, quantise, to_openvino

    model = R.build(image_size, R.spread_logit(R.build(image_size), C.decode_for_model(
        C.dataset_images(data, SPREAD_IMAGES), image_size), batch_size))
    batch = C.decode_for_model(C.dataset_images(data, batch_size), image_size)
    runs: dict[str, Any] = {"fp32": ForwardPass(model).run}
    if cpu_has_bf16():
        runs["bf16"] = ForwardPass(with_precision(model, "bf16")).run
    if openvino_available():
        import openvino as ov

        calibration = C.decode_for_model(C.dataset_images(data, 32), image_size)
        quantised = quantise(to_openvino(model, "block5_conv4"), [calibration[i:i + batch_size]
                                                                  for i in range(0, 32, batch_size)])
        compiled = ov.Core().compile_model(quantised, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        runs["int8"] = lambda x: compiled(x)
    for run in runs.values():
        run(batch)  # tracing, compiling
    seconds: dict[str, list[float]] = {p: [] for p in runs}
    for _ in range(repeats):
        for precision, run in runs.items():
            seconds[precision].append(C.timed(lambda run=run: run(batch))[0])
    return {p: batch_size / C.median(values) for p, values in seconds.items()}


def cpu_line() -> str:
    from triage.model.network import cpu_flags, cpu_model

    flags = cpu_flags()
    said = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in CPU_FLAGS)
    return f"# CPU {cpu_model()}; flags: {said}"


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    C.add_data(p)
    p.add_argument("--image-size", type=int, default=256, help="model input size")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    p.add_argument("--small", type=int, default=16, help="images of the small folder")
    p.add_argument("--large", type=int, default=64, help="images of the large folder")
    p.add_argument("--write-reference", nargs="?", const=R.REFERENCE_FILE, type=Path, default=None,
                   metavar="FILE", help=f"also write the GPU check's reference [{R.REFERENCE_FILE.name}]")
    p.add_argument("--skip-throughput", action="store_true", help="decisions only")
    p.add_argument("--forward-only", action="store_true",
                   help="only the forward pass's images/s per precision, in this process (quick)")
    p.add_argument("--model", choices=("parity", "trained"), default="parity",
                   help="the parity model at threshold 0.5, or triage train's model at its own threshold")
    C.add_repeats(p, default=1)
    args = p.parse_args()
    data = C.check_data(args.data)
    C.quiet_tensorflow()
    from triage.model.card import read_card

    print(C.environment_line(image_size=args.image_size, batch_size=args.batch_size, small=args.small,
                             large=args.large, repeats=args.repeats))
    print(cpu_line())
    if args.forward_only:
        rates = forward_rates(data, args.image_size, args.batch_size, args.repeats)
        print(C.table([[p, f"{rate:.2f}", f"{rate / rates['fp32']:.2f}x"] for p, rate in rates.items()],
                      ["forward pass alone", "images/s", "vs fp32"]))
        return 0
    print(f"# building and measuring the {args.model} model ...", file=sys.stderr, flush=True)
    if args.model == "parity":
        folder, facts = parity_model(data, args.image_size, args.batch_size)
        if args.write_reference:
            write_reference(folder, facts, args.image_size, args.batch_size, args.write_reference)
    else:
        folder = trained_model(data, args.image_size)
    run_process(["precisions", str(data), "--model", str(folder), "--device", "cpu",
                 "--batch-size", str(args.batch_size)])
    card = read_card(folder)
    args.threshold = card.threshold if args.model == "trained" else THRESHOLD
    said = {name: card.metric(name) for name in ("roc_auc", "sensitivity", "specificity")}
    print(f"# {args.model} model, threshold {args.threshold:.4f}; validation (value, 95% CI, n): {said}")
    configs = configurations(runs_here(card), folder, without_net(folder))
    found = decisions(configs, data, args.batch_size, args.threshold)
    times = throughput(configs, data, args) if not args.skip_throughput else {}
    report(card, configs, found, times, args)
    shutil.rmtree(folder, ignore_errors=True)
    return 0


def report(card: Any, configs: list, found: dict, times: dict, args: argparse.Namespace) -> None:
    print()
    print(C.table([[p.precision, str(p.n), f"{p.median_dp:.4f}", f"{p.max_dp:.4f}", f"{p.max_dz:.3f}",
                    str(p.flips), f"{p.margin:.3f}"] for p in card.fast_paths],
                  ["measured", "n", "median |dp|", "max |dp|", "max |dz|", "flips", "margin (logit)"]))
    n = args.large - args.small
    rows, verdicts = [], []
    for label, precision, _ in configs:
        f = found[label]
        marginal = ""
        ratio = None
        if times:
            seconds = times[label, "large"] - times[label, "small"]
            exact = times["fp32", "large"] - times["fp32", "small"]
            ratio = exact / seconds
            marginal = f"{n / seconds:.2f} ({ratio:.2f}x)"
        target = TARGETS.get(precision) if label == precision else None
        if target and ratio is not None:
            verdicts.append(f"{precision}/fp32 {ratio:.2f} (>= {target}) {C.verdict(ratio >= target)}")
        if label == precision and precision != "fp32":
            verdicts.append(f"{precision}: {len(f['differ'])} decisions differ from fp32 "
                            f"(0) {C.verdict(not f['differ'])}")
        rows.append([label, marginal, f"{len(f['differ'])} of {f['n']}",
                     f"{f['rescored']} ({f['rescored'] / f['n']:.0%})", f"{f['max_dp']:.4f}"])
    print()
    print(C.table(rows, ["scan", f"marginal img/s ({args.large} - {args.small})", "decisions != fp32",
                         "re-scored in fp32", "max |dp| vs fp32"]))
    note = "" if args.image_size == 256 else f" (targets set at 256 px; this ran at {args.image_size})"
    print("\n" + "; ".join(verdicts) + note)


if __name__ == "__main__":
    sys.exit(main())
