"""The model card: a typed, frozen record of how a model was made, and its file.

``triage train`` writes it beside ``model.keras``; scan, evaluate and the CLI
read it through :func:`read_card` only, so every field is looked up by name in
this module and nowhere else.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from triage.errors import ModelError, UsageError
from triage.model.calibration import CALIBRATION_FILE, CalibrationMap
from triage.outputs.atomic import atomic_write_text

MODEL_FILE = "model.keras"
CARD_FILE = "model_card.json"
CURVES_FILE = "training_curves.png"
RELIABILITY_FILE = "reliability_diagram.png"
# Schema 3: the threshold is on the calibrated scale of calibration.json. An older triage would
# compare it with raw outputs, so it refuses these cards and asks for an upgrade.
CARD_SCHEMA_VERSION = 3
# Schema 1 cards (before copies and threshold sources) and schema 2 cards (before calibration) read
# with those fields empty.
READABLE_SCHEMAS = (1, 2, 3)
RANDOM_WARNING = "RANDOM BACKBONE: built for tests and smoke runs only; its scores mean nothing."


def check_threshold(value: float | None) -> None:
    """A threshold given on the command line or in a config: a probability, or None for the card's.

    Raises:
        UsageError: not in [0, 1] (NaN included).
    """
    if value is not None and not 0 <= value <= 1:
        raise UsageError(f"The threshold must be in [0, 1], got {value}.", option="threshold")


def models_root() -> Path:
    """Where models go by default: ``$TRIAGE_MODELS`` or ``./models``."""
    return Path(os.environ.get("TRIAGE_MODELS") or "models")


@dataclass(frozen=True)
class Backbone:
    weights: str  # "imagenet", "random" or "file:PATH"
    weights_sha256: str
    architecture: str = "VGG19"
    include_top: bool = False
    frozen: bool = True


@dataclass(frozen=True)
class ClassNames:
    negative: str
    positive: str


@dataclass(frozen=True)
class SkippedFile:
    """A file of the data folder that was not trained on, and why."""

    path: str
    reason: str
    status: str = "ignored"


@dataclass(frozen=True)
class TrainingData:
    path: str
    fingerprint: str
    class_names: ClassNames
    n_images: int
    n_indexed: int
    skipped: tuple[SkippedFile, ...] = ()  # image files that could not be read
    ignored: tuple[SkippedFile, ...] = ()  # files that are not images


@dataclass(frozen=True)
class ClassCounts:
    n: int
    positive: int
    negative: int


@dataclass(frozen=True)
class Split:
    method: str  # "grouped" (copy groups kept on one side) or "keras" (the thesis's file-for-file split)
    val_split: float
    seed: int
    train: ClassCounts
    validation: ClassCounts
    validation_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class Hyperparameters:
    epochs: int
    batch_size: int
    learning_rate: float
    l2: float
    dropout: float
    dense_units: tuple[int, ...]
    seed: int
    optimizer: str = "Adam"
    loss: str = "binary_crossentropy"


@dataclass(frozen=True)
class FeatureStats:
    extracted: int
    from_cache: int
    cache: str | None
    precision: str = "fp32"  # of the backbone when the features were extracted (older cards: fp32)


@dataclass(frozen=True)
class CrossValidation:
    folds: int
    method: str
    seed: int
    metrics: dict[str, Any]
    thresholds: tuple[float, ...] = ()  # each fold's own, chosen on its training part
    calibration: dict[str, Any] | None = None  # Brier and ECE of all images, each fold's own map


@dataclass(frozen=True)
class Certificate:
    """A certified threshold: sensitivity >= ``sensitivity`` with probability >= ``confidence``.

    ``tumours``: the tumour images (copy groups counted once) of the training part it rests on,
    from out-of-fold predictions; ``missed``: how many of them fall below the threshold.
    """

    sensitivity: float
    confidence: float
    tumours: int
    missed: int
    method: str


@dataclass(frozen=True)
class Calibration:
    """The calibration map and what it did on the validation set.

    ``fitted`` is None when the out-of-fold scores gave no increasing map (``note`` says so):
    probabilities are then the raw output. ``validation``: Brier and ECE before and after the
    map, each with n and a 95% interval.
    """

    fitted: CalibrationMap | None
    raw_threshold: float
    validation: dict[str, Any]
    file: str | None = CALIBRATION_FILE
    reliability_diagram: str = RELIABILITY_FILE
    note: str = ""


@dataclass(frozen=True)
class Copies:
    """Copies of one scan in the training data (triage.labelled.copies) and where the split put them."""

    method: str
    groups: int
    files_in_groups: int
    validation_with_copy_in_training: int
    validation_files_with_copy: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainingImages:
    """Content hashes of the images the head was fitted on (no pixels), to recognise their copies later."""

    sha256s: tuple[str, ...] = ()
    fingerprints: tuple[str, ...] = ()


@dataclass(frozen=True)
class FastPath:
    """A reduced precision measured against fp32 on the validation part (``triage precisions``).

    The differences are of the probability (``dp``) and of the logit (``dz``), the latter
    being what the safety net's ``margin`` is made of: a row whose fast logit lies within
    ``margin`` of the threshold's is scored again in fp32. ``flips`` counts the validation
    decisions at the card's threshold that the precision would have changed without it;
    ``speedup`` and ``near_share`` (the share it scores again) give its ``cost`` against fp32,
    which ``--precision auto`` compares.
    ``files``: the network's files beside the model and their sha256 (int8), none for a
    Keras precision.
    """

    precision: str
    n: int
    median_dp: float
    max_dp: float
    max_dz: float
    flips: int
    margin: float
    measured_on: str  # the CPU's model name, or "gpu"
    measured_at: str
    files: dict[str, str] = field(default_factory=dict)
    speedup: float = 0.0  # fp32's seconds over this precision's, for the validation part, where measured
    near_share: float = 1.0  # validation images the net scores again in fp32 at the card's threshold

    @property
    def cost(self) -> float:
        """A scan's time in this precision, with its re-scoring, as a share of fp32's (over 1: slower)."""
        return (1 / self.speedup if self.speedup > 0 else float("inf")) + self.near_share


@dataclass(frozen=True)
class FamiliarityCheck:
    """How the model tells an unfamiliar image (:mod:`triage.model.familiarity`), and its false alarms.

    ``validation`` holds :func:`triage.labelled.metrics.wilson` of the validation images called
    unfamiliar: value, 95% interval and n.
    """

    method: str
    neighbours: int
    quantile: float
    feature_threshold: float
    statistics_threshold: float
    combined_threshold: float
    n_images: int
    n_entries: int
    file: str
    sha256: str
    validation: dict[str, Any] | None = None


@dataclass(frozen=True)
class ModelCard:
    """Everything known about a trained model (``schema_version`` :data:`CARD_SCHEMA_VERSION`).

    ``validation_metrics`` (and ``cross_validation.metrics``) hold what
    :func:`triage.labelled.metrics.binary_metrics` returns: per metric a value, its 95%
    interval and n.
    """

    model_id: str
    tool_version: str
    created_at: str
    backbone: Backbone
    cam_layer: str
    image_size: int
    threshold: float  # on the scale of the probability column (calibrated, schema 3)
    threshold_rule: str
    data: TrainingData
    split: Split
    hyperparameters: Hyperparameters
    validation_metrics: dict[str, Any]
    history: dict[str, list[float]] = field(default_factory=dict)
    cross_validation: CrossValidation | None = None
    features: FeatureStats | None = None
    threshold_source: str = "default"  # "default", "fixed", "certified" (or "out-of-fold", schema 2)
    target_sensitivity: float | None = None
    certificate: Certificate | None = None  # threshold_source "certified"
    calibration: Calibration | None = None  # None: trained before calibration (probability = raw)
    copies: Copies | None = None
    validation_metrics_clean: dict[str, Any] | None = None  # keras split: validation without copies
    training_images: TrainingImages = field(default_factory=TrainingImages)
    fast_paths: tuple[FastPath, ...] = ()  # reduced precisions measured against fp32 (triage precisions)
    preprocessing: str = ("decode as RGB, resize bilinear (no antialias, aspect not kept), "
                          "vgg19 caffe preprocess_input inside the model")
    model_file: str = MODEL_FILE
    warning: str | None = None
    familiarity: FamiliarityCheck | None = None  # None: trained before the check existed
    schema_version: int = CARD_SCHEMA_VERSION

    def metric(self, name: str) -> tuple[float, float, float, int] | None:
        """A validation metric as (value, CI low, CI high, n), or None when it was not defined."""
        found = self.validation_metrics.get(name) or {}
        if found.get("value") is None:
            return None
        return (found["value"], found["ci_low"], found["ci_high"], found["n"])

    def fast_path(self, precision: str) -> FastPath | None:
        """The measured margin and parity of a reduced precision, or None when it was not measured."""
        return next((path for path in self.fast_paths if path.precision == precision), None)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"


def write_card(card: ModelCard, folder: Path) -> None:
    atomic_write_text(folder / CARD_FILE, card.to_json())


def read_card(folder: Path) -> ModelCard:
    """The model card of a model folder.

    Raises:
        ModelError: the card is missing, unreadable, of another schema, or incomplete.
    """
    path = folder / CARD_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"Model folder {folder} has no {CARD_FILE}.") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"Model card {path} cannot be read: {exc}.") from exc
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version not in READABLE_SCHEMAS:
        raise ModelError(_schema_message(path, version))
    try:
        card = _build(ModelCard, raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"Model card {path} is incomplete or malformed ({exc}): train the model "
                         f"again with this version of triage.") from exc
    _check_values(card, path)
    return card


def _check_values(card: ModelCard, path: Path) -> None:
    """Refuse a card whose threshold or image size no model could have: it was edited or damaged.

    Raises:
        ModelError: one sentence naming the value.
    """
    threshold = card.threshold
    if isinstance(threshold, bool) or not 0 <= threshold <= 1:  # NaN fails both comparisons
        raise ModelError(f"Model card {path} has threshold {threshold!r}, which is not a probability "
                         f"in [0, 1]: correct it or train the model again.")
    size = card.image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ModelError(f"Model card {path} has image size {size!r}, which is not a positive whole "
                         f"number of pixels: correct it or train the model again.")


def _schema_message(path: Path, version: object) -> str:
    if isinstance(version, int) and version > CARD_SCHEMA_VERSION:
        return (f"Model card {path} has schema version {version}, newer than this triage reads "
                f"({CARD_SCHEMA_VERSION}): upgrade triage to use this model.")
    readable = " or ".join(str(v) for v in READABLE_SCHEMAS)
    return (f"Model card {path} is not a triage model card of schema {readable} "
            f"(schema_version {version!r}): train the model again with this version of triage.")


def _build(cls: type, data: Any) -> Any:
    """A dataclass from parsed JSON, recursing into nested records; missing fields raise KeyError."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__} must be an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    values = {}
    for item in dataclasses.fields(cls):
        if item.name not in data:
            if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
                raise KeyError(item.name)
            continue
        values[item.name] = _convert(hints[item.name], data[item.name])
    return cls(**values)


def _convert(hint: Any, value: Any) -> Any:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ValueError("a required field is null")
    kind = options[0]
    if dataclasses.is_dataclass(kind):
        return _build(kind, value)
    if typing.get_origin(kind) is tuple:
        element = typing.get_args(kind)[0]
        return tuple(_build(element, v) if dataclasses.is_dataclass(element) else v for v in value)
    if kind in (int, float, str, bool) and not isinstance(value, kind if kind is not float else (int, float)):
        raise ValueError(f"{value!r} is not a {kind.__name__}")
    return value
