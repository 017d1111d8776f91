"""Training: the thesis's recipe on kept backbone features, then the whole model saved.

The backbone is frozen, so it runs once per image (:mod:`triage.train.features`);
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
from triage.errors import UsageError
from triage.hooks import RunHooks
from triage.labelled.calibration import before_and_after
from triage.labelled.dataset import LabelledSet, index_labelled, split
from triage.labelled.metrics import binary_metrics, wilson
from triage.model.calibration import CALIBRATION_FILE, write_calibration
from triage.model.card import (
    CURVES_FILE,
    MODEL_FILE,
    RANDOM_WARNING,
    RELIABILITY_FILE,
    Backbone,
    Calibration,
    ClassCounts,
    ClassNames,
    CrossValidation,
    FamiliarityCheck,
    FeatureStats,
    Hyperparameters,
    ModelCard,
    SkippedFile,
    Split,
    TrainingData,
    TrainingImages,
    models_root,
    write_card,
)
from triage.model.familiarity import FAMILIARITY_FILE, METHOD, Familiarity
from triage.model.network import (
    CAM_LAYER,
    BackboneWeights,
    HeadConfig,
    choose_precision,
    gpu_available,
    resolve_backbone_weights,
)
from triage.train.config import TrainConfig
from triage.train.features import FeatureCache, Features, cache_key, default_cache_dir, extract_features
from triage.train.head import fit_head, predict_head
from triage.train.splits import SplitRows, copies_record, split_rows
from triage.train.validation import Threshold, check_targets, cross_validate, decide, subset

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    out_dir: Path
    card: ModelCard


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


def train_model(data_dir: Path, out_dir: Path | None = None, config: TrainConfig = TrainConfig(), *,
                hooks: RunHooks = RunHooks()) -> TrainResult:
    """Train the classifier on a labelled folder and write the model folder.

    Args:
        data_dir: One sub-folder per class (``config.positive`` = tumour).
        out_dir: Model folder to create (must not exist or be empty); default a
            new folder under :func:`triage.model.card.models_root`.
        config: The run's settings.
        hooks: ``should_stop`` (polled between batches and epochs; True stops with no model
            written), ``on_start``/``advance`` (images to extract, images extracted), ``on_epoch``.

    Returns:
        The model folder and its card.

    Raises:
        DataError: the folder is unusable.
        UsageError: bad settings or an output folder that is not empty.
        WeightsUnavailable: the backbone weights cannot be had.
        Stopped: a stop was asked for; no model folder was written.
    """
    config.validate()
    on_gpu = gpu_available()
    config = replace(config, precision=choose_precision(config.precision, on_gpu))
    started = dt.datetime.now(dt.timezone.utc)
    out_dir = Path(out_dir) if out_dir else new_model_dir(models_root())
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UsageError(f"Output folder {out_dir} exists and is not empty.", option="out")
    labelled = index_labelled(Path(data_dir), config.positive, config.seed)
    split(labelled.files, config.val_split)  # fails early on an empty side
    weights = resolve_backbone_weights(config.backbone_weights, seed=config.seed)

    from triage.model.network import assemble, build_backbone, feature_extractor, with_precision

    extractor = feature_extractor(build_backbone(config.image_size, weights))
    key = cache_key(weights, config.image_size, config.precision, "gpu" if on_gpu else "cpu")
    cache = FeatureCache(config.cache_dir or default_cache_dir(), key) if config.cache else None
    hooks.on_start(len(labelled.files))
    # The saved model stays float32; only the extraction runs at the chosen precision.
    running = with_precision(extractor, config.precision)
    extracted = extract_features([f.path for f in labelled.files], running, config.image_size,
                                 batch_size=config.batch_size, cache=cache,
                                 should_stop=hooks.should_stop, progress=hooks.advance)
    for i, status, reason in extracted.failed:
        log.warning("skipped %s: %s (%s)", labelled.files[i].relpath, reason, status)
    rows = split_rows(labelled, extracted, config.split, config.val_split, config.seed)
    head, history, metrics = _fit_and_measure(extracted, rows, config, hooks.on_epoch, hooks.should_stop)
    familiarity, index_bytes = _familiarity(extracted, rows)
    card = _build_card(out_dir.name, started, config, weights, labelled, extracted, rows, history,
                       metrics, cache, familiarity)
    _write_model_folder(out_dir, assemble(extractor, head), card, index_bytes, metrics.reliability)
    return TrainResult(out_dir, card)


def _familiarity(extracted: Features, rows: SplitRows) -> tuple[FamiliarityCheck, bytes]:
    """The familiarity index of the training part, and how many validation images it calls unfamiliar."""
    x, stats = extracted.vectors, extracted.statistics
    groups = np.asarray(rows.copies.group_of)
    index = Familiarity.fit(x[rows.train], stats[rows.train], groups[rows.train])
    unfamiliar = int((index.distances(x[rows.val], stats[rows.val]) > 1).sum()) if len(rows.val) else 0
    data = index.to_bytes()
    record = FamiliarityCheck(
        method=METHOD, neighbours=index.neighbours, quantile=index.quantile,
        feature_threshold=index.feature_threshold, statistics_threshold=index.statistics_threshold,
        combined_threshold=index.combined_threshold, n_images=index.n_images, n_entries=len(index.entries),
        file=FAMILIARITY_FILE, sha256=hashlib.sha256(data).hexdigest(),
        validation=wilson(unfamiliar, len(rows.val)))
    return record, data


@dataclass(frozen=True)
class Measured:
    """What training measured: the threshold, the calibration and the metrics the card reports."""

    threshold: Threshold
    calibration: Calibration
    validation: dict[str, Any]
    validation_clean: dict[str, Any] | None
    cross_validation: CrossValidation | None
    reliability: tuple[np.ndarray, np.ndarray, np.ndarray]  # validation labels, raw, calibrated


def _fit_and_measure(extracted: Features, rows: SplitRows, config: TrainConfig,
                     on_epoch: Callable[[int, dict[str, float]], None] | None,
                     should_stop: Callable[[], bool]) -> tuple[Any, dict[str, list[float]], Measured]:
    """Fit the head on the training rows, decide the map and threshold there, measure on validation."""
    x, y = extracted.vectors, rows.labels
    check_targets(y, rows.copies, rows.train, config)  # before anything is fitted
    head, history = fit_head(x[rows.train], y[rows.train], config, (x[rows.val], y[rows.val]), on_epoch,
                             should_stop)
    decision = decide(x[rows.train], y[rows.train], subset(rows.copies, rows.train), config)
    raw = np.zeros(len(y))
    raw[rows.val] = predict_head(head, x[rows.val])
    probability = decision.calibrate(raw)

    def measure(subset_rows: np.ndarray) -> dict[str, Any]:
        return binary_metrics(y[subset_rows], probability[subset_rows], decision.threshold.value,
                              seed=config.seed)

    calibration = Calibration(
        fitted=decision.calibration, raw_threshold=decision.threshold.raw, note=decision.note,
        file=CALIBRATION_FILE if decision.calibration else None,
        validation=before_and_after(y[rows.val], raw[rows.val], probability[rows.val], seed=config.seed))
    clean = measure(rows.val_without_copy) if config.split == "keras" else None
    folds = cross_validate(x, y, rows.copies, config) if config.folds else None
    return head, history, Measured(decision.threshold, calibration, measure(rows.val), clean, folds,
                                   (y[rows.val], raw[rows.val], probability[rows.val]))


def _build_card(model_id: str, started: dt.datetime, config: TrainConfig, weights: BackboneWeights,
                labelled: LabelledSet, extracted: Features, rows: SplitRows,
                history: dict[str, list[float]], measured: Measured,
                cache: FeatureCache | None, familiarity: FamiliarityCheck) -> ModelCard:
    return ModelCard(
        model_id=model_id,
        tool_version=__version__,
        created_at=started.isoformat(timespec="seconds"),
        warning=RANDOM_WARNING if weights.source == "random" else None,
        backbone=Backbone(weights=weights.label, weights_sha256=weights.sha256,
                          architecture=weights.architecture),
        cam_layer=CAM_LAYER,
        image_size=config.image_size,
        threshold=measured.threshold.value,
        threshold_rule=measured.threshold.rule,
        threshold_source=measured.threshold.source,
        target_sensitivity=config.target_sensitivity,
        certificate=measured.threshold.certificate,
        calibration=measured.calibration,
        data=_training_data(labelled, extracted, rows),
        split=Split(method=config.split, val_split=config.val_split, seed=config.seed,
                    train=_class_counts(rows.labels[rows.train]),
                    validation=_class_counts(rows.labels[rows.val]),
                    validation_files=tuple(labelled.files[extracted.indices[r]].relpath
                                           for r in sorted(rows.val.tolist()))),
        copies=copies_record(rows, labelled, extracted),
        hyperparameters=Hyperparameters(
            epochs=config.epochs, batch_size=config.batch_size, learning_rate=config.learning_rate,
            l2=config.l2, dropout=config.dropout, dense_units=HeadConfig().units, seed=config.seed),
        history=history,
        validation_metrics=measured.validation,
        validation_metrics_clean=measured.validation_clean,
        cross_validation=measured.cross_validation,
        training_images=TrainingImages(
            sha256s=tuple(extracted.sha256s[r] for r in rows.train.tolist()),
            fingerprints=tuple(extracted.fingerprints[r] for r in rows.train.tolist())),
        features=FeatureStats(extracted=len(extracted.indices) - extracted.from_cache,
                              from_cache=extracted.from_cache,
                              cache=str(cache.path) if cache else None, precision=config.precision),
        familiarity=familiarity,
    )


def _training_data(labelled: LabelledSet, extracted: Features, rows: SplitRows) -> TrainingData:
    skipped = tuple(SkippedFile(labelled.files[i].relpath, reason, status)
                    for i, status, reason in extracted.failed)
    return TrainingData(
        path=str(Path(labelled.root).resolve()),
        fingerprint=_fingerprint([(labelled.files[i].relpath, sha, int(rows.labels[row]))
                                  for row, (i, sha) in enumerate(zip(extracted.indices, extracted.sha256s))]),
        class_names=ClassNames(negative=labelled.class_names[0], positive=labelled.class_names[1]),
        n_images=len(extracted.indices),
        n_indexed=len(labelled.files),
        skipped=skipped,
        ignored=tuple(SkippedFile(p, r) for p, r in labelled.ignored),
    )


def _write_model_folder(out_dir: Path, model: Any, card: ModelCard, familiarity: bytes,
                        reliability: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """model.keras, its calibration map, the familiarity index, the curves, the reliability diagram
    and the card into a temporary folder, renamed into place."""
    from triage.report.charts import reliability_diagram, training_curves

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save(staging / MODEL_FILE)
        if card.calibration and card.calibration.fitted:
            write_calibration(card.calibration.fitted, staging)
        (staging / FAMILIARITY_FILE).write_bytes(familiarity)
        training_curves(card.history, staging / CURVES_FILE, title=out_dir.name)
        if card.calibration:
            reliability_diagram(*reliability, staging / RELIABILITY_FILE,
                                measured=card.calibration.validation,
                                title=f"Calibration on the validation set ({out_dir.name})")
        write_card(card, staging)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked before training
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
