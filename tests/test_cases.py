"""Series, volumes and loose images as cases through `triage scan`: rows, verdicts, heat maps, copies."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from pydicom.uid import generate_uid

from triage.cli import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, main
from triage.results.tables import CASE_CSV_COLUMNS, CSV_COLUMNS, read_csv
from triage.testing import blob_image, mr_slice, write_nifti, write_series, write_volume

TUMOUR_SLICES = {"t2": (2, 3), "t1": (), "volume": (1, 4)}


POSITIONS: dict[str, float] = {}  # relpath -> z of every series slice of the folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two DICOM series of one study, a NIfTI volume, a CT file, a 4D NIfTI and loose PNGs."""
    root = tmp_path_factory.mktemp("cases")
    study = generate_uid()
    POSITIONS.update(write_series(root, study, "t2", 5, TUMOUR_SLICES["t2"]))
    POSITIONS.update(write_series(root, study, "t1", 4, TUMOUR_SLICES["t1"]))
    (root / "vol").mkdir()
    write_volume(root / "vol" / "head.nii.gz", tumour_slices=TUMOUR_SLICES["volume"])
    write_nifti(root / "vol" / "bold.nii", np.zeros((4, 4, 4, 2), dtype=np.int16), np.eye(4))
    mr_slice(root / "ct" / "ct.dcm", study=generate_uid(), series=generate_uid(), Modality="CT")
    (root / "loose").mkdir()
    rng = np.random.default_rng(7)
    Image.fromarray(blob_image(rng, True)).save(root / "loose" / "a.png")
    Image.fromarray(blob_image(rng, False)).save(root / "loose" / "b.png")
    shutil.copy(root / "loose" / "a.png", root / "loose" / "c.png")
    return root


def scan(folder: Path, out: Path, model: Path, *args: str) -> tuple[list[dict], dict[str, dict], dict]:
    """Run `triage scan`; the CSV rows, the cases CSV rows by case_id, and run.json."""
    result = CliRunner().invoke(main, ["scan", str(folder), "--out", str(out), "--model", str(model), *args])
    assert result.exit_code in (EXIT_OK, EXIT_SOME_FAILED), result.output
    cases = read_csv(out.parent / f"{out.stem}_cases.csv")
    assert all(list(row) == list(CASE_CSV_COLUMNS) for row in cases)
    return (read_csv(out.with_suffix(".csv")), {row["case_id"]: row for row in cases},
            json.loads((out.parent / "run.json").read_text()))


def by_case(rows: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        if row["case_id"]:
            grouped.setdefault(row["case_id"], []).append(row)
    return grouped


def top(rows: list[dict], k: int) -> list[dict]:
    scored = [row for row in rows if row["status"] == "ok"]
    # The raw output breaks ties of the calibrated probability's 6 decimals (the map is increasing).
    return sorted(scored, key=lambda row: (-float(row["probability"]), -float(row["raw_probability"]),
                                           int(row["slice_index"] or 0)))[:k]


@pytest.fixture(scope="module")
def threshold(folder: Path, trained_model: Path, tmp_path_factory: pytest.TempPathFactory) -> float:
    """A threshold between the cases' scores, so that some cases are flagged and some are not."""
    rows, _, _ = scan(folder, tmp_path_factory.mktemp("probe") / "r.html", trained_model, "--explain", "none")
    scores = sorted({max(float(r["probability"]) for r in case) for case in by_case(
        [r for r in rows if r["status"] == "ok"]).values()})
    assert len(scores) >= 3, scores
    return (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2


@pytest.fixture(scope="module")
def scanned(folder: Path, trained_model: Path, threshold: float, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("out") / "report.pdf"
    return (*scan(folder, out, trained_model, "--threshold", str(threshold), "--top-k", "2"), out)


def test_rows_of_series_volumes_and_refused_files(scanned, folder: Path) -> None:
    rows, _, _, out = scanned
    assert (out.parent / "report.csv").read_text().splitlines()[0] == ",".join(CSV_COLUMNS)
    by_path: dict[str, list[dict]] = {}
    for row in rows:
        by_path.setdefault(row["path"], []).append(row)
    for name, count in (("t2", 5), ("t1", 4)):  # slice_index follows the position, not the file name
        series = [row for row in rows if row["path"].startswith(f"{name}/")]
        by_index = sorted(series, key=lambda row: int(row["slice_index"]))
        assert [row["slice_index"] for row in by_index] == [str(i) for i in range(count)]
        depths = [POSITIONS[row["path"]] for row in by_index]
        assert depths == sorted(depths)
        assert [row["path"] for row in by_index] != sorted(row["path"] for row in series)  # names shuffled
        assert len({row["case_id"] for row in series}) == 1 and all(row["study_uid"] for row in series)
        assert all(row["status"] == "ok" and row["format"] == "DICOM" for row in series)
    volume = by_path["vol/head.nii.gz"]
    assert [row["slice_index"] for row in volume] == [str(i) for i in range(6)]
    assert all(row["format"] == "NIfTI" and row["case_id"] == "vol/head.nii.gz" for row in volume)
    assert len({row["sha256"] for row in volume}) == 1
    [ct] = by_path["ct/ct.dcm"]
    assert (ct["status"], ct["reason"], ct["probability"]) == ("skipped", "modality CT", "")
    assert ct["slice_index"] == ""
    [bold] = by_path["vol/bold.nii"]
    assert (bold["status"], bold["reason"]) == ("unsupported", "4D volume")
    for name in ("a", "b", "c"):
        [loose] = by_path[f"loose/{name}.png"]
        assert (loose["case_id"], loose["slice_index"], loose["study_uid"]) == (f"loose/{name}.png", "", "")


def test_cases_csv_holds_each_case_with_its_verdict(scanned, threshold: float) -> None:
    rows, cases, facts, _ = scanned
    grouped = by_case(rows)
    series = {row["case_id"] for row in rows if row["path"].startswith(("t1/", "t2/"))}
    [ct] = [row["case_id"] for row in rows if row["path"] == "ct/ct.dcm"]
    assert len(series) == 2
    expected_ids = series | {ct, "vol/head.nii.gz", "vol/bold.nii"} | {f"loose/{n}.png" for n in "abc"}
    assert set(cases) == expected_ids
    for case_id in series | {"vol/head.nii.gz", "loose/a.png", "loose/b.png"}:
        case, case_rows = cases[case_id], grouped[case_id]
        probabilities = [float(row["probability"]) for row in case_rows]
        [highest] = top(case_rows, 1)
        assert (case["n_images"], case["n_scored"]) == (str(len(case_rows)), str(len(case_rows)))
        assert case["score"] == f"{max(probabilities):.6f}" and case["aggregate"] == "max"
        assert case["flagged"] == ("true" if max(probabilities) >= threshold else "false")
        assert (case["top_path"], case["top_slice_index"]) == (highest["path"], highest["slice_index"])
        assert case["localizer"] == "false"
    for case_id in series:
        assert cases[case_id]["kind"] == "series" and cases[case_id]["sort_method"] == "position"
        assert cases[case_id]["description"] in ("T1", "T2") and cases[case_id]["modality"] == "MR"
    assert (cases["vol/head.nii.gz"]["kind"], cases["vol/head.nii.gz"]["n_images"]) == ("volume", "6")
    assert (cases["loose/a.png"]["kind"], cases["loose/a.png"]["sort_method"]) == ("image", "")
    for refused in (ct, "vol/bold.nii"):
        case = cases[refused]
        assert (case["n_scored"], case["score"], case["flagged"]) == ("0", "", "")
    assert (cases[ct]["kind"], cases[ct]["modality"]) == ("series", "CT")
    assert {"true", "false"} <= {case["flagged"] for case in cases.values()}
    counts = facts["counts"]
    assert (counts["cases"], counts["studies"]) == (8, 2)  # the series' study and the CT's
    assert counts["cases_flagged"] == sum(case["flagged"] == "true" for case in cases.values())
    assert facts["outputs"]["cases_csv"] == "report_cases.csv"


def test_heat_maps_only_for_the_top_k_slices_of_flagged_cases(scanned) -> None:
    rows, cases, _, out = scanned
    grouped = by_case(rows)
    flagged = [case_id for case_id, case in cases.items() if case["flagged"] == "true"]
    expected = {(row["path"], row["slice_index"]) for case_id in flagged for row in top(grouped[case_id], 2)}
    assert {(row["path"], row["slice_index"]) for row in rows if row["heatmap"]} == expected
    assert any(cases[case_id]["kind"] != "image" and cases[case_id]["flagged"] == "true" for case_id in cases)
    for row in rows:
        if row["heatmap"]:
            with Image.open(out.parent / row["heatmap"]) as image:
                assert image.size == (int(row["width"]), int(row["height"]))
    html = (out.parent / "report.html").read_text(encoding="utf-8")
    flagged_stacks = [c for c in cases.values() if c["flagged"] == "true" and c["kind"] != "image"]
    assert html.count('class="slice-plot"') == len(flagged_stacks)


def test_topk_aggregate_is_the_mean_of_the_top_slices(folder: Path, trained_model: Path,
                                                       tmp_path: Path) -> None:
    rows, cases, _ = scan(folder, tmp_path / "r.html", trained_model, "--aggregate", "topk", "--top-k", "3",
                          "--explain", "none")
    for case_id, case_rows in by_case(rows).items():
        if cases[case_id]["n_scored"] != "0":
            highest = [float(row["probability"]) for row in top(case_rows, 3)]
            assert float(cases[case_id]["score"]) == pytest.approx(sum(highest) / len(highest), abs=2e-6)
            assert cases[case_id]["aggregate"] == "topk"


def test_group_by_file_makes_every_file_a_case(folder: Path, trained_model: Path, tmp_path: Path) -> None:
    rows, cases, _ = scan(folder, tmp_path / "r.html", trained_model, "--group-by", "file",
                          "--explain", "none")
    dicom = [row["path"] for row in rows if row["path"].startswith(("t1/", "t2/", "ct/"))]
    assert len(dicom) == 10 and set(dicom) <= set(cases)
    assert all(cases[path]["n_images"] == "1" and cases[path]["sort_method"] == "" for path in dicom)
    assert len(cases) == 10 + 2 + 3  # the volume stays one case: it is one file


def test_a_changed_slice_rescores_its_case_only(folder: Path, trained_model: Path, tmp_path: Path) -> None:
    work = tmp_path / "in"
    shutil.copytree(folder, work)
    out = tmp_path / "out" / "r.html"
    first, _, _ = scan(work, out, trained_model, "--threshold", "0")
    changed = sorted(p for p in work.glob("t2/IM*"))[0]
    t2 = {row["case_id"] for row in first if row["path"] == changed.relative_to(work).as_posix()}
    # Same bytes, a new mtime: the file counts as changed, and so does its whole series.
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 5_000_000_000))
    second, _, facts = scan(work, out, trained_model, "--threshold", "0")
    assert facts["incremental"] is True and facts["counts"]["scored_this_run"] == 5
    state = json.loads((out.parent / ".r.state.json").read_text())
    new = {row["case_id"] for row in state["cases"] if row["new"] and row["status"] == "ok"}
    assert new == t2
    assert [r for r in first if r["case_id"] not in t2] == [r for r in second if r["case_id"] not in t2]
    # A slice gone from a series changes its window and its order: the rest of it is scored again.
    sorted(work.glob("t1/IM*"))[-1].unlink()
    third, _, facts = scan(work, out, trained_model, "--threshold", "0")
    assert facts["counts"]["scored_this_run"] == 3 and facts["counts"]["removed_since_last"] == 1
    assert sorted(r["slice_index"] for r in third if r["path"].startswith("t1/")) == ["0", "1", "2"]


def test_identical_files_are_marked_as_copies_and_share_one_card(folder: Path, trained_model: Path,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    rows, cases, _ = scan(folder, out, trained_model, "--threshold", "0", "--explain", "none")
    copy_of = {row["path"]: row["copy_of"] for row in rows}
    assert copy_of["loose/c.png"] == "loose/a.png"
    assert copy_of["loose/a.png"] == copy_of["loose/b.png"] == copy_of["vol/head.nii.gz"] == ""
    assert cases["loose/c.png"]["score"] == cases["loose/a.png"]["score"]  # still scored
    cards = out.read_text(encoding="utf-8").split('<article class="card')[1:]
    scored = [case for case in cases.values() if case["n_scored"] != "0"]
    assert len(cards) == len(scored) - 1
    [card] = [card for card in cards if "loose/a.png" in card]
    assert "The same file also at" in card and "loose/c.png" in card
    assert sum("loose/c.png" in card for card in cards) == 1


def test_a_non_finite_heat_map_leaves_its_image_scored(folder: Path, trained_model: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from triage.engine.gradcam import NOT_FINITE, GradCam

    original = GradCam.heatmaps

    def first_row_not_finite(self: GradCam, activations: np.ndarray) -> np.ndarray:
        spoiled = np.array(activations, dtype=np.float32)
        spoiled[0] = np.nan
        return original(self, spoiled)

    monkeypatch.setattr(GradCam, "heatmaps", first_row_not_finite)
    work = tmp_path / "in"
    shutil.copytree(folder / "loose", work)
    result = CliRunner().invoke(main, ["scan", str(work), "--out", str(tmp_path / "r.html"), "--model",
                                       str(trained_model), "--explain", "all", "--threshold", "0"])
    assert result.exit_code == EXIT_OK, result.output
    rows = read_csv(tmp_path / "r.csv")
    assert all(row["status"] == "ok" and row["probability"] for row in rows)
    [spoiled] = [row for row in rows if not row["heatmap"]]  # the first of the one Grad-CAM call
    assert spoiled["heatmap_note"] == NOT_FINITE and spoiled["path"] == "a.png"
    assert all(row["heatmap_note"] == "" for row in rows if row["heatmap"])
    assert NOT_FINITE in (tmp_path / "r.html").read_text(encoding="utf-8")  # said on its card


def test_one_non_finite_row_of_activations_spoils_only_its_own_map(trained_model: Path) -> None:
    from triage.engine.gradcam import usable
    from triage.engine.inference import load_for_inference

    model = load_for_inference(trained_model, "cpu")
    images = np.stack([blob_image(np.random.default_rng(seed), True, size=32) for seed in range(3)])
    activations = np.array(model.predict(images.astype(np.float32))[0])
    clean = model.gradcam.heatmaps(activations)
    activations[1, 0, 0, 0] = np.nan
    maps = model.gradcam.heatmaps(activations)
    assert [usable(cam) for cam in maps] == [True, False, True]
    np.testing.assert_allclose(maps[[0, 2]], clean[[0, 2]], atol=1e-6)


def test_modalities_to_score_are_chosen(folder: Path, trained_model: Path, tmp_path: Path) -> None:
    rows, _, _ = scan(folder / "ct", tmp_path / "r.html", trained_model, "--modality", "mr, ct",
                          "--explain", "none")
    assert [(row["path"], row["status"]) for row in rows] == [("ct.dcm", "ok")]
    result = CliRunner().invoke(main, ["scan", str(folder / "ct"), "--out", str(tmp_path / "s.html"),
                                       "--model", str(trained_model), "--modality", ","])
    assert result.exit_code == EXIT_USAGE and "(--modality)" in result.output, result.output
