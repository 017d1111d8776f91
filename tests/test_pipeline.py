"""The one scoring path, the model card record, the evaluation folder, stops and core messages."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from triage.cli import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, main
from triage.errors import ModelError, Stopped
from triage.hooks import RunHooks
from triage.model.card import CARD_FILE, CARD_SCHEMA_VERSION, read_card
from triage.model.network import TINY_BACKBONE
from triage.testing import IMAGE_SIZE, make_blob_dataset, write_blob_images

PACKAGE = Path(__file__).resolve().parents[1] / "triage"


def package_modules() -> list[Path]:
    """Every module of the package, those of its subpackages included."""
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) >= 40, f"found only {len(modules)} modules under {PACKAGE}"
    return modules


# --------------------------------------------------------------------------- one scoring path


def test_evaluate_and_scan_give_the_same_probability_bit_for_bit(tmp_path: Path, trained_model: Path) -> None:
    """The same file lands in different batches (other neighbours, other positions, a padded
    last batch) in a scan and an evaluation, and gets the very same float."""
    from triage.engine.inference import load_for_inference
    from triage.engine.predictor import Stop
    from triage.evaluate.evaluation import score_labelled
    from triage.labelled.dataset import index_labelled
    from triage.scan.folder import ScanOptions, scan_folder

    labelled_root = make_blob_dataset(tmp_path / "labelled", per_class=11, seed=5)
    scan_root = tmp_path / "scan"
    scan_root.mkdir()
    for path in sorted((labelled_root / "yes").iterdir())[::2]:  # every other file, shifted
        shutil.copy(path, scan_root / f"x-{path.name}")
    model = load_for_inference(trained_model, "cpu")
    scanned = scan_folder(scan_root, model, ScanOptions(batch_size=4, explain="none"),
                          heatmap_dir=None, report_dir=tmp_path)
    labelled = index_labelled(labelled_root, "yes", seed=None)
    scores = score_labelled(labelled, model, 4, Stop())
    by_name = {item.path.name: p for item, p in zip(scores.files, scores.probabilities)}
    pairs = [(case.probability, by_name[case.path.removeprefix("x-")]) for case in scanned.rows]
    assert len(pairs) == 6 and all(case.ok for case in scanned.rows)
    assert all(ours == theirs for ours, theirs in pairs), pairs
    assert len({p for p, _ in pairs}) > 1  # the model tells these images apart


def test_predictor_pads_every_batch_and_classifies_failures(tmp_path: Path) -> None:
    from triage.engine.predictor import Decoded, Stop, predict
    from triage.errors import ImageLoadError

    seen_shapes: list[tuple[int, ...]] = []

    def decode(item: int) -> Decoded:
        if item == 3:
            raise ImageLoadError("unreadable", "corrupt image header")
        if item == 5:
            raise PermissionError(13, "Permission denied")
        if item == 6:
            raise ValueError("boom")
        return Decoded(np.full((2, 2, 3), item, np.float32), extra=f"e{item}")

    def run(batch: np.ndarray, n: int) -> list[float]:
        seen_shapes.append(batch.shape)
        return [float(row[0, 0, 0]) for row in batch[:n]]

    handled: list[int] = []
    outcomes = list(predict(range(10), decode, run, batch_size=4, progress=handled.append))
    assert all(shape == (4, 2, 2, 3) for shape in seen_shapes) and len(seen_shapes) == 2
    failures = {o.item: (o.failure.status, o.failure.reason) for o in outcomes if o.failure}
    assert failures == {3: ("unreadable", "corrupt image header"), 5: ("unreadable", "Permission denied"),
                        6: ("error", "ValueError: boom")}
    scored = {o.item: o.output for o in outcomes if not o.failure}
    assert scored == {i: float(i) for i in (0, 1, 2, 4, 7, 8, 9)}
    assert sum(handled) == 10

    stop = Stop(lambda: True)
    stopped = list(predict(range(10), decode, run, batch_size=4, stop=stop))
    assert stop.asked and all(o.failure for o in stopped)  # no batch ran once a stop was asked


# --------------------------------------------------------------------------- model card


def test_card_is_a_typed_record_that_round_trips(trained_model: Path) -> None:
    card = read_card(trained_model)
    assert card.schema_version == CARD_SCHEMA_VERSION
    assert card.image_size == IMAGE_SIZE and card.split.validation.n == len(card.split.validation_files)
    raw = json.loads((trained_model / CARD_FILE).read_text())
    assert json.loads(card.to_json()) == raw


@pytest.mark.parametrize("change, words", [
    ({"schema_version": CARD_SCHEMA_VERSION + 1}, "newer than this triage reads"),
    ({"schema_version": None}, "not a triage model card"),
    ({"image_size": None}, "incomplete or malformed"),
    ({"split": "80/20"}, "incomplete or malformed"),
])
def test_card_of_another_schema_or_broken_is_refused_in_one_sentence(
        tmp_path: Path, trained_model: Path, change: dict, words: str) -> None:
    raw = json.loads((trained_model / CARD_FILE).read_text())
    raw.update(change)
    (tmp_path / CARD_FILE).write_text(json.dumps(raw))
    with pytest.raises(ModelError) as error:
        read_card(tmp_path)
    message = str(error.value)
    assert words in message and "\n" not in message and message.endswith(".")


def test_card_lookups_by_key_only_inside_the_card_module() -> None:
    """Outside card.py nothing reads a card field by string key (card["..."] / card.get("..."))."""
    offenders = []
    for path in package_modules():
        if path != PACKAGE / "model" / "card.py":
            text = path.read_text(encoding="utf-8")
            offenders += [f"{path.relative_to(PACKAGE)}: {m}"
                          for m in re.findall(r"card(?:\[|\.get\()[\"']\w+", text)]
    assert not offenders


# --------------------------------------------------------------------------- evaluation folder


def test_evaluate_writes_a_manifest_last_and_refuses_to_overwrite(tmp_path: Path, trained_model: Path,
                                                                   blob_dataset: Path) -> None:
    out = tmp_path / "evaluation"
    args = ["evaluate", str(blob_dataset), "--model", str(trained_model), "--out", str(out), "--quiet"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == EXIT_OK, first.output
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["command"] == "evaluate" and manifest["counts"]["scored"] == 80
    assert set(manifest["outputs"].values()) | {"run.json"} == {p.name for p in out.iterdir()}
    newest = max(out.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert newest.name == "run.json"

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = CliRunner().invoke(main, args + ["--threshold", "0.9"])
    assert again.exit_code == EXIT_USAGE and "--force" in again.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    forced = CliRunner().invoke(main, args + ["--threshold", "0.9", "--force"])
    assert forced.exit_code == EXIT_OK, forced.output
    assert json.loads((out / "run.json").read_text())["threshold"] == 0.9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluation"]  # no staging left


def test_a_stopped_evaluation_writes_nothing(tmp_path: Path, trained_model: Path, blob_dataset: Path) -> None:
    from triage.evaluate.evaluation import evaluate_model

    calls = []

    def stop_after_first_batch() -> bool:
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(Stopped):
        evaluate_model(blob_dataset, tmp_path / "e", model=trained_model,
                       hooks=RunHooks(should_stop=stop_after_first_batch))
    assert not (tmp_path / "e").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sigterm_stops_training_and_leaves_no_folder(tmp_path: Path) -> None:
    data = make_blob_dataset(tmp_path / "data", per_class=12, seed=3)
    models, log_file = tmp_path / "models", tmp_path / "train.log"
    env = {**os.environ, "TRIAGE_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "triage", "train", str(data), "--out", str(models / "m"), "--quiet",
         "--backbone-weights", TINY_BACKBONE, "--image-size", str(IMAGE_SIZE), "--epochs", "100000",
         "--log-file", str(log_file)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (log_file.is_file() and "train " in log_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # into feature extraction or the epochs
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    assert "no model was written" in stderr
    assert not models.exists() or list(models.iterdir()) == []


# --------------------------------------------------------------------------- messages


def test_library_errors_name_no_command_line_flags() -> None:
    """The core speaks of settings; the CLI adds the flag (see triage.cli.error_message)."""
    flagged = []
    for path in package_modules():
        if path == PACKAGE / "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise):
                texts = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant)
                         and isinstance(c.value, str)]
                flagged += [f"{path.relative_to(PACKAGE)}:{node.lineno}" for t in texts
                            if re.search(r"--[a-z]", t)]
    assert not flagged


def test_cli_adds_the_flag_to_a_library_error(tmp_path: Path, trained_model: Path) -> None:
    write_blob_images(tmp_path / "in", ["a.png"])
    result = CliRunner().invoke(main, ["scan", str(tmp_path / "in"), "--out", str(tmp_path / "r.docx"),
                                       "--model", str(trained_model)])
    assert result.exit_code == EXIT_USAGE
    assert "must end in .pdf or .html" in result.output and "(--out)" in result.output
