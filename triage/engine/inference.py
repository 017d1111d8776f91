"""A model ready to score with: found, loaded at a precision and device, forward pass and Grad-CAM built once.

One forward pass per batch gives both the probabilities and the activations
Grad-CAM needs, so ``evaluate`` and ``scan`` compute a file's probability with
the very same function. The forward pass gives the network's raw output;
:meth:`InferenceModel.calibrate` turns it into the reported probability with
the model's calibration map (the raw output itself for a model without one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from triage.engine.forward import ForwardPass
from triage.engine.gradcam import GradCam
from triage.engine.int8_pass import Int8Pass
from triage.errors import ModelError, UsageError
from triage.hashing import sha256_file
from triage.model.calibration import CALIBRATION_FILE, CalibrationMap, read_calibration
from triage.model.card import MODEL_FILE, ModelCard, check_threshold, read_card
from triage.model.familiarity import Familiarity, image_statistics
from triage.model.loading import find_model
from triage.model.network import (
    CAM_LAYER,
    choose_precision,
    gpu_available,
    load_classifier,
    use_device,
    with_precision,
)
from triage.model.openvino import openvino_available
from triage.model.summary import ModelSummary, model_summary
from triage.settings import DEVICES

log = logging.getLogger(__name__)


@dataclass
class InferenceModel:
    """A model ready to score with: its card, facts, and its forward pass and Grad-CAM built once.

    ``exact`` is the fp32 pass of a run in a reduced precision (its safety net, see
    :mod:`triage.engine.safety`), with the card's ``margin``; both None in fp32.
    """

    folder: Path
    card: ModelCard
    summary: ModelSummary
    forward: ForwardPass | Int8Pass
    gradcam: GradCam
    familiarity: Familiarity | None = None  # None: checked off, or a model without an index
    calibration: CalibrationMap | None = None  # None: a model trained before calibration maps
    exact: ForwardPass | None = None
    margin: float | None = None

    @property
    def image_size(self) -> int:
        return self.card.image_size

    @property
    def device(self) -> str:
        """Where the run's forward pass runs: ``cpu`` or ``gpu`` (on Ray, the actors')."""
        return self.summary.device

    @property
    def precision(self) -> str:
        """What the run's forward pass runs in: fp32, bf16, fp16 or int8 (on Ray, the actors')."""
        return self.summary.precision

    def predict(self, batch: np.ndarray) -> tuple[Any, np.ndarray]:
        """One forward pass: (activations at the CAM layer, raw network outputs (N,) as float64)."""
        return self.forward.run(batch)

    def calibrate(self, raw: np.ndarray | float) -> np.ndarray:
        """Calibrated probabilities of raw outputs, on the threshold's scale (without a map: the raw ones)."""
        if self.calibration is None:
            return np.asarray(raw, dtype=np.float64)
        return self.calibration.apply(raw)

    def score(self, batch: np.ndarray, exact: bool = False) -> tuple[Any, np.ndarray, np.ndarray | None]:
        """One forward pass: activations, probabilities, and each image's ``ood_distance`` (None when
        there is no familiarity check) from the same pass's pooled features; ``exact``: the fp32
        pass of the safety net (see :mod:`triage.engine.safety`)."""
        run = self.exact if exact and self.exact is not None else self.forward
        activations, pooled, probabilities = run.run_with_features(batch)
        if self.familiarity is None:
            return activations, probabilities, None
        return activations, probabilities, self.familiarity.distances(pooled, image_statistics(batch))

    def threshold(self, override: float | None = None) -> float:
        """The run's decision threshold (calibrated scale): ``override`` when given, else the model card's."""
        check_threshold(override)
        return self.card.threshold if override is None else override

    def probabilities(self, batch: np.ndarray, n: int) -> np.ndarray:
        """The raw network outputs of the first ``n`` rows of a (padded) batch."""
        return self.predict(batch)[1][:n]

    def scores(self, batch: np.ndarray, n: int) -> list[tuple[float, float | None]]:
        """(probability, ``ood_distance`` or None) of the first ``n`` rows of a (padded) batch."""
        _, probabilities, distances = self.score(batch)
        return [(float(p), None if distances is None else float(distances[i]))
                for i, p in enumerate(probabilities[:n])]


def load_for_inference(model: str | Path | None = None, device: str = "auto",
                       cam_layer: str = CAM_LAYER, precision: str = "auto",
                       familiarity: bool = True) -> InferenceModel:
    """Find, load and prepare a model at a precision (see :func:`triage.model.network.choose_precision`).

    The one place a loaded model gets its precision: fp32 exact, bf16 and fp16
    Keras's mixed policies (float32 head, output and Grad-CAM tail); XLA on a GPU.

    ``familiarity`` False leaves the familiarity check off for this run.

    Raises:
        ModelError: no usable model, a card that does not fit it, or a familiarity index that
            is missing or not the card's.
        UsageError: a GPU was asked for and there is none, or a precision this machine can't run.
    """
    if device not in DEVICES:
        raise UsageError(f"device must be one of {', '.join(DEVICES)}, got {device!r}.", option="device")
    folder = find_model(model)
    card = read_card(folder)
    on_gpu = device != "cpu" and gpu_available()
    if device == "gpu" and not on_gpu:
        raise UsageError("A GPU was asked for, but TensorFlow sees none.", option="device")
    measured = measured_precisions(card, precision)
    chosen = choose_precision(precision, on_gpu, measured)
    use_device(on_gpu)
    network = load_classifier(folder / MODEL_FILE)
    size = card.image_size
    if tuple(network.input.shape[1:]) != (size, size, 3):
        raise ModelError(f"The model card says image size {size}, but the model takes "
                         f"{tuple(network.input.shape[1:])}: the model folder is inconsistent.")
    device_used = "gpu" if on_gpu else "cpu"
    fast_path = card.fast_path(chosen)
    margin = fast_path.margin if fast_path else None
    why = auto_reason(measured) if precision == "auto" and chosen == "fp32" else ""
    index = load_familiarity(folder, card) if familiarity else None
    checked = "checked" if index is not None else ("off" if not familiarity else "none")
    calibration = _calibration(folder, card)
    mapped = sha256_file(folder / CALIBRATION_FILE) if calibration else None
    summary = model_summary(folder, card, sha256_file(folder / MODEL_FILE), chosen, device_used,
                            auto=precision == "auto", margin=margin, auto_reason=why, familiarity=checked,
                            calibration_sha256=mapped)
    exact = ForwardPass(network, cam_layer, jit_compile=on_gpu)
    forward = _fast_pass(folder, card, network, chosen, cam_layer, on_gpu) if chosen != "fp32" else exact
    gradcam = GradCam(network, cam_layer)
    log.info("model %s (%s), CAM layer %s, %s, precision %s%s, familiarity %s", summary.id, folder, cam_layer,
             "GPU, XLA" if on_gpu else "CPU", chosen,
             f", fp32 within logit margin {margin:.4g}" if margin else "", checked)
    net = None if forward is exact else exact
    return InferenceModel(folder, card, summary, forward, gradcam, index, calibration, net, margin)


def auto_reason(measured: dict[str, float]) -> str:
    """Why ``auto`` kept fp32: nothing measured, or nothing measured runs faster here."""
    if not measured:
        return "no faster precision measured for this model (triage precisions)"
    return "no measured precision is faster than fp32 here, with its fp32 re-scoring"


def measured_precisions(card: ModelCard, requested: str) -> dict[str, float]:
    """The reduced precisions the card holds a margin for, with their measured cost against fp32;
    ``auto`` leaves int8 out without OpenVINO."""
    measured = {path.precision: path.cost for path in card.fast_paths}
    if requested == "auto" and not openvino_available():
        measured.pop("int8", None)
    return measured


def _fast_pass(folder: Path, card: ModelCard, network: Any, precision: str, cam_layer: str,
               on_gpu: bool) -> ForwardPass | Int8Pass:
    if precision != "int8":
        return ForwardPass(with_precision(network, precision), cam_layer, jit_compile=on_gpu)
    if cam_layer != card.cam_layer:
        raise UsageError(f"The int8 network keeps the activations of {card.cam_layer}, not {cam_layer}: "
                         f"choose another precision for that layer.", option="precision")
    fast_path = card.fast_path("int8")
    assert fast_path is not None  # choose_precision saw it
    return Int8Pass(folder, fast_path.files, cam_layer)


def _calibration(folder: Path, card: ModelCard) -> CalibrationMap | None:
    """The folder's calibration map, which must be there exactly when the card records one (the
    card's threshold is on its scale).

    Raises:
        ModelError: the map is missing, unreadable, or not the card's.
    """
    calibration = read_calibration(folder)
    recorded = card.calibration is not None and card.calibration.fitted is not None
    if recorded and calibration is None:
        raise ModelError(f"The model card records a calibration map, but {folder / CALIBRATION_FILE} is "
                         f"missing: the model folder is incomplete.")
    if calibration is not None and not recorded:
        raise ModelError(f"{folder / CALIBRATION_FILE} does not belong to this model (its card records no "
                         f"calibration map): remove it or train the model again.")
    return calibration


def load_familiarity(folder: Path, card: ModelCard) -> Familiarity | None:
    """The model's familiarity index; None for a model trained before there was one.

    Raises:
        ModelError: the card names an index that is missing, altered or unreadable.
    """
    if card.familiarity is None:
        return None
    path = folder / card.familiarity.file
    try:
        if sha256_file(path) != card.familiarity.sha256:
            raise ValueError("it is not the file the card describes")
        return Familiarity.load(path)
    except (OSError, ValueError, KeyError) as error:
        raise ModelError(f"The familiarity index {path} of this model cannot be used ({error}): "
                         f"the model folder is incomplete or altered; train the model again.") from error
