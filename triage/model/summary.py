"""The facts of a model that a report and ``run.json`` show."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from triage.model.card import ModelCard


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
    threshold_source: str = "default"  # default, fixed or out-of-fold
    device: str = "cpu"  # where this run's forward pass ran: cpu or gpu
    precision: str = "fp32"  # what this run's forward pass ran in: fp32, bf16, fp16 or int8
    auto_precision: bool = False  # chosen by --precision auto
    auto_reason: str = ""  # why auto kept fp32 where it did
    margin: float | None = None  # the safety net's logit margin (a reduced precision), see engine.safety

    @property
    def random_backbone(self) -> bool:
        return self.backbone_weights == "random"


def model_summary(folder: Path, card: ModelCard, model_sha256: str, precision: str = "fp32",
                  device: str = "cpu", auto: bool = False, margin: float | None = None,
                  auto_reason: str = "") -> ModelSummary:
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
    )
