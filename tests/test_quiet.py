"""Quiet runs, as under cron: one summary line on stdout, nothing on stderr, in real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from triage.model.network import TINY_BACKBONE
from triage.testing import IMAGE_SIZE, write_blob_images

pytestmark = pytest.mark.slow  # each test starts Python and TensorFlow in a real process


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], env=env or dict(os.environ), capture_output=True,
                          text=True, timeout=300)


def triage(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run("-m", "triage", *args, env=env)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and result.stdout.endswith("\n"), result.stdout
    return lines[0]


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    return write_blob_images(tmp_path / "incoming", ["scan0.png", "scan1.png", "scan2.png"], seed=3,
                             tumour_every=3)


def test_quiet_train_prints_one_line_and_logs_the_warning(tmp_path: Path, blob_dataset: Path) -> None:
    log_file = tmp_path / "logs" / "train.log"
    result = triage("train", str(blob_dataset), "--out", str(tmp_path / "model"), "--backbone-weights",
                    TINY_BACKBONE, "--image-size", str(IMAGE_SIZE), "--epochs", "2", "--quiet",
                    "--log-file", str(log_file))
    line = one_line(result)
    assert line.startswith(f"triage train {blob_dataset}: model ") and "80 images" in line
    assert "validation accuracy" in line and "0.500 on the raw output" in line  # the default, calibrated
    log_text = log_file.read_text()
    assert "WARNING RANDOM BACKBONE" in log_text and line in log_text
    assert "absl" not in log_text and "oneDNN" not in log_text


def test_quiet_scan_prints_one_line(tmp_path: Path, scans: Path, trained_model: Path) -> None:
    line = one_line(triage("scan", str(scans), "--out", str(tmp_path / "out" / "report.html"),
                           "--model", str(trained_model), "--quiet"))
    assert line.startswith(f"triage scan {scans}: 3 found, 3 scored")


def test_quiet_evaluate_prints_one_line(tmp_path: Path, blob_dataset: Path, trained_model: Path) -> None:
    line = one_line(triage("evaluate", str(blob_dataset), "--model", str(trained_model), "--out",
                           str(tmp_path / "eval"), "--quiet"))
    assert line.startswith(f"triage evaluate {blob_dataset}: model ") and "80 images" in line
    assert "accuracy" in line and "TP " in line
    assert (tmp_path / "eval" / "metrics.json").is_file()


def test_without_quiet_the_warning_reaches_stderr_but_no_library_line(tmp_path: Path, scans: Path,
                                                                      trained_model: Path) -> None:
    result = triage("scan", str(scans), "--out", str(tmp_path / "report.html"), "--model",
                    str(trained_model))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    assert "RANDOM backbone" in result.stderr
    assert all(line.startswith("triage: ") or line == "Research use only, not a diagnostic device."
               for line in result.stderr.splitlines()), result.stderr


def test_verbose_shows_the_libraries_again(tmp_path: Path, scans: Path, trained_model: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = triage("scan", str(scans), "--out", str(tmp_path / "report.html"), "--model",
                    str(trained_model), "--quiet", "--verbose", env=env)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    assert result.stderr.strip(), "TensorFlow says nothing at start-up with --verbose"


@pytest.mark.parametrize("verbose", [False, True])
def test_library_warnings_go_to_the_log_file_unless_verbose(tmp_path: Path, verbose: bool) -> None:
    log_file = tmp_path / "libraries.log"
    code = (
        "import logging, warnings, sys\n"
        "from pathlib import Path\n"
        "from triage.quiet import silence_libraries\n"
        f"silence_libraries({verbose}, Path(sys.argv[1]))\n"
        "import tensorflow\n"
        "warnings.warn('a library warning')\n"
        "logging.getLogger('absl').warning('an absl warning')\n"
        "logging.getLogger('tensorflow').warning('a tensorflow warning')\n"
        "logging.getLogger('keras').info('a keras notice')\n"
    )
    result = run("-c", code, str(log_file))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    messages = ("a library warning", "an absl warning", "a tensorflow warning")
    if verbose:
        assert all(message in result.stderr for message in messages), result.stderr
    else:
        assert result.stderr == ""
        log_text = log_file.read_text()
        assert all(message in log_text for message in messages), log_text
        assert "a keras notice" not in log_text, log_text
