"""The one forward pass: probabilities and the activations Grad-CAM needs, together."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from triage.model.network import CAM_LAYER, FEATURE_LAYER, cam_layer

if TYPE_CHECKING:
    import keras


class ForwardPass:
    """The model with a second output at the CAM layer, compiled once per run.

    Args:
        model: A triage classifier (see :mod:`triage.model.network`).
        layer: The convolutional layer whose activations are kept for Grad-CAM.
        jit_compile: Compile with XLA (worth it on a GPU).

    Raises:
        CamLayerNotFound: the layer is missing or not spatial.
    """

    def __init__(self, model: "keras.Model", layer: str = CAM_LAYER, jit_compile: bool = False) -> None:
        import keras
        import tensorflow as tf

        self.layer_name = layer
        pooled = model.get_layer(FEATURE_LAYER).output
        outputs = keras.Model(model.input, [cam_layer(model, layer).output, pooled, model.output])
        self._run = tf.function(lambda x: outputs(x, training=False), jit_compile=jit_compile,
                                reduce_retracing=True)

    def run(self, images: np.ndarray) -> tuple[Any, np.ndarray]:
        """One forward pass: (activations at the CAM layer, probabilities (N,) as float64)."""
        activations, _, probabilities = self.run_with_features(images)
        return activations, probabilities

    def run_with_features(self, images: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray]:
        """One forward pass: activations at the CAM layer, pooled features (N, 512) as float32, and
        probabilities (N,) as float64."""
        activations, pooled, probability = self._run(images)
        return (activations, np.asarray(pooled, dtype=np.float32),
                np.asarray(probability, dtype=np.float64).reshape(-1))
