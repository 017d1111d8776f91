#!/usr/bin/env python3
"""How well the familiarity check tells brain MRI from images that are not: two rates.

Trains triage on the shared data set (grouped split: copies of one scan on one
side), then scans, with the familiarity check on:

- brain MRI the model was not trained on: its validation part, and rotated
  (90 and 180 degrees), flipped and brightened (x1.3) variants of it; the
  share called unfamiliar is the false-alarm rate (goal: at most 10%);
- images that are not brain MRI: the CT, ultrasound, radiograph, nuclear
  medicine, segmentation and secondary-capture files pydicom ships, scikit-
  image's photographs, documents and logo where scikit-image is installed, and
  generated noise, colour test patterns, gradients, a text page and blank frames;
  the share called unfamiliar is the catch rate (goal: at least 90%).

Prints every category's rate, the backbone it ran with (ImageNet weights where
they can be had, else the random backbone: say which when quoting) and the CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import _common as C  # before TensorFlow or triage: TF log level, private feature cache

CATCH_GOAL, ALARM_GOAL = 0.9, 0.1


def brain_variants(data: Path, files: list[str], dest: Path) -> dict[str, Path]:
    """The held-out files as they are, rotated, flipped and brightened, one folder each."""
    import numpy as np
    from PIL import Image

    from triage.inputs.decode import read_image

    changes = {"as is": lambda a: a, "rotated 90": np.rot90, "rotated 180": lambda a: np.rot90(a, 2),
               "flipped": lambda a: a[:, ::-1], "brightened x1.3": lambda a: np.clip(a * 1.3, 0, 255)}
    folders = {}
    for name, change in changes.items():
        folder = dest / name.replace(" ", "_")
        folder.mkdir(parents=True)
        for i, relpath in enumerate(files):
            pixels = read_image(data / relpath).pixels.astype(np.float32)
            changed = np.ascontiguousarray(change(pixels)).astype(np.uint8)
            Image.fromarray(changed).save(folder / f"{i:04d}.png")
        folders[name] = folder
    return folders


def other_images(dest: Path) -> dict[str, Path]:
    """Images that are not brain MRI, one folder per kind."""
    folders = {"DICOM (pydicom's CT, US, CR, NM, SEG, SC)": _pydicom_images(dest / "dicom"),
               "generated (noise, colour bars, gradients, text, blank)": _generated_images(dest / "made")}
    photos = _skimage_images(dest / "photos")
    if photos is not None:
        folders["photographs, documents, logo (scikit-image)"] = photos
    return folders


def _pydicom_images(folder: Path) -> Path:
    import numpy as np
    import pydicom
    from PIL import Image
    from pydicom.data import get_testdata_files

    folder.mkdir(parents=True)
    seen = set()
    for path in get_testdata_files():
        try:
            ds = pydicom.dcmread(path)
            if ds.get("Modality") not in ("CT", "US", "CR", "NM", "SEG", "OT", "DX", "MG", "PT"):
                continue
            pixels = np.asarray(ds.pixel_array, dtype=np.float64)
        except Exception:  # files pydicom ships to test its own failures
            continue
        several = pixels.ndim == 4 or (pixels.ndim == 3 and pixels.shape[-1] not in (3, 4))
        frame = pixels[0] if several else pixels
        key = frame.tobytes()[:4096]
        if frame.ndim < 2 or key in seen or np.ptp(frame) == 0:
            continue
        seen.add(key)
        scaled = ((frame - frame.min()) / np.ptp(frame) * 255).astype(np.uint8)
        Image.fromarray(scaled).convert("RGB").save(folder / f"{ds.get('Modality')}_{Path(path).name}.png")
    return folder


def _generated_images(folder: Path, side: int = 256) -> Path:
    import numpy as np
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:side, :side] / side
    images = {
        "noise_colour": rng.uniform(0, 255, (side, side, 3)),
        "noise_grey": np.repeat(rng.uniform(0, 255, (side, side, 1)), 3, axis=2),
        "blank_black": np.zeros((side, side, 3)), "blank_white": np.full((side, side, 3), 255.0),
        "blank_grey": np.full((side, side, 3), 128.0),
        "gradient": np.repeat((xx * 255)[..., None], 3, axis=2),
        "gradient_colour": np.stack([xx * 255, yy * 255, (1 - xx) * 255], axis=2),
    }
    bars = np.zeros((side, side, 3))
    for i, colour in enumerate([(255, 255, 255), (255, 255, 0), (0, 255, 255), (0, 255, 0), (255, 0, 255),
                                (255, 0, 0), (0, 0, 255), (0, 0, 0)]):
        bars[:, i * side // 8:(i + 1) * side // 8] = colour
    images["colour_bars"] = bars
    for name, pixels in images.items():
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{name}.png")
    page = Image.new("RGB", (side, side), "white")
    draw = ImageDraw.Draw(page)
    for line in range(20):
        draw.text((10, 8 + 12 * line), "Patient report: findings and impression " * 2, fill="black")
    page.save(folder / "text_page.png")
    return folder


def _skimage_images(folder: Path) -> Path | None:
    try:
        from skimage import data
    except ImportError:
        return None
    from PIL import Image

    folder.mkdir(parents=True)
    for name in ("astronaut", "camera", "coffee", "chelsea", "page", "text", "logo", "rocket", "horse",
                 "moon", "coins", "clock", "immunohistochemistry", "retina", "hubble_deep_field"):
        try:
            image = Image.fromarray(getattr(data, name)())
        except Exception:  # an image scikit-image would download: no network here
            continue
        image.convert("RGB").save(folder / f"{name}.png")
    return folder


def unfamiliar_share(folder: Path, model: Path, image_size: int) -> tuple[int, int, list[str]]:
    """(unfamiliar, scored, names of the images called familiar) of one folder."""
    from triage.results.tables import read_csv
    from triage.scan.folder import ScanOptions
    from triage.scan.run import run_scan

    out = C.scratch("report") / "report.html"
    run_scan(folder, out, model=model, options=ScanOptions(explain="none"), full=True)
    rows = [row for row in read_csv(out.with_suffix(".csv")) if row["status"] == "ok"]
    familiar = [row["path"] for row in rows if row["unfamiliar"] == "false"]
    return sum(row["unfamiliar"] == "true" for row in rows), len(rows), familiar


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    C.add_data(p)
    p.add_argument("--image-size", type=int, default=256, help="model input size")
    C.add_weights(p)
    args = p.parse_args()
    data = C.check_data(args.data)
    C.quiet_tensorflow()
    C.check_weights(args.backbone_weights)

    from triage.model.card import read_card
    from triage.train.training import TrainConfig, train_model

    print(C.environment_line(image_size=args.image_size, backbone=args.backbone_weights))
    print("# training on the grouped split's training part ...", file=sys.stderr, flush=True)
    model = C.scratch("model") / "model"
    train_model(data, model, TrainConfig(epochs=5, image_size=args.image_size,
                                         backbone_weights=args.backbone_weights, cache=False))
    card = read_card(model)
    print(f"# model: {card.data.n_images} images, {card.split.train.n} in the index "
          f"({card.familiarity.n_entries} copy groups), threshold quantile {card.familiarity.quantile}, "
          f"k = {card.familiarity.neighbours}; {card.split.validation.n} held out")
    rows, alarms, catches = [], [0, 0], [0, 0]
    for name, folder in brain_variants(data, list(card.split.validation_files), C.scratch("brain")).items():
        hit, n, _ = unfamiliar_share(folder, model, args.image_size)
        alarms = [alarms[0] + hit, alarms[1] + n]
        rows.append([f"brain MRI, held out, {name}", n, hit, f"{hit / n:.3f}"])
    for name, folder in other_images(C.scratch("other")).items():
        hit, n, familiar = unfamiliar_share(folder, model, args.image_size)
        catches = [catches[0] + hit, catches[1] + n]
        rows.append([f"not brain MRI: {name}", n, hit, f"{hit / n:.3f}"])
        if familiar:
            print(f"#   called familiar: {', '.join(sorted(familiar))}")
    alarm, catch = alarms[0] / alarms[1], catches[0] / catches[1]
    rows += [["false alarms: held-out brain MRI called unfamiliar", alarms[1], alarms[0], f"{alarm:.3f}"],
             ["catch rate: other images called unfamiliar", catches[1], catches[0], f"{catch:.3f}"]]
    print()
    print(C.table(rows, ["images", "n", "unfamiliar", "share"]))
    print()
    print(f"catch rate {catch:.3f} (goal >= {CATCH_GOAL}) {C.verdict(catch >= CATCH_GOAL)}; "
          f"false alarms {alarm:.3f} (goal <= {ALARM_GOAL}) {C.verdict(alarm <= ALARM_GOAL)}; "
          f"backbone {args.backbone_weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
