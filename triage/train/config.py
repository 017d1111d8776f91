"""The settings of a training run (defaults: :mod:`triage.settings`, the thesis's recipe)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from triage import settings
from triage.errors import UsageError
from triage.model.card import check_threshold


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; the defaults reproduce the thesis."""

    epochs: int = settings.EPOCHS
    image_size: int = settings.IMAGE_SIZE
    batch_size: int = settings.TRAIN_BATCH_SIZE
    val_split: float = settings.VAL_SPLIT
    seed: int = settings.SEED
    learning_rate: float = settings.LEARNING_RATE
    l2: float = settings.L2
    dropout: float = settings.DROPOUT
    threshold: float = settings.THRESHOLD
    target_sensitivity: float | None = None
    confidence: float = settings.CONFIDENCE  # that the target sensitivity holds
    folds: int | None = None
    split: str = settings.SPLITS[0]  # "grouped" (copies kept on one side) or "keras" (the thesis's split)
    positive: str = settings.POSITIVE_CLASS
    backbone_weights: str = settings.BACKBONE_WEIGHTS
    precision: str = settings.PRECISIONS[0]  # of the feature extraction
    cache: bool = True
    cache_dir: Path | None = None

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs", "at least 1"),
            (self.image_size >= settings.MIN_IMAGE_SIZE, "image_size", f"at least {settings.MIN_IMAGE_SIZE}"),
            (self.batch_size >= 1, "batch_size", "at least 1"),
            (self.learning_rate > 0, "learning_rate", "positive"),
            (self.target_sensitivity is None or 0 < self.target_sensitivity <= 1,
             "target_sensitivity", "in (0, 1]"),
            (0 < self.confidence < 1, "confidence", "in (0, 1)"),
            (self.folds is None or self.folds >= 2, "folds", "at least 2"),
            (0 <= self.dropout < 1, "dropout", "in [0, 1)"),
            (self.l2 >= 0, "l2", ">= 0"),
            (self.split in settings.SPLITS, "split", f"one of {', '.join(settings.SPLITS)}"),
        ]
        check_threshold(self.threshold)
        for ok, name, rule in checks:
            if not ok:
                value = getattr(self, name)
                raise UsageError(f"The {name.replace('_', ' ')} must be {rule}, got {value}.", option=name)
