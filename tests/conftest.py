"""Shared fixtures (no network, no downloads); the generators they use are in triage.testing."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from triage.testing import IMAGE_SIZE, make_blob_dataset, train_tiny_model


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test session gets its own feature cache and models folder; nothing touches ~."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("TRIAGE_CACHE", str(base / "feature-cache"))
    monkeypatch.setenv("KERAS_HOME", str(base / "keras-home"))
    monkeypatch.delenv("TRIAGE_MODEL", raising=False)
    monkeypatch.setenv("TRIAGE_MODELS", str(base / "default-models"))


@pytest.fixture(scope="session")
def blob_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_blob_dataset(tmp_path_factory.mktemp("blobs"))


def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> pytest.MonkeyPatch:
    """The session's feature cache for a session fixture (the autouse one is per test)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("TRIAGE_CACHE", str(tmp_path_factory.getbasetemp() / "feature-cache"))
    return patch


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory, blob_dataset: Path) -> Path:
    """The tiny test model (triage.testing.TINY_TRAINING) trained on the blob set (session-wide)."""
    patch = _session_cache(tmp_path_factory)
    try:
        return train_tiny_model(blob_dataset, tmp_path_factory.mktemp("model") / "blob-model").out_dir
    finally:
        patch.undo()


@pytest.fixture(scope="session")
def vgg19_model(tmp_path_factory: pytest.TempPathFactory, blob_dataset: Path) -> Path:
    """The real VGG19 graph (random weights, 32 px) trained on the blob set (session-wide).

    Its pooled features differ little between images: without the L2 penalty and with a
    larger step the head separates blobs from noise (validation accuracy 1.0 over seeds).
    """
    from triage.train.training import TrainConfig, train_model

    patch = _session_cache(tmp_path_factory)
    try:
        out = tmp_path_factory.mktemp("model") / "vgg19-blob-model"
        train_model(blob_dataset, out, TrainConfig(epochs=40, image_size=IMAGE_SIZE,
                                                   backbone_weights="random", seed=1337, l2=0.0,
                                                   learning_rate=0.01))
        return out
    finally:
        patch.undo()
