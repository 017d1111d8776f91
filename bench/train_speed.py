#!/usr/bin/env python3
"""Training time: triage (backbone once per image) vs the thesis recipe (backbone every epoch).

The tool is ``triage.train.training.train_model`` with ``cache=False``, so the frozen VGG19
really runs once per image in the timed run; it is then run twice more with a
feature cache (cold, which fills it, and warm). The naive recipe is the thesis's:
``keras.utils.image_dataset_from_directory(..., subset="both")`` and ``model.fit``
of preprocess -> frozen VGG19 -> GAP -> dense head, which runs the backbone over
every image every epoch. Both use the same split (checked file by file), the
same backbone weights and the same seed.

Targets: naive/tool wall time >= 20x, |validation accuracy difference| <= 0.02
(on the means over --seeds when several are given).
"""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common as C  # before TensorFlow or triage: TF log level, private feature cache

RATIO_TARGET = 20.0
ACC_TARGET = 0.02


@dataclass
class NaiveRun:
    seconds: float                 # measured wall time (setup + fit)
    setup_seconds: float
    epoch_seconds: list[float]
    epochs_run: int
    epochs_wanted: int
    val_accuracy: float | None     # None when the run was truncated
    train_accuracy: float | None

    @property
    def extrapolated(self) -> bool:
        return self.epochs_run < self.epochs_wanted

    @property
    def total_seconds(self) -> float:
        """Measured time, or measured + the missing epochs at the steady epoch time."""
        if not self.extrapolated:
            return self.seconds
        later = self.epoch_seconds[1:] or self.epoch_seconds  # epoch 1 also traces the graph
        return self.seconds + (self.epochs_wanted - self.epochs_run) * C.median(later)


@dataclass
class ToolRuns:
    no_cache: list[float] = field(default_factory=list)
    cache_cold: float | None = None
    cache_warm: list[float] = field(default_factory=list)
    val_accuracy: float = 0.0
    card_accuracy: float = 0.0
    train_accuracy: float = 0.0
    extracted: int = 0
    from_cache_warm: int = 0


def expected_split(data: Path, seed: int) -> tuple[list[str], list[str]]:
    from triage.labelled.dataset import index_labelled, split

    train, val = split(index_labelled(data, "yes", seed).files, 0.2)
    return [str(f.path) for f in train], [str(f.path) for f in val]


def run_tool(data: Path, args: Any, seed: int) -> ToolRuns:
    import keras

    from triage.train.training import TrainConfig, train_model

    runs = ToolRuns()
    config = TrainConfig(epochs=args.epochs, image_size=args.image_size, seed=seed,
                         backbone_weights=args.backbone_weights, cache=False)
    for _ in range(args.repeats):
        keras.backend.clear_session()
        seconds, result = C.timed(lambda: train_model(data, C.scratch("tool") / "m", config))
        runs.no_cache.append(seconds)
    history = result.history
    runs.val_accuracy = float(history["val_accuracy"][-1])
    runs.train_accuracy = float(history["accuracy"][-1])
    runs.card_accuracy = float(result.card.validation_metrics["accuracy"]["value"])
    runs.extracted = int(result.card.features.extracted)
    if args.no_warm:
        return runs
    cache_dir = C.scratch("cache")
    cached = TrainConfig(**{**config.__dict__, "cache": True, "cache_dir": cache_dir})
    keras.backend.clear_session()
    runs.cache_cold, _ = C.timed(lambda: train_model(data, C.scratch("tool") / "m", cached))
    for _ in range(args.repeats):
        keras.backend.clear_session()
        seconds, warm = C.timed(lambda: train_model(data, C.scratch("tool") / "m", cached))
        runs.cache_warm.append(seconds)
    runs.from_cache_warm = int(warm.card.features.from_cache)
    return runs


def run_naive(data: Path, args: Any, seed: int) -> NaiveRun:
    """The thesis's training: the frozen backbone runs on every image in every epoch."""
    import keras

    from triage.model.network import build_backbone, resolve_backbone_weights

    size, epochs = args.image_size, args.epochs
    epochs_run = min(args.naive_epochs or epochs, epochs)
    keras.backend.clear_session()
    start = C.now()
    with contextlib.redirect_stdout(io.StringIO()):  # "Using 203 files for training." etc.
        train, val = keras.utils.image_dataset_from_directory(
            data, validation_split=0.2, subset="both", seed=seed, image_size=(size, size),
            batch_size=32)
    want_train, want_val = expected_split(data, seed)
    assert [str(Path(p)) for p in train.file_paths] == want_train, "training files differ from triage's split"
    assert [str(Path(p)) for p in val.file_paths] == want_val, "validation files differ from triage's split"

    # Input -> vgg19 preprocess_input (CaffePreprocess) -> VGG19 notop, frozen: the same
    # backbone, with the same weights (and, for random, the same seed) as the tool's.
    backbone = build_backbone(size, resolve_backbone_weights(args.backbone_weights, seed=seed))
    backbone.trainable = False
    keras.utils.set_random_seed(seed)
    l2 = keras.regularizers.L2(0.01)
    inputs = keras.Input((size, size, 3))
    x = backbone(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(128, activation="relu", kernel_regularizer=l2)(x)
    x = keras.layers.Dropout(0.35)(x)
    x = keras.layers.Dense(64, activation="relu", kernel_regularizer=l2)(x)
    x = keras.layers.Dropout(0.35)(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy",
                  metrics=["accuracy"])
    setup = C.now() - start

    epoch_seconds: list[float] = []
    begun = [0.0]
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: begun.__setitem__(0, C.now()),
        on_epoch_end=lambda epoch, logs: epoch_seconds.append(C.now() - begun[0]))
    history = model.fit(train, validation_data=val, epochs=epochs_run, verbose=0, callbacks=[timer])
    seconds = C.now() - start
    full = epochs_run == epochs
    return NaiveRun(seconds, setup, epoch_seconds, epochs_run, epochs,
                    float(history.history["val_accuracy"][-1]) if full else None,
                    float(history.history["accuracy"][-1]) if full else None)


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    C.add_data(p)
    p.add_argument("--epochs", type=int, default=30, help="training epochs (both)")
    p.add_argument("--image-size", type=int, default=256, help="side images are resized to")
    p.add_argument("--seeds", default="1337",
                   help="comma-separated seeds (split, backbone init if random, head init); "
                        "with several, means are compared")
    p.add_argument("--naive-epochs", type=int, default=None, metavar="K",
                   help="run only K naive epochs and extrapolate the naive time to --epochs "
                        "(no accuracy comparison then)")
    C.add_weights(p)
    C.add_repeats(p, default=1, help="time the tool's runs (no cache, warm cache) this many times "
                                     "and report the median; the naive run is timed once")
    p.add_argument("--no-warm", action="store_true",
                   help="skip the two runs with a feature cache (cold + warm)")
    args = p.parse_args()
    data = C.check_data(args.data)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.naive_epochs is not None and not 1 <= args.naive_epochs:
        p.error("--naive-epochs must be >= 1")
    C.quiet_tensorflow()
    C.check_weights(args.backbone_weights)
    import keras  # noqa: F401  import TensorFlow before anything is timed

    print(C.environment_line(data=data, epochs=args.epochs, image_size=args.image_size,
                             backbone=args.backbone_weights, seeds=args.seeds,
                             naive_epochs=args.naive_epochs or args.epochs, repeats=args.repeats))
    print("# tool = triage.train.train_model(cache=False): VGG19 once per image, head on kept features")
    print("# naive = image_dataset_from_directory + model.fit: frozen VGG19 on every image every epoch")
    results: list[tuple[int, ToolRuns, NaiveRun]] = []
    for seed in seeds:
        tool = run_tool(data, args, seed)
        print(f"  seed {seed}: tool {C.fmt_s(C.median(tool.no_cache))}", file=sys.stderr, flush=True)
        naive = run_naive(data, args, seed)
        print(f"  seed {seed}: naive {C.fmt_s(naive.seconds)} ({naive.epochs_run} epochs)",
              file=sys.stderr, flush=True)
        results.append((seed, tool, naive))

    extrapolated = any(n.extrapolated for _, _, n in results)
    naive_label = "naive (extrapolated)" if extrapolated else "naive"
    rows = []
    for seed, tool, naive in results:
        t = C.median(tool.no_cache)
        rows.append([
            seed, C.fmt_s(t),
            C.fmt_s(tool.cache_cold) if tool.cache_cold is not None else "-",
            C.fmt_s(C.median(tool.cache_warm)) if tool.cache_warm else "-",
            C.fmt_s(naive.total_seconds) + ("*" if naive.extrapolated else ""),
            f"{naive.total_seconds / t:.1f}x",
            f"{tool.val_accuracy:.3f}",
            "-" if naive.val_accuracy is None else f"{naive.val_accuracy:.3f}",
            "-" if naive.val_accuracy is None else f"{naive.val_accuracy - tool.val_accuracy:+.3f}",
        ])
    print()
    print(C.table(rows, ["seed", "tool", "tool cache cold", "tool cache warm", naive_label,
                         "naive/tool", "tool val acc", "naive val acc", "diff"]))
    print()
    details = []
    for seed, tool, naive in results:
        steady = C.median(naive.epoch_seconds[1:] or naive.epoch_seconds)
        details.append([seed, tool.extracted, tool.from_cache_warm, f"{tool.card_accuracy:.3f}",
                        f"{tool.train_accuracy:.3f}",
                        "-" if naive.train_accuracy is None else f"{naive.train_accuracy:.3f}",
                        C.fmt_s(naive.setup_seconds), f"{naive.epochs_run}/{naive.epochs_wanted}",
                        C.fmt_s(naive.seconds), C.fmt_s(steady)])
    print(C.table(details, ["seed", "tool images extracted", "warm from cache", "tool card acc",
                            "tool train acc", "naive train acc", "naive setup",
                            "naive epochs run", "naive measured", "naive epoch (steady)"]))
    if extrapolated:
        print("* extrapolated: measured time of the naive epochs run + the missing epochs at the "
              "median time of epochs 2..K (epoch 1 if K = 1).")

    tool_mean = C.mean(C.median(t.no_cache) for _, t, _ in results)
    naive_mean = C.mean(n.total_seconds for _, _, n in results)
    ratio = naive_mean / tool_mean
    print()
    summary = [["wall time, tool (cache=False)", C.fmt_s(tool_mean), ""],
               [f"wall time, {naive_label}", C.fmt_s(naive_mean), ""],
               ["ratio naive/tool", f"{ratio:.1f}x",
                f">= {RATIO_TARGET:.0f}x  {C.verdict(ratio >= RATIO_TARGET)}"
                + (" (extrapolated)" if extrapolated else "")]]
    warm = [C.median(t.cache_warm) for _, t, _ in results if t.cache_warm]
    if warm:
        summary.append(["wall time, tool (cache warm)", C.fmt_s(C.mean(warm)),
                        f"naive/warm {naive_mean / C.mean(warm):.1f}x"])
    tool_acc = C.mean(t.val_accuracy for _, t, _ in results)
    if extrapolated:
        summary.append(["val acc tool / naive", f"{tool_acc:.3f} / not measured", "n/a: the accuracy "
                        "comparison needs the full naive run (omit --naive-epochs)"])
    else:
        naive_acc = C.mean(n.val_accuracy or 0.0 for _, _, n in results)
        diff = naive_acc - tool_acc
        label = "mean val acc" if len(results) > 1 else "val acc"
        summary.append([f"{label} tool / naive", f"{tool_acc:.3f} / {naive_acc:.3f}",
                        f"|diff| {abs(diff):.3f} <= {ACC_TARGET}  {C.verdict(abs(diff) <= ACC_TARGET)}"])
        if len(results) > 1:
            spread = C.stdev([t.val_accuracy for _, t, _ in results]
                             + [n.val_accuracy or 0.0 for _, _, n in results])
            summary.append(["val acc std over seeds (both)", f"{spread:.3f}", ""])
        else:
            summary.append(["note", "one seed", "if single-run noise exceeds 0.02, compare means: "
                                                "--seeds 1337,1,2"])
    print(C.table(summary, ["measure", "value", "target"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
