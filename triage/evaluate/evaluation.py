"""Metrics of a saved model on any labelled folder.

The evaluation folder is written whole or not at all: its files go to a
temporary folder beside it, ``run.json`` (the manifest) last, and the folder is
renamed into place. An earlier evaluation is replaced only when asked to.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from triage import __version__, settings
from triage.engine.inference import InferenceModel, load_for_inference
from triage.engine.predictor import Decoded, Stop, decode_image, predict
from triage.engine.safety import fast_run, rescored
from triage.errors import DataError, Stopped, UsageError
from triage.hooks import RunHooks
from triage.labelled.calibration import before_and_after
from triage.labelled.copies import image_fingerprint, near_matches
from triage.labelled.dataset import LabelledFile, LabelledSet, index_labelled
from triage.labelled.metrics import binary_metrics, wilson
from triage.model.card import TrainingImages, check_threshold, read_card
from triage.model.loading import check_run_writes, find_model
from triage.model.summary import ModelSummary
from triage.outputs.atomic import atomic_write_text
from triage.results.run_record import RUN_FILE, run_record
from triage.versions import library_versions

OUTPUTS = {"metrics": "metrics.json", "predictions": "predictions.csv", "roc_curve": "roc_curve.png",
           "confusion_matrix": "confusion_matrix.png", "reliability_diagram": "reliability_diagram.png"}
EVALUATION_FILES = frozenset([*OUTPUTS.values(), RUN_FILE])


@dataclass(frozen=True)
class Evaluation:
    """What ``triage evaluate`` measured and where it wrote it (``metrics.json`` holds the same)."""

    out_dir: Path
    model: ModelSummary  # with the device and precision the forward pass ran in
    threshold: float
    metrics: dict[str, Any]  # of :func:`triage.labelled.metrics.binary_metrics`, with n and intervals
    n_images: int
    skipped: tuple[dict[str, str], ...]  # path, status and reason of each file that could not be read
    # Path, status and reason of each file not read at all: volumes and DICOM files without an image
    # extension (``skipped``: `triage scan` reads them), and files that are no images (``unsupported``).
    not_read: tuple[dict[str, str], ...]
    copies_of_training: tuple[str, ...]  # files that are copies of images the model was trained on
    metrics_without_copies: dict[str, Any] | None  # the metrics on the other files, when there are copies
    calibration: dict[str, Any]  # Brier and ECE of the raw output and of the probability, with n and CIs
    unfamiliar: dict[str, Any] | None = None  # share called unfamiliar (false alarms on labelled MRI)
    rescored: int = 0  # files the fp32 safety net decided (a reduced precision)

    @property
    def precision(self) -> str:
        return self.model.precision


@dataclass(frozen=True)
class Scores:
    """Probabilities of the files that could be read, and the reasons for the rest."""

    files: tuple[LabelledFile, ...]
    labels: np.ndarray
    probabilities: np.ndarray  # calibrated by the model's map: the scale of its threshold
    raw_probabilities: np.ndarray  # the network's output
    skipped: tuple[dict[str, str], ...]
    copy_of_training: np.ndarray  # bool per file: an exact or near copy of an image the model trained on
    distances: np.ndarray | None = None  # ood_distance per file; None without a familiarity check
    precisions: tuple[str, ...] = ()  # per file, the precision of the pass that decided it


def evaluate_model(data_dir: Path, out_dir: Path | None = None, *, model: str | Path | None = None,
                   threshold: float | None = None, positive: str = settings.POSITIVE_CLASS,
                   batch_size: int = settings.SCAN_BATCH_SIZE, device: str = settings.DEVICES[0],
                   precision: str = settings.PRECISIONS[0], force: bool = False,
                   hooks: RunHooks = RunHooks()) -> Evaluation:
    """Score a labelled folder with a saved model and write metrics, ROC and confusion plots.

    Args:
        data_dir: One sub-folder per class (``positive`` = tumour).
        out_dir: Where ``metrics.json``, ``predictions.csv``, ``roc_curve.png``,
            ``confusion_matrix.png`` and ``run.json`` go; default ``./evaluation-<model id>``.
        model: Model folder; default ``$TRIAGE_MODEL`` or the newest under ``models/``.
        threshold: Override of the model card's threshold.
        positive: Name of the tumour class folder.
        batch_size: Images per forward pass (as in a scan, so the probabilities are the scan's).
        device: ``auto``, ``cpu`` or ``gpu``.
        precision: ``auto``, ``fp32``, ``bf16``, ``fp16`` or ``int8`` (see ``choose_precision``).
        force: Replace an earlier evaluation in ``out_dir``.
        hooks: ``should_stop`` (polled between batches; True stops with nothing written),
            ``on_start`` and ``advance`` (images to score, images scored).

    Returns:
        What was measured, and where it went.

    Raises:
        DataError, ModelError, UsageError: see :mod:`triage.errors`.
        Stopped: a stop was asked for; nothing was written.
    """
    check_threshold(threshold)
    started, clock = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    labelled = index_labelled(Path(data_dir), positive, seed=None)
    folder = find_model(model)
    out_dir = evaluation_folder(out_dir, folder)
    # Before the model is loaded: a refusal should not wait for it.
    check_run_writes([("the evaluation folder", "out", out_dir)], ("the data folder", Path(data_dir)), folder)
    _check_out_dir(out_dir, force)
    loaded = load_for_inference(folder, device, precision=precision)
    threshold = loaded.threshold(threshold)
    hooks.on_start(len(labelled.files))
    scores = score_labelled(labelled, loaded, batch_size, Stop(hooks.should_stop), hooks.advance, threshold)
    evaluation = _evaluation(out_dir, loaded, scores, threshold, labelled)
    manifest = _manifest(evaluation, labelled, batch_size, started, time.perf_counter() - clock)
    _write_folder(out_dir, labelled, scores, _metrics_json(data_dir, labelled, evaluation), manifest)
    return evaluation


def _evaluation(out_dir: Path, loaded: InferenceModel, scores: Scores, threshold: float,
                labelled: LabelledSet) -> Evaluation:
    fresh = ~scores.copy_of_training
    clean = (binary_metrics(scores.labels[fresh], scores.probabilities[fresh], threshold)
             if scores.copy_of_training.any() else None)
    copies = tuple(f.relpath for f, c in zip(scores.files, scores.copy_of_training) if c)
    far = scores.distances
    unfamiliar = None if far is None else wilson(int((far > 1).sum()), len(scores.files))
    not_read = tuple({"path": path, "status": status, "reason": reason}
                     for path, status, reason in labelled.ignored)
    return Evaluation(out_dir, loaded.summary, threshold,
                      binary_metrics(scores.labels, scores.probabilities, threshold), len(scores.files),
                      scores.skipped, not_read, copies, clean,
                      before_and_after(scores.labels, scores.raw_probabilities, scores.probabilities),
                      unfamiliar,
                      sum(p == "fp32" for p in scores.precisions) if loaded.precision != "fp32" else 0)


def evaluation_folder(out_dir: Path | None, model_folder: Path) -> Path:
    """Where an evaluation goes: ``out_dir``, else ``./evaluation-<model id>``."""
    return Path(out_dir) if out_dir else Path(f"evaluation-{read_card(model_folder).model_id}")


def _check_out_dir(out_dir: Path, force: bool) -> None:
    """An existing folder is replaced only when asked to, and only when it holds an earlier evaluation."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} exists and is not a folder.", option="out")
    held = sorted(entry.name for entry in out_dir.iterdir()) if out_dir.is_dir() else []
    if not held:
        return
    if not force:
        raise UsageError(f"{out_dir} already holds files (an earlier evaluation?); choose another "
                         f"folder or replace it.", option="force")
    foreign = [name for name in held if name not in EVALUATION_FILES]
    if foreign or not _is_evaluation(out_dir / RUN_FILE):
        what = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "") if foreign else "no run.json"
        raise UsageError(f"{out_dir} holds more than an earlier evaluation ({what}): only an evaluation "
                         f"is replaced; choose another folder.", option="out")


def _is_evaluation(run_file: Path) -> bool:
    try:
        return json.loads(run_file.read_text(encoding="utf-8")).get("command") == "evaluate"
    except (OSError, ValueError, AttributeError):
        return False


def score_labelled(labelled: LabelledSet, loaded: InferenceModel, batch_size: int, stop: Stop,
                   progress: Callable[[int], None] | None = None, threshold: float | None = None) -> Scores:
    """Probabilities (raw and calibrated) of every readable file, through the same predictor, forward
    pass and safety net (at ``threshold``, the card's when None) as a scan.

    Raises:
        DataError: no file could be read.
        Stopped: a stop was asked for.
    """

    def decode(index: int) -> Decoded:
        decoded = decode_image(labelled.files[index].path, loaded.image_size)
        return Decoded(decoded.pixels, (decoded.extra.sha256, image_fingerprint(decoded.extra.display)))

    probabilities: dict[int, float] = {}
    distances: dict[int, float | None] = {}
    precisions: dict[int, str] = {}
    hashes: dict[int, tuple[str, str]] = {}
    skipped: list[dict[str, str]] = []
    run = fast_run(loaded, loaded.threshold(threshold), keep_activations=False)
    outcomes = predict(range(len(labelled.files)), decode, run, batch_size=batch_size, stop=stop,
                       progress=progress)
    for outcome in rescored(outcomes, loaded, batch_size):
        if outcome.failure is not None:
            skipped.append({"path": labelled.files[outcome.item].relpath,
                            "status": outcome.failure.status, "reason": outcome.failure.reason})
        else:
            probabilities[outcome.item] = outcome.output.probability
            distances[outcome.item] = outcome.output.ood_distance
            precisions[outcome.item] = outcome.output.precision
            hashes[outcome.item] = outcome.extra
    if stop.asked:
        raise Stopped("the evaluation was stopped; nothing was written")
    order = sorted(probabilities)
    if not order:
        raise DataError(f"No image in {labelled.root} could be read.")
    checked = loaded.familiarity is not None
    raw = np.array([probabilities[i] for i in order])
    return Scores(tuple(labelled.files[i] for i in order), labelled.labels[order], loaded.calibrate(raw), raw,
                  tuple(skipped), copies_of_training([hashes[i] for i in order], loaded.card.training_images),
                  np.array([distances[i] for i in order], dtype=float) if checked else None,
                  tuple(precisions[i] for i in order))


def copies_of_training(hashes: list[tuple[str, str]], trained: TrainingImages) -> np.ndarray:
    """Which images are exact or near copies of the images a model was trained on (per its card)."""
    trained_shas = set(trained.sha256s)
    exact = np.array([sha in trained_shas for sha, _ in hashes], dtype=bool)
    near = near_matches([fingerprint for _, fingerprint in hashes], list(trained.fingerprints))
    return exact | near


def _metrics_json(data_dir: Path, labelled: LabelledSet, evaluation: Evaluation) -> dict[str, Any]:
    """The content of ``metrics.json``."""
    model = evaluation.model
    return {
        "tool_version": __version__,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data": {"path": str(Path(data_dir).resolve()), "n_images": evaluation.n_images,
                 "class_names": {"negative": labelled.class_names[0], "positive": labelled.class_names[1]},
                 "skipped": list(evaluation.skipped), "not_read": list(evaluation.not_read)},
        "model": {"id": model.id, "path": model.path, "sha256": model.sha256,
                  "backbone_weights": model.backbone_weights, "calibration": model.calibration,
                  "calibration_sha256": model.calibration_sha256},
        "metrics": evaluation.metrics,
        "calibration": evaluation.calibration,
        "copies_of_training": len(evaluation.copies_of_training),
        "copies_of_training_files": list(evaluation.copies_of_training),
        "metrics_without_copies": evaluation.metrics_without_copies,
        "unfamiliar": evaluation.unfamiliar,
    }


def _manifest(evaluation: Evaluation, labelled: LabelledSet, batch_size: int, started: dt.datetime,
              seconds: float) -> dict[str, Any]:
    """The content of ``run.json``, written last (see :mod:`triage.results.run_record`)."""
    counts = {"found": len(labelled.files) + len(labelled.ignored), "scored": evaluation.n_images,
              "skipped": len(evaluation.skipped), "not_read": len(evaluation.not_read),
              "copies_of_training": len(evaluation.copies_of_training), "rescored_fp32": evaluation.rescored}
    finished = dt.datetime.now(dt.timezone.utc)
    return run_record("evaluate", evaluation.model, threshold=evaluation.threshold,
                      versions=library_versions(), counts=counts,
                      started_at=started.isoformat(timespec="seconds"),
                      finished_at=finished.isoformat(timespec="seconds"), seconds=seconds, outputs=OUTPUTS,
                      data_dir=str(labelled.root.resolve()), batch_size=batch_size)


def _predictions_csv(labelled: LabelledSet, scores: Scores, threshold: float) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "probability", "raw_probability", "predicted", "ood_distance",
                     "unfamiliar", "precision"])
    distances = scores.distances if scores.distances is not None else [None] * len(scores.files)
    for item, probability, raw, distance, precision in zip(
            scores.files, scores.probabilities, scores.raw_probabilities, distances, scores.precisions):
        familiarity = ["", ""] if distance is None else [f"{distance:.6f}", str(distance > 1).lower()]
        writer.writerow([item.relpath, labelled.class_names[item.label], f"{probability:.6f}", f"{raw:.6f}",
                         labelled.class_names[int(probability >= threshold)], *familiarity, precision])
    return buffer.getvalue()


def _write_folder(out_dir: Path, labelled: LabelledSet, scores: Scores, report: dict[str, Any],
                  manifest: dict[str, Any]) -> None:
    """Write everything into a temporary folder, then swap it in for ``out_dir``."""
    from triage.report.charts import confusion_matrix_png, reliability_diagram, roc_curve_png

    out_dir = out_dir.absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        metrics = report["metrics"]
        roc_curve_png(scores.labels, scores.probabilities, metrics["roc_auc"]["value"],
                      staging / OUTPUTS["roc_curve"])
        confusion_matrix_png(metrics["confusion_matrix"], labelled.class_names,
                             staging / OUTPUTS["confusion_matrix"])
        reliability_diagram(scores.labels, scores.raw_probabilities, scores.probabilities,
                            staging / OUTPUTS["reliability_diagram"], measured=report["calibration"],
                            title=f"Calibration on {Path(report['data']['path']).name}")
        atomic_write_text(staging / OUTPUTS["predictions"],
                          _predictions_csv(labelled, scores, metrics["threshold"]))
        atomic_write_text(staging / OUTPUTS["metrics"], json.dumps(report, indent=2) + "\n")
        atomic_write_text(staging / RUN_FILE, json.dumps(manifest, indent=2) + "\n")
        _swap_in(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Rename ``staging`` to ``out_dir``; an earlier folder there is moved aside, then removed."""
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
    old.rmdir()
    out_dir.rename(old)
    try:
        staging.rename(out_dir)
    except BaseException:
        old.rename(out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
