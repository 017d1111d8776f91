"""Series, multi-frame files and volumes made to break a scan: every frame a slice of its own, one case
per series and study, no signal told, bad headers refused from the header, one bad file never the run's
end (no TensorFlow)."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from test_series import MR_SMALL, cases_of

from triage.errors import ImageLoadError, Stopped
from triage.inputs import dicom_series
from triage.inputs import nifti as volumes
from triage.inputs.cases import CaseWindows, build_cases, decode_slice
from triage.inputs.discovery import discover
from triage.scan.jobs import SliceDecoder, jobs_of
from triage.scan.plan import plan_scan
from triage.testing import (
    SAGITTAL,
    dicom_declaring,
    enhanced_mr,
    mr_slice,
    nifti_with,
    two_stack_file,
    write_nifti,
)


def all_slices(cases: list) -> list:
    return [slice_ for case in cases for slice_ in case.slices]


# --- every frame of a file is a slice of its own -------------------------------------------------


def test_a_file_holding_two_stacks_gives_every_frame_its_own_key(tmp_path: Path) -> None:
    two_stack_file(tmp_path / "enhanced")
    cases = cases_of(tmp_path)
    assert len(cases) == 2 and all(len(case.slices) == 3 for case in cases)
    keys = [slice_.key for slice_ in all_slices(cases)]
    assert len(set(keys)) == 6 and sorted(frame for _, frame, _ in keys) == list(range(6))


def test_group_by_file_keys_each_frame_apart(tmp_path: Path) -> None:
    enhanced_mr(tmp_path / "multi", slopes=(1.0,) * 4, zs=(0.0, 1.0, 2.0, 3.0))
    slices = all_slices(cases_of(tmp_path, group_by="file"))
    assert len({slice_.key for slice_ in slices}) == 4


def test_frames_beyond_a_short_per_frame_sequence_are_kept(tmp_path: Path) -> None:
    path = enhanced_mr(tmp_path / "short", slopes=(1.0,) * 4, zs=(0.0, 1.0, 2.0, 3.0))
    ds = pydicom.dcmread(path)
    del ds.SharedFunctionalGroupsSequence  # the orientation lives in the per-frame items only
    for item in ds.PerFrameFunctionalGroupsSequence:
        plane = Dataset()
        plane.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        item.PlaneOrientationSequence = Sequence([plane])
    ds.PerFrameFunctionalGroupsSequence = Sequence(list(ds.PerFrameFunctionalGroupsSequence)[:2])
    ds.save_as(path)
    slices = all_slices(cases_of(tmp_path))
    assert sorted(slice_.frame for slice_ in slices) == [0, 1, 2, 3]
    assert len({slice_.key for slice_ in slices}) == 4


def test_two_stacks_of_one_file_are_not_copies_of_each_other(tmp_path: Path) -> None:
    """Their rows share the file's sha256, but not their frames: each keeps its own card."""
    from triage.results.records import Row
    from triage.scan.verdicts import verdicts

    two_stack_file(tmp_path / "enhanced")
    plan = plan_scan(list(discover(tmp_path)), {}, tmp_path)
    rows = [Row(slice_.relpath, "ok", sha256="a" * 64, probability=0.5, case_id=case.case_id,
                slice_index=slice_.slice_index, frame=slice_.frame)
            for case in plan.cases for slice_ in case.slices]
    summaries, _ = verdicts(plan.cases, rows, 0.5, "max", 3)
    assert len(summaries) == 2 and all(s.copy_of is None and not s.copies for s in summaries)


# --- one case per series and study -----------------------------------------------------------------


def test_a_series_uid_reused_in_two_studies_makes_two_cases(tmp_path: Path) -> None:
    series = generate_uid()
    studies = {name: generate_uid() for name in "AB"}
    for name, study in studies.items():
        for i in range(3):
            mr_slice(tmp_path / f"{name}{i}", study=study, series=series, z=i)
    cases = cases_of(tmp_path)
    assert len({case.case_id for case in cases}) == 2
    for case in cases:
        assert {slice_.relpath[0] for slice_ in case.slices} == {case.slices[0].relpath[0]}
        assert case.study_uid == studies[case.slices[0].relpath[0]] and len(case.slices) == 3


def test_case_ids_that_clash_are_told_apart(tmp_path: Path) -> None:
    """A SeriesInstanceUID spelled like a loose image's path: two cases, two ids."""
    mr_slice(tmp_path / "dicom", study=generate_uid(), series="scan.png")
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(tmp_path / "scan.png")
    plan = plan_scan(list(discover(tmp_path)), {}, tmp_path)
    assert sorted(case.case_id for case in plan.cases) == ["scan.png", "scan.png~2"]
    for case in plan.cases:
        assert {slice_.case_id for slice_ in case.slices} == {case.case_id}


def test_orientation_noise_in_the_last_decimals_keeps_one_stack(tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    for i in range(4):
        noise = 0.0005001 if i % 2 else 0.0004999  # either side of a rounding boundary
        mr_slice(tmp_path / f"s{i}", study=study, series=series, z=i, orientation=(1.0, noise, 0, 0, 1.0, 0))
    [case] = cases_of(tmp_path)
    assert [slice_.relpath for slice_ in case.slices] == ["s0", "s1", "s2", "s3"]


def test_other_planes_of_one_series_still_come_apart(tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    for i in range(3):
        mr_slice(tmp_path / f"ax{i}", study=study, series=series, z=i)
        mr_slice(tmp_path / f"sag{i}", study=study, series=series, position=(i, 0, 0), orientation=SAGITTAL)
    assert sorted(len(case.slices) for case in cases_of(tmp_path)) == [3, 3]


# --- no signal is no black image ------------------------------------------------------------------


@pytest.mark.parametrize("data, reason", [
    (np.full((6, 6, 3), np.nan, np.float32), "no signal: no pixel value is a number"),
    (np.full((6, 6, 3), 42, np.int16), "no signal: every pixel is 42"),
])
def test_a_volume_with_no_signal_is_skipped_slice_by_slice(tmp_path: Path, data: np.ndarray,
                                                         reason: str) -> None:
    write_nifti(tmp_path / "flat.nii", data, np.eye(4))
    [case] = cases_of(tmp_path)
    for slice_ in case.slices:
        with pytest.raises(ImageLoadError) as caught:
            decode_slice(slice_, case)
        assert (caught.value.kind, caught.value.reason) == ("skipped", reason)


def test_a_slice_with_a_nan_rescale_slope_is_skipped(tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()
    mr_slice(tmp_path / "good", study=study, series=series, z=0)
    mr_slice(tmp_path / "nan", study=study, series=series, z=1, RescaleSlope="NaN", RescaleIntercept=0)
    [case] = cases_of(tmp_path)
    good, bad = case.slices
    assert decode_slice(good, case).max() > 0
    with pytest.raises(ImageLoadError, match="no pixel value is a number") as caught:
        decode_slice(bad, case)
    assert caught.value.kind == "skipped"


# --- bad headers are refused from the header; one bad file never ends the run --------------------


@pytest.mark.parametrize("make, status, words", [
    (lambda p: nifti_with(p / "zero.nii", shape=(4, 0, 4)), "unreadable", "no voxels (4x0x4)"),
    (lambda p: nifti_with(p / "nan.nii", srow=np.nan), "unreadable", "affine) is not finite"),
    (lambda p: nifti_with(p / "inf.nii", srow=np.inf), "unreadable", "affine) is not finite"),
])
def test_a_bad_volume_is_refused_and_the_others_go_on(tmp_path: Path, make, status: str, words: str) -> None:
    bad = make(tmp_path)
    write_nifti(tmp_path / "good.nii", np.arange(64, dtype=np.int16).reshape(4, 4, 4), np.eye(4))
    cases = {case.case_id: case for case in cases_of(tmp_path)}
    assert cases["good.nii"].status is None and len(cases["good.nii"].slices) == 4
    refused = cases[bad.name]
    assert refused.status == status and words in refused.reason and len(refused.slices) == 1


def test_an_unexpected_failure_on_one_file_is_that_files_error(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    study, series = generate_uid(), generate_uid()
    for i in range(3):
        mr_slice(tmp_path / f"s{i}", study=study, series=series, z=i)
    real = dicom_series.images_of

    def fails_on_s1(found, header):
        if found.relpath == "s1":
            raise ZeroDivisionError("a bug")
        return real(found, header)

    monkeypatch.setattr(dicom_series, "images_of", fails_on_s1)
    cases = {case.case_id: case for case in cases_of(tmp_path)}
    assert (cases["s1"].status, cases["s1"].reason) == ("error", "ZeroDivisionError: a bug")
    assert len(cases[series].slices) == 2


def test_a_volume_must_hold_the_data_its_header_declares(tmp_path: Path) -> None:
    data = np.arange(8 * 8 * 6, dtype=np.int16).reshape(8, 8, 6)
    whole = write_nifti(tmp_path / "whole.nii", data, np.eye(4)).read_bytes()
    (tmp_path / "cut.nii").write_bytes(whole[:len(whole) - 100])
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(whole)[:200])
    header = nib.Nifti2Header()
    header.set_data_shape((1, 1, 100_000))  # 608 bytes declaring 100,000 slices
    header.set_data_dtype(np.uint8)
    header.set_sform(np.eye(4), code=1)
    (tmp_path / "claims.nii").write_bytes(header.binaryblock + bytes(4) + bytes(64))
    cases = {case.case_id: case for case in cases_of(tmp_path)}
    assert cases["whole.nii"].status is None
    for name in ("cut.nii", "cut.nii.gz", "claims.nii"):
        case = cases[name]
        assert case.status == "unreadable" and len(case.slices) == 1, (name, case.reason)


def test_a_volume_that_cannot_be_read_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = np.arange(8 * 8 * 6, dtype=np.int16).reshape(8, 8, 6)
    raw = gzip.compress(write_nifti(tmp_path / "v.nii", data, np.eye(4)).read_bytes())
    (tmp_path / "v.nii").unlink()
    # Cut short, but its last four bytes still claim the whole size (as a copy in progress may).
    (tmp_path / "v.nii.gz").write_bytes(raw[:len(raw) // 2] + raw[-4:])
    [case] = cases_of(tmp_path)
    assert case.status is None and len(case.slices) == 6
    reads = []
    real = volumes._read_canonical
    monkeypatch.setattr(volumes, "_read_canonical", lambda path: reads.append(path) or real(path))
    decoder = SliceDecoder(32, cases={case.case_id: case})
    for job in jobs_of(case):
        with pytest.raises(ImageLoadError) as caught:
            decoder(job)
        assert caught.value.kind == "unreadable"
    assert len(reads) == 1


def test_a_volume_is_budgeted_by_the_bytes_it_decodes_to(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    write_nifti(tmp_path / "small.nii", np.ones((4, 4, 4), np.uint8), np.eye(4))
    write_nifti(tmp_path / "wide.nii", np.ones((4, 4, 4), np.complex128), np.eye(4))
    monkeypatch.setattr(volumes, "MAX_DECODED_BYTES", 64 * (1 + 8))  # the uint8 volume, no more
    cases = {case.case_id: case for case in cases_of(tmp_path)}
    assert cases["small.nii"].status is None and cases["small.nii"].slices[0].cost == 64 * 9
    assert cases["wide.nii"].status == "too_large" and "complex128" in cases["wide.nii"].reason


def test_a_complex_volume_is_shown_by_its_magnitude(tmp_path: Path) -> None:
    magnitude = np.arange(1, 65, dtype=np.float64).reshape(4, 4, 4)
    write_nifti(tmp_path / "c.nii", (magnitude * np.exp(1j * magnitude)).astype(np.complex64), np.eye(4))
    write_nifti(tmp_path / "m.nii", magnitude.astype(np.float32), np.eye(4))
    complex_case, real_case = cases_of(tmp_path)
    for a, b in zip(complex_case.slices, real_case.slices):
        assert np.abs(decode_slice(a, complex_case).astype(int) - decode_slice(b, real_case)).max() <= 1


@pytest.mark.parametrize("frames, size, data, words", [
    (200_000, 8, 200 * 1024, "the header declares 25,600,000"),  # a frame bomb: 200 KB, 200,000 frames
    (4, 64, 8192 + 10, "the header declares 32,768"),  # frames missing
    (1, 64, 8192 * 3, "the header declares 8,192"),  # two frames more than declared
])
def test_pixel_data_that_do_not_hold_what_the_header_declares_are_unreadable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frames: int, size: int, data: int,
        words: str) -> None:
    dicom_declaring(tmp_path / "bad.dcm", frames, size, data)
    made: list[int] = []
    real = dicom_series._image
    monkeypatch.setattr(dicom_series, "_image", lambda *args: made.append(1) or real(*args))
    [case] = cases_of(tmp_path)
    assert case.status == "unreadable" and words in case.reason and not made


def test_one_bit_pixels_with_the_data_of_sixteen_frames_are_unreadable(tmp_path: Path) -> None:
    ds = pydicom.dcmread(MR_SMALL)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0  # 64x64 bits: 512 bytes, but 8,192 are there
    ds.save_as(tmp_path / "bits1")
    [case] = cases_of(tmp_path)
    assert case.status == "unreadable" and "8,192 bytes" in case.reason


def test_pixel_data_padded_by_less_than_a_frame_are_read(tmp_path: Path) -> None:
    dicom_declaring(tmp_path / "padded.dcm", 1, 64, 8192 + 128)
    [case] = cases_of(tmp_path)
    assert case.status is None and decode_slice(case.slices[0], case).shape == (64, 64, 3)


# --- what a case costs per slice does not grow with its length ------------------------------------


def test_what_the_engine_sends_per_slice_does_not_grow_with_the_series(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each item the predictor (or Ray) receives pickles to the same size for a series of 4 or 64."""
    from triage.scan import scorer

    sent: dict[int, list[int]] = {}

    def capture(items, decode, run, **options):
        sent[len(items)] = [len(pickle.dumps(item)) for item in items]
        return iter(())

    monkeypatch.setattr(scorer, "predict", capture)
    stub = type("Stub", (), {"decode": None, "run": None, "model": None, "close": lambda self: None})()
    for n in (4, 64):
        series = generate_uid()
        for i in range(n):
            mr_slice(tmp_path / f"n{n}" / f"s{i:03d}", study="1.2.3", series=series, z=i)
        plan = plan_scan(list(discover(tmp_path / f"n{n}")), {}, tmp_path)
        scorer.score_cases(plan, stub, batch_size=4, stop=scorer.Stop(), progress=None)
    assert max(sent[64]) - min(sent[4]) <= 8  # an index of two digits, no more


def test_a_case_window_is_measured_once_for_all_its_slices(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    study, series = generate_uid(), generate_uid()
    for i in range(6):
        mr_slice(tmp_path / f"s{i}", study=study, series=series, z=i, WindowCenter=None, WindowWidth=None)
    [case] = cases_of(tmp_path)
    measured = []
    import triage.inputs.cases as cases_module

    real = cases_module.case_window
    monkeypatch.setattr(cases_module, "case_window", lambda c: measured.append(c.case_id) or real(c))
    windows = CaseWindows()
    for slice_ in case.slices:
        decode_slice(slice_, case, windows)
    assert measured == [case.case_id]
    assert pickle.loads(pickle.dumps(windows)).get(case) == real(case)  # a copy measures its own


# --- a DICOM file without a Modality, a volume named otherwise, an image named .nii ---------------


def test_a_dicom_image_without_modality_can_be_scored(tmp_path: Path) -> None:
    mr_slice(tmp_path / "a", study=generate_uid(), series=generate_uid(), Modality=None)
    [case] = cases_of(tmp_path)
    assert case.status == "skipped" and "NONE" in case.reason
    [case] = cases_of(tmp_path, modalities=("MR", "NONE"))
    assert case.status is None


def test_files_are_told_volumes_or_images_by_their_content(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(tmp_path / "photo.jpg")
    (tmp_path / "photo.jpg").rename(tmp_path / "photo.nii")
    volume = write_nifti(tmp_path / "brain.nii.gz", np.arange(64, dtype=np.int16).reshape(4, 4, 4), np.eye(4))
    volume.rename(tmp_path / "brain-export")
    cases, loose = build_cases(list(discover(tmp_path)))
    assert [(case.case_id, case.kind, case.status, len(case.slices)) for case in cases] == [
        ("brain-export", "volume", None, 4)]
    assert [item.relpath for item in loose] == ["photo.nii"]


def test_a_stop_while_files_are_sorted_ends_the_listing(tmp_path: Path) -> None:
    for i in range(3):
        mr_slice(tmp_path / f"s{i}", study=generate_uid(), series=generate_uid())
    polls: list[int] = []

    def stop_on_the_second_file() -> bool:
        polls.append(1)
        return len(polls) > 1

    with pytest.raises(Stopped):
        build_cases(list(discover(tmp_path)), should_stop=stop_on_the_second_file)
    with pytest.raises(Stopped):
        list(discover(tmp_path, should_stop=lambda: True))
