"""End-of-run figures of a classifier on its validation studies: per-target confusion matrices and ROC
curves, as PNG files in the run folder (the loop also logs them to W&B). Pure matplotlib, Agg backend."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import TARGETS


def _figure(n: int = len(TARGETS)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, (n + 1) // 2, figsize=(3 * ((n + 1) // 2), 6.2))
    return plt, fig, axes.ravel()


def confusion_matrices(labels: np.ndarray, probs: np.ndarray, path: Path, threshold: float = 0.5) -> Path:
    """One 2x2 matrix (rows: truth, columns: prediction at ``threshold``) per target."""
    plt, fig, axes = _figure()
    for ax, j in zip(axes, range(len(TARGETS))):
        truth = np.asarray(labels)[:, j] > 0.5
        pred = np.asarray(probs)[:, j] >= threshold
        matrix = np.array([[np.sum(~truth & ~pred), np.sum(~truth & pred)], [np.sum(truth & ~pred), np.sum(truth & pred)]])
        ax.imshow(matrix, cmap="Blues")
        for (r, c), count in np.ndenumerate(matrix):
            ax.text(c, r, str(count), ha="center", va="center", color="black")
        ax.set(title=TARGETS[j], xticks=[0, 1], yticks=[0, 1], xticklabels=["no", "yes"], yticklabels=["no", "yes"],
               xlabel="predicted", ylabel="true")
    fig.suptitle(f"confusion matrices, threshold {threshold}")
    fig.tight_layout()
    return _save(plt, fig, path)


def roc_curves(labels: np.ndarray, probs: np.ndarray, path: Path) -> Path:
    """ROC curve and AUC per target; a target with one class on this fold says so instead."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt, fig, axes = _figure()
    for ax, j in zip(axes, range(len(TARGETS))):
        truth = np.asarray(labels)[:, j] > 0.5
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        if truth.all() or not truth.any():
            ax.text(0.5, 0.5, "one class only", ha="center")
        else:
            fpr, tpr, _ = roc_curve(truth, np.asarray(probs)[:, j])
            ax.plot(fpr, tpr, lw=1.5)
            ax.text(0.95, 0.05, f"AUC {roc_auc_score(truth, np.asarray(probs)[:, j]):.3f}", ha="right")
        ax.set(title=TARGETS[j], xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1))
    fig.tight_layout()
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    from ..io_utils import atomic_path

    path = Path(path)
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path
