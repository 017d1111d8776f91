"""Is an image like the ones the model was trained on? If not, its score is not to be trusted.

Two measures, each calibrated on the training images so that about
``1 - quantile`` of images like them fall outside:

- the distance of the image's L2-normalised pooled backbone features to its
  k-th nearest training image (one entry per copy group, so that a copy does
  not vouch for its twin), the deep nearest-neighbour check of out-of-
  distribution detection;
- the distance of its intensity statistics (colour, brightness, contrast,
  dark and bright area, edges, border, histogram entropy), in robust standard
  deviations of the training images', to its k-th nearest training image.
  The last block's pooled features alone miss some images a person tells
  apart at a glance (a blank frame, a logo, colour test patterns, a CT
  slice); these statistics catch most of them.

``ood_distance`` is the larger of the two, each divided by its own threshold,
and scaled so that 1 is the combined threshold: above 1, the image is
unfamiliar.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

FAMILIARITY_FILE = "familiarity.npz"
METHOD = "knn-cosine+intensity-statistics"
NEIGHBOURS = 5
QUANTILE = 0.99
STATISTICS = ("colour", "mean", "std", "dark", "bright", "edges", "border", "entropy")
# Statistics are in 0..1; a spread below this (a training set of grey images has no colour at
# all) would call the faintest JPEG tint unfamiliar.
_MIN_SCALE = 0.02
_HISTOGRAM_BINS = 32


def image_statistics(images: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) model inputs in 0..255 -> (N, len(STATISTICS)) in about 0..1."""
    pixels = np.asarray(images, dtype=np.float32) / 255.0
    # Channel by channel rather than numpy's reductions over the last axis of 3, which take
    # most of this function's time; the values are the same, bit for bit.
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    gray = (red + green + blue) / np.float32(3)
    spread = np.maximum(np.maximum(red, green), blue) - np.minimum(np.minimum(red, green), blue)
    n, ring = len(gray), max(1, gray.shape[1] // 8)
    sides = (gray[:, :ring], gray[:, -ring:], gray[:, :, :ring], gray[:, :, -ring:])
    border = np.concatenate([side.reshape(n, -1) for side in sides], axis=1)
    edges = np.abs(np.diff(gray, axis=1)).mean(axis=(1, 2)) + np.abs(np.diff(gray, axis=2)).mean(axis=(1, 2))
    return np.stack([
        spread.mean(axis=(1, 2)),
        gray.mean(axis=(1, 2)),
        gray.std(axis=(1, 2)),
        (gray < 0.06).mean(axis=(1, 2)),
        (gray > 0.94).mean(axis=(1, 2)),
        edges,
        border.mean(axis=1),
        _entropy(gray),
    ], axis=1).astype(np.float32)


def _entropy(gray: np.ndarray) -> np.ndarray:
    """Shannon entropy of each image's grey histogram, as a share of its maximum."""
    bins = np.minimum((gray.reshape(len(gray), -1) * _HISTOGRAM_BINS).astype(np.intp), _HISTOGRAM_BINS - 1)
    counts = np.stack([np.bincount(row, minlength=_HISTOGRAM_BINS) for row in bins]).astype(np.float64)
    share = counts / counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(share > 0, -share * np.log(share), 0.0)
    return terms.sum(axis=1) / np.log(_HISTOGRAM_BINS)


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True, eq=False)
class Familiarity:
    """The training images in two spaces, and the thresholds that call an image unfamiliar.

    Each space holds one entry per copy group (the mean of its members); an image's
    distance in a space is to its k-th nearest entry.
    """

    entries: np.ndarray  # (copy groups, d) unit vectors: each group's mean feature direction
    statistics: np.ndarray  # (copy groups, len(STATISTICS)) each group's standardised statistics
    centre: np.ndarray  # (len(STATISTICS),) medians of the training images' statistics
    scale: np.ndarray  # (len(STATISTICS),) their robust spreads (1.4826 x MAD, at least _MIN_SCALE)
    neighbours: int
    quantile: float
    feature_threshold: float  # k-th neighbour distance of the features at ``quantile``
    statistics_threshold: float  # k-th neighbour distance of the standardised statistics at ``quantile``
    combined_threshold: float  # the larger ratio to the two thresholds at ``quantile``
    n_images: int

    @classmethod
    def fit(cls, features: np.ndarray, statistics: np.ndarray, groups: np.ndarray,
            neighbours: int = NEIGHBOURS, quantile: float = QUANTILE) -> "Familiarity":
        """Calibrate on the training images: each one's distances to the k-th nearest entry of
        another copy group, whose quantile is the threshold."""
        labels, group_index = np.unique(np.asarray(groups), return_inverse=True)
        centre = np.median(statistics, axis=0)
        scale = np.maximum(1.4826 * np.median(np.abs(statistics - centre), axis=0), _MIN_SCALE)
        points = (_unit(features), ((statistics - centre) / scale).astype(np.float32))
        entries = [np.stack([p[group_index == g].mean(axis=0) for g in range(len(labels))]) for p in points]
        entries[0] = _unit(entries[0])
        k = max(1, min(neighbours, len(labels) - 1))
        gaps = [_leave_group_out(p, e, group_index, k) for p, e in zip(points, entries)]
        thresholds = [max(float(np.quantile(gap, quantile)), 1e-6) for gap in gaps]
        ratio = np.maximum(gaps[0] / thresholds[0], gaps[1] / thresholds[1])
        return cls(entries[0], entries[1].astype(np.float32), centre.astype(np.float32),
                   scale.astype(np.float32), k, quantile, *thresholds, float(np.quantile(ratio, quantile)),
                   len(group_index))

    @cached_property
    def _indexes(self) -> tuple[Any, Any]:
        from sklearn.neighbors import NearestNeighbors

        return tuple(NearestNeighbors(n_neighbors=self.neighbours, algorithm="brute").fit(entries)
                     for entries in (self.entries, self.statistics))

    def distances(self, features: np.ndarray, statistics: np.ndarray) -> np.ndarray:
        """``ood_distance`` of each image: above 1, unfamiliar."""
        standardised = (np.asarray(statistics, dtype=np.float32) - self.centre) / self.scale
        spaces = zip(self._indexes, (_unit(features), standardised))
        by_features, by_statistics = (index.kneighbors(points)[0][:, -1] for index, points in spaces)
        ratio = np.maximum(by_features / self.feature_threshold, by_statistics / self.statistics_threshold)
        return (ratio / self.combined_threshold).astype(np.float64)

    def to_bytes(self) -> bytes:
        """The index as the bytes of an ``.npz`` file (what the model folder keeps)."""
        buffer = io.BytesIO()
        np.savez(buffer, entries=self.entries, statistics=self.statistics, centre=self.centre,
                 scale=self.scale, numbers=np.array([self.neighbours, self.quantile, self.feature_threshold,
                                                     self.statistics_threshold, self.combined_threshold,
                                                     self.n_images]))
        return buffer.getvalue()

    @classmethod
    def load(cls, path: Path) -> "Familiarity":
        """Raises ``ValueError`` (or ``OSError``) for a file that is not an index this tool wrote."""
        with np.load(path, allow_pickle=False) as data:
            arrays = [data[name] for name in ("entries", "statistics", "centre", "scale", "numbers")]
        entries, statistics, centre, scale, numbers = arrays
        shapes = (entries.ndim == 2 and statistics.shape == (len(entries), len(STATISTICS))
                  and centre.shape == scale.shape == (len(STATISTICS),) and numbers.shape == (6,))
        if not shapes or not all(np.isfinite(a).all() for a in arrays):
            raise ValueError("not a familiarity index of this version")
        if (scale <= 0).any() or (numbers[2:5] <= 0).any() or not 1 <= numbers[0] <= len(entries):
            raise ValueError("a familiarity index with impossible thresholds")
        return cls(entries.astype(np.float32), statistics.astype(np.float32), centre, scale,
                   int(numbers[0]), *map(float, numbers[1:5]), int(numbers[5]))


def _leave_group_out(unit: np.ndarray, entries: np.ndarray, group_index: np.ndarray, k: int) -> np.ndarray:
    """Each training image's distance to its k-th nearest entry that is not its own copy group."""
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=min(k + 1, len(entries)), algorithm="brute").fit(entries)
    distances, found = index.kneighbors(unit)
    others = found != group_index[:, None]
    return np.array([row[keep][min(k, keep.sum()) - 1] for row, keep in zip(distances, others)])
