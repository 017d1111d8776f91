"""Grad-CAM: the head-only gradient equals the thesis's full-tape Grad-CAM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from triage.engine.forward import ForwardPass
from triage.engine.gradcam import GradCam, Target, gradcam_full_tape, normalise_maps, overlay, usable
from triage.errors import CamLayerNotFound
from triage.testing import tiny_classifier


def _small_model(tmp_path: Path, reload: bool):
    """The tiny classifier (untrained): preprocessing, two conv blocks, GAP, dense, logit, sigmoid."""
    import keras

    model = tiny_classifier()
    if reload:
        model.save(tmp_path / "small.keras")
        model = keras.saving.load_model(tmp_path / "small.keras")
    return model


@pytest.mark.parametrize("reload", [False, True], ids=["built", "saved-and-reloaded"])
def test_head_only_gradcam_equals_full_tape(tmp_path: Path, reload: bool) -> None:
    model = _small_model(tmp_path, reload=reload)
    # Near the preprocessing's mean, so that the sigmoid is not saturated (the full tape's gradient
    # goes through it).
    images = np.random.default_rng(0).uniform(105, 125, (6, 32, 32, 3)).astype(np.float32)
    cam = GradCam(model)
    activations, probabilities = ForwardPass(model).run(images)
    ours = cam.heatmaps(activations)
    reference = gradcam_full_tape(model, images)
    assert ours.shape == reference.shape == (6, 16, 16)
    assert np.abs(ours - reference).max() < 1e-4
    assert (ours.reshape(6, -1).max(axis=1) > 0.99).sum() >= 1  # not all-zero maps
    np.testing.assert_allclose(probabilities, np.asarray(model(images)).ravel(), atol=1e-6)


def test_gradcam_on_the_real_vgg19_classifier(vgg19_model: Path) -> None:
    from triage.model.network import load_classifier

    model = load_classifier(vgg19_model / "model.keras")
    images = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    cam = GradCam(model)
    ours = cam.heatmaps(ForwardPass(model).run(images)[0])
    reference = gradcam_full_tape(model, images)
    assert ours.shape == (3, 2, 2)
    assert np.abs(ours - reference).max() < 1e-4


def test_negative_target_explains_the_other_class(tmp_path: Path) -> None:
    """sign=-1 gives ReLU(-raw map) where sign=+1 gives ReLU(raw map): disjoint supports."""
    import keras
    import tensorflow as tf

    model = _small_model(tmp_path, reload=False)
    images = np.random.default_rng(2).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    outputs = [model.get_layer("block5_conv4").output, model.get_layer("logit").output]
    probe = keras.Model(model.input, outputs)
    with tf.GradientTape() as tape:
        activations, logit = probe(images, training=False)
        score = tf.reduce_sum(logit)
    grads = tape.gradient(score, activations)
    raw = np.einsum("nhwc,nc->nhw", np.asarray(activations), np.asarray(grads).mean(axis=(1, 2)))
    assert (raw > 0).any() and (raw < 0).any()

    maps = {}
    for sign in (1.0, -1.0):
        cam = GradCam(model, target=Target(sign=sign))
        maps[sign] = cam.heatmaps(ForwardPass(model).run(images)[0])
    np.testing.assert_allclose(maps[1.0], normalise_maps(np.maximum(raw, 0)), atol=1e-5)
    np.testing.assert_allclose(maps[-1.0], normalise_maps(np.maximum(-raw, 0)), atol=1e-5)
    assert not ((maps[1.0] > 0) & (maps[-1.0] > 0)).any()
    assert maps[-1.0].max() == 1.0


def test_cam_layer_is_checked(tmp_path: Path) -> None:
    model = _small_model(tmp_path, reload=False)
    with pytest.raises(CamLayerNotFound, match="not in the model"):
        GradCam(model, layer="block9_conv9")
    with pytest.raises(CamLayerNotFound, match="must output"):
        GradCam(model, layer="dense_8")


def test_normalise_and_overlay() -> None:
    cams = np.array([[[0.0, 2.0], [1.0, 0.5]], [[0.0, 0.0], [0.0, 0.0]]], dtype=np.float32)
    scaled = normalise_maps(cams)
    assert scaled[0].max() == 1.0 and scaled[0, 1, 0] == 0.5 and not scaled[1].any()
    marked = normalise_maps(np.concatenate([cams, [[[np.inf, 1.0], [0.0, 0.0]]]]))  # one map not finite
    np.testing.assert_array_equal(marked[:2], scaled)
    assert usable(marked[0]) and usable(marked[1]) and not usable(marked[2]) and np.isnan(marked[2]).all()
    image = np.full((30, 50, 3), 100, dtype=np.uint8)  # not square: the overlay keeps its aspect
    blended = overlay(image, scaled[0])
    assert blended.shape == (30, 50, 3) and blended.dtype == np.uint8
    # 0.4 x JET(0) (dark blue, RGB 0,0,128) + 0.6 x 100 at the cold corner
    np.testing.assert_allclose(blended[0, 0], [60, 60, 60 + 0.4 * 128], atol=2)


def test_mixed_precision_copy_agrees_with_fp32(trained_model: Path) -> None:
    """The GPU path (mixed_float16) keeps the weights and a float32 output, and its CAM runs."""
    from triage.model.network import load_classifier, with_dtype_policy

    model = load_classifier(trained_model / "model.keras")
    mixed = with_dtype_policy(model, "mixed_float16")
    assert mixed.get_layer("block5_conv4").dtype_policy.compute_dtype == "float16"
    images = np.random.default_rng(3).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    cam = GradCam(mixed)
    activations, probabilities = ForwardPass(mixed).run(images)
    assert probabilities.dtype == np.float64 and activations.dtype.name == "float16"
    np.testing.assert_allclose(probabilities, np.asarray(model(images)).ravel(), atol=2e-3)
    maps = cam.heatmaps(activations)
    assert maps.shape == (4, *model.get_layer("block5_conv4").output.shape[1:3]) and np.isfinite(maps).all()
