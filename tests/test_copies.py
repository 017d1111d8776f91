"""Copies found by content, and splits that keep a copy group on one side."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from triage.inputs.decode import read_image
from triage.labelled.copies import (
    NEAR_DISTANCE,
    CopyGroups,
    copies_across,
    find_copies,
    grouped_folds,
    grouped_split,
    image_fingerprint,
    near_match,
    near_matches,
)
from triage.labelled.dataset import index_labelled
from triage.testing import SHARED_DATA

SIZE = 256


def brain(seed: int, size: int = SIZE) -> np.ndarray:
    """A brain-like slice: a bright elliptic skull on black, a smooth random interior."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    radius = ((yy - 0.5) / 0.44) ** 2 + ((xx - 0.5) / 0.36) ** 2
    image = rng.normal(6, 3, (size, size))
    interior = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), size / 24)
    interior = 110 + 60 * interior / interior.std()
    image[radius < 0.85] = interior[radius < 0.85]
    image[(radius >= 0.85) & (radius < 1)] = 220
    return gray_rgb(image)


def blob_on(background: np.ndarray, centre: tuple[int, int], radius: int) -> np.ndarray:
    """A bright disc on a given noisy background (as conftest's blob_image draws one)."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    image = background.copy()
    image[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2] = 230
    return gray_rgb(image)


def gray_rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)


def encode(pixels: np.ndarray, fmt: str = "PNG", **options: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **options)
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(data)).convert("RGB"))


def resized(pixels: np.ndarray, factor: float) -> np.ndarray:
    image = Image.fromarray(pixels)
    return np.array(image.resize((round(image.width * factor), round(image.height * factor)),
                                 Image.Resampling.BILINEAR))


def with_arrow(pixels: np.ndarray) -> np.ndarray:
    """A white arrow drawn inside the head, pointing at a spot."""
    image = Image.fromarray(pixels.copy())
    draw = ImageDraw.Draw(image)
    draw.line([(0.65 * SIZE, 0.3 * SIZE), (0.5 * SIZE, 0.45 * SIZE)], fill=(255, 255, 255), width=3)
    draw.polygon([(0.5 * SIZE, 0.45 * SIZE), (0.56 * SIZE, 0.43 * SIZE), (0.52 * SIZE, 0.39 * SIZE)],
                 fill=(255, 255, 255))
    return np.array(image)


def copies_of(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """The planted copies: what re-saving, resizing, cropping and annotating a scan do."""
    return {
        "jpeg q40": decode(encode(pixels, "JPEG", quality=40)),
        "jpeg q90": decode(encode(pixels, "JPEG", quality=90)),
        "smaller": resized(pixels, 0.6),
        "larger": resized(pixels, 1.5),
        "cropped": pixels[9:-5, 12:-7],  # the black margin trimmed unevenly
        "padded": np.pad(pixels, ((20, 20), (0, 0), (0, 0))),
        "arrow": with_arrow(pixels),
    }


def fingerprint_distance(a: np.ndarray, b: np.ndarray) -> int:
    return bin(int(image_fingerprint(a), 16) ^ int(image_fingerprint(b), 16)).count("1")


def groups_of(images: list[np.ndarray]) -> CopyGroups:
    files = [encode(pixels) for pixels in images]
    return find_copies([hashlib.sha256(data).hexdigest() for data in files],
                       [image_fingerprint(decode(data)) for data in files])


# ----------------------------------------------------------------------------- finding copies


def test_image_fingerprint_is_hex_of_256_bits() -> None:
    fingerprint = image_fingerprint(brain(0))
    assert len(fingerprint) == 64 and int(fingerprint, 16) >= 0
    assert image_fingerprint(brain(0)) == fingerprint


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_copies_are_near(seed: int) -> None:
    original = brain(seed)
    for name, copy in copies_of(original).items():
        assert fingerprint_distance(original, copy) <= NEAR_DISTANCE - 8, name


def test_look_alikes_are_not_near() -> None:
    brains = [brain(seed) for seed in range(6)]
    background = np.random.default_rng(7).normal(40, 12, (SIZE, SIZE))
    blobs = [blob_on(background, centre, radius)
             for centre, radius in (((80, 90), 30), ((160, 150), 40), ((120, 60), 25), ((70, 170), 50))]
    for kind in (brains, blobs):
        for i, a in enumerate(kind):
            for b in kind[i + 1:]:
                assert fingerprint_distance(a, b) > NEAR_DISTANCE + 8


def test_copies_land_in_one_group_and_look_alikes_apart() -> None:
    original, look_alike = brain(10), brain(11)
    copies = list(copies_of(original).values())
    background = np.random.default_rng(3).normal(40, 12, (SIZE, SIZE))
    blobs = [blob_on(background, (90, 90), 30), blob_on(background, (150, 160), 35)]
    groups = groups_of([original, *copies, look_alike, *blobs])
    assert set(groups.members(groups.group_of[0])) == set(range(1 + len(copies)))
    assert groups.groups == 1 and groups.files_in_groups == 1 + len(copies)
    assert len(set(groups.group_of)) == 1 + 1 + len(blobs)


def test_blob_scans_re_saved_are_copies() -> None:
    scan = blob_on(np.random.default_rng(5).normal(40, 12, (SIZE, SIZE)), (100, 140), 30)
    assert fingerprint_distance(scan, decode(encode(scan, "JPEG", quality=75))) <= NEAR_DISTANCE
    assert fingerprint_distance(scan, resized(scan, 0.75)) <= NEAR_DISTANCE


def test_byte_identical_files_are_exact_copies() -> None:
    shas = ["a" * 64, "b" * 64, "a" * 64, "c" * 64]
    groups = find_copies(shas, [None, None, None, None])  # none could be decoded
    assert groups.group_of == (0, 1, 0, 2)  # ids in the order of each group's first item
    assert groups.groups == 1 and groups.files_in_groups == 2


def test_an_undecodable_file_is_only_an_exact_copy() -> None:
    fingerprint = image_fingerprint(brain(0))
    groups = find_copies(["a" * 64, "b" * 64], [fingerprint, None])
    assert groups.groups == 0


def test_near_copies_chain_into_one_group() -> None:
    base = 0
    chain = [f"{base ^ ((1 << step) - 1):064x}" for step in (0, 40, 80)]  # 40 bits between neighbours
    groups = find_copies(["a" * 64, "b" * 64, "c" * 64], chain)
    assert groups.groups == 1 and groups.files_in_groups == 3


def test_copy_groups_records() -> None:
    groups = CopyGroups((0, 1, 0, 2, 1, 3))
    assert groups.groups == 2 and groups.files_in_groups == 4
    assert groups.members(0) == (0, 2) and groups.members(3) == (5,)
    assert "phash" in groups.method and "sha256" in groups.method
    assert find_copies([], []).group_of == ()


def test_copies_across_names_validation_items_with_a_copy_in_training() -> None:
    groups = CopyGroups((0, 1, 0, 2, 1, 3))
    assert copies_across(groups, [0, 1, 3], [2, 4, 5]) == [2, 4]
    assert copies_across(groups, [0, 2], [1, 3, 4, 5]) == []


def test_near_match_against_known_fingerprints() -> None:
    original = brain(20)
    known = [image_fingerprint(brain(seed)) for seed in (21, 22)] + [image_fingerprint(original)]
    assert near_match(image_fingerprint(decode(encode(original, "JPEG", quality=60))), known)
    assert not near_match(image_fingerprint(brain(23)), known)
    assert not near_match(image_fingerprint(original), [])
    found = near_matches([image_fingerprint(resized(original, 0.5)), image_fingerprint(brain(24))], known)
    assert found.tolist() == [True, False]


# ----------------------------------------------------------------------------- splits


def random_groups(n: int, seed: int) -> tuple[np.ndarray, CopyGroups]:
    """Items in groups of 1 to 5 (mostly singletons), each group of one class; 60% positive."""
    rng = np.random.default_rng(seed)
    group_of: list[int] = []
    labels: list[int] = []
    while len(group_of) < n:
        size = int(rng.choice([1, 1, 1, 2, 2, 3, 5]))
        label = int(rng.random() < 0.6)
        group_of += [len(set(group_of))] * size
        labels += [label] * size
    order = rng.permutation(len(group_of))  # members of a group are not neighbours
    return np.array(labels)[order], CopyGroups(tuple(np.array(group_of)[order].tolist()))


@pytest.mark.parametrize("seed", [0, 1, 1337])
@pytest.mark.parametrize("val_split", [0.1, 0.2, 0.3, 0.5])
def test_grouped_split_keeps_groups_whole_stratified_and_near_the_share(seed: int, val_split: float) -> None:
    labels, groups = random_groups(300, seed)
    train, val = grouped_split(labels, groups, val_split, seed)
    assert sorted([*train, *val]) == list(range(len(labels)))
    group_of = np.array(groups.group_of)
    assert not set(group_of[train]) & set(group_of[val])
    assert copies_across(groups, train, val) == []
    assert abs(len(val) / len(labels) - val_split) <= 0.02
    for cls in (0, 1):
        share = np.sum(labels[val] == cls) / np.sum(labels == cls)
        assert abs(share - val_split) <= 0.03


def test_grouped_split_is_deterministic_for_a_seed() -> None:
    labels, groups = random_groups(200, 4)
    first = grouped_split(labels, groups, 0.2, 1337)
    again = grouped_split(labels, groups, 0.2, 1337)
    other = grouped_split(labels, groups, 0.2, 1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[1], other[1])


def test_grouped_split_gives_a_group_its_majority_class() -> None:
    labels = np.array([1, 1, 0] + [0] * 10 + [1] * 10)
    groups = CopyGroups((0, 0, 0, *range(1, 21)))
    for seed in range(10):
        train, val = grouped_split(labels, groups, 0.4, seed)
        assert {0, 1, 2} <= set(train) or {0, 1, 2} <= set(val)
        positives_in_val = int(np.sum(labels[val] == 1))
        assert abs(positives_in_val - 0.4 * 12) <= 2


@pytest.mark.parametrize("k", [3, 5])
def test_grouped_folds_never_split_a_group(k: int) -> None:
    labels, groups = random_groups(200, k)
    group_of = np.array(groups.group_of)
    tested = []
    folds = list(grouped_folds(labels, groups, k, seed=1337))
    assert len(folds) == k
    for train, test in folds:
        assert not set(group_of[train]) & set(group_of[test])
        assert 0 < labels[test].mean() < 1
        tested += list(test)
    assert sorted(tested) == list(range(len(labels)))


# ----------------------------------------------------------------------------- the shared data set


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared data set not present")
def test_copies_in_the_shared_data_set() -> None:
    labelled = index_labelled(SHARED_DATA, seed=None)
    loaded = [read_image(f.path) for f in labelled.files]
    groups = find_copies([image.sha256 for image in loaded],
                         [image_fingerprint(image.pixels) for image in loaded])
    index = {f.relpath: i for i, f in enumerate(labelled.files)}

    def together(a: str, b: str) -> bool:
        return groups.group_of[index[a]] == groups.group_of[index[b]]

    assert groups.groups >= 30 and groups.files_in_groups >= 80  # 38 and 92 when checked by eye
    assert together("yes/Y255.JPG", "yes/Y30.jpg")  # an arrow drawn on the tumour
    assert together("yes/Y107.jpg", "yes/Y163.JPG")  # 512x512 and a 270x316 crop
    assert together("no/no 923.jpg", "no/no.jpg")  # 225x225 and 512x512
    assert not together("no/49 no.jpg", "no/no 5.jpeg")  # one patient, T2 and FLAIR: not copies
