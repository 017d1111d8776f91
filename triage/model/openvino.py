"""The INT8 network: the trained model through OpenVINO, quantised by NNCF, beside the model.

OpenVINO and NNCF are an optional extra (``pip install 'triage[openvino]'``). The
network has the outputs of :class:`triage.engine.forward.ForwardPass`: the
activations at the CAM layer, the pooled features and the probability. NNCF's post-training quantisation
calibrates it on training images; what it cannot make exact is caught by the fp32
safety net (:mod:`triage.engine.safety`). The files are written beside
``model.keras``, and their sha256 go into the card, which is checked on loading.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from triage.errors import ModelError, UsageError
from triage.hashing import sha256_file

if TYPE_CHECKING:
    import keras

INSTALL_HINT = "pip install 'triage[openvino]'"
INT8_XML = "model_int8.xml"
INT8_BIN = "model_int8.bin"


def require_openvino() -> Any:
    """The openvino module, or one sentence on how to install it (exit code 2).

    Raises:
        UsageError: OpenVINO is not installed.
    """
    try:
        import openvino
    except ImportError as err:
        raise UsageError(f"int8 runs through OpenVINO, which is not installed: {INSTALL_HINT}.",
                         option="precision") from err
    return openvino


def require_nncf() -> Any:
    """The nncf module (it quantises), or one sentence on how to install it.

    Raises:
        UsageError: NNCF is not installed.
    """
    require_openvino()
    try:
        import nncf
    except ImportError as err:
        raise UsageError(f"Building the int8 network needs NNCF, which is not installed: {INSTALL_HINT}.",
                         option="precision") from err
    return nncf


def openvino_available() -> bool:
    """Whether the openvino extra is installed (without importing it)."""
    import importlib.util
    import sys

    def found(name: str) -> bool:
        if name in sys.modules:
            return sys.modules[name] is not None  # None: its import is blocked
        return importlib.util.find_spec(name) is not None

    return found("openvino") and found("nncf")


def to_openvino(network: "keras.Model", cam_layer: str) -> Any:
    """The float32 network as an OpenVINO model: image -> (CAM-layer activations, pooled features,
    probability), the outputs of :meth:`triage.engine.forward.ForwardPass.run_with_features`."""
    import keras
    import tensorflow as tf

    from triage.model.network import FEATURE_LAYER

    ov = require_openvino()
    outputs = keras.Model(network.input, [network.get_layer(cam_layer).output,
                                          network.get_layer(FEATURE_LAYER).output, network.output])
    size = tuple(network.input.shape[1:])
    function = tf.function(lambda x: outputs(x, training=False),
                           input_signature=[tf.TensorSpec((None, *size), tf.float32)])
    return ov.convert_model(function.get_concrete_function())


def quantise(model: Any, batches: Sequence[np.ndarray]) -> Any:
    """The model with 8-bit weights and activations, calibrated on ``batches`` of model inputs.

    The MIXED preset (symmetric weights, asymmetric activations): the first layer's input
    is the image minus ImageNet's mean, which is not centred on 0.
    """
    nncf = require_nncf()
    return nncf.quantize(model, nncf.Dataset(list(batches)), subset_size=sum(len(b) for b in batches),
                         preset=nncf.QuantizationPreset.MIXED)


def save_int8(model: Any, folder: Path) -> dict[str, str]:
    """Write the network beside the model (each file whole, by rename); the sha256 of each file."""
    ov = require_openvino()
    staging = folder / ".int8-partial"
    staging.mkdir(exist_ok=True)
    ov.save_model(model, staging / INT8_XML, compress_to_fp16=False)
    digests = {}
    for name in (INT8_BIN, INT8_XML):  # the .xml last: a reader finds both or the old pair
        os.replace(staging / name, folder / name)
        digests[name] = sha256_file(folder / name)
    staging.rmdir()
    return digests


def compile_int8(folder: Path, files: dict[str, str]) -> Any:
    """The INT8 network of a model folder compiled for the CPU, its files checked against the card.

    Non-quantised layers (the dense head) compute in float32: OpenVINO's default on a
    CPU with bfloat16 would round them to bf16.

    Raises:
        ModelError: a file is missing or is not the one the card names.
        UsageError: OpenVINO is not installed.
    """
    ov = require_openvino()
    for name, digest in files.items():
        path = folder / name
        if not path.is_file():
            raise ModelError(f"The int8 network file {path} is missing: run triage precisions again.")
        if sha256_file(path) != digest:
            raise ModelError(f"The int8 network file {path} is not the one the model card names "
                             f"(sha256 differs): run triage precisions again.")
    return ov.Core().compile_model(folder / INT8_XML, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
