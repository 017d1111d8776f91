"""Pooled backbone features, computed once per image and cached on disk.

The backbone is frozen, so its 512-d pooled output per image is all the head
ever needs: extract it once, train the head on it as often as you like. Each
image's copy fingerprint (:mod:`triage.labelled.copies`) is kept beside its features.

A cache file holds one :func:`cache_key`: everything that changes a feature
(backbone weights, image size, the preprocessing and decoder versions, the
TensorFlow, Keras, Pillow, pydicom and OpenCV versions, the precision and the
device class). The key names the file and is stored in it; a file whose key or
content fails a check is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from triage.engine.predictor import Decoded, Stop, decode_for_model, predict
from triage.errors import Stopped
from triage.inputs.decode import DECODER_VERSION, read_file
from triage.labelled.copies import image_fingerprint
from triage.model.familiarity import STATISTICS, image_statistics
from triage.model.network import BackboneWeights
from triage.model.preprocess import PREPROCESS_VERSION
from triage.outputs.atomic import atomic_write
from triage.versions import library_versions

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

FEATURE_DIM = 512
# Distributions whose version can change a decoded pixel or a feature.
_FEATURE_LIBRARIES = ("tensorflow", "keras", "pillow", "pydicom", "opencv-python-headless")


def default_cache_dir() -> Path:
    """``$TRIAGE_CACHE``, else ``$XDG_CACHE_HOME/triage``, else ``~/.cache/triage``."""
    if os.environ.get("TRIAGE_CACHE"):
        return Path(os.environ["TRIAGE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "triage"


def cache_key(weights: BackboneWeights, image_size: int, precision: str = "fp32",
              device: str = "cpu") -> dict[str, Any]:
    """Everything a cached feature depends on."""
    versions = library_versions()
    return {"weights_sha256": weights.sha256, "image_size": image_size, "statistics": STATISTICS,
            "preprocess": PREPROCESS_VERSION, "decoder": DECODER_VERSION, "precision": precision,
            "device": device, "versions": {name: versions.get(name) for name in _FEATURE_LIBRARIES}}


class FeatureCache:
    """A map sha256 -> (feature vector, image statistics, copy fingerprint) for one :func:`cache_key`."""

    def __init__(self, directory: Path, key: dict[str, Any]) -> None:
        self.key = json.dumps(key, sort_keys=True)
        self.path = directory / f"vgg19-{hashlib.sha256(self.key.encode()).hexdigest()[:24]}.npz"
        self._vectors: dict[str, np.ndarray] = {}
        self._statistics: dict[str, np.ndarray] = {}
        self._fingerprints: dict[str, str] = {}
        self._dirty = False
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            with np.load(self.path, allow_pickle=False) as data:
                keys, vectors, prints = data["keys"], data["features"], data["fingerprints"]
                statistics = data["statistics"]
                if str(data["key"]) != self.key:
                    raise ValueError("written for other settings")
                if (vectors.ndim != 2 or vectors.shape[1] != FEATURE_DIM or len(keys) != len(vectors)
                        or len(prints) != len(keys) or statistics.shape != (len(keys), len(STATISTICS))
                        or not np.isfinite(vectors).all() or not np.isfinite(statistics).all()):
                    raise ValueError(f"shape {vectors.shape} for {len(keys)} keys")
            self._vectors = {str(k): v for k, v in zip(keys, vectors)}
            self._statistics = {str(k): s for k, s in zip(keys, statistics)}
            self._fingerprints = {str(k): str(f) for k, f in zip(keys, prints)}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            log.warning("feature cache %s is corrupt (%s): rebuilding it", self.path, exc)
            self._vectors, self._statistics, self._fingerprints = {}, {}, {}
            self._dirty = True

    def __len__(self) -> int:
        return len(self._vectors)

    def get(self, sha256: str) -> tuple[np.ndarray, np.ndarray, str] | None:
        """The features, statistics and fingerprint of a file's content, if they are known."""
        vector = self._vectors.get(sha256)
        return None if vector is None else (vector, self._statistics[sha256], self._fingerprints[sha256])

    def put(self, sha256: str, vector: np.ndarray, statistics: np.ndarray, fingerprint: str) -> None:
        self._vectors[sha256] = np.asarray(vector, dtype=np.float32)
        self._statistics[sha256] = np.asarray(statistics, dtype=np.float32)
        self._fingerprints[sha256] = fingerprint
        self._dirty = True

    def save(self) -> None:
        """Write the cache atomically, if anything changed."""
        if not self._dirty:
            return
        keys = np.array(sorted(self._vectors), dtype="U64")
        vectors = np.stack([self._vectors[k] for k in keys]) if len(keys) else \
            np.zeros((0, FEATURE_DIM), np.float32)
        statistics = np.stack([self._statistics[k] for k in keys]) if len(keys) else \
            np.zeros((0, len(STATISTICS)), np.float32)
        prints = np.array([self._fingerprints[k] for k in keys], dtype="U64")
        with atomic_write(self.path, "wb") as handle:
            np.savez(handle, keys=keys, features=vectors, statistics=statistics, fingerprints=prints,
                     key=np.array(self.key))
        self._dirty = False


@dataclass(frozen=True)
class Features:
    """Features of the files that could be read; ``failed`` lists the rest with reasons."""

    vectors: np.ndarray          # (n_ok, 512) float32, in the order of ``indices``
    statistics: np.ndarray       # (n_ok, len(STATISTICS)) of each row's model input (model.familiarity)
    indices: tuple[int, ...]     # positions in the input sequence of the rows above
    sha256s: tuple[str, ...]     # content hash of each row's file
    fingerprints: tuple[str, ...]  # copy fingerprint of each row's image (triage.labelled.copies)
    failed: tuple[tuple[int, str, str], ...]  # (position, status, reason)
    from_cache: int


def extract_features(
    paths: Sequence[Path], extractor: "keras.Model", image_size: int, *,
    batch_size: int = 32, cache: FeatureCache | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    progress: Callable[[int], None] | None = None,
) -> Features:
    """Run the frozen backbone once over every file not already in the cache.

    Args:
        paths: Image files.
        extractor: image -> pooled features model (see :func:`triage.model.network.feature_extractor`).
        image_size: Side of the square the images are resized to.
        batch_size: Images per forward pass.
        cache: Where known features are looked up and new ones stored.
        should_stop: Polled between batches.
        progress: Called with the number of files just handled.

    Returns:
        The features, and the files that could not be read with their reasons.

    Raises:
        Stopped: a stop was asked for (the cache keeps what was extracted).
    """

    def decode(index: int) -> Decoded:
        digest, data = read_file(paths[index])
        known = cache.get(digest) if cache is not None else None
        if known is not None:  # no need to decode
            return Decoded(None, (digest, known))
        decoded = decode_for_model(paths[index], digest, data, image_size)
        return Decoded(decoded.pixels, (digest, image_fingerprint(decoded.extra.display)))

    def run(batch: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        vectors = np.asarray(extractor.predict_on_batch(batch), dtype=np.float32)[:n]
        return list(zip(vectors, image_statistics(batch[:n])))

    rows: dict[int, tuple[str, np.ndarray, np.ndarray, str]] = {}
    failed: list[tuple[int, str, str]] = []
    from_cache = 0
    stop = Stop(should_stop)
    for outcome in predict(range(len(paths)), decode, run, batch_size=batch_size, stop=stop,
                           progress=progress):
        if outcome.failure is not None:
            failed.append((outcome.item, outcome.failure.status, outcome.failure.reason))
            continue
        digest, found = outcome.extra
        if isinstance(found, tuple):  # from the cache
            from_cache += 1
            rows[outcome.item] = (digest, *found)
            continue
        rows[outcome.item] = (digest, *outcome.output, found)
        if cache is not None:
            cache.put(digest, *outcome.output, found)
    if cache is not None:
        cache.save()
    if stop.asked:
        raise Stopped("training was stopped; no model was written")
    return _features(rows, failed, from_cache)


def _features(rows: dict[int, tuple[str, np.ndarray, np.ndarray, str]],
              failed: list[tuple[int, str, str]], from_cache: int) -> Features:
    order = tuple(sorted(rows))
    vectors = np.stack([rows[i][1] for i in order]) if order else np.zeros((0, FEATURE_DIM), np.float32)
    statistics = (np.stack([rows[i][2] for i in order]) if order
                  else np.zeros((0, len(STATISTICS)), np.float32))
    return Features(vectors, statistics, order, tuple(rows[i][0] for i in order),
                    tuple(rows[i][3] for i in order), tuple(failed), from_cache)
