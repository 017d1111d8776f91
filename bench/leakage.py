#!/usr/bin/env python3
"""Copies across the split: validation images with a copy (exact or near) in the training part.

Finds the copy groups of the data set with ``triage.labelled.copies`` (SHA-256 of the
bytes; perceptual hash of the normalised pixels), then counts the validation
images that have a copy in training under the thesis's Keras split
(``index_labelled(seed)`` + ``split(val_split)``, file for file as
``image_dataset_from_directory``) and under ``triage.labelled.copies.grouped_split`` with
the same seed. ``--list`` prints every group with its members' file names, to
look at what was merged.

Then (unless ``--no-metrics``) trains the model with ``triage train --split
keras`` and ``--split grouped`` on the same data and prints their validation
metrics side by side, with the Keras split's metrics on its validation images
that have no copy in training. With the ``random`` backbone (no network) the
metrics say little of skill; the comparison of the rows still shows what the
copies do to them. ``--backbone-weights imagenet`` gives the real figures.

Target: none under the grouped split.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import _common as C  # before triage: private feature cache, shared-set location
import numpy as np

from triage.errors import ImageLoadError
from triage.inputs.decode import decode_file, read_file
from triage.labelled.copies import CopyGroups, copies_across, find_copies, grouped_split, image_fingerprint
from triage.labelled.dataset import LabelledSet, index_labelled, split


@dataclass(frozen=True)
class SplitCounts:
    """One split's sizes and its leak: the columns the metrics of each split go beside."""

    name: str
    train: int
    val: int
    val_positive: int
    val_with_copy: int
    val_with_exact_copy: int

    @property
    def leak_share(self) -> float:
        return self.val_with_copy / self.val if self.val else 0.0


Split = tuple[Sequence[int], Sequence[int]]  # (training, validation) item indices


def split_counts(labels: np.ndarray, groups: CopyGroups, exact: CopyGroups,
                 splits: dict[str, Split]) -> list[SplitCounts]:
    """Each named split's sizes and its validation items with a copy (any, exact) in training."""
    return [SplitCounts(name, len(train), len(val), int(np.sum(labels[list(val)] == 1)),
                        len(copies_across(groups, train, val)), len(copies_across(exact, train, val)))
            for name, (train, val) in splits.items()]


def hashes(labelled: LabelledSet) -> tuple[list[str], list[str | None]]:
    """Each file's SHA-256 and fingerprint (``None`` when it does not decode)."""
    shas: list[str] = []
    fingerprints: list[str | None] = []
    for f in labelled.files:
        try:
            digest, data = read_file(f.path)
        except ImageLoadError:
            shas.append(f"unread {f.relpath}")  # a copy of nothing
            fingerprints.append(None)
            continue
        shas.append(digest)
        try:
            fingerprints.append(image_fingerprint(decode_file(f.path, digest, data).pixels))
        except ImageLoadError:
            fingerprints.append(None)
    return shas, fingerprints


def keras_split(labelled: LabelledSet, val_split: float) -> Split:
    """Indices of the thesis's split: the last ``int(val_split * n)`` shuffled files validate."""
    n, n_val = len(labelled.files), len(split(labelled.files, val_split)[1])
    return range(n - n_val), range(n - n_val, n)


def group_table(exact: CopyGroups, both: CopyGroups) -> str:
    rows = [("exact", exact.groups, exact.files_in_groups),
            ("exact + near", both.groups, both.files_in_groups)]
    return C.table(rows, header=("copies", "groups", "files in groups"))


def split_table(counts: Sequence[SplitCounts]) -> str:
    rows = [(c.name, c.train, c.val, c.val_positive, c.val_with_copy, f"{c.leak_share:.1%}",
             c.val_with_exact_copy) for c in counts]
    return C.table(rows, header=("split", "train", "val", "val positive", "val with copy in train", "share",
                                 "of them exact"))


def list_groups(labelled: LabelledSet, groups: CopyGroups, shas: Sequence[str]) -> str:
    lines = []
    for group in sorted(set(groups.group_of)):
        members = groups.members(group)
        if len(members) > 1:
            kinds = "exact" if len({shas[i] for i in members}) == 1 else "near"
            names = ", ".join(sorted(labelled.files[i].relpath for i in members))
            lines.append(f"{kinds:5}  {names}")
    return "\n".join(sorted(lines))


def metric_cell(metric: dict) -> str:
    if metric.get("value") is None:
        return "n/a"
    return f"{metric['value']:.3f} [{metric['ci_low']:.2f}, {metric['ci_high']:.2f}]"


def metrics_table(data: Path, args: object) -> str:
    """Train under both splits (the feature cache makes the second run cheap); one row per measure."""
    from triage.train.training import TrainConfig, train_model

    rows = []
    for method in ("keras", "grouped"):
        config = TrainConfig(split=method, seed=args.seed, val_split=args.val_split,
                             backbone_weights=args.backbone_weights, image_size=args.image_size,
                             epochs=args.epochs)
        card = train_model(data, C.scratch(f"model-{method}") / "m", config).card
        measured = [(f"{method}", card.validation_metrics)]
        if card.validation_metrics_clean is not None:
            measured.append((f"{method}, without copies", card.validation_metrics_clean))
        for name, metrics in measured:
            rows.append((name, metrics["n"], *(metric_cell(metrics[m]) for m in
                                                ("accuracy", "roc_auc", "sensitivity", "specificity"))))
    return C.table(rows, header=("validation of split", "n", "accuracy", "roc_auc", "sensitivity",
                                 "specificity"))


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    C.add_data(p)
    p.add_argument("--seed", type=int, default=1337, help="shuffle and split seed")
    p.add_argument("--val-split", type=float, default=0.2, help="share held out for validation")
    p.add_argument("--list", action="store_true", help="print every copy group's file names")
    p.add_argument("--no-metrics", action="store_true", help="only count copies; train nothing")
    p.add_argument("--image-size", type=int, default=128, help="model input size for the metrics")
    p.add_argument("--epochs", type=int, default=30, help="epochs for the metrics")
    C.add_weights(p)
    args = p.parse_args()
    data = C.check_data(args.data)

    print(f"# python {platform.python_version()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
          f"data={Path(data).name}, seed={args.seed}, val_split={args.val_split}")
    labelled = index_labelled(data, "yes", seed=args.seed)
    seconds, (shas, fingerprints) = C.timed(lambda: hashes(labelled))
    undecoded = sum(f is None for f in fingerprints)
    print(f"# {len(shas)} files hashed in {C.fmt_s(seconds)} ({undecoded} not decodable)")
    exact = find_copies(shas, [None] * len(shas))
    groups = find_copies(shas, fingerprints)
    print(f"# copies: {groups.method}")
    print(group_table(exact, groups))
    print()

    labels = labelled.labels
    keras = keras_split(labelled, args.val_split)
    grouped = grouped_split(labels, groups, args.val_split, args.seed)
    counts = split_counts(labels, groups, exact, {"keras (thesis)": keras, "grouped": grouped})
    print(split_table(counts))
    if args.list:
        print()
        print(list_groups(labelled, groups, shas))
    if not args.no_metrics:
        C.quiet_tensorflow()
        C.check_weights(args.backbone_weights)
        print(f"\n# validation metrics ({args.backbone_weights} backbone, {args.image_size} px, "
              f"{args.epochs} epochs, threshold 0.5, 95% intervals)")
        print(metrics_table(data, args))
    print(f"\ngrouped split, validation with a copy in training: {counts[1].val_with_copy} "
          f"(target 0): {C.verdict(counts[1].val_with_copy == 0)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
