"""Metrics of a saved model on any labelled folder."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from triage import __version__
from triage.atomic import atomic_write_text
from triage.card import MODEL_FILE, find_model, read_card
from triage.dataset import index_labelled
from triage.errors import DataError, ImageLoadError, UsageError
from triage.images import read_image
from triage.metrics import binary_metrics
from triage.model import load_classifier, sha256_file
from triage.preprocess import resize_for_model
from triage.stream import batched, prefetch_map


@dataclass(frozen=True)
class Evaluation:
    out_dir: Path
    metrics: dict[str, Any]
    report: dict[str, Any]


def evaluate_model(data_dir: Path, out_dir: Path | None = None, *, model: str | Path | None = None,
                   threshold: float | None = None, positive: str = "yes", batch_size: int = 16,
                   on_start: Callable[[int], None] | None = None,
                   progress: Callable[[int], None] | None = None) -> Evaluation:
    """Score a labelled folder with a saved model and write metrics, ROC and confusion plots.

    Args:
        data_dir: One sub-folder per class (``positive`` = tumour).
        out_dir: Where ``metrics.json``, ``predictions.csv``, ``roc_curve.png`` and
            ``confusion_matrix.png`` go; default ``./evaluation-<model id>``.
        model: Model folder; default ``$TRIAGE_MODEL`` or the newest under ``models/``.
        threshold: Override of the model card's threshold.
        positive: Name of the tumour class folder.
        batch_size: Images per forward pass.
        on_start, progress: Progress callbacks.

    Returns:
        Where the results went, and the metrics.

    Raises:
        DataError, ModelError, UsageError: see :mod:`triage.errors`.
    """
    if threshold is not None and not 0 <= threshold <= 1:
        raise UsageError(f"--threshold must be in [0, 1], got {threshold}.")
    labelled = index_labelled(Path(data_dir), positive, seed=None)
    folder = find_model(model)
    card = read_card(folder)
    network = load_classifier(folder / MODEL_FILE)
    size = int(card["image_size"])
    threshold = float(card["threshold"]) if threshold is None else threshold
    out_dir = Path(out_dir) if out_dir else Path(f"evaluation-{card.get('model_id', folder.name)}")

    def load(index: int) -> np.ndarray:
        return resize_for_model(read_image(labelled.files[index].path).pixels, size)

    if on_start:
        on_start(len(labelled.files))
    probabilities: dict[int, float] = {}
    skipped: list[dict[str, str]] = []

    def decoded() -> Any:
        for index, outcome in prefetch_map(load, range(len(labelled.files)), ahead=2 * batch_size):
            if isinstance(outcome, BaseException):
                reason = outcome.reason if isinstance(outcome, ImageLoadError) else str(outcome)
                skipped.append({"path": labelled.files[index].relpath, "reason": reason})
                if progress:
                    progress(1)
            else:
                yield index, outcome

    for batch in batched(decoded(), batch_size):
        scores = np.asarray(network.predict_on_batch(np.stack([b[1] for b in batch]))).reshape(-1)
        probabilities.update({index: float(p) for (index, _), p in zip(batch, scores)})
        if progress:
            progress(len(batch))
    order = sorted(probabilities)
    y = labelled.labels[order]
    p = np.array([probabilities[i] for i in order])
    if len(y) == 0:
        raise DataError(f"No image in {data_dir} could be read.")
    metrics = binary_metrics(y, p, threshold)
    report = {
        "tool_version": __version__,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data": {"path": str(Path(data_dir).resolve()), "n_images": len(order),
                 "class_names": {"negative": labelled.class_names[0], "positive": labelled.class_names[1]},
                 "skipped": skipped},
        "model": {"id": card.get("model_id", folder.name), "path": str(folder.resolve()),
                  "sha256": sha256_file(folder / MODEL_FILE),
                  "backbone_weights": card.get("backbone", {}).get("weights")},
        "metrics": metrics,
    }
    from triage.plots import confusion_matrix_png, roc_curve_png

    out_dir.mkdir(parents=True, exist_ok=True)
    roc_curve_png(y, p, metrics["roc_auc"]["value"], out_dir / "roc_curve.png")
    confusion_matrix_png(metrics["confusion_matrix"], labelled.class_names, out_dir / "confusion_matrix.png")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "probability", "predicted"])
    for index, probability in zip(order, p):
        item = labelled.files[index]
        writer.writerow([item.relpath, labelled.class_names[item.label], f"{probability:.6f}",
                         labelled.class_names[int(probability >= threshold)]])
    atomic_write_text(out_dir / "predictions.csv", buffer.getvalue())
    atomic_write_text(out_dir / "metrics.json", json.dumps(report, indent=2) + "\n")
    return Evaluation(out_dir, metrics, report)
