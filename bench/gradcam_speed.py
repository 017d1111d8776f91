#!/usr/bin/env python3
"""Grad-CAM cost per image: triage's head-only maps vs the thesis's per-image method.

triage (``triage.engine.gradcam.GradCam``): one forward pass that keeps the block5_conv4
activations (the scan does it anyway to score the images), then ``heatmaps()``,
a backward pass through the small tail after that layer. Only ``heatmaps()``
counts as the CAM cost; predict + heatmaps vs predict alone is shown too.

Thesis: for every image, reload the model from disk (``keras.saving.load_model``),
build the sub-model ``Model(inputs, [block5_conv4.output, output])`` and run the
whole network again under a ``GradientTape`` (``triage.engine.gradcam.gradcam_full_tape``).

The maps of both are compared (max abs difference after normalisation).
Target: triage's CAM >= 50x cheaper per image.
"""

from __future__ import annotations

import sys

import _common as C  # before TensorFlow or triage: TF log level, private feature cache

TARGET = 50.0


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    C.add_data(p)
    p.add_argument("--images", type=int, default=16, help="images to explain")
    p.add_argument("--image-size", type=int, default=256, help="model input size")
    p.add_argument("--batch-size", type=int, default=16,
                   help="images per predict/heatmaps call on triage's side (as the scan)")
    p.add_argument("--tolerance", type=float, default=1e-3,
                   help="largest max-abs difference between the two normalised maps that counts as agreeing")
    args, data = C.parse_model_bench(p, repeats=5)
    import keras
    import numpy as np

    from triage.engine.forward import ForwardPass
    from triage.engine.gradcam import CAM_LAYER, GradCam, gradcam_full_tape
    from triage.model.card import MODEL_FILE
    from triage.model.network import load_classifier

    paths = C.dataset_images(data, args.images)
    n = len(paths)
    print(C.environment_line(images=n, image_size=args.image_size, batch_size=args.batch_size,
                             backbone=args.backbone_weights, repeats=args.repeats))
    print("# training a throw-away model (1 epoch) ...", file=sys.stderr, flush=True)
    model_file = C.train_small_model(data, args.image_size, args.backbone_weights,
                                     per_class=args.train_per_class) / MODEL_FILE
    images = C.decode_for_model(paths, args.image_size)
    batches = [images[i:i + args.batch_size] for i in range(0, n, args.batch_size)]

    # ---- triage: GradCam built once per run; predict (needed anyway) + heatmaps
    model = load_classifier(model_file)
    (build_s, (gradcam, forward)) = C.timed(lambda: (GradCam(model), ForwardPass(model)))
    first_s = C.now()
    for batch in batches:  # first calls trace the tf.functions (once per run and batch shape)
        gradcam.heatmaps(forward.run(batch)[0])
    first_s = C.now() - first_s

    predict_times, heat_times, tool_maps = [], [], []
    for _ in range(args.repeats):
        predict_s = heat_s = 0.0
        maps = []
        for batch in batches:
            t0 = C.now()
            activations, _ = forward.run(batch)
            t1 = C.now()
            maps.append(gradcam.heatmaps(activations))
            t2 = C.now()
            predict_s += t1 - t0
            heat_s += t2 - t1
        predict_times.append(predict_s)
        heat_times.append(heat_s)
        tool_maps = maps
    tool = np.concatenate(tool_maps)
    predict_per = C.median(predict_times) / n
    heat_per = C.median(heat_times) / n
    both_per = C.median([a + b for a, b in zip(predict_times, heat_times)]) / n

    # ---- thesis: per image, reload the model, rebuild the sub-model, rerun everything taped
    thesis_times, thesis_maps = [], []
    for image in images:
        t0 = C.now()
        reloaded = keras.saving.load_model(model_file)
        thesis_maps.append(gradcam_full_tape(reloaded, image[None], CAM_LAYER))
        thesis_times.append(C.now() - t0)
        del reloaded
        keras.backend.clear_session()
    thesis = np.concatenate(thesis_maps)
    thesis_per = C.mean(thesis_times)
    # the thesis's maths without the reload, on the model already in memory
    tape_times = []
    for image in images:
        t0 = C.now()
        gradcam_full_tape(model, image[None], CAM_LAYER)
        tape_times.append(C.now() - t0)
    tape_per = C.median(tape_times[1:] or tape_times)

    diff = float(np.abs(tool - thesis).max())
    ratio = thesis_per / heat_per
    rows = [
        ["triage heatmaps() (the CAM cost)", C.fmt_s(heat_per), f"{ratio:,.0f}x"],
        ["triage predict() alone (the scan's forward pass)", C.fmt_s(predict_per), ""],
        ["triage predict() + heatmaps()", C.fmt_s(both_per),
         f"+{100 * (both_per / predict_per - 1):.1f}% over predict alone"],
        ["thesis: reload + sub-model + taped full pass", C.fmt_s(thesis_per), "1x"],
        ["thesis maths without the reload (full tape)", C.fmt_s(tape_per),
         f"{tape_per / heat_per:,.0f}x vs heatmaps()"],
        ["triage one-time: GradCam() build", C.fmt_s(build_s), "per run"],
        ["triage one-time: first predict+heatmaps (tracing)", C.fmt_s(first_s), "per run"],
    ]
    print()
    print(C.table(rows, ["per image", "time", "thesis / this"]))
    print()
    probabilities = np.asarray(model.predict(images, verbose=0)).ravel()
    print(f"map agreement: max |triage - thesis| = {diff:.2e} over {n} maps of "
          f"{tool.shape[1]}x{tool.shape[2]} (tolerance {args.tolerance:g}: "
          f"{C.verdict(diff <= args.tolerance)}); "
          f"probabilities {probabilities.min():.3f}..{probabilities.max():.3f}")
    print(f"ratio thesis/triage CAM cost = {ratio:,.0f}x  target >= {TARGET:.0f}x  "
          f"{C.verdict(ratio >= TARGET)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
