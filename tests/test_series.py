"""Cases from DICOM series and NIfTI volumes: grouping, order, windows, verdicts (no TensorFlow)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from triage.inputs.cases import (
    Case,
    build_cases,
    case_score,
    case_window,
    decode_slice,
    image_case,
    study_score,
)
from triage.inputs.decode import read_image
from triage.inputs.discovery import discover
from triage.testing import SAGITTAL, enhanced_mr, mr_slice, write_nifti

MR_SMALL = get_testdata_file("MR_small.dcm")


def cases_of(folder: Path, **options: object) -> list[Case]:
    cases, loose = build_cases(list(discover(folder)), **options)
    assert loose == []
    return cases


def relpaths(case: Case) -> list[str]:
    return [s.relpath for s in case.slices]


def test_two_series_mixed_in_one_folder_come_apart(tmp_path: Path) -> None:
    study, t1, t2 = generate_uid(), generate_uid(), generate_uid()
    for i in range(3):
        mr_slice(tmp_path / f"IM{2 * i}", study=study, series=t1, z=i, instance=i + 1, SeriesDescription="T1")
        mr_slice(tmp_path / f"IM{2 * i + 1}", study=study, series=t2, z=i, instance=i + 1,
                 SeriesDescription="T2")
    cases = sorted(cases_of(tmp_path), key=lambda case: case.description)
    assert [(c.description, c.series_uid, c.kind) for c in cases] == [("T1", t1, "series"),
                                                                       ("T2", t2, "series")]
    assert relpaths(cases[0]) == ["IM0", "IM2", "IM4"]
    assert relpaths(cases[1]) == ["IM1", "IM3", "IM5"]
    assert all(c.study_uid == study and c.status is None and not c.localizer for c in cases)
    assert [s.slice_index for s in cases[0].slices] == [0, 1, 2]
    assert {s.case_id for s in cases[0].slices} == {cases[0].case_id}


def test_stacks_of_one_series_split_by_echo(tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    for i in range(4):
        mr_slice(tmp_path / f"{i}.dcm", study=study, series=series, z=i // 2, EchoNumbers=i % 2 + 1)
    cases = cases_of(tmp_path)
    assert sorted(c.case_id for c in cases) == [f"{series}/1", f"{series}/2"]
    assert sorted(relpaths(c) for c in cases) == [["0.dcm", "2.dcm"], ["1.dcm", "3.dcm"]]


def test_shuffled_names_without_instance_numbers_order_by_position(tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    for name, z in (("c", 0.0), ("a", 7.5), ("d", 2.5), ("b", 5.0)):
        mr_slice(tmp_path / name, study=study, series=series, z=z, instance=None)
    [case] = cases_of(tmp_path)
    assert case.sort_method == "position"
    assert relpaths(case) == ["c", "d", "b", "a"]


def test_order_falls_back_to_instance_number_then_file_name(tmp_path: Path) -> None:
    study = generate_uid()
    by_instance, by_name = generate_uid(), generate_uid()
    for name, instance in (("x1", 3), ("x2", 1), ("x3", 2)):
        mr_slice(tmp_path / name, study=study, series=by_instance, instance=instance,
                 ImagePositionPatient=None)
        mr_slice(tmp_path / f"y{name}", study=study, series=by_name, instance=None,
                 ImagePositionPatient=None)
    cases = {c.series_uid: c for c in cases_of(tmp_path)}
    assert (cases[by_instance].sort_method, relpaths(cases[by_instance])) == ("instance_number",
                                                                              ["x2", "x3", "x1"])
    assert (cases[by_name].sort_method, relpaths(cases[by_name])) == ("file_name", ["yx1", "yx2", "yx3"])


def test_oblique_stack_orders_along_its_normal(tmp_path: Path) -> None:
    angle = np.radians(30)
    row, column = np.array([1.0, 0, 0]), np.array([0, np.cos(angle), np.sin(angle)])
    normal = np.cross(row, column)
    study, series = generate_uid(), generate_uid()
    # In-plane shifts make the z order the reverse of the order along the normal.
    for name, depth, shift in (("s0", 0.0, 0.0), ("s1", 1.0, -10.0), ("s2", 2.0, -20.0), ("s3", 3.0, -30.0)):
        position = depth * normal + shift * column
        mr_slice(tmp_path / name, study=study, series=series, position=tuple(position),
                 orientation=(*row, *column), instance=None)
    [case] = cases_of(tmp_path)
    assert case.sort_method == "position"
    assert relpaths(case) == ["s0", "s1", "s2", "s3"]


def test_localizers_are_own_cases_and_stay_out_of_the_study_verdict(tmp_path: Path) -> None:
    study, main, scout, typed = generate_uid(), generate_uid(), generate_uid(), generate_uid()
    for i in range(5):
        mr_slice(tmp_path / f"main{i}", study=study, series=main, z=i)
    mr_slice(tmp_path / "scout", study=study, series=scout, orientation=SAGITTAL)  # tiny, orthogonal
    mr_slice(tmp_path / "typed", study=study, series=typed, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    cases = {c.series_uid: c for c in cases_of(tmp_path)}
    assert len(cases) == 3
    assert [cases[uid].localizer for uid in (main, scout, typed)] == [False, True, True]
    scores = [(cases[main], 0.2), (cases[scout], 0.95), (cases[typed], 0.9)]
    assert study_score(scores) == 0.2
    assert study_score([(cases[scout], 0.95)]) is None


def test_a_16bit_series_gets_one_window(tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    pixels = pydicom.dcmread(MR_SMALL).pixel_array
    for i, factor in enumerate((1, 2)):
        mr_slice(tmp_path / f"{i}.dcm", study=study, series=series, z=i, WindowCenter=None, WindowWidth=None,
                 PixelData=(pixels // factor).astype(pixels.dtype).tobytes())
    [case] = cases_of(tmp_path)
    assert case.window is None
    lo, hi = case_window(case)
    assert lo < hi and case_window(case) == (lo, hi)
    bright, dim = (decode_slice(s, case) for s in case.slices)
    assert bright.shape == (64, 64, 3) and bright.dtype == np.uint8
    for decoded, factor in ((bright, 1), (dim, 2)):  # the same window on both slices
        expected = np.clip(np.rint(((pixels // factor) - lo) / (hi - lo) * 255), 0, 255)
        np.testing.assert_array_equal(decoded[..., 0], expected)
    assert bright.max() == 255 and dim.max() < 170  # the dim slice stays dim


def test_a_stored_window_is_the_series_window(tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    mr_slice(tmp_path / "a", study=study, series=series, z=0, WindowCenter=500, WindowWidth=1000)
    mr_slice(tmp_path / "b", study=study, series=series, z=1, WindowCenter=2000, WindowWidth=10)
    [case] = cases_of(tmp_path)
    assert case.window == case_window(case) == (0.0, 1000.0)  # the first slice's
    values = pydicom.dcmread(tmp_path / "b").pixel_array.astype(float)
    expected = np.clip(np.rint(values / 1000 * 255), 0, 255)
    np.testing.assert_array_equal(decode_slice(case.slices[1], case)[..., 0], expected)


def test_monochrome1_and_a_negative_slope_keep_their_look(tmp_path: Path) -> None:
    plain = mr_slice(tmp_path / "plain" / "a", study=generate_uid(), series=generate_uid(),
                     WindowCenter=None, WindowWidth=None)
    inverted = mr_slice(tmp_path / "mono1" / "a", study=generate_uid(), series=generate_uid(),
                        WindowCenter=None, WindowWidth=None, PhotometricInterpretation="MONOCHROME1")
    negative = mr_slice(tmp_path / "negative" / "a", study=generate_uid(), series=generate_uid(),
                        WindowCenter=None, WindowWidth=None, RescaleSlope=-1, RescaleIntercept=0)
    decoded = {}
    for path in (plain, inverted, negative):
        [case] = cases_of(path.parent)
        decoded[path.parent.name] = decode_slice(case.slices[0], case).astype(int)
    np.testing.assert_array_equal(decoded["mono1"], 255 - decoded["plain"])
    np.testing.assert_array_equal(decoded["negative"], 255 - decoded["plain"])


def test_lut_only_and_palette_colour_files(tmp_path: Path) -> None:
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.LUTData = np.arange(4095, -1, -1, dtype="<u2").tobytes()  # turns values upside down
    lut.ModalityLUTType = "US"
    plain = mr_slice(tmp_path / "plain" / "a", study=generate_uid(), series=generate_uid(),
                     WindowCenter=None, WindowWidth=None)
    lut_only = mr_slice(tmp_path / "lut" / "a", study=generate_uid(), series=generate_uid(),
                        WindowCenter=None, WindowWidth=None, ModalityLUTSequence=Sequence([lut]))
    (plain_case,), (lut_case,) = cases_of(plain.parent), cases_of(lut_only.parent)
    shown, flipped = (decode_slice(c.slices[0], c).astype(int) for c in (plain_case, lut_case))
    assert np.abs(flipped - (255 - shown)).max() <= 1

    palette = get_testdata_file("examples_palette.dcm")
    (tmp_path / "palette").mkdir()
    shutil.copy(palette, tmp_path / "palette" / "a")
    [case] = cases_of(tmp_path / "palette", modalities=("US",))
    ds = pydicom.dcmread(palette)
    expected = np.rint(apply_color_lut(ds.pixel_array, ds) / 65535 * 255)
    np.testing.assert_array_equal(decode_slice(case.slices[0], case), expected)


def test_an_enhanced_multiframe_file_gives_one_slice_per_frame(tmp_path: Path) -> None:
    enhanced_mr(tmp_path / "enhanced", slopes=(1.0, 0.5, 0.25), zs=(20.0, 0.0, 10.0))
    [case] = cases_of(tmp_path)
    assert [(s.relpath, s.frame, s.slice_index) for s in case.slices] == [
        ("enhanced", 1, 0), ("enhanced", 2, 1), ("enhanced", 0, 2)]  # ordered by per-frame position
    assert case.sort_method == "position"
    assert case.window == (0.0, 2000.0)  # the first slice's frame window (slope 0.5)
    means = [decode_slice(s, case).mean() for s in case.slices]  # per-frame rescale, one window
    assert means[0] == pytest.approx(means[2] / 2, rel=0.05)
    assert means[1] == pytest.approx(means[2] / 4, rel=0.1)


def test_group_by_file_gives_one_case_per_file_and_frame(tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    for i in range(3):
        mr_slice(tmp_path / f"s{i}", study=study, series=series, z=i)
    enhanced_mr(tmp_path / "multi", slopes=(1.0, 1.0), zs=(0.0, 1.0))
    cases = cases_of(tmp_path, group_by="file")
    assert sorted(c.case_id for c in cases) == ["multi#0", "multi#1", "s0", "s1", "s2"]
    assert all(len(c.slices) == 1 and c.sort_method == "" for c in cases)
    assert len(cases_of(tmp_path)) == 2


def test_a_ct_file_is_skipped_with_its_reason(tmp_path: Path) -> None:
    mr_slice(tmp_path / "ct.dcm", study=generate_uid(), series=generate_uid(), Modality="CT")
    [case] = cases_of(tmp_path)
    assert (case.status, case.reason, case.modality) == ("skipped", "modality CT", "CT")
    with pytest.raises(Exception, match="modality CT"):
        decode_slice(case.slices[0], case)
    [scored] = cases_of(tmp_path, modalities=("MR", "CT"))
    assert scored.status is None


def test_a_dicomdir_is_not_scored(tmp_path: Path) -> None:
    shutil.copy(get_testdata_file("DICOMDIR"), tmp_path / "DICOMDIR")
    mr_slice(tmp_path / "IM1", study=generate_uid(), series=generate_uid())
    cases = {c.case_id: c for c in cases_of(tmp_path)}
    assert (cases["DICOMDIR"].status, cases["DICOMDIR"].reason) == ("skipped", "DICOMDIR index")
    assert sum(c.status is None for c in cases.values()) == 1


def test_files_too_large_and_loose_images_are_told_apart(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("triage.inputs.dicom.MAX_PIXELS", 64 * 64 - 1)
    mr_slice(tmp_path / "big.dcm", study=generate_uid(), series=generate_uid())
    (tmp_path / "notes.txt").write_text("not an image")
    Image.fromarray(np.full((5, 6, 3), 90, dtype=np.uint8)).save(tmp_path / "scan.png")
    cases, loose = build_cases(list(discover(tmp_path)))
    assert [(c.case_id, c.status) for c in cases] == [("big.dcm", "too_large")]
    assert [row.relpath for row in loose] == ["notes.txt", "scan.png"]
    image = image_case(loose[1])
    assert (image.kind, image.case_id, image.slices[0].slice_index) == ("image", "scan.png", None)
    np.testing.assert_array_equal(decode_slice(image.slices[0], image), read_image(loose[1].path).pixels)


def test_nifti_slices_are_shown_as_radiology_viewers_show_them(tmp_path: Path) -> None:
    data = np.zeros((8, 10, 3), dtype=np.int16)  # RAS+: i to the right, j to anterior, k up
    data[-2:, -2:, 1] = 1000  # right anterior corner
    write_nifti(tmp_path / "head.nii.gz", data, np.eye(4))
    [case] = cases_of(tmp_path)
    assert (case.kind, len(case.slices), case.status) == ("volume", 3, None)
    image = decode_slice(case.slices[1], case)
    assert image.shape == (10, 8, 3)  # rows: posterior from anterior, columns: from the right
    bright = np.argwhere(image[..., 0] == 255)
    assert set(map(tuple, bright)) == {(0, 0), (0, 1), (1, 0), (1, 1)}  # top left: anterior, right


def test_the_same_volume_in_two_orientations_gives_the_same_slices(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 1000, (6, 7, 5)).astype(np.int16)
    write_nifti(tmp_path / "ras.nii", data, np.diag([2.0, 2.0, 3.0, 1.0]))
    # Stored as (k, j, i) with i running to the left: a permutation and a flip.
    stored = np.transpose(data[::-1], (2, 1, 0))
    affine = np.array([[0, 0, -2.0, 10.0], [0, 2.0, 0, 0], [3.0, 0, 0, 0], [0, 0, 0, 1]])
    write_nifti(tmp_path / "other.nii.gz", stored, affine)
    other, ras = cases_of(tmp_path)  # sorted by relpath
    assert len(ras.slices) == len(other.slices) == 5
    for a, b in zip(ras.slices, other.slices):
        np.testing.assert_array_equal(decode_slice(a, ras), decode_slice(b, other))


@pytest.mark.parametrize("shape, words", [((4, 4, 4, 2), "a 4D volume (4x4x4x2)"),
                                          ((4, 4, 4, 2, 3), "a 5D volume (4x4x4x2x3)"),
                                          ((4, 4, 4, 1, 3), "a 5D volume (4x4x4x1x3)")])
def test_a_volume_of_more_dimensions_is_refused_with_its_own(tmp_path: Path, shape: tuple,
                                                             words: str) -> None:
    write_nifti(tmp_path / "bold.nii", np.ones(shape, dtype=np.int16), np.eye(4))
    [case] = cases_of(tmp_path)
    assert (case.kind, case.status) == ("volume", "unsupported") and case.reason.startswith(words)


def test_case_scores_equal_hand_computed_values() -> None:
    probabilities = [0.1, 0.9, 0.4, 0.8]
    assert case_score(probabilities) == 0.9
    assert case_score(probabilities, "topk", top_k=3) == pytest.approx((0.9 + 0.8 + 0.4) / 3)
    assert case_score(probabilities, "topk", top_k=1) == 0.9
    assert case_score([0.2, 0.6], "topk", top_k=3) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        case_score([], "max")
