"""Where a trained model is found (``--model``, ``$TRIAGE_MODEL``, or the newest under ``models/``),
and what a run's outputs must keep clear of."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from triage.errors import ModelError
from triage.model.card import CARD_FILE, MODEL_FILE, models_root
from triage.outputs.placement import Protected, Written, check_writes

log = logging.getLogger(__name__)


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
                             f"and {CARD_FILE}, as written by `triage train`.", option="model")
        return folder
    root = models_root()
    candidates = sorted(
        (p for p in root.glob(f"*/{CARD_FILE}") if (p.parent / MODEL_FILE).is_file()),
        key=lambda p: (_created_at(p), p.parent.name),
    ) if root.is_dir() else []
    if not candidates:
        raise ModelError(f"No trained model found under {root.resolve()}: run `triage train "
                         f"DATA_DIR` first, or name a model folder.", option="model")
    return candidates[-1].parent


def _created_at(card_path: Path) -> str:
    """The card's creation time, read leniently: a broken card only sorts first here."""
    try:
        return str(json.loads(card_path.read_text(encoding="utf-8")).get("created_at", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def is_model_folder(folder: Path) -> bool:
    """A folder that holds a model file or a model card (the user's model: never written into)."""
    return (folder / MODEL_FILE).is_file() or (folder / CARD_FILE).is_file()


def check_run_writes(written: list[Written], data: Protected, model_folder: Path | None = None) -> None:
    """A run's outputs keep clear of its input or data folder, its model folder and that model's files
    (links followed), and of every other model folder: none is written in, over or around.

    Raises:
        UsageError: one sentence naming the first clash.
    """
    protected = [data]
    if model_folder is not None:
        protected += [("the model folder", model_folder), ("the model file", model_folder / MODEL_FILE),
                      ("the model card", model_folder / CARD_FILE)]
    for _, _, path in written:
        protected += [("the model folder", folder) for folder in (path, *path.absolute().parents)
                      if is_model_folder(folder)]
    check_writes(written, protected)
