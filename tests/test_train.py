"""Training: the Keras split, learning, the saved model, the card, the feature cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from triage.errors import DataError
from triage.labelled.dataset import index_labelled, split
from triage.model.calibration import CALIBRATION_FILE
from triage.model.card import CARD_FILE, CURVES_FILE, MODEL_FILE, RANDOM_WARNING, RELIABILITY_FILE, read_card
from triage.model.familiarity import FAMILIARITY_FILE
from triage.model.network import TINY_ARCHITECTURE, TINY_BACKBONE
from triage.testing import IMAGE_SIZE, SHARED_DATA, TINY_TRAINING, make_blob_dataset
from triage.train.training import TrainConfig, train_model


def _keras_split(root: Path, seed: int = 1337, val_split: float = 0.2) -> tuple[list[str], list[str]]:
    import keras

    train, val = keras.utils.image_dataset_from_directory(
        root, validation_split=val_split, subset="both", seed=seed, image_size=(32, 32), verbose=False)
    return ([Path(p).relative_to(root).as_posix() for p in train.file_paths],
            [Path(p).relative_to(root).as_posix() for p in val.file_paths])


@pytest.mark.parametrize("seed", [1337, 7])
def test_split_matches_keras_on_generated_set(tmp_path: Path, seed: int) -> None:
    root = make_blob_dataset(tmp_path / "data", per_class=23, seed=seed)
    (root / "no" / "nested").mkdir()
    (root / "no" / "nested" / "deep.png").write_bytes((root / "no" / "no 0.png").read_bytes())
    labelled = index_labelled(root, "yes", seed)
    train, val = split(labelled.files, 0.2)
    keras_train, keras_val = _keras_split(root, seed)
    assert [f.relpath for f in train] == keras_train
    assert [f.relpath for f in val] == keras_val
    assert all(f.label == (f.relpath.startswith("yes/")) for f in labelled.files)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared data set not present")
def test_split_matches_keras_on_shared_set() -> None:
    labelled = index_labelled(SHARED_DATA, "yes", 1337)
    train, val = split(labelled.files, 0.2)
    keras_train, keras_val = _keras_split(SHARED_DATA)
    assert (len(train), len(val)) == (203, 50)
    assert [f.relpath for f in train] == keras_train
    assert [f.relpath for f in val] == keras_val


def test_training_learns_and_writes_model_folder(trained_model: Path) -> None:
    card = read_card(trained_model)
    assert {p.name for p in trained_model.iterdir()} == {MODEL_FILE, CARD_FILE, CURVES_FILE, CALIBRATION_FILE,
                                                         RELIABILITY_FILE, FAMILIARITY_FILE}
    assert card.validation_metrics["accuracy"]["value"] >= 0.9
    assert card.validation_metrics["roc_auc"]["value"] >= 0.9
    assert len(card.history["val_accuracy"]) == card.hyperparameters.epochs == TINY_TRAINING["epochs"]
    assert card.split.train.n + card.split.validation.n == 80
    assert card.split.validation.n == 16
    assert card.hyperparameters.dropout == 0.35
    assert (card.backbone.weights, card.backbone.architecture) == ("random", TINY_ARCHITECTURE)
    assert card.warning == RANDOM_WARNING
    assert (card.data.class_names.negative, card.data.class_names.positive) == ("no", "yes")
    for name in ("accuracy", "roc_auc", "sensitivity", "specificity", "precision", "f1"):
        metric = card.validation_metrics[name]
        assert metric["ci_low"] <= metric["value"] <= metric["ci_high"], name
    assert (trained_model / CURVES_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_tiny_model_scores_discs_above_noise_and_spreads_them(trained_model: Path,
                                                                  blob_dataset: Path) -> None:
    """The scores of the tests' model mean something: on its validation images every disc scores
    above every noise image, no two images score alike, and the scores span most of [0, 1]."""
    from triage.inputs.decode import read_image
    from triage.model.network import load_classifier
    from triage.model.preprocess import resize_for_model

    files = [blob_dataset / path for path in read_card(trained_model).split.validation_files]
    images = np.stack([resize_for_model(read_image(path).pixels, IMAGE_SIZE) for path in files])
    scores = np.asarray(load_classifier(trained_model / MODEL_FILE)(images)).ravel()
    tumour = np.array([path.parent.name == "yes" for path in files])
    assert tumour.any() and not tumour.all()
    assert scores[tumour].min() > scores[~tumour].max()
    assert len(np.unique(scores)) == len(scores)
    assert scores.max() - scores.min() > 0.5


def test_saved_model_matches_head_on_kept_features(trained_model: Path, blob_dataset: Path) -> None:
    import keras

    from triage.inputs.decode import read_image
    from triage.model.network import FEATURE_LAYER, load_classifier, resolve_backbone_weights
    from triage.model.preprocess import resize_for_model
    from triage.train.features import FeatureCache, cache_key, default_cache_dir

    model = load_classifier(trained_model / MODEL_FILE)
    card = read_card(trained_model)
    weights = resolve_backbone_weights(TINY_BACKBONE, TINY_TRAINING["seed"])
    cache = FeatureCache(default_cache_dir(), cache_key(weights, IMAGE_SIZE))
    files = [blob_dataset / p for p in card.split.validation_files]
    images = [read_image(p) for p in files]
    kept = np.stack([cache.get(image.sha256)[0] for image in images])
    names = [layer.name for layer in model.layers]
    x = keras.ops.convert_to_tensor(kept)
    for layer in model.layers[names.index(FEATURE_LAYER) + 1:]:
        x = layer(x)
    from_head = np.asarray(x).ravel()
    from_model = np.asarray(model(np.stack([resize_for_model(i.pixels, IMAGE_SIZE) for i in images]))).ravel()
    assert np.abs(from_model - from_head).max() < 1e-5
    assert from_model.std() > 100 * 1e-5  # the scores differ by far more than the tolerance


def test_cache_reused_and_corrupt_cache_rebuilt(tmp_path: Path, blob_dataset: Path,
                                                trained_model: Path) -> None:
    config = TrainConfig(**{**TINY_TRAINING, "epochs": 2})
    first = train_model(blob_dataset, tmp_path / "a", config)
    assert first.card.features.from_cache == 80  # trained_model filled the cache
    cache_file = Path(first.card.features.cache)
    cache_file.write_bytes(cache_file.read_bytes()[:200])  # truncate it
    rebuilt = train_model(blob_dataset, tmp_path / "b", config)
    assert rebuilt.card.features.from_cache == 0
    assert rebuilt.card.features.extracted == 80
    again = train_model(blob_dataset, tmp_path / "c", TrainConfig(**{**TINY_TRAINING, "epochs": 2,
                                                                     "learning_rate": 1e-2}))
    assert again.card.features.from_cache == 80


def test_every_part_of_the_cache_key_misses_the_cache(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights, image size, preprocessing, decoder, library versions, precision, device: each one
    changed gives another cache, which does not hold what the first one holds."""
    import triage.train.features as features
    from triage.model.familiarity import STATISTICS
    from triage.model.network import resolve_backbone_weights

    weights = resolve_backbone_weights("random", 1337)
    base = features.cache_key(weights, IMAGE_SIZE)
    first = features.FeatureCache(tmp_path, base)
    first.put("a" * 64, np.ones(512), np.zeros(len(STATISTICS)), "f" * 64)
    first.save()
    assert features.FeatureCache(tmp_path, base).get("a" * 64) is not None
    variants = {
        "weights": features.cache_key(resolve_backbone_weights("random", 7), IMAGE_SIZE),
        "backbone": features.cache_key(resolve_backbone_weights(TINY_BACKBONE, 1337), IMAGE_SIZE),
        "image size": features.cache_key(weights, IMAGE_SIZE * 2),
        "precision": features.cache_key(weights, IMAGE_SIZE, "bf16"),
        "device": features.cache_key(weights, IMAGE_SIZE, device="gpu"),
    }
    for name, value in (("preprocess", "PREPROCESS_VERSION"), ("decoder", "DECODER_VERSION")):
        with monkeypatch.context() as patch:
            patch.setattr(features, value, getattr(features, value) + 1)
            variants[name] = features.cache_key(weights, IMAGE_SIZE)
    real = features.library_versions
    for library in ("tensorflow", "keras", "pillow", "pydicom", "opencv-python-headless"):
        with monkeypatch.context() as patch:
            patch.setattr(features, "library_versions", lambda lib=library: {**real(), lib: "0.0-other"})
            variants[library] = features.cache_key(weights, IMAGE_SIZE)
    assert len(variants) == 12
    for name, key in variants.items():
        assert key != base, name
        assert features.FeatureCache(tmp_path, key).get("a" * 64) is None, name


def test_no_cache_option(tmp_path: Path, blob_dataset: Path) -> None:
    result = train_model(blob_dataset, tmp_path / "m", TrainConfig(
        epochs=1, image_size=IMAGE_SIZE, backbone_weights=TINY_BACKBONE, cache=False))
    features = result.card.features
    assert (features.extracted, features.from_cache, features.cache) == (80, 0, None)


@pytest.mark.slow
def test_target_sensitivity_and_folds(tmp_path: Path, blob_dataset: Path, trained_model: Path) -> None:
    result = train_model(blob_dataset, tmp_path / "m", TrainConfig(
        **TINY_TRAINING, target_sensitivity=0.75, folds=4))
    card = result.card
    assert "0.75" in card.threshold_rule
    assert card.validation_metrics["threshold"] == card.threshold
    # The threshold gives sensitivity 0.75 on the training part's out-of-fold scores; on 8 validation
    # tumours the sensitivity is an estimate, whose 95% interval must reach the target.
    assert card.validation_metrics["sensitivity"]["ci_high"] >= 0.75
    cv = card.cross_validation
    assert cv.folds == 4 and cv.metrics["n"] == 80
    assert sum(cv.metrics["confusion_matrix"].values()) == 80


def test_unreadable_images_are_skipped_and_listed(tmp_path: Path) -> None:
    root = make_blob_dataset(tmp_path / "data", per_class=12)
    (root / "yes" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "no" / "empty.jpg").write_bytes(b"")
    (root / "no" / "notes.txt").write_text("hello")
    result = train_model(root, tmp_path / "m", TrainConfig(epochs=1, image_size=IMAGE_SIZE,
                                                            backbone_weights=TINY_BACKBONE))
    skipped = {row.path: row.status for row in result.card.data.skipped}
    assert skipped == {"yes/broken.png": "unreadable", "no/empty.jpg": "empty"}
    assert result.card.data.n_images == 24
    ignored = [(row.path, row.reason) for row in result.card.data.ignored]
    assert ("no/notes.txt", "not an image file name") in ignored


def test_local_weights_file(tmp_path: Path, blob_dataset: Path) -> None:
    import keras

    from triage.hashing import sha256_file

    weights = tmp_path / "vgg19_notop.weights.h5"
    keras.utils.set_random_seed(3)
    keras.applications.VGG19(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(weights)
    result = train_model(blob_dataset, tmp_path / "m", TrainConfig(
        epochs=1, image_size=IMAGE_SIZE, backbone_weights=str(weights)))
    assert result.card.backbone.weights_sha256 == sha256_file(weights)
    assert result.card.backbone.weights == f"file:{weights.resolve()}"


@pytest.mark.parametrize("layout, message", [
    ({}, "does not exist"),
    ({"yes": 2}, "exactly two class sub-folders"),
    ({"yes": 2, "no": 0}, "holds no image files"),
    ({"tumour": 2, "healthy": 2}, "needs a sub-folder 'yes'"),
    ({"yes": 2, "no": 2, "maybe": 2}, "exactly two class sub-folders"),
])
def test_bad_data_folders(tmp_path: Path, layout: dict[str, int], message: str) -> None:
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for name, count in layout.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            from PIL import Image

            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    with pytest.raises(DataError, match=message):
        train_model(root, tmp_path / "m", TrainConfig(epochs=1, image_size=IMAGE_SIZE,
                                                      backbone_weights=TINY_BACKBONE))


def test_positive_option_renames_classes(tmp_path: Path) -> None:
    root = make_blob_dataset(tmp_path / "data", per_class=10)
    (root / "yes").rename(root / "tumour")
    (root / "no").rename(root / "healthy")
    result = train_model(root, tmp_path / "m", TrainConfig(epochs=1, image_size=IMAGE_SIZE,
                                                            backbone_weights=TINY_BACKBONE,
                                                            positive="tumour"))
    names = result.card.data.class_names
    assert (names.negative, names.positive) == ("healthy", "tumour")
    assert result.card.split.train.positive + result.card.split.validation.positive == 10


def test_output_folder_not_empty_is_refused(tmp_path: Path, blob_dataset: Path) -> None:
    from triage.errors import UsageError

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        train_model(blob_dataset, tmp_path / "m", TrainConfig(epochs=1, image_size=IMAGE_SIZE,
                                                               backbone_weights=TINY_BACKBONE))
    assert (tmp_path / "m" / "keep.txt").read_text() == "mine"
