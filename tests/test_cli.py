"""The command line: help, version, docs, train/evaluate through click, clean errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from triage import __version__
from triage.cli import EXIT_MODEL, EXIT_OK, EXIT_USAGE, main
from triage.model.network import TINY_BACKBONE
from triage.testing import IMAGE_SIZE

README = Path(__file__).resolve().parents[1] / "README.md"
COMMANDS = sorted(main.commands)
COMMAND_HEADING = re.compile(r"^### `triage ([a-z-]+)", re.MULTILINE)
LONG_OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def readme_sections() -> tuple[str, dict[str, str]]:
    """The README's `## Commands` introduction, and each "### `triage NAME" section by NAME.

    A section runs from its heading to the next heading of level 2 or 3 (its `####`
    sub-sections belong to it).
    """
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Commands\n")
    end = text.index("\n## ", start + 1)
    commands = text[start:end]
    headings = list(COMMAND_HEADING.finditer(commands))
    intro = commands[:headings[0].start()] if headings else commands
    sections = {}
    for heading, following in zip(headings, headings[1:] + [None]):
        sections[heading.group(1)] = commands[heading.start():following.start() if following else None]
    return intro, sections


def long_options(command: click.Command) -> set[str]:
    return {opt for param in command.params if isinstance(param, click.Option)
            for opt in param.opts + param.secondary_opts if opt.startswith("--")}


def test_commands_are_the_documented_ones() -> None:
    _, sections = readme_sections()
    assert sections, "no ### `triage NAME` heading in the README"
    assert sorted(sections) == COMMANDS, f"README documents {sorted(sections)}, the CLI has {COMMANDS}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_and_is_in_the_readme(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert main.commands[command].help and "Example:" in result.output
    assert "Exit codes:" in result.output
    assert f"triage {command}" in README.read_text(encoding="utf-8")


def test_every_option_is_in_the_readme() -> None:
    """Each long option is in its command's section; one that every command has may be in the intro."""
    intro, sections = readme_sections()
    shared = set.intersection(*(long_options(command) for command in main.commands.values()))
    missing = []
    for name, command in main.commands.items():
        documented = set(LONG_OPTION.findall(sections.get(name, "")))
        documented |= set(LONG_OPTION.findall(intro)) & shared
        missing += [f"{name} {opt}" for opt in sorted(long_options(command) - documented)]
    assert not missing, f"not in the README section of their command: {missing}"


def test_the_readme_documents_no_option_a_command_lacks() -> None:
    _, sections = readme_sections()
    unknown = [f"{name} {opt}" for name, section in sections.items()
               for opt in sorted(set(LONG_OPTION.findall(section)) - long_options(main.commands[name]))
               if opt not in ("--help", "--version")]
    assert not unknown, f"documented but not an option of the command: {unknown}"


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_help_does_not_import_tensorflow() -> None:
    code = ("import sys\nfrom click.testing import CliRunner\nfrom triage.cli import main\n"
            "for c in ([], ['scan'], ['train'], ['evaluate']):\n"
            "    assert CliRunner().invoke(main, c + ['--help']).exit_code == 0\n"
            "heavy = [m for m in ('tensorflow', 'keras', 'weasyprint', 'matplotlib') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_offline_imagenet_weights_message(tmp_path: Path, blob_dataset: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    result = CliRunner().invoke(main, ["train", str(blob_dataset), "--out", str(tmp_path / "m"),
                                       "--image-size", str(IMAGE_SIZE)])
    assert result.exit_code == EXIT_MODEL
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5" in lines[0]
    assert "keras-home/models" in lines[0]  # where to put it: the Keras cache in use
    assert "local copy (--backbone-weights)" in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "m").exists()


def test_missing_weights_file(tmp_path: Path, blob_dataset: Path) -> None:
    result = CliRunner().invoke(main, ["train", str(blob_dataset), "--backbone-weights",
                                       str(tmp_path / "nope.h5"), "--image-size", str(IMAGE_SIZE)])
    assert result.exit_code == EXIT_MODEL
    assert "does not exist" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("setup, message", [
    (lambda root: None, "does not exist"),
    (lambda root: root.mkdir(), "needs a sub-folder 'yes'"),
    (lambda root: (root / "yes").mkdir(parents=True), "exactly two class sub-folders"),
])
def test_train_bad_folder_messages(tmp_path: Path, setup, message: str) -> None:
    root = tmp_path / "data"
    setup(root)
    result = CliRunner().invoke(main, ["train", str(root), "--backbone-weights", "random"])
    assert result.exit_code == EXIT_USAGE
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.slow  # --folds 3: each outer fold fits its own out-of-fold calibration and threshold
def test_train_and_evaluate_through_the_cli(tmp_path: Path, blob_dataset: Path) -> None:
    runner = CliRunner()
    trained = runner.invoke(main, ["train", str(blob_dataset), "--out", str(tmp_path / "model"),
                                   "--backbone-weights", TINY_BACKBONE, "--image-size", str(IMAGE_SIZE),
                                   "--epochs", "3", "--folds", "3"])
    assert trained.exit_code == EXIT_OK, trained.output
    assert "RANDOM BACKBONE" in trained.output
    assert "validation accuracy" in trained.output and "95% CI" in trained.output
    assert "3-fold accuracy" in trained.output
    card = json.loads((tmp_path / "model" / "model_card.json").read_text())
    assert card["hyperparameters"]["epochs"] == 3

    evaluated = runner.invoke(main, ["evaluate", str(blob_dataset), "--model", str(tmp_path / "model"),
                                     "--out", str(tmp_path / "eval")])
    assert evaluated.exit_code == EXIT_OK, evaluated.output
    for name in ("accuracy", "roc_auc", "sensitivity", "specificity", "precision", "f1"):
        assert name in evaluated.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["metrics"]["n"] == 80
    assert sum(metrics["metrics"]["confusion_matrix"].values()) == 80
    for png in ("roc_curve.png", "confusion_matrix.png"):
        assert (tmp_path / "eval" / png).read_bytes()[:4] == b"\x89PNG"
    predictions = (tmp_path / "eval" / "predictions.csv").read_text().splitlines()
    assert len(predictions) == 81


def test_evaluate_matches_validation_metrics_of_the_card(tmp_path: Path, trained_model: Path,
                                                         blob_dataset: Path) -> None:
    """Evaluating on exactly the validation files reproduces the card's validation confusion matrix."""
    import shutil

    card = json.loads((trained_model / "model_card.json").read_text())
    val = tmp_path / "val"
    for relpath in card["split"]["validation_files"]:
        (val / relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(blob_dataset / relpath, val / relpath)
    result = CliRunner().invoke(main, ["evaluate", str(val), "--model", str(trained_model),
                                       "--out", str(tmp_path / "eval")])
    assert result.exit_code == EXIT_OK, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert metrics["confusion_matrix"] == card["validation_metrics"]["confusion_matrix"]
    assert metrics["roc_auc"]["value"] == pytest.approx(card["validation_metrics"]["roc_auc"]["value"])
