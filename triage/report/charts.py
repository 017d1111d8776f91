"""Training and evaluation figures (matplotlib, headless)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from triage.outputs.atomic import atomic_write_bytes


def _figure(ncols: int = 1, width: float = 5.0) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width * ncols, 4), dpi=100, squeeze=False)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def training_curves(history: dict[str, Sequence[float]], path: Path, title: str = "") -> None:
    """Accuracy and loss per epoch, training vs validation, as the thesis plots them."""
    fig, axes = _figure(2)
    for ax, metric in zip(axes[0], ("accuracy", "loss")):
        epochs = np.arange(1, len(history.get(metric, [])) + 1)
        ax.plot(epochs, history.get(metric, []), label=f"training {metric}")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], label=f"validation {metric}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    _save(fig, path)


def roc_curve_png(y_true: np.ndarray, prob: np.ndarray, auc: float | None, path: Path) -> None:
    """The ROC curve with its AUC."""
    from sklearn.metrics import roc_curve

    fig, axes = _figure()
    ax = axes[0][0]
    if 0 < int(np.sum(y_true)) < len(y_true):
        fpr, tpr, _ = roc_curve(y_true, prob)
        ax.plot(fpr, tpr, label=f"AUC = {auc:.3f}" if auc is not None else "ROC")
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title("ROC curve")
    ax.legend(loc="lower right")
    _save(fig, path)


def confusion_matrix_png(confusion: dict[str, int], class_names: Sequence[str], path: Path) -> None:
    """The 2x2 confusion matrix with counts, rows = truth, columns = prediction."""
    matrix = np.array([[confusion["tn"], confusion["fp"]], [confusion["fn"], confusion["tp"]]])
    fig, axes = _figure(width=4.5)
    ax = axes[0][0]
    ax.imshow(matrix, cmap="Blues")
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, str(count), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black", fontsize=14)
    ax.set_xticks([0, 1], [f"predicted {n}" for n in class_names])
    ax.set_yticks([0, 1], [f"true {n}" for n in class_names])
    ax.set_title("Confusion matrix")
    _save(fig, path)
