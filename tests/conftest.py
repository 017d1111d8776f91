"""Shared fixtures: generated images and tiny models, no network, no downloads."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "brain_tumor_dataset"
IMAGE_SIZE = 32


def blob_image(rng: np.random.Generator, tumour: bool, size: int = 48) -> np.ndarray:
    """A dark noisy 'scan'; with a tumour it has a bright disc somewhere."""
    image = rng.normal(40, 12, (size, size)).clip(0, 255)
    if tumour:
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        radius = rng.integers(size // 8, size // 4)
        yy, xx = np.mgrid[:size, :size]
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = rng.uniform(200, 255)
    return np.repeat(image.astype(np.uint8)[..., None], 3, axis=2)


def make_blob_dataset(root: Path, per_class: int = 40, seed: int = 0) -> Path:
    """yes/ (bright blob) and no/ (none), mixing .png, .jpg and .JPG like the shared set."""
    rng = np.random.default_rng(seed)
    for label, tumour in (("yes", True), ("no", False)):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            suffix = (".png", ".jpg", ".JPG", ".jpeg")[i % 4]
            Image.fromarray(blob_image(rng, tumour)).save(folder / f"{label} {i}{suffix}", quality=95)
    return root


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


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory, blob_dataset: Path) -> Path:
    """A model trained on the blob set with the random backbone at 32 px (session-wide)."""
    from triage.train.training import TrainConfig, train_model

    mp = pytest.MonkeyPatch()
    mp.setenv("TRIAGE_CACHE", str(tmp_path_factory.getbasetemp() / "feature-cache"))
    try:
        out = tmp_path_factory.mktemp("model") / "blob-model"
        # The random backbone's pooled features differ little between images at 32 px: without
        # the L2 penalty and with a larger step the head separates blobs from noise reliably
        # (validation accuracy 1.0 over seeds), so the scores of this model mean something.
        train_model(blob_dataset, out, TrainConfig(
            epochs=40, image_size=IMAGE_SIZE, backbone_weights="random", seed=1337, l2=0.0,
            learning_rate=0.01))
    finally:
        mp.undo()
    return out
