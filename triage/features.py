"""Pooled backbone features, computed once per image and cached on disk.

The backbone is frozen, so its 512-d pooled output per image is all the head
ever needs: extract it once, train the head on it as often as you like. The
cache is keyed by file content (sha256), backbone weights (sha256), image size,
preprocessing version and the precision the backbone ran in (bf16 features
never mix with fp32 ones); a cache file that fails any check is rebuilt, never
trusted.
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from triage.atomic import atomic_write
from triage.errors import Stopped
from triage.images import read_file
from triage.model import BackboneWeights
from triage.predictor import Decoded, Stop, decode_for_model, predict
from triage.preprocess import PREPROCESS_VERSION

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

FEATURE_DIM = 512


def default_cache_dir() -> Path:
    """``$TRIAGE_CACHE``, else ``$XDG_CACHE_HOME/triage``, else ``~/.cache/triage``."""
    if os.environ.get("TRIAGE_CACHE"):
        return Path(os.environ["TRIAGE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "triage"


class FeatureCache:
    """A map sha256 -> feature vector for one (weights, image size, preprocessing, precision)."""

    def __init__(self, directory: Path, weights: BackboneWeights, image_size: int,
                 precision: str = "fp32") -> None:
        # fp32 keeps the name caches had before precisions existed: those are fp32 features.
        tail = "" if precision == "fp32" else f"-{precision}"
        name = f"vgg19-{weights.sha256[:20]}-{image_size}px-p{PREPROCESS_VERSION}{tail}.npz"
        self.path = directory / name
        self._vectors: dict[str, np.ndarray] = {}
        self._dirty = False
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            with np.load(self.path, allow_pickle=False) as data:
                keys, vectors = data["keys"], data["features"]
                if (vectors.ndim != 2 or vectors.shape[1] != FEATURE_DIM
                        or len(keys) != len(vectors) or not np.isfinite(vectors).all()):
                    raise ValueError(f"shape {vectors.shape} for {len(keys)} keys")
            self._vectors = {str(k): v for k, v in zip(keys, vectors)}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            log.warning("feature cache %s is corrupt (%s): rebuilding it", self.path, exc)
            self._vectors = {}
            self._dirty = True

    def __len__(self) -> int:
        return len(self._vectors)

    def get(self, sha256: str) -> np.ndarray | None:
        return self._vectors.get(sha256)

    def put(self, sha256: str, vector: np.ndarray) -> None:
        self._vectors[sha256] = np.asarray(vector, dtype=np.float32)
        self._dirty = True

    def save(self) -> None:
        """Write the cache atomically, if anything changed."""
        if not self._dirty:
            return
        keys = np.array(sorted(self._vectors), dtype="U64")
        vectors = np.stack([self._vectors[k] for k in keys]) if len(keys) else \
            np.zeros((0, FEATURE_DIM), np.float32)
        with atomic_write(self.path, "wb") as handle:
            np.savez(handle, keys=keys, features=vectors)
        self._dirty = False


@dataclass(frozen=True)
class Features:
    """Features of the files that could be read; ``failed`` lists the rest with reasons."""

    vectors: np.ndarray          # (n_ok, 512) float32, in the order of ``indices``
    indices: tuple[int, ...]     # positions in the input sequence of the rows above
    sha256s: tuple[str, ...]     # content hash of each row's file
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
        extractor: image -> pooled features model (see :func:`triage.model.feature_extractor`).
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
        return Decoded(decode_for_model(paths[index], digest, data, image_size).pixels, (digest, None))

    def run(batch: np.ndarray, n: int) -> np.ndarray:
        return np.asarray(extractor.predict_on_batch(batch), dtype=np.float32)[:n]

    rows: dict[int, tuple[str, np.ndarray]] = {}
    failed: list[tuple[int, str, str]] = []
    from_cache = 0
    stop = Stop(should_stop)
    for outcome in predict(range(len(paths)), decode, run, batch_size=batch_size, stop=stop,
                           progress=progress):
        if outcome.failure is not None:
            failed.append((outcome.item, outcome.failure.status, outcome.failure.reason))
            continue
        digest, known = outcome.extra
        from_cache += known is not None
        vector = known if known is not None else outcome.output
        if cache is not None and known is None:
            cache.put(digest, vector)
        rows[outcome.item] = (digest, vector)
    if cache is not None:
        cache.save()
    if stop.asked:
        raise Stopped("training was stopped; no model was written")
    return _features(rows, failed, from_cache)


def _features(rows: dict[int, tuple[str, np.ndarray]], failed: list[tuple[int, str, str]],
              from_cache: int) -> Features:
    order = tuple(sorted(rows))
    vectors = np.stack([rows[i][1] for i in order]) if order else np.zeros((0, FEATURE_DIM), np.float32)
    return Features(vectors, order, tuple(rows[i][0] for i in order), tuple(failed), from_cache)
