"""Custom Keras layers of the saved model (imported only where Keras is needed)."""

from __future__ import annotations

from typing import Any

import keras

# Caffe-style VGG preprocessing, as keras.applications.vgg19.preprocess_input.
VGG_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="triage")
class CaffePreprocess(keras.layers.Layer):
    """RGB 0..255 -> BGR minus the ImageNet mean: ``vgg19.preprocess_input`` as a layer.

    A registered layer rather than a Lambda, so that the saved model loads in safe mode.
    """

    def call(self, inputs: Any) -> Any:
        ops = keras.ops
        bgr = ops.flip(ops.cast(inputs, self.compute_dtype), axis=-1)
        return bgr - ops.convert_to_tensor(VGG_BGR_MEAN, dtype=self.compute_dtype)
