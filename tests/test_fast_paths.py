"""Reduced precisions with the fp32 safety net: triage precisions, fp32's decisions, the precision
column, int8.

The model is the session's test model with its logit layer rescaled so its logits spread
(median 0, std 2) over the blob images: the random backbone alone gives probabilities
within 0.01 of 0.5, where no precision could move a decision. bf16 runs on any CPU here
(emulated where the CPU lacks it, see ``native_bf16``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import triage.model.network
from triage.cli import EXIT_MODEL, EXIT_USAGE, main
from triage.model.card import read_card
from triage.model.openvino import openvino_available
from triage.results.tables import read_csv
from triage.testing import IMAGE_SIZE, blob_image

needs_openvino = pytest.mark.skipif(not openvino_available(),
                                    reason="the openvino extra is not installed (pip install '.[openvino]')")


def _images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([blob_image(rng, i % 2 == 0, IMAGE_SIZE) for i in range(n)]).astype(np.float32)


@pytest.fixture(scope="module")
def calibrated(trained_model: Path, blob_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The spread test model, calibrated on the blob set (bf16 as if native, int8 where OpenVINO is).

    Building and measuring every precision takes a while: the tests that use it are slow.
    """
    import keras

    from triage.model.network import load_classifier

    folder = tmp_path_factory.mktemp("fast") / "model"
    shutil.copytree(trained_model, folder)
    model = load_classifier(folder / "model.keras")
    logit = model.get_layer("logit")
    z = np.asarray(keras.Model(model.input, logit.output)(_images(64, seed=5))).ravel()
    kernel, bias = logit.get_weights()
    logit.set_weights([kernel * 2 / z.std(), (bias - np.median(z)) * 2 / z.std()])
    model.save(folder / "model.keras")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(triage.model.network, "cpu_has_bf16", lambda cpuinfo=None: True)
        result = CliRunner().invoke(main, ["precisions", str(blob_dataset), "--model", str(folder),
                                           "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture()
def native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triage.model.network, "cpu_has_bf16", lambda cpuinfo=None: True)


def _scan(folder: Path, model: Path, out: Path, *args: str) -> tuple[list[dict[str, str]], dict]:
    result = CliRunner().invoke(main, ["scan", str(folder), "--model", str(model), "--out", str(out),
                                       "--device", "cpu", "--full", "--quiet", "--batch-size", "8", *args])
    assert result.exit_code == 0, result.output
    return read_csv(out.with_suffix(".csv")), json.loads((out.parent / "run.json").read_text())


def _clear(folder: Path, raw: float, threshold: float, margin: float) -> bool:
    """Whether a raw output's decision holds anywhere within ``margin`` of its logit (the threshold is on
    the model's calibrated scale)."""
    from triage.model.calibration import read_calibration

    calibration, z = read_calibration(folder), np.log(raw / (1 - raw))
    ends = [1 / (1 + np.exp(-(z + shift))) for shift in (-margin, margin)]
    if calibration is not None:
        ends = [float(calibration.apply(end)) for end in ends]
    return (ends[0] >= threshold) == (ends[1] >= threshold)


@pytest.mark.slow
def test_precisions_records_each_one_against_fp32(calibrated: Path) -> None:
    card = read_card(calibrated)
    bf16 = card.fast_path("bf16")
    assert bf16 is not None and bf16.n == len(card.split.validation_files) > 0
    assert 0 < bf16.median_dp <= bf16.max_dp < 0.5
    assert bf16.margin == pytest.approx(2 * bf16.max_dz) and bf16.margin > 0
    assert bf16.files == {} and bf16.measured_on


def test_a_reduced_precision_without_a_measured_margin_is_refused(trained_model: Path, blob_dataset: Path,
                                                                  tmp_path: Path, native_bf16: None) -> None:
    result = CliRunner().invoke(main, ["scan", str(blob_dataset / "yes"), "--model", str(trained_model),
                                       "--out", str(tmp_path / "r.html"), "--device", "cpu",
                                       "--precision", "bf16", "--quiet"])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "no measured bf16 margin" in result.output and "triage precisions" in result.output


def _threshold_on_a_row(calibrated: Path, blob_dataset: Path, tmp_path: Path) -> float:
    """A threshold equal to the median probability of an fp32 scan: that row lies on it."""
    rows, _ = _scan(blob_dataset, calibrated, tmp_path / "first" / "report.html", "--precision", "fp32")
    probabilities = sorted(float(row["probability"]) for row in rows)
    return probabilities[len(probabilities) // 2]


@pytest.mark.slow
def test_safety_net_gives_fp32_decisions_and_says_which_pass_decided(
        calibrated: Path, blob_dataset: Path, tmp_path: Path, native_bf16: None) -> None:
    threshold = _threshold_on_a_row(calibrated, blob_dataset, tmp_path)
    exact, _ = _scan(blob_dataset, calibrated, tmp_path / "exact" / "report.html", "--explain", "all",
                     "--threshold", str(threshold), "--precision", "fp32")
    fast, facts = _scan(blob_dataset, calibrated, tmp_path / "fast" / "report.html", "--explain", "all",
                        "--threshold", str(threshold), "--precision", "bf16")
    margin = read_card(calibrated).fast_path("bf16").margin
    assert facts["precision"] == "bf16" and facts["margin"] == margin
    by_path = {row["path"]: row for row in exact}
    rescored = [row for row in fast if row["precision"] == "fp32"]
    assert rescored and facts["counts"]["rescored_fp32"] == len(rescored) < len(fast)
    assert {row["precision"] for row in exact} == {"fp32"}
    for row in fast:
        same = by_path[row["path"]]
        assert row["flagged"] == same["flagged"], row["path"]  # fp32's decision, every row
        if row["precision"] == "fp32":
            assert row["probability"] == same["probability"]  # the very bits of an fp32 scan
            # Its heat map comes from the fp32 pass too: the same overlay, byte for byte.
            assert ((tmp_path / "fast" / row["heatmap"]).read_bytes()
                    == (tmp_path / "exact" / same["heatmap"]).read_bytes())
        else:
            assert row["precision"] == "bf16" and _clear(calibrated, float(row["raw_probability"]), threshold,
                                                         margin)


@pytest.mark.slow
def test_evaluate_uses_the_safety_net(calibrated: Path, blob_dataset: Path, tmp_path: Path,
                                      native_bf16: None) -> None:
    def evaluate(precision: str) -> list[dict[str, str]]:
        out = tmp_path / precision
        result = CliRunner().invoke(main, ["evaluate", str(blob_dataset), "--model", str(calibrated),
                                           "--out", str(out), "--device", "cpu", "--precision", precision,
                                           "--threshold", "0.5", "--quiet"])
        assert result.exit_code == 0, result.output
        assert f"precision {precision}" in result.output
        return read_csv(out / "predictions.csv")

    exact, fast = evaluate("fp32"), evaluate("bf16")
    assert [r["predicted"] for r in exact] == [r["predicted"] for r in fast]
    assert {r["precision"] for r in fast} <= {"bf16", "fp32"} and "bf16" in {r["precision"] for r in fast}


@pytest.mark.parametrize("int8, bf16, measured, chosen", [
    (True, True, {"int8": 0.4, "bf16": 0.6}, "int8"), (True, True, {"int8": 0.7, "bf16": 0.6}, "bf16"),
    (False, True, {"int8": 0.4, "bf16": 0.6}, "bf16"), (True, True, {"int8": 1.3, "bf16": 1.1}, "fp32"),
    (True, True, {}, "fp32"), (False, False, {"int8": 0.4, "bf16": 0.6}, "fp32"),
])
def test_auto_is_the_cheapest_native_precision_with_a_margin(monkeypatch: pytest.MonkeyPatch, int8: bool,
                                                             bf16: bool, measured: dict, chosen: str) -> None:
    """``measured``: each precision's measured time with its re-scoring, as a share of fp32's."""
    monkeypatch.setattr(triage.model.network, "cpu_has_int8", lambda cpuinfo=None: int8)
    monkeypatch.setattr(triage.model.network, "cpu_has_bf16", lambda cpuinfo=None: bf16)
    assert triage.model.network.choose_precision("auto", False, measured) == chosen
    assert triage.model.network.choose_precision("auto", False, None) == "fp32"  # training: no net


def test_precisions_measures_what_auto_compares() -> None:
    from triage.train.fast_paths import measure

    exact = np.array([0.1, 0.45, 0.5, 0.52, 0.9])
    path = measure("bf16", exact, exact + [0.0, 0.0, -0.02, 0.0, 0.0], 0.5, "cpu", {})
    assert path.flips == 1 and path.max_dp == pytest.approx(0.02)
    # The margin is twice the largest logit difference (0.08, of 0.5 and 0.48): 0.48 and 0.52 lie
    # within 0.16 of 0.5's logit, 0.45 (0.2 away) and the others do not.
    assert path.near_share == pytest.approx(2 / 5)
    faster = dataclasses.replace(path, speedup=2.5)
    assert faster.cost == pytest.approx(1 / 2.5 + 2 / 5) and dataclasses.replace(path, speedup=0).cost > 1


@pytest.mark.slow
@pytest.mark.parametrize("speedup, said", [(3.0, "precision bf16 (auto), "),
                                           (1.1, "precision fp32 (auto: no measured precision is faster")])
def test_auto_says_what_it_chose(calibrated: Path, blob_dataset: Path, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch, native_bf16: None, speedup: float,
                                 said: str) -> None:
    monkeypatch.setattr(triage.model.network, "cpu_has_int8", lambda cpuinfo=None: False)
    card = json.loads((calibrated / "model_card.json").read_text())
    for path in card["fast_paths"]:
        path.update(speedup=speedup, near_share=0.2)
    model = tmp_path / "model"
    shutil.copytree(calibrated, model)
    (model / "model_card.json").write_text(json.dumps(card))
    out = tmp_path / "r.html"
    result = CliRunner().invoke(main, ["scan", str(blob_dataset / "no"), "--model", str(model),
                                       "--out", str(out), "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert said in result.output
    assert json.loads((tmp_path / "run.json").read_text())["precision_auto"] is True


@pytest.mark.slow
def test_int8_without_openvino_is_one_sentence(calibrated: Path, blob_dataset: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    card = json.loads((calibrated / "model_card.json").read_text())
    if not any(path["precision"] == "int8" for path in card["fast_paths"]):
        card["fast_paths"].append({**card["fast_paths"][0], "precision": "int8",
                                   "files": {"model_int8.xml": "0" * 64}})
    folder = tmp_path / "model"
    shutil.copytree(calibrated, folder)
    (folder / "model_card.json").write_text(json.dumps(card))
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    result = CliRunner().invoke(main, ["scan", str(blob_dataset / "no"), "--model", str(folder),
                                       "--out", str(tmp_path / "r.html"), "--device", "cpu",
                                       "--precision", "int8", "--quiet"])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "pip install 'triage[openvino]'" in result.output


@pytest.mark.slow
@needs_openvino
def test_int8_network_is_beside_the_model_with_its_sha256(calibrated: Path) -> None:
    from triage.hashing import sha256_file

    int8 = read_card(calibrated).fast_path("int8")
    assert int8 is not None and set(int8.files) == {"model_int8.xml", "model_int8.bin"}
    for name, digest in int8.files.items():
        assert sha256_file(calibrated / name) == digest
    assert int8.max_dp > 0 and int8.margin == pytest.approx(2 * int8.max_dz)


@pytest.mark.slow
@needs_openvino
def test_int8_scan_keeps_fp32_decisions(calibrated: Path, blob_dataset: Path, tmp_path: Path) -> None:
    exact, _ = _scan(blob_dataset, calibrated, tmp_path / "exact" / "report.html", "--precision", "fp32",
                     "--explain", "all")
    fast, facts = _scan(blob_dataset, calibrated, tmp_path / "fast" / "report.html", "--precision", "int8",
                        "--explain", "all")
    margin, threshold = facts["margin"], facts["threshold"]
    assert facts["precision"] == "int8" and margin == read_card(calibrated).fast_path("int8").margin
    by_path = {row["path"]: row for row in exact}
    for row in fast:
        same = by_path[row["path"]]
        assert row["flagged"] == same["flagged"], row["path"]
        if row["precision"] == "fp32":  # re-scored: fp32's bits and fp32's heat map
            assert row["probability"] == same["probability"]
            assert ((tmp_path / "fast" / row["heatmap"]).read_bytes()
                    == (tmp_path / "exact" / same["heatmap"]).read_bytes())
        else:
            assert row["precision"] == "int8" and _clear(calibrated, float(row["raw_probability"]), threshold,
                                                         margin)
    assert facts["counts"]["rescored_fp32"] == sum(row["precision"] == "fp32" for row in fast)


@pytest.mark.slow
@needs_openvino
def test_int8_heat_maps_come_from_the_int8_pass(calibrated: Path, blob_dataset: Path, tmp_path: Path) -> None:
    """With a narrow margin (this test model's measured one covers nearly every row) int8 decides rows:
    their heat maps are the float32 head's gradient at the int8 activations, not fp32's maps."""
    card = json.loads((calibrated / "model_card.json").read_text())
    for path in card["fast_paths"]:
        path["margin"] = 0.3 if path["precision"] == "int8" else path["margin"]
    model = tmp_path / "model"
    shutil.copytree(calibrated, model)
    (model / "model_card.json").write_text(json.dumps(card))
    exact, _ = _scan(blob_dataset, model, tmp_path / "exact" / "report.html", "--precision", "fp32",
                     "--explain", "all")
    fast, _ = _scan(blob_dataset, model, tmp_path / "fast" / "report.html", "--precision", "int8",
                    "--explain", "all")
    by_path = {row["path"]: row for row in exact}
    int8_rows = [row for row in fast if row["precision"] == "int8"]
    assert int8_rows and all(row["heatmap"] for row in fast)
    differ = [(tmp_path / "fast" / row["heatmap"]).read_bytes()
              != (tmp_path / "exact" / by_path[row["path"]]["heatmap"]).read_bytes() for row in int8_rows]
    assert any(differ)


@pytest.mark.slow
@needs_openvino
def test_int8_network_that_is_not_the_cards_is_refused(calibrated: Path, blob_dataset: Path,
                                                       tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(calibrated, folder)
    with open(folder / "model_int8.bin", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02")
    result = CliRunner().invoke(main, ["scan", str(blob_dataset / "no"), "--model", str(folder),
                                       "--out", str(tmp_path / "r.html"), "--device", "cpu",
                                       "--precision", "int8", "--quiet"])
    assert result.exit_code == EXIT_MODEL, result.output
    assert "not the one the model card names" in result.output
