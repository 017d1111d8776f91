"""Grad-CAM from the activations of the one forward pass.

The backbone is frozen and the network is a chain, so the gradient of the
tumour logit with respect to ``block5_conv4`` depends only on the small tail
after it (block5_pool -> pooling -> dense head). :class:`GradCam` builds that
tail once per run; each heat map then costs a backward pass through a few
thousand weights instead of a second run of VGG19. The tail runs in float32
whatever the model's precision, so a mixed-precision scan's heat maps are
float32 maps of the same activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from triage.errors import CamLayerNotFound
from triage.model.network import CAM_LAYER, LOGIT_LAYER, cam_layer, with_dtype_policy

if TYPE_CHECKING:
    import keras

HEAT_WEIGHT = 0.4  # overlay = 0.4 * JET heat map + 0.6 * image, as in the thesis
IMAGE_WEIGHT = 0.6


@dataclass(frozen=True)
class Target:
    """What is explained: the tumour logit, with a declared sign (-1 explains "no tumour").

    The logit rather than the sigmoid output: the two give the same normalised
    map (the sigmoid's slope is a positive factor per image), but the logit's
    gradient does not vanish when the probability saturates at 0 or 1.
    """

    sign: float = 1.0


class GradCam:
    """Head-only Grad-CAM for one model, from the activations its forward pass kept.

    Args:
        model: A triage classifier (see :mod:`triage.model.network`).
        layer: Name of the convolutional layer to explain at.
        target: What to explain.

    Raises:
        CamLayerNotFound: the layer is missing or not spatial.
    """

    def __init__(self, model: "keras.Model", layer: str = CAM_LAYER, target: Target = Target()) -> None:
        import tensorflow as tf

        self.layer_name = layer
        conv = cam_layer(model, layer)
        self.tail = self._tail(model, conv)
        sign = float(target.sign)

        def maps(activations: Any) -> Any:
            activations = tf.cast(activations, tf.float32)  # bfloat16 or float16 under a mixed policy
            with tf.GradientTape() as tape:
                tape.watch(activations)
                logit = self.tail(activations, training=False)
                # Each row's logit depends only on its own activations, so the
                # gradient of the sum is every image's own gradient at once.
                score = sign * tf.reduce_sum(logit)
            grads = tape.gradient(score, activations)
            channel_weights = tf.reduce_mean(grads, axis=(1, 2))
            cams = tf.einsum("nhwc,nc->nhw", activations, channel_weights)
            return tf.nn.relu(cams)

        self._maps = tf.function(maps, reduce_retracing=True)

    @staticmethod
    def _tail(model: "keras.Model", conv: Any) -> "keras.Model":
        import keras

        names = [layer.name for layer in model.layers]
        start = names.index(conv.name) + 1
        if LOGIT_LAYER not in names[start:]:
            raise CamLayerNotFound(f"Layer {conv.name!r} does not come before {LOGIT_LAYER!r}.")
        activations = keras.Input(tuple(conv.output.shape[1:]), name="cam_activations")
        x = activations
        for layer in model.layers[start:names.index(LOGIT_LAYER) + 1]:
            x = layer(x)
        if tuple(x.shape[1:]) != (1,):
            raise CamLayerNotFound(f"The tail after {conv.name!r} outputs {x.shape}, expected (N, 1).")
        # A float32 copy with the same weights: under a mixed policy the model's own
        # layers would compute the gradients in bfloat16 or float16.
        return with_dtype_policy(keras.Model(activations, x, name="cam_tail"), "float32")

    def heatmaps(self, activations: Any) -> np.ndarray:
        """Grad-CAM maps (N, h, w) in [0, 1] from the activations a ForwardPass kept.

        A row whose map is not finite comes back all NaN (see :func:`usable`); the others are unaffected.
        """
        if len(activations.shape) != 4:
            raise ValueError(f"expected (N, H, W, C) activations, got {tuple(activations.shape)}")
        return normalise_maps(np.asarray(self._maps(activations)))


NOT_FINITE = "the Grad-CAM map had non-finite values"


def normalise_maps(cams: np.ndarray) -> np.ndarray:
    """Scale each map to max 1 (an all-zero map stays zero).

    A map with a non-finite value comes back all NaN, the marker :func:`usable`
    tests for, so one bad map costs its own image its heat map and nothing else.
    """
    flat = np.asarray(cams, dtype=np.float32).reshape(len(cams), -1)
    finite = np.isfinite(flat).all(axis=1)
    peak = np.where(finite, flat.max(axis=1), 1.0)
    scaled = flat / np.where(peak > 0, peak, 1.0)[:, None]
    scaled[~finite] = np.nan
    return scaled.reshape(np.shape(cams))


def usable(cam: np.ndarray) -> bool:
    """False for the marker :func:`normalise_maps` gives a map that was not finite."""
    return bool(np.isfinite(cam).all())


def overlay(pixels: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """Blend a heat map over an RGB image at the image's own size and aspect ratio.

    Args:
        pixels: (H, W, 3) uint8 RGB, the decoded image.
        cam: (h, w) map in [0, 1].

    Returns:
        (H, W, 3) uint8 RGB: 0.4 x JET colour map + 0.6 x image.
    """
    height, width = pixels.shape[:2]
    upsampled = cv2.resize(cam.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    heat_bgr = cv2.applyColorMap(np.uint8(np.clip(upsampled, 0, 1) * 255), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat_bgr, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(heat, HEAT_WEIGHT, pixels, IMAGE_WEIGHT, 0.0)


def gradcam_full_tape(model: "keras.Model", images: np.ndarray, layer: str = CAM_LAYER) -> np.ndarray:
    """The thesis's Grad-CAM, as a reference: a sub-model to the layer and the output,
    the whole network run again under a tape, gradients of the probability.

    Used by tests and benchmarks to check :class:`GradCam`; far slower.
    """
    import keras
    import tensorflow as tf

    grad_model = keras.Model(model.input, [model.get_layer(layer).output, model.output])
    with tf.GradientTape() as tape:
        activations, predictions = grad_model(images, training=False)
        score = predictions[:, 0]
    grads = tape.gradient(score, activations)
    weights = tf.reduce_mean(grads, axis=(1, 2))
    cams = tf.nn.relu(tf.einsum("nhwc,nc->nhw", activations, weights))
    return normalise_maps(np.asarray(cams))
