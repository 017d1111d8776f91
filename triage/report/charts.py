"""Every chart triage draws, in one matplotlib idiom: :func:`new_figure`, then :func:`png_bytes`.

A figure is made on its own Agg canvas, never through pyplot, so no backend is
switched for the process and no figure is kept between calls. matplotlib and
numpy are imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from triage.outputs.atomic import atomic_write_bytes
from triage.report.formatting import short_number

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure


def new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    """An empty figure of ``width`` x ``height`` inches on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def png_bytes(figure: Figure, *, tight: bool = False) -> bytes:
    """The figure as PNG bytes at its own dpi (``tight``: laid out first); the figure is cleared."""
    if tight:
        figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=figure.dpi)
    figure.clear()
    return buffer.getvalue()


# --------------------------------------------------------------------------- training and evaluation


def training_curves(history: dict[str, Sequence[float]], path: Path, title: str = "") -> None:
    """Accuracy and loss per epoch, training vs validation, as the thesis plots them."""
    import numpy as np

    figure = new_figure(10.0, 4.0)
    for ax, metric in zip(figure.subplots(1, 2), ("accuracy", "loss")):
        epochs = np.arange(1, len(history.get(metric, [])) + 1)
        ax.plot(epochs, history.get(metric, []), label=f"training {metric}")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], label=f"validation {metric}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        figure.suptitle(title)
    atomic_write_bytes(path, png_bytes(figure, tight=True))


def roc_curve_png(y_true: np.ndarray, prob: np.ndarray, auc: float | None, path: Path) -> None:
    """The ROC curve with its AUC."""
    import numpy as np
    from sklearn.metrics import roc_curve

    figure = new_figure(5.0, 4.0)
    ax = figure.subplots()
    if 0 < int(np.sum(y_true)) < len(y_true):
        fpr, tpr, _ = roc_curve(y_true, prob)
        ax.plot(fpr, tpr, label=f"AUC = {auc:.3f}" if auc is not None else "ROC")
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title("ROC curve")
    ax.legend(loc="lower right")
    atomic_write_bytes(path, png_bytes(figure, tight=True))


def reliability_diagram(y_true: np.ndarray, raw: np.ndarray, calibrated: np.ndarray, path: Path, *,
                        measured: dict[str, Any] | None = None, title: str = "", bins: int = 10) -> None:
    """Observed share of tumours against the mean probability, per bin, before and after the map.

    Points come from scikit-learn's ``calibration_curve`` (``bins`` equal bins); a
    perfectly calibrated model lies on the diagonal. Below, how many images fell
    in each bin. ``measured``: Brier and ECE before and after (shown in the legend).
    """
    import numpy as np
    from sklearn.calibration import calibration_curve

    figure = new_figure(5.5, 6.0)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
    top.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfectly calibrated")
    edges = np.linspace(0, 1, bins + 1)
    for name, values, colour in (("before", raw, "#8aa1b4"), ("after", calibrated, "#c0392b")):
        label = "network output (raw)" if name == "before" else "calibrated probability"
        if measured:
            label += (f": Brier {measured[name]['brier']['value']:.3f}, "
                      f"ECE {measured[name]['ece']['value']:.3f}")
        if len(values) and 0 < int(np.sum(y_true)) < len(y_true):
            observed, predicted = calibration_curve(y_true, values, n_bins=bins)
            top.plot(predicted, observed, marker="o", color=colour, label=label)
        bottom.hist(values, bins=edges, histtype="step", color=colour, linewidth=1.5)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("share of tumour images in the bin")
    top.set_title(title or "Reliability diagram")
    top.legend(loc="lower right", fontsize=8)
    top.grid(alpha=0.3)
    bottom.set_xlabel(f"mean probability in the bin ({bins} bins, n={len(y_true)})")
    bottom.set_ylabel("images")
    bottom.yaxis.get_major_locator().set_params(integer=True)
    atomic_write_bytes(path, png_bytes(figure, tight=True))


def confusion_matrix_png(confusion: dict[str, int], class_names: Sequence[str], path: Path) -> None:
    """The 2x2 confusion matrix with counts, rows = truth, columns = prediction."""
    import numpy as np

    matrix = np.array([[confusion["tn"], confusion["fp"]], [confusion["fn"], confusion["tp"]]])
    figure = new_figure(4.5, 4.0)
    ax = figure.subplots()
    ax.imshow(matrix, cmap="Blues")
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, str(count), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black", fontsize=14)
    ax.set_xticks([0, 1], [f"predicted {n}" for n in class_names])
    ax.set_yticks([0, 1], [f"true {n}" for n in class_names])
    ax.set_title("Confusion matrix")
    atomic_write_bytes(path, png_bytes(figure, tight=True))


# --------------------------------------------------------------------------- scan report


def histogram_png(below: Sequence[float], above: Sequence[float], threshold: float) -> bytes:
    """Probabilities below the threshold and flagged, stacked, the threshold marked."""
    import numpy as np

    below_, above_ = np.array(below, dtype=float), np.array(above, dtype=float)
    bins = np.linspace(0.0, 1.0, 41)
    figure = new_figure(7.0, 2.3, dpi=150)
    axes = figure.add_axes((0.075, 0.2, 0.9, 0.68))
    axes.hist(
        [below_, above_], bins=bins, stacked=True, color=["#8aa1b4", "#c0392b"],
        edgecolor="white", linewidth=0.5,
        label=[f"below threshold ({below_.size:,})", f"flagged ({above_.size:,})"],
    )
    _mark_threshold(axes, threshold)
    axes.set_xlim(0, 1)
    log_scale = _count_axis(axes, np.histogram(np.concatenate([below_, above_]), bins=bins)[0])
    _label(axes, "tumour probability", "images (log scale)" if log_scale else "images", size=8)
    axes.legend(fontsize=7, frameon=False, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2,
                borderaxespad=0.2)
    return png_bytes(figure)


def slice_plot_png(points: Sequence[tuple[int, float]], top: Sequence[int], threshold: float) -> bytes:
    """Probability along the slice index, the threshold drawn, the ``top`` slices marked."""
    index = [i for i, _ in points]
    marked = [(i, p) for i, p in points if i in top]
    figure = new_figure(6.0, 1.5, dpi=150)
    axes = figure.add_axes((0.075, 0.27, 0.9, 0.55))
    axes.plot(index, [p for _, p in points], color="#5b7fa6", linewidth=1.0, marker="o", markersize=2.2)
    axes.plot([i for i, _ in marked], [p for _, p in marked], linestyle="none", marker="o", markersize=4,
              color="#c0392b", label="slices shown")
    axes.axhline(threshold, color="#1d2329", linestyle="--", linewidth=0.9,
                 label=f"threshold {short_number(threshold)}")
    axes.set_ylim(-0.04, 1.04)
    axes.set_xlim(min(index) - 0.5, max(index) + 0.5)
    axes.xaxis.get_major_locator().set_params(integer=True)
    _label(axes, "slice index", "probability", size=7)
    axes.legend(fontsize=6, frameon=False, loc="lower right", bbox_to_anchor=(1.0, 1.02), ncol=2,
                borderaxespad=0.0)
    return png_bytes(figure)


def _mark_threshold(axes: Any, threshold: float) -> None:
    """A dashed vertical line at the threshold, labelled at its top."""
    axes.axvline(threshold, color="#1d2329", linestyle="--", linewidth=1.2)
    axes.annotate(
        f"threshold {short_number(threshold)}", xy=(threshold, 1.0),
        xycoords=("data", "axes fraction"), xytext=(4, -4), textcoords="offset points",
        ha="left" if threshold < 0.8 else "right", va="top", fontsize=8,
    )


def _count_axis(axes: Any, heights: np.ndarray) -> bool:
    """Whole counts, or a log scale (then True) when one tall bar would flatten every other bar.

    Most scans are clean, so the bar near 0 is often far the tallest.
    """
    import numpy as np

    nonzero = np.sort(heights[heights > 0])
    if nonzero.size > 1 and nonzero[-1] > 100 and nonzero[-1] > 20 * nonzero[-2]:
        axes.set_yscale("log")
        axes.set_ylim(bottom=0.8)
        return True
    axes.yaxis.get_major_locator().set_params(integer=True)
    return False


def _label(axes: Any, xlabel: str, ylabel: str, *, size: int) -> None:
    """The report's plain axes: labels of ``size`` points, ticks one smaller, no top or right spine."""
    axes.set_xlabel(xlabel, fontsize=size)
    axes.set_ylabel(ylabel, fontsize=size)
    axes.tick_params(labelsize=size - 1)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
