"""Custom Keras layers found in older saved models (imported only to load them)."""

from __future__ import annotations

from typing import Any

import keras

from triage.model.preprocess import VGG_BGR_MEAN


@keras.saving.register_keras_serializable(package="triage")
class CaffePreprocess(keras.layers.Layer):
    """RGB 0..255 -> BGR minus the ImageNet mean: ``vgg19.preprocess_input`` as a layer.

    Kept only so that models saved with it still load in triage; new models use the
    built-in 1x1 convolution of :func:`triage.model.network.preprocess_layer` instead.
    """

    def call(self, inputs: Any) -> Any:
        ops = keras.ops
        bgr = ops.flip(ops.cast(inputs, self.compute_dtype), axis=-1)
        return bgr - ops.convert_to_tensor(VGG_BGR_MEAN, dtype=self.compute_dtype)
