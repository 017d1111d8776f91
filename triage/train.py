"""Training: the thesis's recipe on kept backbone features, then the whole model saved.

The backbone is frozen, so it runs once per image (:mod:`triage.features`);
the head trains on the pooled features for every epoch, fold and threshold
choice; the saved model is backbone + trained head in one network.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import shutil
import tempfile
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from triage import __version__
from triage.card import (
    CURVES_FILE,
    MODEL_FILE,
    RANDOM_WARNING,
    Backbone,
    ClassCounts,
    ClassNames,
    CrossValidation,
    FeatureStats,
    Hyperparameters,
    ModelCard,
    SkippedFile,
    Split,
    TrainingData,
    models_root,
    write_card,
)
from triage.dataset import LabelledSet, index_labelled, split
from triage.errors import DataError, Stopped, UsageError
from triage.features import FeatureCache, Features, default_cache_dir, extract_features
from triage.metrics import binary_metrics, threshold_for_sensitivity
from triage.model import (
    CAM_LAYER,
    BackboneWeights,
    HeadConfig,
    choose_precision,
    gpu_available,
    resolve_backbone_weights,
)

log = logging.getLogger(__name__)


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
    precision: str = "auto"  # of the feature extraction: auto | fp32 | bf16 | fp16
    cache: bool = True
    cache_dir: Path | None = None

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs", "at least 1"),
            (self.image_size >= 32, "image_size", "at least 32"),
            (self.batch_size >= 1, "batch_size", "at least 1"),
            (self.learning_rate > 0, "learning_rate", "positive"),
            (0 <= self.threshold <= 1, "threshold", "in [0, 1]"),
            (self.target_sensitivity is None or 0 < self.target_sensitivity <= 1,
             "target_sensitivity", "in (0, 1]"),
            (self.folds is None or self.folds >= 2, "folds", "at least 2"),
            (0 <= self.dropout < 1, "dropout", "in [0, 1)"),
            (self.l2 >= 0, "l2", ">= 0"),
        ]
        for ok, name, rule in checks:
            if not ok:
                value = getattr(self, name)
                raise UsageError(f"The {name.replace('_', ' ')} must be {rule}, got {value}.", option=name)


@dataclass
class TrainResult:
    out_dir: Path
    card: ModelCard


def _fit_head(features: np.ndarray, labels: np.ndarray, config: TrainConfig,
              validation: tuple[np.ndarray, np.ndarray] | None = None,
              on_epoch: Callable[[int, dict[str, float]], None] | None = None,
              should_stop: Callable[[], bool] = lambda: False,
              ) -> tuple[Any, dict[str, list[float]]]:
    import keras

    from triage.model import build_head

    keras.utils.set_random_seed(config.seed)
    head = build_head(features.shape[1], HeadConfig(config.l2, config.dropout))
    head.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                 loss="binary_crossentropy", metrics=["accuracy"])
    def epoch_end(epoch: int, logs: dict[str, float] | None) -> None:
        if on_epoch is not None:
            on_epoch(epoch + 1, dict(logs or {}))
        if should_stop():
            raise Stopped("training was stopped; no model was written")

    callbacks = [keras.callbacks.LambdaCallback(on_epoch_end=epoch_end)]
    history = head.fit(features, labels.astype(np.float32), batch_size=config.batch_size,
                       epochs=config.epochs, validation_data=validation, shuffle=True,
                       verbose=0, callbacks=callbacks)
    return head, {k: [float(v) for v in vs] for k, vs in history.history.items()}


def _predict(head: Any, features: np.ndarray) -> np.ndarray:
    return np.asarray(head.predict(features, batch_size=256, verbose=0), dtype=np.float64).ravel()


def _cross_validate(features: np.ndarray, labels: np.ndarray, config: TrainConfig) -> CrossValidation:
    from sklearn.model_selection import StratifiedKFold

    folds = int(config.folds or 0)
    if np.bincount(labels, minlength=2).min() < folds:
        raise DataError(f"{folds} folds need at least {folds} images of each class.", option="folds")
    out_of_fold = np.zeros(len(labels))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
    for train_idx, test_idx in splitter.split(features, labels):
        head, _ = _fit_head(features[train_idx], labels[train_idx], config)
        out_of_fold[test_idx] = _predict(head, features[test_idx])
    return CrossValidation(
        folds=folds, method="stratified K-fold of the head on kept features, all images",
        seed=config.seed, metrics=binary_metrics(labels, out_of_fold, config.threshold, seed=config.seed),
    )


def _fingerprint(items: list[tuple[str, str, int]]) -> str:
    digest = hashlib.sha256()
    for relpath, sha, label in sorted(items):
        digest.update(f"{relpath}\0{sha}\0{label}\n".encode())
    return digest.hexdigest()


def _class_counts(labels: np.ndarray) -> ClassCounts:
    positive = int(labels.sum())
    return ClassCounts(n=int(len(labels)), positive=positive, negative=int(len(labels)) - positive)


def new_model_dir(parent: Path) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return parent / f"vgg19-{stamp}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class SplitData:
    """The kept features cut into training and validation rows, as Keras cuts the file list."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    labels: np.ndarray  # of every extracted row
    validation_files: tuple[str, ...]


@dataclass(frozen=True)
class Threshold:
    value: float
    rule: str


def train_model(data_dir: Path, out_dir: Path | None = None, config: TrainConfig = TrainConfig(), *,
                should_stop: Callable[[], bool] = lambda: False,
                progress: Callable[[int], None] | None = None,
                on_start: Callable[[int], None] | None = None,
                on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Train the classifier on a labelled folder and write the model folder.

    Args:
        data_dir: One sub-folder per class (``config.positive`` = tumour).
        out_dir: Model folder to create (must not exist or be empty); default a
            new folder under :func:`triage.card.models_root`.
        config: The run's settings.
        should_stop: Polled between batches and epochs; True stops with no model written.
        progress: Called with the number of images just handled during feature extraction.
        on_start: Called once with the number of images to extract.
        on_epoch: Called after each epoch with its number and logs.

    Returns:
        The model folder and its card.

    Raises:
        DataError: the folder is unusable.
        UsageError: bad settings or an output folder that is not empty.
        WeightsUnavailable: the backbone weights cannot be had.
        Stopped: a stop was asked for; no model folder was written.
    """
    config.validate()
    config = replace(config, precision=choose_precision(config.precision, gpu_available()))
    started = dt.datetime.now(dt.timezone.utc)
    out_dir = Path(out_dir) if out_dir else new_model_dir(models_root())
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UsageError(f"Output folder {out_dir} exists and is not empty.", option="out")
    labelled = index_labelled(Path(data_dir), config.positive, config.seed)
    split(labelled.files, config.val_split)  # fails early on an empty side
    weights = resolve_backbone_weights(config.backbone_weights, seed=config.seed)

    from triage.model import assemble, build_backbone, feature_extractor, with_precision

    extractor = feature_extractor(build_backbone(config.image_size, weights))
    cache = FeatureCache(config.cache_dir or default_cache_dir(), weights, config.image_size,
                         config.precision) if config.cache else None
    if on_start:
        on_start(len(labelled.files))
    # The saved model stays float32; only the extraction runs at the chosen precision.
    running = with_precision(extractor, config.precision)
    extracted = extract_features([f.path for f in labelled.files], running, config.image_size,
                                 batch_size=config.batch_size, cache=cache, should_stop=should_stop,
                                 progress=progress)
    data = _split_rows(labelled, extracted, config.val_split)
    head, history = _fit_head(data.x_train, data.y_train, config, (data.x_val, data.y_val), on_epoch,
                              should_stop)
    val_prob = _predict(head, data.x_val)
    threshold = _choose_threshold(data.y_val, val_prob, config)
    cross_validation = _cross_validate(extracted.vectors, data.labels, config) if config.folds else None
    card = _build_card(out_dir.name, started, config, weights, labelled, extracted, data, threshold,
                       history, binary_metrics(data.y_val, val_prob, threshold.value, seed=config.seed),
                       cross_validation, cache)
    _write_model_folder(out_dir, assemble(extractor, head), card)
    return TrainResult(out_dir, card)


def _split_rows(labelled: LabelledSet, extracted: Features, val_split: float) -> SplitData:
    """Cut over every indexed file, as Keras cuts; unreadable files drop out of their side.

    Raises:
        DataError: a side has no readable image, or only one class.
    """
    for i, status, reason in extracted.failed:
        log.warning("skipped %s: %s (%s)", labelled.files[i].relpath, reason, status)
    n_val = len(split(labelled.files, val_split)[1])
    n_train = len(labelled.files) - n_val
    position = {index: row for row, index in enumerate(extracted.indices)}
    train_rows = [position[i] for i in range(n_train) if i in position]
    val_rows = [position[i] for i in range(n_train, len(labelled.files)) if i in position]
    labels = labelled.labels[list(extracted.indices)]
    for name, rows in (("training", train_rows), ("validation", val_rows)):
        y = labels[rows]
        if len(y) == 0 or y.min() == y.max():
            raise DataError(f"The {name} set has {len(y)} readable images of a single class or none: "
                            f"add images, or change the validation split or the seed.")
    return SplitData(extracted.vectors[train_rows], labels[train_rows], extracted.vectors[val_rows],
                     labels[val_rows], labels,
                     tuple(labelled.files[i].relpath for i in range(n_train, len(labelled.files))
                           if i in position))


def _choose_threshold(y_val: np.ndarray, val_prob: np.ndarray, config: TrainConfig) -> Threshold:
    if config.target_sensitivity is not None:
        return Threshold(threshold_for_sensitivity(y_val, val_prob, config.target_sensitivity),
                         f"highest threshold with validation sensitivity >= {config.target_sensitivity}")
    if config.threshold != 0.5:
        return Threshold(config.threshold, "fixed")
    return Threshold(config.threshold, "default 0.5")


def _build_card(model_id: str, started: dt.datetime, config: TrainConfig, weights: BackboneWeights,
                labelled: LabelledSet, extracted: Features, data: SplitData, threshold: Threshold,
                history: dict[str, list[float]], metrics: dict[str, Any],
                cross_validation: CrossValidation | None, cache: FeatureCache | None) -> ModelCard:
    return ModelCard(
        model_id=model_id,
        tool_version=__version__,
        created_at=started.isoformat(timespec="seconds"),
        warning=RANDOM_WARNING if weights.source == "random" else None,
        backbone=Backbone(weights=weights.label, weights_sha256=weights.sha256),
        cam_layer=CAM_LAYER,
        image_size=config.image_size,
        threshold=threshold.value,
        threshold_rule=threshold.rule,
        data=_training_data(labelled, extracted, data),
        split=Split(method="as keras.utils.image_dataset_from_directory(validation_split, seed)",
                    val_split=config.val_split, seed=config.seed, train=_class_counts(data.y_train),
                    validation=_class_counts(data.y_val), validation_files=data.validation_files),
        hyperparameters=Hyperparameters(
            epochs=config.epochs, batch_size=config.batch_size, learning_rate=config.learning_rate,
            l2=config.l2, dropout=config.dropout, dense_units=HeadConfig().units, seed=config.seed),
        history=history,
        validation_metrics=metrics,
        cross_validation=cross_validation,
        features=FeatureStats(extracted=len(extracted.indices) - extracted.from_cache,
                              from_cache=extracted.from_cache,
                              cache=str(cache.path) if cache else None, precision=config.precision),
    )


def _training_data(labelled: LabelledSet, extracted: Features, data: SplitData) -> TrainingData:
    skipped = tuple(SkippedFile(labelled.files[i].relpath, reason, status)
                    for i, status, reason in extracted.failed)
    return TrainingData(
        path=str(Path(labelled.root).resolve()),
        fingerprint=_fingerprint([(labelled.files[i].relpath, sha, int(data.labels[row]))
                                  for row, (i, sha) in enumerate(zip(extracted.indices, extracted.sha256s))]),
        class_names=ClassNames(negative=labelled.class_names[0], positive=labelled.class_names[1]),
        n_images=len(extracted.indices),
        n_indexed=len(labelled.files),
        skipped=skipped,
        ignored=tuple(SkippedFile(p, r) for p, r in labelled.ignored),
    )


def _write_model_folder(out_dir: Path, model: Any, card: ModelCard) -> None:
    """model.keras, training curves and the card into a temporary folder, renamed into place."""
    from triage.plots import training_curves

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save(staging / MODEL_FILE)
        training_curves(card.history, staging / CURVES_FILE, title=out_dir.name)
        write_card(card, staging)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked before training
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
