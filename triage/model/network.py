"""The classifier: VGG19 backbone + the thesis's dense head, as one flat Keras model.

The whole network is one chain of layers (preprocessing, the VGG19 blocks by
their usual names, ``features`` = global average pooling, the head, ``logit``,
``probability``), so feature extraction, scanning and Grad-CAM are sub-graphs
of the saved model rather than copies of it. Only built-in Keras layers, so
``model.keras`` loads with plain ``keras.models.load_model``, without triage.
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from triage.errors import CamLayerNotFound, ModelError, UsageError, WeightsUnavailable
from triage.hashing import sha256_file
from triage.model.preprocess import VGG_BGR_MEAN
from triage.settings import DENSE_UNITS, DROPOUT, L2, PRECISIONS

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

CAM_LAYER = "block5_conv4"
FEATURE_LAYER = "features"
LOGIT_LAYER = "logit"
PREPROCESS_LAYER = "vgg19_preprocess"
# The Keras dtype policy of each precision (None: plain float32).
DTYPE_POLICIES = {"fp32": None, "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
IMAGENET_WEIGHTS_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg19/" + IMAGENET_WEIGHTS_FILE
)
# For tests only: ``random`` weights on two small conv blocks instead of VGG19's sixteen convolutions.
TINY_BACKBONE = "random-tiny"
TINY_ARCHITECTURE = "tiny CNN for tests (2 conv layers, random weights), not VGG19"


@dataclass(frozen=True)
class HeadConfig:
    """The dense head of the thesis; ``l2`` is cut off in its listing, so it is a choice."""

    l2: float = L2
    dropout: float = DROPOUT
    units: tuple[int, ...] = DENSE_UNITS


@dataclass(frozen=True)
class BackboneWeights:
    """Where the backbone's weights come from: ``imagenet``, ``random`` or a file."""

    source: str  # "imagenet", "random" or "file"
    path: Path | None
    sha256: str
    seed: int = 0
    architecture: str = "VGG19"  # or TINY_ARCHITECTURE

    @property
    def label(self) -> str:
        return {"imagenet": "imagenet", "random": "random"}.get(self.source, f"file:{self.path}")


def keras_cache_weights_path() -> Path:
    """Where Keras keeps downloaded application weights (``$KERAS_HOME`` or ``~/.keras``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models" / IMAGENET_WEIGHTS_FILE


def _offline_message(cached: Path) -> str:
    return (
        f"VGG19 ImageNet weights are not cached and could not be downloaded: download "
        f"{IMAGENET_WEIGHTS_URL} and put it at {cached}, or give the path of a local copy"
    )


def resolve_backbone_weights(spec: str, seed: int = 0) -> BackboneWeights:
    """Find the backbone weights named by ``spec`` without building a model.

    Args:
        spec: ``imagenet`` (Keras's cache, downloading there if missing),
            ``random`` (seeded random init, for tests and smoke runs only),
            ``random-tiny`` (a seeded tiny CNN in VGG19's place, for tests only) or
            the path of a local ``.h5`` file of VGG19 notop weights.
        seed: Seed of the ``random`` backbone.

    Returns:
        The resolved weights with the sha256 that keys the feature cache.

    Raises:
        WeightsUnavailable: ImageNet weights can't be had, or the file is missing.
    """
    if spec == "random":
        return BackboneWeights("random", None, f"random-seed-{seed}", seed)
    if spec == TINY_BACKBONE:
        return BackboneWeights("random", None, f"{TINY_BACKBONE}-seed-{seed}", seed, TINY_ARCHITECTURE)
    if spec == "imagenet":
        cached = keras_cache_weights_path()
        if not cached.is_file():
            try:
                import keras

                fetched = keras.utils.get_file(
                    IMAGENET_WEIGHTS_FILE, IMAGENET_WEIGHTS_URL, cache_subdir="models",
                    file_hash="253f8cb515780f3b799900260a226db6",
                )
                cached = Path(fetched)
            except Exception as exc:  # any network or disk failure means the same to a user
                raise WeightsUnavailable(_offline_message(cached), option="backbone_weights") from exc
        return BackboneWeights("imagenet", cached, sha256_file(cached))
    path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsUnavailable(
            f"Backbone weights file {spec} does not exist: name imagenet, random or the path "
            f"of {IMAGENET_WEIGHTS_FILE}.", option="backbone_weights"
        )
    return BackboneWeights("file", path.resolve(), sha256_file(path))


def _keras() -> Any:
    import keras

    return keras


def preprocess_layer() -> "keras.layers.Layer":
    """``vgg19.preprocess_input`` as a frozen built-in 1x1 convolution: RGB -> BGR minus the mean.

    A built-in layer, so the saved model loads in any Keras without triage. Every output
    channel is one input channel times 1 (the rest times 0) plus a bias, which is exact in
    float32.
    """
    import numpy as np

    keras = _keras()
    layer = keras.layers.Conv2D(3, 1, name=PREPROCESS_LAYER, trainable=False)
    layer.build((None, None, None, 3))
    kernel = np.eye(3, dtype=np.float32)[::-1].reshape(1, 1, 3, 3)  # input channel i -> output 2 - i
    layer.set_weights([kernel, -np.asarray(VGG_BGR_MEAN, dtype=np.float32)])
    return layer


def build_backbone(image_size: int, weights: BackboneWeights) -> "keras.Model":
    """The frozen backbone behind the preprocessing layer: image -> block5_pool.

    VGG19 without its top, or for tests (``weights.architecture`` TINY_ARCHITECTURE)
    two small conv blocks under the layer names the rest of triage reads.

    Raises:
        WeightsUnavailable: the weights file does not fit VGG19.
    """
    keras = _keras()
    if weights.source == "random":
        keras.utils.set_random_seed(weights.seed)
    tiny = weights.architecture == TINY_ARCHITECTURE
    layers = _tiny_layers() if tiny else _vgg19_layers(image_size, weights)
    image = keras.Input((image_size, image_size, 3), name="image")
    x = preprocess_layer()(image)
    for layer in layers:  # a plain chain: one flat graph
        layer.trainable = False
        x = layer(x)
    return keras.Model(image, x, name="tiny_backbone" if tiny else "vgg19_backbone")


def _vgg19_layers(image_size: int, weights: BackboneWeights) -> list["keras.layers.Layer"]:
    keras = _keras()
    if image_size < 32:
        raise ValueError(f"image size must be at least 32 for VGG19, got {image_size}")
    try:
        vgg = keras.applications.VGG19(
            include_top=False, input_shape=(image_size, image_size, 3),
            weights=None if weights.source == "random" else str(weights.path),
        )
    except (ValueError, OSError) as exc:
        raise WeightsUnavailable(
            f"Backbone weights file {weights.path} is not VGG19 notop weights: {exc}"
        ) from exc
    return vgg.layers[1:]


def _tiny_layers() -> list["keras.layers.Layer"]:
    """Two conv blocks, the second one named as VGG19's Grad-CAM layer, with VGG19's 512 channels
    (the feature cache holds 512 features an image)."""
    keras = _keras()
    return [
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="block1_conv1"),
        keras.layers.MaxPooling2D(name="block1_pool"),
        keras.layers.Conv2D(512, 3, padding="same", activation="relu", name=CAM_LAYER),
        keras.layers.MaxPooling2D(name="block5_pool"),
    ]


def build_head(feature_dim: int, config: HeadConfig) -> "keras.Model":
    """features (GAP of block5_pool) -> Dense/Dropout stack -> logit -> probability."""
    keras = _keras()
    features = keras.Input((feature_dim,), name="pooled")
    x = features
    regulariser = keras.regularizers.L2(config.l2) if config.l2 else None
    for units in config.units:
        x = keras.layers.Dense(units, activation="relu", kernel_regularizer=regulariser,
                               name=f"dense_{units}")(x)
        x = keras.layers.Dropout(config.dropout, name=f"dropout_{units}")(x)
    logit = keras.layers.Dense(1, name=LOGIT_LAYER)(x)
    probability = keras.layers.Activation("sigmoid", dtype="float32", name="probability")(logit)
    return keras.Model(features, probability, name="head")


def feature_extractor(backbone: "keras.Model") -> "keras.Model":
    """image -> 512-d pooled features: the part of the network that training runs once."""
    keras = _keras()
    pooled = keras.layers.GlobalAveragePooling2D(name=FEATURE_LAYER)(backbone.output)
    return keras.Model(backbone.input, pooled, name="feature_extractor")


def assemble(extractor: "keras.Model", head: "keras.Model") -> "keras.Model":
    """The whole classifier, sharing the layers (and so the weights) of both parts."""
    keras = _keras()
    x = extractor.output
    for layer in head.layers[1:]:
        x = layer(x)
    return keras.Model(extractor.input, x, name="triage_vgg19")


def load_classifier(path: Path) -> "keras.Model":
    """Load a saved ``.keras`` classifier (no network needed), older ones with CaffePreprocess too.

    Raises:
        ModelError: the file is missing or not a triage classifier.
    """
    keras = _keras()
    import triage.model.layers  # noqa: F401  registers CaffePreprocess, the preprocessing of older models
    if not path.is_file():
        raise ModelError(f"Model file {path} does not exist.")
    if not zipfile.is_zipfile(path):  # Keras says "File not found" of a cut or foreign file
        raise ModelError(f"Model file {path} is not a whole Keras archive (cut short, or another kind "
                         f"of file): copy it again from where it was trained.")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:  # keras raises many types for a bad archive
        raise ModelError(f"Cannot load model {path}: {exc}") from exc
    names = {layer.name for layer in model.layers}
    if not {FEATURE_LAYER, LOGIT_LAYER, "probability"} <= names:
        raise ModelError(f"{path} is not a triage classifier (layers {sorted(names)[:5]}...).")
    return model


def cam_layer(model: "keras.Model", name: str = CAM_LAYER) -> "keras.layers.Layer":
    """The Grad-CAM layer, checked to be a spatial feature map.

    Raises:
        CamLayerNotFound: no such layer, or its output is not (N, H, W, C) with H, W > 1.
    """
    try:
        layer = model.get_layer(name)
    except ValueError as exc:
        raise CamLayerNotFound(f"Layer {name!r} is not in the model.") from exc
    shape = tuple(layer.output.shape)
    if len(shape) != 4 or shape[1] is None or shape[1] < 2 or shape[2] < 2:
        raise CamLayerNotFound(
            f"Layer {name!r} must output (N, H, W, C) with H, W > 1, got {shape}."
        )
    return layer


def gpu_available() -> bool:
    """Whether TensorFlow sees a GPU (one this process has not hidden, see :func:`use_device`)."""
    import tensorflow as tf

    return bool(tf.config.get_visible_devices("GPU"))


def use_device(on_gpu: bool) -> None:
    """Set up TensorFlow's GPUs before a model is loaded.

    A CPU run hides them: TensorFlow would otherwise place the forward pass on a
    GPU anyway, and reserve its memory. A GPU run lets memory grow as needed, so
    other processes (Ray actors, another run) can share the card. TensorFlow
    accepts neither once it has started; a second model in one process keeps the
    first one's setting, said in the log.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return
    try:
        if on_gpu:
            for gpu in gpus:
                tf.config.experimental.set_memory_growth(gpu, True)
        else:
            tf.config.set_visible_devices([], "GPU")
    except RuntimeError as error:
        log.warning("TensorFlow has started already, so its GPU settings stay as they were (a CPU "
                    "run may use the GPU): %s", error)


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (Linux); none where it can't be read."""
    try:
        text = Path(cpuinfo).read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    return frozenset(next((line.split(":", 1)[1].split() for line in text.splitlines()
                           if line.startswith("flags") and ":" in line), []))


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name (``/proc/cpuinfo``), or ``unknown``."""
    try:
        text = Path(cpuinfo).read_text(encoding="ascii", errors="replace")
    except OSError:
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.startswith("model name") and ":" in line), "unknown")


def cpu_has_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU does bfloat16 arithmetic natively (flag ``avx512_bf16`` or ``amx_bf16``, Linux).

    Anywhere ``cpuinfo`` can't be read (another system) the answer is no.
    """
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags(cpuinfo))


def cpu_has_int8(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU has 8-bit dot products (``avx512_vnni``, ``avx_vnni`` or ``amx_int8``).

    Without them OpenVINO's INT8 runs on AVX2 at about fp32's speed (1.2x measured).
    """
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags(cpuinfo))


def _native(precision: str, on_gpu: bool) -> bool:
    if precision == "int8":
        return not on_gpu and cpu_has_int8()
    if precision == "fp16":
        return on_gpu
    return precision == "fp32" or on_gpu or cpu_has_bf16()


# Where measured costs tie: 8-bit dot products do four times the work of fp32 per instruction, bf16 twice.
_FASTEST_FIRST = ("int8", "fp16", "bf16")


def choose_precision(requested: str, on_gpu: bool, measured: Mapping[str, float] | None = None) -> str:
    """The precision a run uses: ``fp32``, ``bf16``, ``fp16`` or ``int8``.

    A scan or an evaluation (``measured`` given: the reduced precisions whose margin the
    model card holds, see ``triage precisions``, each with its measured cost, a share of
    fp32's time counting the images its safety net scores again) runs a reduced precision
    only with that net, so ``auto`` is the cheapest precision this machine runs natively
    among those measured, if it is cheaper than fp32, else fp32. Training's feature
    extraction (``measured`` None) has no safety net: ``auto`` is fp16 on a GPU, fp32 on a CPU.

    Raises:
        UsageError: an unknown precision, fp16 without a GPU, bf16 on a CPU without
            native bfloat16, int8 on a GPU or in training, or a reduced precision the card
            has no measured margin for.
    """
    if requested not in PRECISIONS:
        raise UsageError(f"The precision must be one of {', '.join(PRECISIONS)}, got {requested!r}.",
                         option="precision")
    if requested == "auto":
        if measured is None:
            return "fp16" if on_gpu else "fp32"
        costs = {p: cost for p, cost in measured.items() if _native(p, on_gpu) and cost < 1}
        return min(costs, key=lambda p: (costs[p], _FASTEST_FIRST.index(p))) if costs else "fp32"
    _check_runs_here(requested, on_gpu, training=measured is None)
    if requested != "fp32" and measured is not None and requested not in measured:
        raise UsageError(f"The model card holds no measured {requested} margin, without which {requested} "
                         f"could change decisions: run triage precisions on the model first.",
                         option="precision")
    return requested


def _check_runs_here(requested: str, on_gpu: bool, training: bool) -> None:
    if requested == "fp16" and not on_gpu:
        raise UsageError("fp16 runs only on a GPU, and none is in use: on a CPU choose bf16 (where the "
                         "CPU has native bfloat16), int8 or fp32.", option="precision")
    if requested == "bf16" and not on_gpu and not cpu_has_bf16():
        raise UsageError("This CPU has no native bfloat16 (AVX512_BF16 or AMX), so bf16 would run "
                         "slower than fp32 here: choose fp32.", option="precision")
    if requested == "int8" and (on_gpu or training):
        raise UsageError("int8 runs only on the CPU, for scan and evaluate: choose the CPU device, "
                         "or another precision.", option="precision")


def with_precision(model: "keras.Model", precision: str) -> "keras.Model":
    """The network to run at ``precision`` (see :func:`choose_precision`): the model itself for fp32
    and int8 (whose network is OpenVINO's, see :mod:`triage.model.openvino`)."""
    policy = DTYPE_POLICIES.get(precision)
    return with_dtype_policy(model, policy) if policy else model


def with_dtype_policy(model: "keras.Model", policy: str) -> "keras.Model":
    """The same network under another dtype policy (e.g. ``mixed_float16`` on a GPU).

    Only the backbone (preprocessing and VGG19 blocks) takes the policy: the
    pooled features, the dense head and the probability stay float32. They
    cost next to nothing, and so the features, the logit and the probability
    are not rounded to 8 or 11 bits.
    """
    keras = _keras()
    names = [layer.name for layer in model.layers]
    exact = set(names[names.index(FEATURE_LAYER):]) if FEATURE_LAYER in names else {"probability"}

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        if not isinstance(layer, keras.layers.InputLayer):
            config["dtype"] = "float32" if layer.name in exact else policy
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy
