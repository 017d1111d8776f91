"""Training: the thesis's recipe on kept backbone features, then the whole model saved.

The backbone is frozen, so it runs once per image (:mod:`triage.features`);
the head trains on the pooled features for every epoch, fold and threshold
choice; the saved model is backbone + trained head in one network.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from triage import __version__
from triage.atomic import atomic_write_text
from triage.card import CARD_FILE, CARD_SCHEMA_VERSION, CURVES_FILE, MODEL_FILE, models_root
from triage.dataset import index_labelled, split
from triage.errors import DataError, UsageError
from triage.features import FeatureCache, default_cache_dir, extract_features
from triage.metrics import binary_metrics, threshold_for_sensitivity
from triage.model import CAM_LAYER, HeadConfig, resolve_backbone_weights

log = logging.getLogger(__name__)
RANDOM_WARNING = "RANDOM BACKBONE: built for tests and smoke runs only; its scores mean nothing."


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; the defaults reproduce the thesis."""

    epochs: int = 30
    image_size: int = 256
    batch_size: int = 32
    val_split: float = 0.2
    seed: int = 1337
    learning_rate: float = 1e-3
    l2: float = 0.01
    dropout: float = 0.35
    threshold: float = 0.5
    target_sensitivity: float | None = None
    folds: int | None = None
    positive: str = "yes"
    backbone_weights: str = "imagenet"
    cache: bool = True
    cache_dir: Path | None = None

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.image_size >= 32, f"--image-size must be at least 32, got {self.image_size}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.learning_rate > 0, f"--learning-rate must be positive, got {self.learning_rate}"),
            (0 <= self.threshold <= 1, f"--threshold must be in [0, 1], got {self.threshold}"),
            (self.target_sensitivity is None or 0 < self.target_sensitivity <= 1,
             f"--target-sensitivity must be in (0, 1], got {self.target_sensitivity}"),
            (self.folds is None or self.folds >= 2, f"--folds must be at least 2, got {self.folds}"),
            (0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}"),
            (self.l2 >= 0, f"--l2 must be >= 0, got {self.l2}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message + ".")


@dataclass
class TrainResult:
    out_dir: Path
    card: dict[str, Any]
    history: dict[str, list[float]] = field(default_factory=dict)


def _fit_head(features: np.ndarray, labels: np.ndarray, config: TrainConfig,
              validation: tuple[np.ndarray, np.ndarray] | None = None,
              on_epoch: Callable[[int, dict[str, float]], None] | None = None,
              ) -> tuple[Any, dict[str, list[float]]]:
    import keras

    from triage.model import build_head

    keras.utils.set_random_seed(config.seed)
    head = build_head(features.shape[1], HeadConfig(config.l2, config.dropout))
    head.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                 loss="binary_crossentropy", metrics=["accuracy"])
    callbacks = []
    if on_epoch is not None:
        callbacks.append(keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: on_epoch(epoch + 1, dict(logs or {}))))
    history = head.fit(features, labels.astype(np.float32), batch_size=config.batch_size,
                       epochs=config.epochs, validation_data=validation, shuffle=True,
                       verbose=0, callbacks=callbacks)
    return head, {k: [float(v) for v in vs] for k, vs in history.history.items()}


def _predict(head: Any, features: np.ndarray) -> np.ndarray:
    return np.asarray(head.predict(features, batch_size=256, verbose=0), dtype=np.float64).ravel()


def _cross_validate(features: np.ndarray, labels: np.ndarray, config: TrainConfig) -> dict[str, Any]:
    from sklearn.model_selection import StratifiedKFold

    folds = int(config.folds or 0)
    if np.bincount(labels, minlength=2).min() < folds:
        raise DataError(f"--folds {folds} needs at least {folds} images of each class.")
    out_of_fold = np.zeros(len(labels))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
    for train_idx, test_idx in splitter.split(features, labels):
        head, _ = _fit_head(features[train_idx], labels[train_idx], config)
        out_of_fold[test_idx] = _predict(head, features[test_idx])
    return {
        "folds": folds, "method": "stratified K-fold of the head on kept features, all images",
        "seed": config.seed,
        "metrics": binary_metrics(labels, out_of_fold, config.threshold, seed=config.seed),
    }


def _fingerprint(items: list[tuple[str, str, int]]) -> str:
    digest = hashlib.sha256()
    for relpath, sha, label in sorted(items):
        digest.update(f"{relpath}\0{sha}\0{label}\n".encode())
    return digest.hexdigest()


def _class_counts(labels: np.ndarray) -> dict[str, int]:
    return {"n": int(len(labels)), "positive": int(labels.sum()), "negative": int(len(labels) - labels.sum())}


def new_model_dir(parent: Path) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return parent / f"vgg19-{stamp}-{uuid.uuid4().hex[:6]}"


def train_model(data_dir: Path, out_dir: Path | None = None, config: TrainConfig = TrainConfig(), *,
                progress: Callable[[int], None] | None = None,
                on_start: Callable[[int], None] | None = None,
                on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Train the classifier on a labelled folder and write the model folder.

    Args:
        data_dir: One sub-folder per class (``config.positive`` = tumour).
        out_dir: Model folder to create (must not exist or be empty); default a
            new folder under :func:`triage.card.models_root`.
        config: The run's settings.
        progress: Called with the number of images just handled during feature extraction.
        on_start: Called once with the number of images to extract.
        on_epoch: Called after each epoch with its number and logs.

    Returns:
        The model folder and its card.

    Raises:
        DataError: the folder is unusable.
        UsageError: bad settings or an output folder that is not empty.
        WeightsUnavailable: the backbone weights cannot be had.
    """
    config.validate()
    started = dt.datetime.now(dt.timezone.utc)
    out_dir = Path(out_dir) if out_dir else new_model_dir(models_root())
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UsageError(f"Output folder {out_dir} exists and is not empty.")
    labelled = index_labelled(Path(data_dir), config.positive, config.seed)
    n_val = len(split(labelled.files, config.val_split)[1])  # fails early on an empty side
    weights = resolve_backbone_weights(config.backbone_weights, seed=config.seed)

    from triage.model import assemble, build_backbone, feature_extractor

    extractor = feature_extractor(build_backbone(config.image_size, weights))
    cache = FeatureCache(config.cache_dir or default_cache_dir(), weights, config.image_size) \
        if config.cache else None
    if on_start:
        on_start(len(labelled.files))
    extracted = extract_features([f.path for f in labelled.files], extractor, config.image_size,
                                 batch_size=config.batch_size, cache=cache, progress=progress)
    skipped = [{"path": labelled.files[i].relpath, "status": status, "reason": reason}
               for i, status, reason in extracted.failed]
    for row in skipped:
        log.warning("skipped %s: %s", row["path"], row["reason"])
    # The split is made over every indexed file, as Keras makes it; unreadable
    # files then drop out of whichever side they fell on.
    position = {index: row for row, index in enumerate(extracted.indices)}
    n_train = len(labelled.files) - n_val
    train_rows = [position[i] for i in range(n_train) if i in position]
    val_rows = [position[i] for i in range(n_train, len(labelled.files)) if i in position]
    labels = labelled.labels[list(extracted.indices)]
    x_train, y_train = extracted.vectors[train_rows], labels[train_rows]
    x_val, y_val = extracted.vectors[val_rows], labels[val_rows]
    for name, y in (("training", y_train), ("validation", y_val)):
        if len(y) == 0 or y.min() == y.max():
            raise DataError(f"The {name} set has {len(y)} readable images of a single class or none: "
                            f"add images, or change --val-split / --seed.")

    head, history = _fit_head(x_train, y_train, config, (x_val, y_val), on_epoch)
    val_prob = _predict(head, x_val)
    if config.target_sensitivity is not None:
        threshold = threshold_for_sensitivity(y_val, val_prob, config.target_sensitivity)
        threshold_rule = (f"highest threshold with validation sensitivity >= "
                          f"{config.target_sensitivity} (--target-sensitivity)")
    else:
        threshold = config.threshold
        threshold_rule = "fixed (--threshold)" if config.threshold != 0.5 else "default 0.5"
    metrics = binary_metrics(y_val, val_prob, threshold, seed=config.seed)
    cross_validation = _cross_validate(extracted.vectors, labels, config) if config.folds else None

    model = assemble(extractor, head)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save(staging / MODEL_FILE)
        card = {
            "schema_version": CARD_SCHEMA_VERSION,
            "model_id": out_dir.name,
            "tool_version": __version__,
            "created_at": started.isoformat(timespec="seconds"),
            "warning": RANDOM_WARNING if weights.source == "random" else None,
            "model_file": MODEL_FILE,
            "backbone": {"architecture": "VGG19", "include_top": False, "frozen": True,
                         "weights": weights.label, "weights_sha256": weights.sha256},
            "cam_layer": CAM_LAYER,
            "image_size": config.image_size,
            "preprocessing": "decode as RGB, resize bilinear (no antialias, aspect not kept), "
                             "vgg19 caffe preprocess_input inside the model",
            "threshold": threshold,
            "threshold_rule": threshold_rule,
            "data": {
                "path": str(Path(data_dir).resolve()),
                "fingerprint": _fingerprint([
                    (labelled.files[i].relpath, sha, int(labels[row]))
                    for row, (i, sha) in enumerate(zip(extracted.indices, extracted.sha256s))]),
                "class_names": {"negative": labelled.class_names[0], "positive": labelled.class_names[1]},
                "n_images": len(extracted.indices),
                "n_indexed": len(labelled.files),
                "skipped": skipped,
                "ignored": [{"path": p, "reason": r} for p, r in labelled.ignored],
            },
            "split": {"method": "as keras.utils.image_dataset_from_directory(validation_split, seed)",
                      "val_split": config.val_split, "seed": config.seed,
                      "train": _class_counts(y_train), "validation": _class_counts(y_val),
                      "validation_files": [labelled.files[i].relpath
                                           for i in range(n_train, len(labelled.files)) if i in position]},
            "hyperparameters": {"epochs": config.epochs, "batch_size": config.batch_size,
                                "optimizer": "Adam", "learning_rate": config.learning_rate,
                                "loss": "binary_crossentropy", "l2": config.l2,
                                "dropout": config.dropout, "dense_units": list(HeadConfig().units),
                                "seed": config.seed},
            "history": history,
            "validation_metrics": metrics,
            "cross_validation": cross_validation,
            "features": {"extracted": len(extracted.indices) - extracted.from_cache,
                         "from_cache": extracted.from_cache,
                         "cache": str(cache.path) if cache else None},
        }
        from triage.plots import training_curves

        training_curves(history, staging / CURVES_FILE, title=out_dir.name)
        atomic_write_text(staging / CARD_FILE, json.dumps(card, indent=2) + "\n")
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return TrainResult(out_dir, card, history)
