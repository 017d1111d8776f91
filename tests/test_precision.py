"""Precisions: the choice and its refusals, bf16 parity, float32 outputs and CAM tail, kept apart."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import triage.model.network
from triage.cli import EXIT_USAGE, main
from triage.errors import UsageError
from triage.model.card import read_card
from triage.model.network import TINY_BACKBONE, choose_precision, cpu_has_bf16
from triage.testing import IMAGE_SIZE, blob_image, with_margin

# bf16 keeps 8 significant bits, so each layer that runs in it rounds its output to a relative
# 2^-9 (about 0.2%); their float32 accumulation keeps that from growing with the layer's width.
# The test model's logit layer is rescaled so its logits spread with a standard deviation of 2
# (probabilities from about 0.1 to 0.998, as a trained model's): there, with VGG19's 17 such
# layers, the logits moved by about 1.5% of that spread, and since a sigmoid's slope is at most
# 1/4, a probability by at most a quarter of that. Measured on 3 x 64 images: max |dp|
# 0.004-0.0075, median below 0.001. The tolerances are 4 and 5 times that, room for other
# CPUs' bf16 kernels, and still a small fraction of the probabilities' spread; the tiny test
# model, with 3 such layers, rounds less.
BF16_MAX_ATOL = 0.03
BF16_MEDIAN_ATOL = 0.005


@pytest.fixture()
def native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the CPU has native bfloat16, so bf16 tests run on any CPU (slowly where emulated)."""
    monkeypatch.setattr(triage.model.network, "cpu_has_bf16", lambda: True)


def _images(n: int = 6, seed: int = 11) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([blob_image(rng, i % 2 == 0, IMAGE_SIZE) for i in range(n)]).astype(np.float32)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    for flags, expected in (("fpu sse avx512f avx512_bf16", True), ("fpu amx_tile amx_bf16", True),
                            ("fpu sse avx2 avx512f", False)):
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
        assert cpu_has_bf16(cpuinfo) is expected
    assert cpu_has_bf16(tmp_path / "missing") is False  # not Linux: no native bf16 assumed


@pytest.mark.parametrize("native, on_gpu, requested, chosen", [
    (True, False, "auto", "fp32"), (False, False, "auto", "fp32"), (False, True, "auto", "fp16"),
    (True, False, "bf16", "bf16"), (False, True, "bf16", "bf16"), (False, True, "fp16", "fp16"),
    (False, False, "fp32", "fp32"), (True, True, "fp32", "fp32"),
])
def test_precision_choice(monkeypatch: pytest.MonkeyPatch, native: bool, on_gpu: bool, requested: str,
                          chosen: str) -> None:
    monkeypatch.setattr(triage.model.network, "cpu_has_bf16", lambda: native)
    assert choose_precision(requested, on_gpu) == chosen


@pytest.mark.parametrize("native, requested, words", [
    (False, "bf16", "no native bfloat16"), (True, "fp16", "only on a GPU"), (True, "fp64", "must be one of"),
])
def test_precision_refusals_are_one_sentence(monkeypatch: pytest.MonkeyPatch, native: bool,
                                             requested: str, words: str) -> None:
    monkeypatch.setattr(triage.model.network, "cpu_has_bf16", lambda: native)
    with pytest.raises(UsageError) as caught:
        choose_precision(requested, on_gpu=False)
    message = str(caught.value)
    assert words in message and caught.value.option == "precision"
    assert "--" not in message and message.endswith(".") and message.count(". ") == 0


@pytest.mark.parametrize("command", ["scan", "evaluate", "train"])
def test_cli_refuses_fp16_on_a_cpu(command: str, trained_model: Path, blob_dataset: Path,
                                   tmp_path: Path) -> None:
    args = {"scan": ["scan", str(blob_dataset / "yes"), "--out", str(tmp_path / "r.html"),
                     "--model", str(trained_model), "--device", "cpu"],
            "evaluate": ["evaluate", str(blob_dataset), "--out", str(tmp_path / "e"),
                         "--model", str(trained_model), "--device", "cpu"],
            "train": ["train", str(blob_dataset), "--out", str(tmp_path / "m"),
                      "--backbone-weights", "random", "--image-size", str(IMAGE_SIZE)]}[command]
    result = CliRunner().invoke(main, [*args, "--precision", "fp16", "--quiet"])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "fp16 runs only on a GPU" in result.output and "(--precision)" in result.output
    assert not (tmp_path / "m").exists() and not (tmp_path / "e").exists()


@pytest.fixture(scope="module")
def spread_model(trained_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test model with its logit layer rescaled: logits of mean 0 and std 2 on the test images.

    A spread of probabilities like a trained model's over the whole of (0, 1) is where rounding
    shows; one in a narrow band, as a random backbone's, any precision reproduces.
    """
    import keras

    from triage.model.network import load_classifier

    folder = tmp_path_factory.mktemp("spread") / "model"
    shutil.copytree(trained_model, folder)
    model = load_classifier(folder / "model.keras")
    logit = model.get_layer("logit")
    z = np.asarray(keras.Model(model.input, logit.output)(_images(64, seed=5))).ravel()
    kernel, bias = logit.get_weights()
    logit.set_weights([kernel * 2 / z.std(), (bias - z.mean()) * 2 / z.std()])
    model.save(folder / "model.keras")
    return with_margin(folder, "bf16")


def test_bf16_probabilities_agree_with_fp32(spread_model: Path, native_bf16: None) -> None:
    from triage.engine.inference import load_for_inference

    exact = load_for_inference(spread_model, "cpu", precision="fp32")
    fast = load_for_inference(spread_model, "cpu", precision="bf16")
    assert (exact.precision, fast.precision, fast.summary.precision) == ("fp32", "bf16", "bf16")
    batch = _images(64)
    p32, p16 = exact.probabilities(batch, 64), fast.probabilities(batch, 64)
    assert p32.min() < 0.3 and p32.max() > 0.9  # the spread the tolerance is meant for
    difference = np.abs(p16 - p32)
    assert difference.max() <= BF16_MAX_ATOL and np.median(difference) <= BF16_MEDIAN_ATOL
    assert difference.max() > 0  # it did run in another precision


@pytest.mark.parametrize("precision, compute", [("bf16", "bfloat16"), ("fp16", "float16")])
def test_output_head_and_cam_tail_stay_float32(trained_model: Path, precision: str, compute: str) -> None:
    import tensorflow as tf

    from triage.engine.forward import ForwardPass
    from triage.engine.gradcam import GradCam
    from triage.model.network import load_classifier, with_precision

    model = load_classifier(trained_model / "model.keras")
    mixed = with_precision(model, precision)
    assert mixed.get_layer("block5_conv4").dtype_policy.compute_dtype == compute
    for name in ("features", "logit", "probability"):
        assert mixed.get_layer(name).dtype_policy.compute_dtype == "float32", name
    assert mixed.output.dtype == "float32"
    cam, exact = GradCam(mixed), GradCam(model)
    assert all(layer.dtype_policy.compute_dtype == "float32" for layer in cam.tail.layers[1:])
    activations, probabilities = ForwardPass(mixed).run(_images())
    assert activations.dtype.name == compute and probabilities.dtype == np.float64
    raw = cam._maps(activations)  # before normalising: the tail's own output
    assert raw.dtype == tf.float32
    maps = cam.heatmaps(activations)
    assert maps.dtype == np.float32 and np.isfinite(maps).all()
    # The same activations through the fp32 model's tail: the float32 copy computes the same maps.
    same = exact.heatmaps(tf.cast(activations, tf.float32))
    np.testing.assert_allclose(maps, same, atol=1e-5)


def test_feature_cache_keeps_precisions_apart(blob_dataset: Path, tmp_path: Path, native_bf16: None) -> None:
    from triage.model.familiarity import STATISTICS
    from triage.model.network import resolve_backbone_weights
    from triage.train.features import FeatureCache, cache_key
    from triage.train.training import TrainConfig, train_model

    weights = resolve_backbone_weights(TINY_BACKBONE)
    caches = {p: FeatureCache(tmp_path, cache_key(weights, IMAGE_SIZE, p)) for p in ("fp32", "bf16", "fp16")}
    assert len({cache.path for cache in caches.values()}) == 3
    caches["bf16"].put("a" * 64, np.ones(512), np.zeros(len(STATISTICS)), "f" * 64)
    caches["bf16"].save()
    assert FeatureCache(tmp_path, cache_key(weights, IMAGE_SIZE, "fp32")).get("a" * 64) is None
    assert FeatureCache(tmp_path, cache_key(weights, IMAGE_SIZE, "bf16")).get("a" * 64) is not None

    def train(precision: str, out: str) -> object:
        return train_model(blob_dataset, tmp_path / out, TrainConfig(
            epochs=1, image_size=IMAGE_SIZE, backbone_weights=TINY_BACKBONE, precision=precision,
            cache_dir=tmp_path / "cache"))

    first = train("bf16", "m1").card.features
    again = train("bf16", "m2").card.features
    other = train("fp32", "m3").card.features
    assert (first.precision, first.from_cache) == ("bf16", 0)
    assert (again.extracted, again.from_cache) == (0, first.extracted)
    assert (other.precision, other.from_cache) == ("fp32", 0) and other.extracted == first.extracted
    assert read_card(tmp_path / "m1").features.precision == "bf16"


def test_older_cards_read_as_fp32_features(trained_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "old"
    shutil.copytree(trained_model, folder)
    card = json.loads((folder / "model_card.json").read_text())
    del card["features"]["precision"]
    (folder / "model_card.json").write_text(json.dumps(card))
    assert read_card(folder).features.precision == "fp32"


def test_scan_records_precision_and_never_reuses_other_precision_rows(
        trained_model: Path, blob_dataset: Path, tmp_path: Path, native_bf16: None) -> None:
    from triage.scan.folder import ScanOptions
    from triage.scan.run import run_scan

    out = tmp_path / "out" / "report.html"
    model = tmp_path / "model"
    with_margin(shutil.copytree(trained_model, model), "bf16")

    def scan(precision: str) -> object:
        options = ScanOptions(batch_size=8, device="cpu", precision=precision)
        return run_scan(blob_dataset / "yes", out, model=model, options=options)[0]

    fast = scan("bf16")
    facts = json.loads((out.parent / "run.json").read_text())
    assert fast.model.precision == facts["precision"] == "bf16"
    assert facts["device"] == fast.model.device == "cpu"  # no GPU where the tests run
    assert "bf16 (mixed bfloat16" in out.read_text(encoding="utf-8")
    assert "Device of this run</th><td>CPU" in out.read_text(encoding="utf-8")
    assert scan("bf16").scored_this_run == 0  # same precision: every row reused
    exact = scan("fp32")
    assert exact.scored_this_run == exact.scored > 0  # another precision: all scored again
    assert json.loads((out.parent / "run.json").read_text())["precision"] == "fp32"


def test_evaluate_manifest_and_summary_say_the_precision(trained_model: Path, blob_dataset: Path,
                                                        tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["evaluate", str(blob_dataset), "--model", str(trained_model),
                                       "--out", str(tmp_path / "e"), "--device", "cpu",
                                       "--precision", "fp32", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "precision fp32" in result.output.strip().splitlines()[-1]
    assert json.loads((tmp_path / "e" / "run.json").read_text())["precision"] == "fp32"
