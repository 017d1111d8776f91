#!/usr/bin/env python3
"""GPU check: scan throughput end to end at fp32 and fp16, parity with fp32 on CPU, GPU memory.

Runs with Keras 3 on whatever backend is installed (``bench/gpu_check.sh`` picks torch,
jax or tensorflow and sets KERAS_BACKEND); TensorFlow is not needed. The network is
the parity model of ``bench/_reference.py``: triage's VGG19 classifier, its weights drawn
from a seeded generator and its logit layer read from ``bench/gpu_reference.json``; the
sha256 of all weights must match the file's. It is saved as ``model.keras`` and loaded
back with plain ``keras.models.load_model``, as a lab would (``--model`` loads another).

Per precision: the forward pass (block5_conv4 activations and the probability, one pass,
compiled: XLA on jax/tensorflow, torch.compile on torch, unless --no-compile), Grad-CAM of
the flagged scans from those activations through a float32 copy of the tail, and the
overlays, encoded as a scan writes them. Measured:

- decode alone: triage's decoder (``triage.inputs.decode`` + ``triage.model.preprocess``) when it
  imports here, else OpenCV, else Pillow; --workers threads; images/s;
- model alone: forward + Grad-CAM of the flagged, on decoded batches; images/s;
- overlays alone: colour map, blend, PNG + JPEG encode of the flagged; images/s;
- end to end: decode (prefetched) -> forward -> Grad-CAM -> overlays; images/s, and
  which stage limits it;
- peak GPU memory; parity: |p - p_fp32_cpu| on the reference's generated images, and
  decisions flipped at the reference's threshold.

Flagged: probability >= --threshold, by default the median probability of the first
batch, so half the scans get Grad-CAM and overlays (a heavy case).

Target: >= 2,000 images/s end to end at 256 px with Grad-CAM on the flagged scans (fp16).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _reference as R  # noqa: E402

TARGET = 2000.0
CAM_LAYER = "block5_conv4"


def backend_info() -> tuple[str, str]:
    import keras

    name = keras.backend.backend()
    device = "cpu"
    if name == "torch":
        import torch

        if torch.cuda.is_available():
            device = torch.cuda.get_device_name(0)
            torch.backends.cudnn.benchmark = True
    elif name == "jax":
        import jax

        device = str(jax.devices()[0].device_kind)
    elif name == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        device = gpus[0].name if gpus else "cpu"
    return name, device


def gpu_memory(reset: bool = False) -> float | None:
    """Peak GPU memory in MB since the last reset (None where it can't be read)."""
    import keras

    try:
        if keras.backend.backend() == "torch":
            import torch

            if not torch.cuda.is_available():
                return None
            if reset:
                torch.cuda.reset_peak_memory_stats()
            return torch.cuda.max_memory_allocated() / 2**20
        if keras.backend.backend() == "jax":
            import jax

            stats = jax.devices()[0].memory_stats() or {}
            return stats.get("peak_bytes_in_use", 0) / 2**20 or None
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            if reset:
                tf.config.experimental.reset_memory_stats("GPU:0")
            return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    except Exception:  # memory is reported, never fatal
        return None
    return None


def load_model(args: argparse.Namespace, reference: dict[str, Any], work: Path) -> tuple[Any, bool]:
    """The model loaded from a ``model.keras`` file, and whether its weights are the reference's."""
    import keras

    path = args.model
    if path is None:
        logit = (np.asarray(reference["logit_kernel"], np.float32).reshape(-1, 1),
                 np.asarray(reference["logit_bias"], np.float32))
        path = work / "model.keras"
        R.build(reference["image_size"], logit).save(path)
    model = keras.models.load_model(path, compile=False)
    same = R.weights_sha256(model) == reference["weights_sha256"]
    if not same:
        print("# the model's weights are not the reference's: parity is not comparable", file=sys.stderr)
    return model, same


def float32_tail(model: Any) -> Any:
    """block5_conv4 activations -> logit, float32 copies of the model's layers (as triage.engine.gradcam)."""
    import keras

    names = [layer.name for layer in model.layers]
    inputs = keras.Input(tuple(model.get_layer(CAM_LAYER).output.shape[1:]))
    x = inputs
    for layer in model.layers[names.index(CAM_LAYER) + 1:names.index("logit") + 1]:
        config = layer.get_config()
        config["dtype"] = "float32"
        copy = layer.__class__.from_config(config)
        x = copy(x)
        copy.set_weights(layer.get_weights())
    return keras.Model(inputs, x)


def cam_function(tail: Any) -> Callable[[np.ndarray], np.ndarray]:
    """Activations (N, H, W, C) -> ReLU Grad-CAM maps (N, H, W), float32, on the backend's device."""
    import keras

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        def maps(activations: np.ndarray) -> np.ndarray:
            a = keras.ops.convert_to_tensor(activations, "float32").detach().requires_grad_(True)
            (grads,) = torch.autograd.grad(tail(a).sum(), a)
            cams = torch.relu(torch.einsum("nhwc,nc->nhw", a, grads.mean(dim=(1, 2))))
            return cams.detach().cpu().numpy()
        return maps
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        trainable = [v.value for v in tail.trainable_variables]
        frozen = [v.value for v in tail.non_trainable_variables]

        @jax.jit
        def cams(a: Any) -> Any:
            grads = jax.grad(lambda x: tail.stateless_call(trainable, frozen, x)[0].sum())(a)
            return jax.nn.relu(jnp.einsum("nhwc,nc->nhw", a, grads.mean(axis=(1, 2))))
        return lambda activations: np.asarray(cams(jnp.asarray(activations, jnp.float32)))
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def tf_cams(a: Any) -> Any:
        with tf.GradientTape() as tape:
            tape.watch(a)
            score = tf.reduce_sum(tail(a, training=False))
        grads = tape.gradient(score, a)
        return tf.nn.relu(tf.einsum("nhwc,nc->nhw", a, tf.reduce_mean(grads, axis=(1, 2))))
    return lambda activations: tf_cams(tf.cast(activations, tf.float32)).numpy()


def normalise(cams: np.ndarray) -> np.ndarray:
    peak = cams.reshape(len(cams), -1).max(axis=1)
    return (cams / np.where(peak > 0, peak, 1.0)[:, None, None]).astype(np.float32)


def decoder(size: int) -> tuple[str, Callable[[Path], tuple[np.ndarray, np.ndarray]]]:
    """(name, path -> (model input (S, S, 3) float32, the decoded RGB pixels))."""
    try:
        from triage.inputs.decode import read_image
        from triage.model.preprocess import resize_for_model

        def decode(path: Path) -> tuple[np.ndarray, np.ndarray]:
            pixels = read_image(path).pixels
            return resize_for_model(pixels, size), pixels
        return "triage (triage.inputs.decode + triage.model.preprocess)", decode
    except ImportError as exc:
        print(f"# triage's decoder does not import here ({exc}): decoding with OpenCV or Pillow",
              file=sys.stderr)
    try:
        import cv2

        def decode_cv2(path: Path) -> tuple[np.ndarray, np.ndarray]:
            pixels = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            return cv2.resize(pixels.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR), pixels
        return "OpenCV", decode_cv2
    except ImportError:
        from PIL import Image

        def decode_pil(path: Path) -> tuple[np.ndarray, np.ndarray]:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
            pixels = np.asarray(rgb)
            return np.asarray(rgb.resize((size, size), Image.BILINEAR), np.float32), pixels
        return "Pillow", decode_pil


def overlay_writer() -> Callable[[np.ndarray, np.ndarray, Path], None]:
    """(pixels, map, stem) -> writes stem_gradcam.png and stem_image.jpg as a scan does."""
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is None:
        from PIL import Image

        def write_pil(pixels: np.ndarray, cam: np.ndarray, stem: Path) -> None:
            heat = np.asarray(Image.fromarray(np.uint8(cam * 255)).resize(pixels.shape[1::-1]), np.float32)
            blended = (0.4 * np.stack([heat, heat * 0.5, 255 - heat], -1) + 0.6 * pixels).astype(np.uint8)
            Image.fromarray(blended).save(f"{stem}_gradcam.png", compress_level=3)
            Image.fromarray(pixels).save(f"{stem}_image.jpg", quality=90)
        return write_pil
    try:
        from triage.engine.gradcam import overlay
    except ImportError:
        def overlay(pixels: np.ndarray, cam: np.ndarray) -> np.ndarray:
            up = cv2.resize(cam, pixels.shape[1::-1], interpolation=cv2.INTER_LINEAR)
            heat = cv2.cvtColor(cv2.applyColorMap(np.uint8(np.clip(up, 0, 1) * 255), cv2.COLORMAP_JET),
                                cv2.COLOR_BGR2RGB)
            return cv2.addWeighted(heat, 0.4, pixels, 0.6, 0.0)

    def write_cv2(pixels: np.ndarray, cam: np.ndarray, stem: Path) -> None:
        blended = overlay(pixels, cam)
        for suffix, image, params in (("_gradcam.png", blended, [cv2.IMWRITE_PNG_COMPRESSION, 3]),
                                      ("_image.jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])):
            _, data = cv2.imencode(suffix[-4:], cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
            Path(f"{stem}{suffix}").write_bytes(data.tobytes())
    return write_cv2


def write_inputs(folder: Path, n: int, size: int, workers: int) -> list[Path]:
    """``n`` JPEG 'scans' of ``size`` px (64 distinct ones, each written under several names)."""
    from PIL import Image

    distinct = [Image.fromarray(np.uint8(image)) for image in R.images(64, size, seed=7)]
    paths = [folder / f"scan_{i:05d}.jpg" for i in range(n)]
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda i: distinct[i % 64].save(paths[i], quality=92), range(n)))
    return paths


class Stages:
    """Seconds the main thread spent in each stage: ``with stages("forward"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class Check:
    """One precision's forward pass + Grad-CAM of the flagged, and its measurements."""

    def __init__(self, model: Any, precision: str, tail_maps: Callable[[np.ndarray], np.ndarray],
                 args: argparse.Namespace, threshold: float | None) -> None:
        import keras

        from triage.model.network import with_precision

        net = with_precision(model, precision)
        self.forward = keras.Model(net.input, [net.get_layer(CAM_LAYER).output, net.output])
        self.forward.compile(jit_compile=not args.no_compile)
        self.tail_maps, self.args, self.threshold = tail_maps, args, threshold

    def step(self, images: np.ndarray, n: int, stages: Stages) -> tuple[np.ndarray, np.ndarray | None]:
        """(indices of the flagged among the first ``n``, their normalised maps) of a full batch."""
        with stages("forward"):
            activations, probability = self.forward.predict_on_batch(self._padded(images))
        flagged = np.flatnonzero(np.asarray(probability).reshape(-1)[:n] >= self.threshold)
        if not len(flagged):
            return flagged, None
        with stages("cam"):  # the whole batch: one shape, so a compiled CAM compiles once
            return flagged, normalise(self.tail_maps(activations)[flagged])

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        size = self.args.batch_size
        return np.concatenate([np.asarray(self.forward.predict_on_batch(self._padded(images[i:i + size]))[1])
                               .reshape(-1)[:len(images[i:i + size])] for i in range(0, len(images), size)])

    def _padded(self, images: np.ndarray) -> np.ndarray:
        """Every batch at the one compiled shape."""
        missing = self.args.batch_size - len(images)
        return images if not missing else np.concatenate(
            [images, np.zeros((missing, *images.shape[1:]), images.dtype)])

    def end_to_end(self, paths: list[Path], decode: Callable[[Path], Any],
                   write_overlay: Callable[..., None], out: Path) -> tuple[float, Stages]:
        """Images/s of decode (prefetched) -> forward -> Grad-CAM -> overlays (thread pool)."""
        from triage.engine.prefetch import prefetch_map

        stages, size, workers = Stages(), self.args.batch_size, self.args.workers
        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            pending: list[Any] = []
            stream = prefetch_map(decode, paths, workers=workers, ahead=4 * size)
            while True:
                with stages("wait for decode"):
                    chunk = [result for _, result in _take(stream, size)]
                if not chunk:
                    break
                flagged, maps = self.step(np.stack([c[0] for c in chunk]), len(chunk), stages)
                for j, i in enumerate(flagged):
                    pending.append(pool.submit(write_overlay, chunk[i][1], maps[j], out / f"e{len(pending)}"))
                if len(pending) > 8 * size or len(chunk) < size:
                    with stages("wait for overlays"):
                        for future in pending[:-size] if len(chunk) == size else pending:
                            future.result()
                    pending = pending[-size:] if len(chunk) == size else []
            with stages("wait for overlays"):
                for future in pending:
                    future.result()
        return len(paths) / (time.perf_counter() - start), stages


def measure(check: Check, batch: np.ndarray, pixels: list[np.ndarray], paths: list[Path],
            decode: Callable[[Path], Any], write_overlay: Callable[..., None], work: Path) -> dict[str, Any]:
    args = check.args
    gpu_memory(reset=True)
    start = time.perf_counter()
    try:
        check.forward.predict_on_batch(batch)
    except Exception as exc:  # a compiler that can't take the graph: say so, measure eager
        print(f"# the compiled forward pass failed ({type(exc).__name__}: {exc}); running it eagerly",
              flush=True)
        check.forward.compile(jit_compile=False)
        check.forward.predict_on_batch(batch)
    facts: dict[str, Any] = {"compile_s": time.perf_counter() - start}
    if args.threshold is None:  # half the scans flagged: Grad-CAM and overlays for every other one
        args.threshold = check.threshold = float(np.median(check.probabilities(batch)))
        print(f"# threshold {args.threshold:.4f}: the median probability of the first batch", flush=True)
    rounds = max(1, len(paths) // args.batch_size)  # model alone: forward + Grad-CAM, decoded batches
    start = time.perf_counter()
    for _ in range(rounds):
        flagged, maps = check.step(batch, len(batch), Stages())
    facts["model_images_per_s"] = rounds * len(batch) / (time.perf_counter() - start)
    facts["flagged_share"] = len(flagged) / len(batch)
    out = Path(tempfile.mkdtemp(prefix="overlays-", dir=work))
    jobs = [(pixels[i], maps[j], out / f"o{k}_{i}") for k in range(max(1, rounds // 4))
            for j, i in enumerate(flagged)] if maps is not None else []
    start = time.perf_counter()  # overlays alone, on the thread pool
    with ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(lambda job: write_overlay(*job), jobs))
    facts["overlay_images_per_s"] = len(jobs) / (time.perf_counter() - start) if jobs else None
    rate, stages = check.end_to_end(paths, decode, write_overlay, out)
    facts["end_to_end_images_per_s"], facts["end_to_end_main_thread_s"] = rate, stages.seconds
    facts["peak_gpu_mb"] = gpu_memory()
    return facts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=int, default=4096, help="JPEG files to scan end to end")
    p.add_argument("--source-size", type=int, default=512, help="side of the generated JPEGs")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--precisions", default="fp32,fp16", help="comma-separated: fp32, fp16, bf16")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 4, help="decode / overlay threads")
    p.add_argument("--no-compile", action="store_true", help="eager forward pass (no XLA, no torch.compile)")
    p.add_argument("--reference", type=Path, default=R.REFERENCE_FILE)
    p.add_argument("--model", type=Path, default=None, help="a model.keras to load instead of the reference")
    p.add_argument("--threshold", type=float, default=None,
                   help="flag at this probability [default: the median of the first batch: half flagged]")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()

    import keras

    from triage.engine.prefetch import prefetch_map

    reference = R.read_reference(args.reference)
    size, threshold = reference["image_size"], reference["threshold"]
    backend, device = backend_info()
    print(f"# keras {keras.__version__}, backend {backend}, device {device}, {os.cpu_count()} CPUs, "
          f"{args.images} JPEGs of {args.source_size} px -> {size} px, batch {args.batch_size}, "
          f"{args.workers} threads, compiled {not args.no_compile}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    model, comparable = load_model(args, reference, work)
    tail_maps = cam_function(float32_tail(model))
    (work / "inputs").mkdir()
    paths = write_inputs(work / "inputs", args.images, args.source_size, args.workers)
    decoder_name, decode = decoder(size)
    write_overlay = overlay_writer()

    start = time.perf_counter()  # decode alone, keeping the first batch
    first = _take(prefetch_map(decode, paths, workers=args.workers, ahead=4 * args.batch_size), len(paths),
                  keep=args.batch_size)
    decode_rate = len(paths) / (time.perf_counter() - start)
    batch, pixels = np.stack([d[0] for _, d in first]), [d[1] for _, d in first]
    print(f"# decode alone ({decoder_name}): {decode_rate:.0f} images/s", flush=True)

    ref_images = R.images(reference["n_images"], size)
    ref_p32 = np.asarray(reference["probabilities_fp32_cpu"])
    results: dict[str, Any] = {"backend": backend, "device": device, "decoder": decoder_name,
                               "decode_images_per_s": decode_rate, "precisions": {}}
    rows = []
    for precision in args.precisions.split(","):
        check = Check(model, precision, tail_maps, args, args.threshold)
        facts = measure(check, batch, pixels, paths, decode, write_overlay, work)
        p_gpu = check.probabilities(ref_images)
        diff = np.abs(p_gpu - ref_p32)
        facts["parity"] = {"comparable": comparable, "max_abs_dp": float(diff.max()),
                           "median_abs_dp": float(np.median(diff)), "threshold": threshold,
                           "flips": int(((p_gpu >= threshold) != (ref_p32 >= threshold)).sum())}
        overlays = (facts["overlay_images_per_s"] or float("inf")) / max(facts["flagged_share"], 1e-9)
        facts["slowest_stage"] = min((decode_rate, "decode"), (facts["model_images_per_s"], "model"),
                                     (overlays, "overlays"))[1]
        results["precisions"][precision] = facts
        parity = facts["parity"]
        rows.append([precision, f"{facts['compile_s']:.1f}", f"{facts['model_images_per_s']:.0f}",
                     f"{overlays:.0f}", f"{facts['end_to_end_images_per_s']:.0f}",
                     f"{facts['peak_gpu_mb']:.0f}" if facts["peak_gpu_mb"] else "?",
                     f"{parity['max_abs_dp']:.4f} / {parity['median_abs_dp']:.5f} / {parity['flips']}"
                     + ("" if comparable else " (not the reference model)"), facts["slowest_stage"]])
        waits = ", ".join(f"{k} {v:.2f} s" for k, v in facts["end_to_end_main_thread_s"].items())
        print(f"# {precision}: end to end {facts['end_to_end_images_per_s']:.0f} images/s; "
              f"main thread: {waits}", flush=True)

    header = ["precision", "compile s", "model img/s", "overlays img/s", "end to end img/s", "peak GPU MB",
              "vs fp32 CPU: max|dp| / median / flips", "slowest stage alone"]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print()
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    best = results["precisions"].get("fp16") or next(iter(results["precisions"].values()))
    rate = best["end_to_end_images_per_s"]
    print(f"\ndecode alone {decode_rate:.0f} images/s ({decoder_name}, {args.workers} threads); "
          f"{100 * best['flagged_share']:.0f}% of the scans flagged (Grad-CAM + overlays for those); "
          f"overlays img/s counts scanned images at that share")
    print(f"end to end {rate:.0f} images/s  target >= {TARGET:.0f}  {'PASS' if rate >= TARGET else 'FAIL'}; "
          f"slowest stage alone: {best['slowest_stage']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _take(stream: Any, n: int, keep: int | None = None) -> list[Any]:
    """Up to ``n`` items of a prefetch stream (the first ``keep`` of them kept); a failed decode stops."""
    items, taken = [], 0
    for item, result in stream:
        if isinstance(result, BaseException):
            sys.exit(f"decoding {item} failed: {result!r}")
        taken += 1
        if keep is None or len(items) < keep:
            items.append((item, result))
        if taken == n:
            break
    return items


if __name__ == "__main__":
    sys.exit(main())
