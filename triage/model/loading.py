"""The one place a trained model is found and loaded for inference (scan and evaluate).

A loaded model runs one forward pass per batch that gives both the
probabilities and the activations Grad-CAM needs, so ``evaluate`` and ``scan``
compute a file's probability with the very same function.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from triage import __version__
from triage.errors import ModelError, UsageError
from triage.hashing import sha256_file
from triage.model.card import CARD_FILE, MODEL_FILE, ModelCard, models_root, read_card
from triage.model.network import CAM_LAYER, gpu_available, load_classifier, use_device
from triage.results.records import ModelSummary

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "gpu")


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


@dataclass
class InferenceModel:
    """A model ready to score with: its card, facts, and the forward pass + Grad-CAM built once."""

    folder: Path
    card: ModelCard
    summary: ModelSummary
    gradcam: Any

    @property
    def image_size(self) -> int:
        return self.card.image_size

    @property
    def device(self) -> str:
        """Where the run's forward pass runs: ``cpu`` or ``gpu`` (on Ray, the actors')."""
        return self.summary.device

    @property
    def precision(self) -> str:
        """What the run's forward pass runs in: fp32, bf16 or fp16 (on Ray, the actors')."""
        return self.summary.precision

    def predict(self, batch: np.ndarray) -> tuple[Any, np.ndarray]:
        """One forward pass: (activations at the CAM layer, probabilities (N,) as float64)."""
        return self.gradcam.predict(batch)

    def probabilities(self, batch: np.ndarray, n: int) -> np.ndarray:
        """The probabilities of the first ``n`` rows of a (padded) batch."""
        return self.predict(batch)[1][:n]


def load_for_inference(model: str | Path | None = None, device: str = "auto",
                       cam_layer: str = CAM_LAYER, precision: str = "auto") -> InferenceModel:
    """Find, load and prepare a model at a precision (see :func:`triage.model.network.choose_precision`).

    The one place a loaded model gets its precision: fp32 exact, bf16 and fp16
    Keras's mixed policies (float32 head, output and Grad-CAM tail); XLA on a GPU.

    Raises:
        ModelError: no usable model, or a card that does not fit it.
        UsageError: a GPU was asked for and there is none, or a precision this machine can't run.
    """
    from triage.engine.gradcam import GradCam
    from triage.model.network import choose_precision, with_precision

    if device not in DEVICES:
        raise UsageError(f"device must be one of {', '.join(DEVICES)}, got {device!r}.", option="device")
    folder = find_model(model)
    card = read_card(folder)
    on_gpu = device != "cpu" and gpu_available()
    if device == "gpu" and not on_gpu:
        raise UsageError("A GPU was asked for, but TensorFlow sees none.", option="device")
    chosen = choose_precision(precision, on_gpu)
    use_device(on_gpu)
    network = load_classifier(folder / MODEL_FILE)
    size = card.image_size
    if tuple(network.input.shape[1:]) != (size, size, 3):
        raise ModelError(f"The model card says image size {size}, but the model takes "
                         f"{tuple(network.input.shape[1:])}: the model folder is inconsistent.")
    network = with_precision(network, chosen)
    summary = summarise(folder, card, sha256_file(folder / MODEL_FILE), chosen, "gpu" if on_gpu else "cpu")
    gradcam = GradCam(network, cam_layer, jit_compile=on_gpu)
    log.info("model %s (%s), CAM layer %s, %s, precision %s", summary.id, folder, cam_layer,
             "GPU, XLA" if on_gpu else "CPU", chosen)
    return InferenceModel(folder, card, summary, gradcam)


def summarise(folder: Path, card: ModelCard, model_sha256: str, precision: str = "fp32",
              device: str = "cpu") -> ModelSummary:
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
    )


def library_versions() -> dict[str, str]:
    """Versions of the tool and the libraries that decide its numbers."""
    from importlib.metadata import PackageNotFoundError, version

    import tensorflow as tf

    # tensorflow ships as several distributions (tensorflow, tensorflow-cpu, ...): ask the module.
    found = {"triage": __version__, "python": platform.python_version(), "tensorflow": tf.__version__}
    for name in ("keras", "numpy", "opencv-python-headless", "pillow", "pydicom",
                 "weasyprint", "jinja2"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
