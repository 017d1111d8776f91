"""Model folders and their cards: find, read and summarise a trained model."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from triage.errors import ModelError
from triage.results import ModelSummary

MODEL_FILE = "model.keras"
CARD_FILE = "model_card.json"
CURVES_FILE = "training_curves.png"
CARD_SCHEMA_VERSION = 1


def models_root() -> Path:
    """Where models go by default: ``$TRIAGE_MODELS`` or ``./models``."""
    return Path(os.environ.get("TRIAGE_MODELS") or "models")


def find_model(model: str | Path | None = None) -> Path:
    """The model folder to use: ``model``, ``$TRIAGE_MODEL``, or the newest under :func:`models_root`.

    ``model`` may name a model folder or its ``model.keras`` file.

    Raises:
        ModelError: nothing usable is found.
    """
    chosen = model or os.environ.get("TRIAGE_MODEL")
    if chosen:
        path = Path(chosen).expanduser()
        folder = path.parent if path.is_file() else path
        if not (folder / MODEL_FILE).is_file():
            raise ModelError(f"No model at {chosen}: expected a folder holding {MODEL_FILE} "
                             f"and {CARD_FILE}, as written by `triage train`.")
        return folder
    root = models_root()
    candidates = sorted(
        (p for p in root.glob(f"*/{CARD_FILE}") if (p.parent / MODEL_FILE).is_file()),
        key=lambda p: (_created_at(p), p.parent.name),
    ) if root.is_dir() else []
    if not candidates:
        raise ModelError(f"No trained model found under {root.resolve()}: run `triage train "
                         f"DATA_DIR` first, or pass --model.")
    return candidates[-1].parent


def _created_at(card_path: Path) -> str:
    try:
        return str(json.loads(card_path.read_text(encoding="utf-8")).get("created_at", ""))
    except (OSError, ValueError):
        return ""


def read_card(folder: Path) -> dict[str, Any]:
    """The model card of a model folder.

    Raises:
        ModelError: the card is missing or not valid JSON.
    """
    path = folder / CARD_FILE
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"Model folder {folder} has no {CARD_FILE}.") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"Model card {path} cannot be read: {exc}.") from exc
    if not isinstance(card, dict) or "image_size" not in card or "threshold" not in card:
        raise ModelError(f"Model card {path} lacks image_size or threshold.")
    return card


def _metric(card: dict[str, Any], name: str) -> tuple[float, float, float, int] | None:
    metric = (card.get("validation_metrics") or {}).get(name) or {}
    if metric.get("value") is None:
        return None
    return (metric["value"], metric["ci_low"], metric["ci_high"], metric["n"])


def summarise(folder: Path, card: dict[str, Any], model_sha256: str) -> ModelSummary:
    """The facts of a model that a report shows."""
    data = card.get("data", {})
    trained_on = f"{data.get('path', '?')} ({data.get('n_images', '?')} images, " \
                 f"{'/'.join((data.get('class_names') or {}).values()) or '?'})"
    return ModelSummary(
        id=card.get("model_id", folder.name),
        path=str(folder.resolve()),
        sha256=model_sha256,
        version=str(card.get("tool_version", "?")),
        threshold=float(card["threshold"]),
        image_size=int(card["image_size"]),
        backbone_weights=str(card.get("backbone", {}).get("weights", "?")),
        trained_on=trained_on,
        trained_at=str(card.get("created_at", "?")),
        val_sensitivity=_metric(card, "sensitivity"),
        val_specificity=_metric(card, "specificity"),
    )
