"""The facts of a model that a report and ``run.json`` show."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from triage.model.card import ModelCard

RAW = "probabilities are the network's raw output"


@dataclass(frozen=True)
class ModelSummary:
    """The facts about a model that a report and ``run.json`` show."""

    id: str
    path: str
    sha256: str
    version: str
    threshold: float
    image_size: int
    backbone_weights: str
    trained_on: str
    trained_at: str
    val_sensitivity: tuple[float, float, float, int] | None  # value, CI low, CI high, n
    val_specificity: tuple[float, float, float, int] | None
    val_images: int | None = None  # the validation set those two were measured on
    val_split: str = ""  # how that set was split off: grouped or keras
    threshold_source: str = "default"  # default, fixed, certified (or out-of-fold, older models)
    device: str = "cpu"  # where this run's forward pass ran: cpu or gpu
    precision: str = "fp32"  # what this run's forward pass ran in: fp32, bf16, fp16 or int8
    auto_precision: bool = False  # chosen by --precision auto
    auto_reason: str = ""  # why auto kept fp32 where it did
    margin: float | None = None  # the safety net's logit margin (a reduced precision), see engine.safety
    familiarity: str = "none"  # "checked", "off" (--no-familiarity) or "none" (a model without an index)
    val_unfamiliar: tuple[float, float, float, int] | None = None  # validation images called unfamiliar
    certified: str | None = None  # what a certified threshold promises, in one sentence
    calibration: str = ""  # how probabilities were calibrated, or why they are not, in one sentence
    calibration_sha256: str | None = None  # of calibration.json; None without one

    @property
    def random_backbone(self) -> bool:
        return self.backbone_weights == "random"


def model_summary(folder: Path, card: ModelCard, model_sha256: str, precision: str = "fp32",
                  device: str = "cpu", auto: bool = False, margin: float | None = None,
                  auto_reason: str = "", familiarity: str = "none",
                  calibration_sha256: str | None = None) -> ModelSummary:
    """The facts of a model that a report and ``run.json`` show."""
    data = card.data
    trained_on = (f"{data.path} ({data.n_images} images, "
                  f"{data.class_names.negative}/{data.class_names.positive})")
    return ModelSummary(
        id=card.model_id, path=str(folder.resolve()), sha256=model_sha256,
        version=card.tool_version, threshold=card.threshold, image_size=card.image_size,
        backbone_weights=card.backbone.weights, trained_on=trained_on, trained_at=card.created_at,
        val_sensitivity=card.metric("sensitivity"), val_specificity=card.metric("specificity"),
        val_images=card.split.validation.n, val_split=card.split.method,
        threshold_source=card.threshold_source, precision=precision, device=device,
        auto_precision=auto, margin=margin, auto_reason=auto_reason,
        familiarity=familiarity, val_unfamiliar=_proportion(card.familiarity.validation)
        if card.familiarity and card.familiarity.validation else None,
        certified=certified_sentence(card), calibration=calibration_sentence(card),
        calibration_sha256=calibration_sha256,
    )


def _proportion(found: dict) -> tuple[float, float, float, int] | None:
    if found.get("value") is None:
        return None
    return (found["value"], found["ci_low"], found["ci_high"], found["n"])


def certified_sentence(card: ModelCard) -> str | None:
    """``sensitivity ≥ 0.90 with 90% confidence, from 118 tumour images (...)``, or None."""
    cert = card.certificate
    if cert is None:
        return None
    return (f"sensitivity ≥ {cert.sensitivity:.2f} with {cert.confidence:.0%} confidence, from "
            f"{cert.tumours} tumour images of the training part ({cert.missed} below the threshold)")


def calibration_sentence(card: ModelCard) -> str:
    """How the model's probabilities are calibrated, or why they are not."""
    calibration = card.calibration
    if calibration is None:
        return f"none: this model was trained before calibration, so {RAW}"
    if calibration.fitted is None:
        return f"none: {calibration.note}, so {RAW}"
    measured = calibration.validation
    sentence = (f"Platt scaling fitted on {calibration.fitted.fitted_on} out-of-fold predictions of the "
                f"training part")
    if measured["before"]["brier"]["value"] is None:
        return sentence
    return sentence + (
        f"; on the {measured['n']} validation images Brier {measured['before']['brier']['value']:.3f} → "
        f"{measured['after']['brier']['value']:.3f}, ECE {measured['before']['ece']['value']:.3f} → "
        f"{measured['after']['ece']['value']:.3f} (raw → calibrated)")
