"""The forward pass of the INT8 network (:mod:`triage.model.openvino`), shaped like ForwardPass."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from triage.model.openvino import compile_int8


class Int8Pass:
    """One OpenVINO inference per batch: CAM-layer activations (float32) and probabilities.

    The activations feed :class:`triage.engine.gradcam.GradCam`, whose tail is the float32
    model's: the heat map of an INT8 row is the float32 head's gradient at the INT8
    activations.
    """

    def __init__(self, folder: Path, files: dict[str, str], layer: str) -> None:
        self.layer_name = layer
        self._compiled = compile_int8(folder, files)

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One forward pass: (activations at the CAM layer, probabilities (N,) as float64)."""
        activations, _, probabilities = self.run_with_features(images)
        return activations, probabilities

    def run_with_features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One forward pass: activations at the CAM layer, pooled features (N, 512) as float32, and
        probabilities (N,) as float64."""
        result = self._compiled(np.ascontiguousarray(images, dtype=np.float32))
        return (np.asarray(result[0]), np.asarray(result[1], dtype=np.float32),
                np.asarray(result[2], dtype=np.float64).reshape(-1))
