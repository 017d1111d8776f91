"""Through the CLI: which model a command uses, models it refuses, the device, internal errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from triage.cli import EXIT_INTERNAL, EXIT_MODEL, EXIT_OK, EXIT_USAGE, main
from triage.testing import copy_model, csv_rows, write_blob_images

# Folder names sort one way, creation dates another.
AGES = {"a-middle": "2025-06-01T00:00:00+00:00", "b-newest": "2026-01-01T00:00:00+00:00",
        "c-oldest": "2024-01-01T00:00:00+00:00"}


def scan_folder(root: Path, n: int = 2) -> Path:
    return write_blob_images(root, [f"scan{i}.png" for i in range(n)], seed=7)


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for a folder)."""
    return {p.relative_to(root).as_posix(): None if p.is_dir() else p.read_bytes()
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, trained_model: Path) -> Path:
    """Three copies of the trained model with distinct ids and creation dates."""
    root = tmp_path_factory.mktemp("several-models")
    for name, created_at in AGES.items():
        copy_model(trained_model, root / name, created_at=created_at, model_id=f"id-{name}")
    return root


@pytest.mark.parametrize("env_model, option, expected", [
    ("c-oldest", None, "c-oldest"),  # $TRIAGE_MODEL wins over the newest
    ("c-oldest", "a-middle/model.keras", "a-middle"),  # --model wins over $TRIAGE_MODEL; a file works
    (None, "a-middle/model.keras", "a-middle"),
])
def test_model_lookup(tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch,
                      env_model: str | None, option: str | None, expected: str) -> None:
    monkeypatch.setenv("TRIAGE_MODELS", str(models_dir))
    if env_model:
        monkeypatch.setenv("TRIAGE_MODEL", str(models_dir / env_model))
    args = ["scan", str(scan_folder(tmp_path / "in")), "--out", str(tmp_path / "out" / "r.html")]
    if option:
        args += ["--model", str(models_dir / option)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == EXIT_OK, result.output
    rows = csv_rows(tmp_path / "out" / "r.csv")
    assert rows and {row["model_id"] for row in rows} == {f"id-{expected}"}
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert Path(run["model"]["path"]) == (models_dir / expected).resolve()


def _command_args(command: str, tmp_path: Path, out: Path) -> list[str]:
    """``scan`` of a folder of images, or ``evaluate`` of a labelled one, writing to ``out``."""
    if command == "scan":
        return ["scan", str(scan_folder(tmp_path / "in")), "--out", str(out / "r.pdf")]
    scan_folder(tmp_path / "data" / "yes")
    scan_folder(tmp_path / "data" / "no")
    return ["evaluate", str(tmp_path / "data"), "--out", str(out)]


@pytest.mark.parametrize("command", ["scan", "evaluate"])
def test_card_image_size_disagreeing_with_the_model(tmp_path: Path, trained_model: Path,
                                                    command: str) -> None:
    card = json.loads((trained_model / "model_card.json").read_text())
    wrong = card["image_size"] * 2
    model = copy_model(trained_model, tmp_path / "model", image_size=wrong)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, _command_args(command, tmp_path, out) + ["--model", str(model)])
    assert result.exit_code == EXIT_MODEL, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and str(wrong) in lines[0], result.output
    assert "Traceback" not in result.output
    written = [p.name for p in out.rglob("*")] if out.exists() else []
    assert set(written) <= {".triage.lock"}, written


@pytest.mark.parametrize("command", ["scan", "evaluate"])
@pytest.mark.parametrize("field, value", [
    ("threshold", float("nan")), ("threshold", -0.1), ("threshold", 1.5), ("threshold", True),
    ("image_size", 0), ("image_size", -32), ("image_size", True),
])
def test_a_card_with_an_impossible_value_is_refused_in_one_sentence(
        tmp_path: Path, trained_model: Path, command: str, field: str, value: object) -> None:
    model = copy_model(trained_model, tmp_path / "model", **{field: value})
    out = tmp_path / "out"
    result = CliRunner().invoke(main, _command_args(command, tmp_path, out) + ["--model", str(model)])
    assert result.exit_code == EXIT_MODEL, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and field.replace("_", " ") in lines[0], result.output
    assert not out.exists() or set(p.name for p in out.rglob("*")) <= {".triage.lock"}


@pytest.mark.slow  # a real process, which imports TensorFlow
def test_device_gpu_without_a_gpu(tmp_path: Path, trained_model: Path) -> None:
    """In a real process where CUDA shows no device: one sentence, usage exit code, no report."""
    out = tmp_path / "out"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1"}
    done = subprocess.run(
        [sys.executable, "-m", "triage", "scan", str(scan_folder(tmp_path / "in")), "--out",
         str(out / "r.pdf"), "--model", str(trained_model), "--device", "gpu"],
        capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == EXIT_USAGE, done.stderr
    assert "Traceback" not in done.stderr and not done.stdout
    messages = [line for line in done.stderr.splitlines() if line.startswith("triage:")]
    assert len(messages) == 1 and "GPU" in messages[0], done.stderr
    assert messages[0].rstrip().endswith("."), messages[0]
    written = [p.name for p in out.rglob("*")] if out.exists() else []
    assert set(written) <= {".triage.lock"}, written


@pytest.mark.parametrize("command, target", [
    ("scan", "triage.scan.run.run_scan"),
    ("evaluate", "triage.evaluate.evaluation.evaluate_model"),
    ("train", "triage.train.training.train_model"),
])
def test_internal_error_exit_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  command: str, target: str) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unexpected state 1a2b3c")

    monkeypatch.setattr(target, broken)
    folder = tmp_path / "data"
    folder.mkdir()
    log_file = tmp_path / "triage.log"
    result = CliRunner().invoke(main, [command, str(folder), "--log-file", str(log_file)])
    assert result.exit_code == EXIT_INTERNAL, result.output
    assert "internal error" in result.output.lower()
    assert "report" in result.output.lower()  # what to do about it
    logged = log_file.read_text(encoding="utf-8")
    assert "internal error" in logged.lower()
    assert "RuntimeError" in logged and "unexpected state 1a2b3c" in logged
