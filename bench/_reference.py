"""The parity model and images of the precision benchmarks, rebuilt the same on any Keras backend.

``bench/precision.py`` (TensorFlow, CPU) and ``bench/gpu_check.sh`` (Keras on PyTorch or
JAX, on a GPU machine where neither TensorFlow nor the 80 MB of VGG19 weights can be
carried) need the same network with the same weights. So the weights are not shipped:
they are drawn here from a seeded NumPy generator, and ``gpu_reference.json`` holds what
cannot be drawn (the logit layer, fitted to spread the probabilities), the sha256 of all
weights, and the fp32 CPU probabilities of the generated images below.

The backbone is triage's VGG19 graph with He-normal weights (std sqrt(2 / fan in), zero
biases): unlike Keras's Glorot-uniform random init, whose activations shrink layer after
layer until every image gives nearly the same probability, He scaling keeps the
activations' size through the 16 ReLU convolutions, so the features depend on the image.
The logit layer is then rescaled so that the logits of a set of images have a median of
0 and a standard deviation of :data:`LOGIT_SPREAD`: probabilities spread over (0, 1) and
about half the images are flagged at 0.5. Needs only NumPy and Keras 3 (any backend).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

SEED = 20261125
LOGIT_SPREAD = 2.0
REFERENCE_FILE = Path(__file__).resolve().parent / "gpu_reference.json"


def build(image_size: int, logit: tuple[np.ndarray, np.ndarray] | None = None) -> Any:
    """triage's classifier at ``image_size`` with the seeded He-normal weights (see the module)."""
    import keras

    from triage.model.network import (
        LOGIT_LAYER,
        PREPROCESS_LAYER,
        BackboneWeights,
        HeadConfig,
        assemble,
        build_backbone,
        build_head,
        feature_extractor,
    )

    extractor = feature_extractor(build_backbone(image_size, BackboneWeights("random", None, "he", 0)))
    assembled = assemble(extractor, build_head(512, HeadConfig()))
    model = keras.models.clone_model(assembled)  # one graph whose layers are its own, like a loaded model
    model.set_weights(assembled.get_weights())
    rng = np.random.default_rng(SEED)
    for layer in model.layers:
        if layer.name == PREPROCESS_LAYER or len(layer.get_weights()) != 2:
            continue
        kernel, bias = layer.get_weights()
        std = np.sqrt(2.0 / np.prod(kernel.shape[:-1]))
        layer.set_weights([(rng.standard_normal(kernel.shape) * std).astype(np.float32),
                           np.zeros_like(bias)])
    if logit is not None:
        model.get_layer(LOGIT_LAYER).set_weights([np.asarray(w, np.float32) for w in logit])
    return model


def spread_logit(model: Any, images: np.ndarray, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Logit weights that give ``images`` logits of median 0 and std :data:`LOGIT_SPREAD` (fp32)."""
    import keras

    from triage.model.network import LOGIT_LAYER

    logit = model.get_layer(LOGIT_LAYER)
    to_logit = keras.Model(model.input, logit.output)
    z = np.concatenate([np.asarray(to_logit.predict_on_batch(images[i:i + batch_size])).ravel()
                        for i in range(0, len(images), batch_size)])
    scale = LOGIT_SPREAD / max(float(z.std()), 1e-12)
    kernel, bias = logit.get_weights()
    return kernel * scale, (bias - np.median(z)) * scale


def weights_sha256(model: Any) -> str:
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight, dtype="<f4").tobytes())
    return digest.hexdigest()


def images(n: int, image_size: int, seed: int = SEED) -> np.ndarray:
    """``n`` generated 'scans' (N, S, S, 3) float32 in 0..255: dark noise, every other one a bright disc.

    Model inputs directly (no file, no decoder), so both machines feed the very same numbers.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:image_size, :image_size]
    out = np.empty((n, image_size, image_size, 3), np.float32)
    for i in range(n):
        image = rng.normal(40, 12, (image_size, image_size))
        if i % 2 == 0:
            cy, cx = rng.integers(image_size // 4, 3 * image_size // 4, 2)
            radius = rng.integers(image_size // 10, image_size // 4)
            image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = rng.uniform(150, 255)
        out[i] = np.round(image.clip(0, 255))[..., None]
    return out


def write_reference(path: Path, record: dict[str, Any]) -> None:
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def read_reference(path: Path = REFERENCE_FILE) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))
