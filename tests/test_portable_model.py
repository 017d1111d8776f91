"""model.keras is built-in Keras only: it loads without triage, and older models still load in triage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest


def _images() -> np.ndarray:
    return np.random.default_rng(5).uniform(0, 255, (6, 32, 32, 3)).astype(np.float32)


def _python(code: str, cwd: Path, with_triage: bool = False) -> None:
    """Run ``code`` in a fresh Python from ``cwd``; triage is importable there only ``with_triage``."""
    import triage

    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if with_triage:
        env["PYTHONPATH"] = str(Path(triage.__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_preprocess_layer_is_vgg19_preprocess_input() -> None:
    import keras

    from triage.model.network import preprocess_layer

    layer = preprocess_layer()
    assert type(layer) is keras.layers.Conv2D and not layer.trainable and not layer.trainable_weights
    images = np.random.default_rng(0).uniform(0, 255, (4, 256, 256, 3)).astype(np.float32)
    expected = keras.applications.vgg19.preprocess_input(images.copy())
    np.testing.assert_array_equal(np.asarray(layer(images)), expected)  # exact: x * 1 + 0s + bias


@pytest.mark.slow  # a real process, which imports TensorFlow
def test_model_has_no_custom_layer_and_loads_with_plain_keras(vgg19_model: Path, trained_model: Path,
                                                             tmp_path: Path) -> None:
    """The real VGG19 graph and the tiny test model alike, in one fresh process."""
    from triage.model.network import load_classifier

    model_files = [vgg19_model / "model.keras", trained_model / "model.keras"]
    for model_file in model_files:
        with zipfile.ZipFile(model_file) as archive:
            config = archive.read("config.json").decode()
        assert "triage>" not in config and "CaffePreprocess" not in config
        assert json.loads(config)["config"]["layers"][1]["class_name"] == "Conv2D"

    np.save(tmp_path / "images.npy", _images())
    _python(f"""
        import sys
        import keras
        import numpy as np

        images = np.load("images.npy")
        for i, path in enumerate({[str(f) for f in model_files]!r}):
            np.save(f"probabilities{{i}}.npy", keras.models.load_model(path).predict(images, verbose=0))
        assert "triage" not in sys.modules, "triage was imported"
        """, cwd=tmp_path)
    for i, model_file in enumerate(model_files):
        plain = np.load(tmp_path / f"probabilities{i}.npy")
        ours = load_classifier(model_file).predict(_images(), verbose=0)
        assert plain.shape == (6, 1)
        np.testing.assert_allclose(plain, ours, rtol=0, atol=1e-6)


@pytest.mark.slow  # a real process, which imports TensorFlow
def test_old_model_with_caffe_preprocess_still_loads(trained_model: Path, tmp_path: Path) -> None:
    """An old-style model (CaffePreprocess first) loads in a fresh process through load_classifier."""
    import keras

    from triage.model.layers import CaffePreprocess
    from triage.model.network import PREPROCESS_LAYER, load_classifier

    new = load_classifier(trained_model / "model.keras")
    image = keras.Input(new.input.shape[1:], name="image")
    x = CaffePreprocess(name=PREPROCESS_LAYER)(image)
    for layer in new.layers[2:]:
        x = layer(x)
    keras.Model(image, x).save(tmp_path / "old.keras")
    with zipfile.ZipFile(tmp_path / "old.keras") as archive:
        assert "triage>CaffePreprocess" in archive.read("config.json").decode()

    np.save(tmp_path / "images.npy", _images())
    _python(f"""
        import numpy as np
        from pathlib import Path

        from triage.model.network import load_classifier

        model = load_classifier(Path("old.keras"))
        assert type(model.get_layer({PREPROCESS_LAYER!r})).__name__ == "CaffePreprocess"
        np.save("probabilities.npy", model.predict(np.load("images.npy"), verbose=0))
        """, cwd=tmp_path, with_triage=True)
    old = np.load(tmp_path / "probabilities.npy")
    np.testing.assert_allclose(old, new.predict(_images(), verbose=0), rtol=0, atol=1e-6)


@pytest.mark.parametrize("policy, atol", [("mixed_float16", 2e-3), ("mixed_bfloat16", 5e-2)])
def test_preprocessing_survives_a_dtype_policy(trained_model: Path, policy: str, atol: float) -> None:
    from triage.model.network import PREPROCESS_LAYER, load_classifier, with_dtype_policy

    model = load_classifier(trained_model / "model.keras")
    copy = with_dtype_policy(model, policy)
    layer = copy.get_layer(PREPROCESS_LAYER)
    assert layer.dtype_policy.name == policy and not layer.trainable
    for ours, theirs in zip(layer.get_weights(), model.get_layer(PREPROCESS_LAYER).get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    probabilities = np.asarray(copy(_images())).ravel()
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, np.asarray(model(_images())).ravel(), atol=atol)
