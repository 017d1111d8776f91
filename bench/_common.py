"""Shared helpers of the benchmarks: timing, peak RSS, generated images, small models.

Import this module before TensorFlow or triage: it quietens TensorFlow's C++ logs
and points the feature cache at a private temporary folder, so a benchmark never
reads a cache warmed by an earlier run (nor writes into ``~/.cache``).
"""

from __future__ import annotations

import argparse
import atexit
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The tests' generated 'scans' (a dark noisy square, a bright disc for a tumour).
from triage.testing import blob_image  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
# The shared public data set, beside the project (never copied into it).
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "brain_tumor_dataset"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

T = TypeVar("T")

# ----------------------------------------------------------------------------- temp space

_SCRATCH = Path(tempfile.mkdtemp(prefix="triage-bench-"))
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
os.environ["TRIAGE_CACHE"] = str(_SCRATCH / "feature-cache")  # private, empty at start
os.environ.pop("TRIAGE_MODEL", None)


def scratch(name: str) -> Path:
    """A new empty folder under this process's temporary folder (removed at exit)."""
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=_SCRATCH))
    return path


# ----------------------------------------------------------------------------- arguments


def parser(description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=description,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="labelled data set folder (yes/ and no/); used in place, never copied "
                        "into the project")


def add_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone-weights", default="random", metavar="random|imagenet|PATH",
                   help="VGG19 backbone weights; random has the same compute as imagenet and "
                        "needs no network")


def add_repeats(p: argparse.ArgumentParser, default: int = 3, help: str | None = None) -> None:
    p.add_argument("--repeats", type=int, default=default,
                   help=help or "time each measurement this many times and report the median")


def parse_model_bench(p: argparse.ArgumentParser, repeats: int) -> tuple[argparse.Namespace, Path]:
    """The shared tail of the benches that train a throw-away model: options, parse, checks.

    Returns:
        The parsed arguments and the checked data folder.
    """
    p.add_argument("--train-per-class", type=int, default=30,
                   help="images per class of the subset the throw-away model is trained on")
    add_weights(p)
    add_repeats(p, default=repeats)
    args = p.parse_args()
    data = check_data(args.data)
    quiet_tensorflow()
    check_weights(args.backbone_weights)
    return args, data


def check_weights(spec: str) -> str:
    """Exit with triage's one-sentence message when the backbone weights can't be had."""
    from triage.errors import WeightsUnavailable
    from triage.model.network import resolve_backbone_weights

    try:
        resolve_backbone_weights(spec)
    except WeightsUnavailable as exc:
        sys.exit(str(exc))
    return spec


def check_data(data: Path) -> Path:
    if not (data / "yes").is_dir() or not (data / "no").is_dir():
        sys.exit(f"data set not found at {data} (expected yes/ and no/ sub-folders); pass --data")
    return data


# ----------------------------------------------------------------------------- timing


def now() -> float:
    return time.perf_counter()


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """(wall seconds, result) of one call."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def mean(values: Iterable[float]) -> float:
    return float(statistics.fmean(list(values)))


def stdev(values: Sequence[float]) -> float:
    return float(statistics.stdev(values)) if len(values) > 1 else 0.0


def fmt_s(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    """A plain left-aligned text table."""
    cells = [[str(c) for c in row] for row in ([header] if header else []) + list(rows)]
    widths = [max(len(row[i]) for row in cells if i < len(row)) for i in range(max(map(len, cells)))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if header and n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU's model name and the vector extensions that decide the model's speed."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "CPU unknown"
    lines = info.splitlines()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "CPU?")
    flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    found = [flag for flag in wanted if flag in flags]
    return f"{name} ({' '.join(found) or 'no AVX2'})"


def environment_line(**extra: Any) -> str:
    """One line describing the machine and settings, printed at the top of each benchmark."""
    try:
        import tensorflow as tf
        tf_version = tf.__version__
        gpus = len(tf.config.list_physical_devices("GPU"))
    except Exception:  # pragma: no cover - tensorflow is a dependency
        tf_version, gpus = "?", 0
    parts = [f"python {platform.python_version()}", f"tensorflow {tf_version}", cpu_model(),
             f"{os.cpu_count()} CPUs", f"{gpus} GPUs", f"load {os.getloadavg()[0]:.2f}"]
    parts += [f"{k}={v}" for k, v in extra.items()]
    return "# " + ", ".join(parts)


# ----------------------------------------------------------------------------- memory


def _status_kb(pid: int | str, field: str) -> int | None:
    """A ``kB`` field (VmHWM, VmRSS) of /proc/PID/status, or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def peak_rss_self_mb() -> float:
    """Peak resident set size of this process in MB (/proc VmHWM, else getrusage)."""
    kb = _status_kb("self", "VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024


@dataclass
class ChildRun:
    returncode: int
    seconds: float
    peak_rss_mb: float        # ru_maxrss of the command alone (wait4 in a small wrapper)
    polled_hwm_mb: float      # highest /proc/PID/status VmHWM seen while polling its process tree
    output: str


# Linux carries the high-water RSS of the memory image a process had before execve into
# its ru_maxrss: a child forked (or vforked) from this benchmark, which holds TensorFlow
# and a model, would report at least this process's own peak. So the command runs under
# a tiny Python wrapper, whose fresh memory image is small, and the wrapper reports the
# rusage of its one child from os.wait4.
_WRAPPER = (
    "import os, subprocess, sys\n"
    "child = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "child.returncode = os.waitstatus_to_exitcode(status)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(child.returncode if child.returncode >= 0 else 128 - child.returncode)\n"
)


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (via /proc/PID/task/TID/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children", encoding="ascii") as handle:
                    todo += [int(c) for c in handle.read().split()]
        except (OSError, ValueError):
            continue
    return found


def run_measured(cmd: Sequence[str], *, env: dict[str, str] | None = None,
                 poll_s: float = 0.05, cwd: Path | None = None) -> ChildRun:
    """Run a command, returning its wall time and its own peak RSS.

    The peak is the command's ``ru_maxrss`` from ``os.wait4`` (see ``_WRAPPER`` for why a
    wrapper) and, as a cross-check, the highest VmHWM polled from ``/proc`` while it runs.
    """
    log = tempfile.TemporaryFile(mode="w+b", dir=_SCRATCH)
    maxrss_file = Path(tempfile.mkstemp(prefix="maxrss-", dir=_SCRATCH)[1])
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, str(maxrss_file), *cmd],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    polled = [0]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            for pid in _descendants(proc.pid)[1:]:  # [0] is the wrapper itself
                kb = _status_kb(pid, "VmHWM")
                if kb is not None:
                    polled[0] = max(polled[0], kb)
            done.wait(poll_s)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        returncode = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        done.set()
        poller.join()
    seconds = time.perf_counter() - start
    log.seek(0)
    output = log.read().decode("utf-8", "replace")
    log.close()
    text = maxrss_file.read_text().strip()
    maxrss_kb = int(text) if text else 0
    return ChildRun(returncode, seconds, maxrss_kb / 1024, polled[0] / 1024, output)


# ----------------------------------------------------------------------------- images


def dataset_images(data: Path, n: int | None = None) -> list[Path]:
    """Image files of the data set in a fixed order that mixes both classes.

    ``yes`` and ``no`` files alternate (each sorted by name), so any prefix holds
    both classes; ``n`` None means all.
    """
    classes = [sorted(p for p in (data / name).rglob("*")
                      if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
               for name in ("yes", "no")]
    mixed: list[Path] = []
    for i in range(max(map(len, classes))):
        mixed += [files[i] for files in classes if i < len(files)]
    if n is not None:
        if n > len(mixed):
            sys.exit(f"--images {n}: the data set at {data} has only {len(mixed)} images")
        mixed = mixed[:n]
    return mixed


def copy_images(paths: Sequence[Path], data: Path, dest: Path) -> Path:
    """Copy images into a temporary folder (keeping ``yes/``/``no/``), for scanning a subset."""
    for path in paths:
        target = dest / path.relative_to(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return dest


def labelled_subset(data: Path, per_class: int) -> Path:
    """A temporary labelled folder with the first ``per_class`` images of each class."""
    dest = scratch("labelled")
    for name in ("yes", "no"):
        files = sorted(p for p in (data / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        copy_images(files[:per_class], data, dest)
    return dest


def write_blob_images(dest: Path, n: int, *, size: int = 128, seed: int = 0,
                      labelled: bool = False) -> Path:
    """``n`` generated PNGs (every third one with a blob) in ``dest``, or in yes/ and no/."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        tumour = i % 3 == 0 if not labelled else i % 2 == 0
        folder = dest / ("yes" if tumour else "no") if labelled else dest
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(blob_image(rng, tumour, size)).save(folder / f"scan_{i:05d}.png")
    return dest


def decode_for_model(paths: Sequence[Path], image_size: int) -> Any:
    """(N, S, S, 3) float32 of the images, decoded and resized exactly as triage does."""
    import numpy as np

    from triage.inputs.decode import read_image
    from triage.model.preprocess import resize_for_model

    return np.stack([resize_for_model(read_image(p).pixels, image_size) for p in paths])


def bare_forward_pass(model: Any, batches: Sequence[Any]) -> Callable[[], float]:
    """The baseline of the scan benches: ``model.predict_on_batch`` over pre-decoded ``batches``.

    Every batch shape is traced once here; the returned function times one pass in seconds.
    """
    import numpy as np

    for shape in {b.shape for b in batches}:
        model.predict_on_batch(np.zeros(shape, np.float32))

    def bare() -> float:
        start = now()
        for batch in batches:
            model.predict_on_batch(batch)
        return now() - start

    return bare


# ----------------------------------------------------------------------------- models


def train_small_model(data: Path, image_size: int, weights: str, *, per_class: int = 30,
                      epochs: int = 1) -> Path:
    """A model folder trained fast on a small labelled subset (for scan/CAM/report benches).

    Its accuracy does not matter: only its shape (VGG19 at ``image_size``) does.
    """
    from triage.train.training import TrainConfig, train_model

    subset = labelled_subset(data, per_class)
    out = scratch("model") / "model"
    train_model(subset, out, TrainConfig(epochs=epochs, image_size=image_size,
                                         backbone_weights=weights, cache=False))
    return out


def train_blob_model(image_size: int, weights: str, *, per_class: int = 20) -> Path:
    """A model folder trained on generated blob images (for the memory bench)."""
    from triage.train.training import TrainConfig, train_model

    data = write_blob_images(scratch("blobs"), 2 * per_class, size=96, seed=1, labelled=True)
    out = scratch("model") / "model"
    train_model(data, out, TrainConfig(epochs=5, image_size=image_size,
                                       backbone_weights=weights, cache=False))
    return out


def quiet_tensorflow() -> None:
    """Silence Python-side TensorFlow/absl warnings that would clutter the tables."""
    import logging
    import warnings

    # triage.engine.gradcam.gradcam_full_tape builds Model(model.inputs, ...) (a list) and calls it
    # with one tensor: Keras warns about the structure on every call.
    warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match")
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed, but will be ignored")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
