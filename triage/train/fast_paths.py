"""``triage precisions``: the reduced precisions of a trained model, measured against fp32.

For each reduced precision this machine runs (bf16 where the CPU has it natively or on a
GPU, fp16 on a GPU, int8 where OpenVINO is installed), the validation part of the
model's data (the card's ``split.validation_files``) is scored in it and in fp32; the
differences, the safety net's margin made from them, the share of images within it and
the speed against fp32 go into the card (:class:`~triage.model.card.FastPath`), where
``--precision auto`` reads them. The int8 network is first built here: converted
by OpenVINO and quantised by NNCF, calibrated on the training part (at most
:data:`~triage.settings.CALIBRATION_IMAGES` images), and written beside the model.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from triage import settings
from triage.engine.forward import ForwardPass
from triage.engine.int8_pass import Int8Pass
from triage.engine.predictor import decode_image
from triage.engine.safety import logit
from triage.errors import DataError, ImageLoadError
from triage.labelled.dataset import LabelledFile, index_labelled
from triage.model.card import MODEL_FILE, FastPath, ModelCard, read_card, write_card
from triage.model.loading import find_model
from triage.model.network import (
    cpu_has_bf16,
    cpu_model,
    gpu_available,
    load_classifier,
    use_device,
    with_precision,
)
from triage.model.openvino import openvino_available, quantise, save_int8, to_openvino

log = logging.getLogger(__name__)


def measure_precisions(data_dir: Path, model: str | Path | None = None, *,
                       positive: str = settings.POSITIVE_CLASS, batch_size: int = settings.SCAN_BATCH_SIZE,
                       device: str = "auto") -> ModelCard:
    """Measure every reduced precision this machine runs against fp32, and record them in the card.

    Raises:
        DataError: the folder holds none of the card's validation files, or none of them decodes.
        ModelError, UsageError: see :mod:`triage.errors`.
    """
    folder = find_model(model)
    card = read_card(folder)
    training, validation = _parts(data_dir, positive, card)
    on_gpu = device != "cpu" and gpu_available()
    use_device(on_gpu)
    network = load_classifier(folder / MODEL_FILE)
    inputs = _model_inputs(validation, card.image_size)
    exact, exact_seconds = _timed_probabilities(ForwardPass(network, card.cam_layer).run, inputs, batch_size)
    measured = []
    for precision in _candidates(on_gpu):
        run, files = _fast_run(precision, network, card, folder, training, batch_size, on_gpu)
        fast, seconds = _timed_probabilities(run, inputs, batch_size)
        path = measure(precision, exact, fast, card.threshold, "gpu" if on_gpu else cpu_model(), files)
        measured.append(dataclasses.replace(path, speedup=exact_seconds / seconds))
        log.info("%s: %s", precision, measured[-1])
    kept = [path for path in card.fast_paths if path.precision not in {m.precision for m in measured}]
    updated = dataclasses.replace(card, fast_paths=tuple(sorted(kept + measured, key=lambda m: m.precision)))
    write_card(updated, folder)
    return updated


def _parts(data_dir: Path, positive: str, card: ModelCard) -> tuple[list[LabelledFile], list[LabelledFile]]:
    """(training part, validation part) of the labelled folder, as the card's split made them."""
    labelled = index_labelled(Path(data_dir), positive, seed=None)
    names = set(card.split.validation_files)
    validation = [item for item in labelled.files if item.relpath in names]
    if not validation:
        raise DataError(f"{data_dir} holds none of the {len(names)} validation files of the model card: "
                        f"give the folder the model was trained on.")
    return [item for item in labelled.files if item.relpath not in names], validation


def _candidates(on_gpu: bool) -> list[str]:
    found = ["fp16", "bf16"] if on_gpu else (["bf16"] if cpu_has_bf16() else [])
    if not on_gpu and openvino_available():
        found.append("int8")
    return found


def _fast_run(precision: str, network: Any, card: ModelCard, folder: Path, training: Sequence[LabelledFile],
              batch_size: int, on_gpu: bool) -> tuple[Callable[[np.ndarray], Any], dict[str, str]]:
    if precision != "int8":
        return ForwardPass(with_precision(network, precision), card.cam_layer, jit_compile=on_gpu).run, {}
    calibration = _model_inputs(training[:settings.CALIBRATION_IMAGES], card.image_size)
    batches = [calibration[i:i + batch_size] for i in range(0, len(calibration), batch_size)]
    files = save_int8(quantise(to_openvino(network, card.cam_layer), batches), folder)
    return Int8Pass(folder, files, card.cam_layer).run, files


def _model_inputs(files: Sequence[LabelledFile], image_size: int) -> np.ndarray:
    """The model inputs of the files that decode (the others are left out, logged)."""
    inputs = []
    for item in files:
        try:
            inputs.append(decode_image(item.path, image_size, display=False).pixels)
        except (ImageLoadError, OSError) as err:
            log.warning("%s left out: %s", item.relpath, err)
    if not inputs:
        raise DataError("None of the validation files could be read.")
    return np.stack(inputs)


def _timed_probabilities(run: Callable[[np.ndarray], Any], inputs: np.ndarray,
                         batch_size: int) -> tuple[np.ndarray, float]:
    """Probabilities of ``inputs``, and the seconds they took after a first batch (tracing, warm-up)."""
    _probabilities(run, inputs[:batch_size], batch_size)
    start = time.perf_counter()
    return _probabilities(run, inputs, batch_size), time.perf_counter() - start


def _probabilities(run: Callable[[np.ndarray], Any], inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """Probabilities of ``inputs`` in batches padded to ``batch_size``, as a scan computes them."""
    out = []
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start:start + batch_size]
        padded = np.concatenate([batch, np.zeros((batch_size - len(batch), *batch.shape[1:]), batch.dtype)])
        out.append(run(padded)[1][:len(batch)])
    return np.concatenate(out)


def measure(precision: str, exact: np.ndarray, fast: np.ndarray, threshold: float, measured_on: str,
            files: dict[str, str]) -> FastPath:
    """A precision's parity with fp32, and the safety net's logit margin made from it."""
    dp = np.abs(fast - exact)
    dz = np.abs(logit(fast) - logit(exact))
    flips = int(np.sum((fast >= threshold) != (exact >= threshold)))
    margin = settings.SAFETY_FACTOR * float(dz.max())
    near = float(np.mean(np.abs(logit(fast) - logit(threshold)) <= margin))
    return FastPath(precision=precision, n=len(exact), median_dp=float(np.median(dp)), max_dp=float(dp.max()),
                    max_dz=float(dz.max()), flips=flips, margin=margin, measured_on=measured_on,
                    measured_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), files=files,
                    near_share=near)
