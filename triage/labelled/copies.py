"""Copies of one image in a data set, and splits that keep them on one side.

Two files are copies when their bytes are identical (same SHA-256) or when the
perceptual hashes of their normalised pixels are within :data:`NEAR_DISTANCE`
bits. Copies group as the connected components of those pairs, so a chain of
near copies is one group.

Normalisation, so that re-encoded, resized, cropped or annotated copies of one
scan hash alike: grayscale; cropped to the box of 1.6 standard deviations of
the brightness either side of its centroid (dark margins weigh nothing, so a
copy with margins trimmed or added keeps the same box); histogram-equalised
(other contrast or gamma). The hash is ``imagehash.phash`` with
``hash_size=16`` (256 bits).

The distance was chosen by looking at the pairs of the shared data set
(Kaggle "Brain MRI Images for Brain Tumor Detection", 253 files, 31,878 pairs)
side by side. It holds 22 groups of byte-identical files (29 pairs) and, with
the near copies seen by eye, 38 groups of 92 files: re-encoded, resized,
cropped, and one with an arrow drawn on the tumour (``yes/Y255.JPG`` and
``yes/Y30.jpg``). The other pairs by distance (bits of 256):

    distance                  0-9   10-19   20-29   30-73   74-79   80-99    100+
    copies (not identical)     24      23       2       0       0       0       0
    different scans             0       0       0       0       8     398  31,394

Every pair up to 28 bits was a copy of one scan; the closest different scans
(74 bits) are the same patient in another sequence (``no/49 no.jpg`` and
``no/no 5.jpeg``: T2 and FLAIR), which are not copies. :data:`NEAR_DISTANCE`
lies in that gap. Hashes of the raw pixels fail both ways: 64-bit ``phash``
puts two patients (``yes/Y105.jpg``, ``yes/Y81.jpg``) 6 bits apart but a crop
of one scan (``yes/Y107.jpg``, ``yes/Y163.JPG``) 18 apart; 256-bit ``phash``
puts crops of one scan up to 112 bits apart. A crop to the pixels above a
brightness threshold did as well on this set (copies up to 26, others from
62) but jumps when the background is near the threshold (a grey frame, a
noisy field): its box is then not the same for two copies.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image, ImageOps
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.neighbors import NearestNeighbors, radius_neighbors_graph

HASH_SIZE = 16
HASH_BITS = HASH_SIZE * HASH_SIZE
# Largest Hamming distance (bits of HASH_BITS) between the hashes of two copies: on the
# shared set, 20 above the farthest copy and 26 below the nearest different scans.
NEAR_DISTANCE = 48
# The hashed box reaches this many standard deviations of the brightness either side of its centre.
_SPREADS = 1.6
METHOD = (f"sha256 + phash(hash_size={HASH_SIZE}) <= {NEAR_DISTANCE} on grayscale "
          f"cropped to +-{_SPREADS} sd of its brightness, equalised")


@dataclass(frozen=True)
class CopyGroups:
    """Which input items are copies of one another.

    Attributes:
        group_of: One group id per input item; an item with no copy has a group of its own.
        method: How copies were found, for records such as the model card.
    """

    group_of: tuple[int, ...]
    method: str = METHOD

    @property
    def groups(self) -> int:
        """The number of groups with more than one member."""
        return int((self._sizes() > 1).sum())

    @property
    def files_in_groups(self) -> int:
        """The number of items that have at least one copy."""
        sizes = self._sizes()
        return int(sizes[sizes > 1].sum())

    def members(self, group_id: int) -> tuple[int, ...]:
        """The items of one group, in input order."""
        return tuple(i for i, group in enumerate(self.group_of) if group == group_id)

    def _sizes(self) -> np.ndarray:
        return np.bincount(np.asarray(self.group_of, dtype=np.int64))


def _content_box(gray: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns within :data:`_SPREADS` standard deviations of the brightness centroid.

    Moments of the brightness, not a threshold: dark margins weigh nothing, so
    trimming or padding them leaves the box on the same content, and a caption
    or a grey frame moves it only by its share of the brightness.
    """
    total = float(gray.sum())
    if total == 0:
        return slice(None), slice(None)
    box = []
    for axis in (1, 0):  # row profile (summed over columns), then column profile
        weight = gray.sum(axis=axis, dtype=np.float64) / total
        position = np.arange(weight.size)
        centre = weight @ position
        spread = np.sqrt(weight @ (position - centre) ** 2)
        box.append(slice(max(0, round(centre - _SPREADS * spread)),
                         min(weight.size, round(centre + _SPREADS * spread) + 1)))
    return box[0], box[1]


def hash_input(pixels: np.ndarray) -> Image.Image:
    """Grayscale, cropped to the content, equalised: what :func:`image_fingerprint` hashes."""
    gray = np.asarray(Image.fromarray(pixels).convert("L"))
    return ImageOps.equalize(Image.fromarray(gray[_content_box(gray)]))


def image_fingerprint(pixels: np.ndarray) -> str:
    """Hex perceptual hash of decoded ``(H, W, 3)`` ``uint8`` RGB pixels."""
    return str(imagehash.phash(hash_input(pixels), hash_size=HASH_SIZE))


def _bits(fingerprints: Sequence[str]) -> np.ndarray:
    return np.array([imagehash.hex_to_hash(f).hash.ravel() for f in fingerprints], dtype=bool)


def _radius() -> float:
    # The metric is the share of differing bits; half a bit more keeps NEAR_DISTANCE itself in.
    return (NEAR_DISTANCE + 0.5) / HASH_BITS


def near_matches(fingerprints: Sequence[str], known: Sequence[str]) -> np.ndarray:
    """For each fingerprint, whether it is within :data:`NEAR_DISTANCE` bits of any of ``known``.

    For checking new images against the fingerprints of a model's training images.
    """
    if not known or not fingerprints:
        return np.zeros(len(fingerprints), dtype=bool)
    index = NearestNeighbors(n_neighbors=1, metric="hamming").fit(_bits(known))
    distance, _ = index.kneighbors(_bits(fingerprints))
    return distance[:, 0] <= _radius()


def near_match(fingerprint: str, known: Sequence[str]) -> bool:
    """Whether ``fingerprint`` is within :data:`NEAR_DISTANCE` bits of any of ``known``."""
    return bool(near_matches([fingerprint], known)[0])


def _exact_pairs(sha256s: Sequence[str]) -> list[tuple[int, int]]:
    """Each item paired with the first item of the same bytes."""
    first: dict[str, int] = {}
    return [(first.setdefault(digest, i), i) for i, digest in enumerate(sha256s)]


def _near_pairs(fingerprints: Sequence[str | None]) -> list[tuple[int, int]]:
    known = [i for i, f in enumerate(fingerprints) if f is not None]
    if len(known) < 2:
        return []
    graph = radius_neighbors_graph(_bits([fingerprints[i] for i in known]), _radius(), metric="hamming")
    rows, cols = graph.nonzero()
    return [(known[r], known[c]) for r, c in zip(rows, cols)]


def find_copies(sha256s: Sequence[str], fingerprints: Sequence[str | None]) -> CopyGroups:
    """Group items whose bytes are identical or whose fingerprints are near.

    Args:
        sha256s: The hex SHA-256 of each item's bytes.
        fingerprints: Each item's :func:`image_fingerprint`; ``None`` when the file
            could not be decoded (it can then only be an exact copy).

    Returns:
        The groups; ids are numbered in the order of each group's first item.
    """
    if len(sha256s) != len(fingerprints):
        raise ValueError("find_copies needs one fingerprint per sha256.")
    n = len(sha256s)
    pairs = _exact_pairs(sha256s) + _near_pairs(fingerprints)
    rows, cols = zip(*pairs) if pairs else ((), ())
    graph = sparse.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return CopyGroups(tuple(int(label) for label in labels))


def copies_across(groups: CopyGroups, train_idx: Sequence[int], val_idx: Sequence[int]) -> list[int]:
    """The items of ``val_idx`` (in its order) that have a copy among ``train_idx``."""
    in_training = {groups.group_of[i] for i in train_idx}
    return [int(i) for i in val_idx if groups.group_of[i] in in_training]


def _group_classes(labels: np.ndarray, group_of: np.ndarray) -> dict[int, int]:
    """Each group's class (labels 0/1): its members' majority, a tie counting as 0."""
    positives = np.bincount(group_of, weights=labels)
    sizes = np.bincount(group_of)
    return {int(group): int(2 * positives[group] > sizes[group]) for group in np.unique(group_of)}


def _pick_validation(groups: list[int], sizes: dict[int, int], target: float) -> list[int]:
    """Groups, in the given order, that bring the validation count nearest ``target``."""
    chosen, count = [], 0
    for group in groups:
        if abs(count + sizes[group] - target) < abs(count - target):
            chosen.append(group)
            count += sizes[group]
    return chosen


def grouped_split(labels: np.ndarray, groups: CopyGroups, val_split: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) item indices with every copy group on one side.

    Stratified: within each class (labels 0/1; a group's class is its members' majority)
    the groups are shuffled with ``seed`` and taken for validation while that
    brings the class's validation count nearer ``val_split`` of its items.
    Hand-written rather than sklearn's ``StratifiedGroupKFold``, whose one fold
    holds 1/k of the items and so cannot meet a share such as 0.3.

    Returns:
        Sorted training and validation indices.
    """
    labels = np.asarray(labels, dtype=np.int64)
    group_of = np.asarray(groups.group_of, dtype=np.int64)
    if len(labels) != len(group_of):
        raise ValueError("grouped_split needs one label per item of the copy groups.")
    sizes = {int(g): int(n) for g, n in zip(*np.unique(group_of, return_counts=True))}
    group_class = _group_classes(labels, group_of)
    rng = np.random.default_rng(seed)
    validation: list[int] = []
    for cls in sorted(set(group_class.values())):
        in_class = [g for g, c in group_class.items() if c == cls]
        rng.shuffle(in_class)
        validation += _pick_validation(in_class, sizes, val_split * sum(sizes[g] for g in in_class))
    is_val = np.isin(group_of, validation)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def grouped_folds(labels: np.ndarray, groups: CopyGroups, k: int,
                  seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``k`` (training, test) index pairs of sklearn's ``StratifiedGroupKFold`` over the copy groups."""
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    labels = np.asarray(labels)
    yield from folds.split(np.zeros((len(labels), 1)), labels, np.asarray(groups.group_of))
