"""A picture of the localiser at work: one sagittal slice through the spine, CT beside the true and the
predicted vertebra labels. Drawn by the localise task at the end of a run (localisation_example.png in the
run folder and in W&B) and used as the README figure.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io_utils import atomic_path


def spine_column(labels: np.ndarray) -> int:
    """The column through the middle of the labelled vertebrae (the centre column if there are none)."""
    cols = np.nonzero(labels)[2]
    return int(np.median(cols)) if len(cols) else labels.shape[2] // 2


def sagittal_comparison(hu: np.ndarray, truth: np.ndarray, pred: np.ndarray, path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    col = spine_column(truth)
    colours = ListedColormap(["none", "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#42d4f4"])
    fig, axes = plt.subplots(1, 3, figsize=(10, 4.5))
    ct = np.clip((hu[:, :, col].astype(float) + 500) / 1800, 0, 1)  # bone-ish window
    for ax, labels, name in zip(axes, (None, truth, pred), ("CT (sagittal)", "true C1..C7", "predicted C1..C7")):
        ax.imshow(ct, cmap="gray", aspect="auto")
        if labels is not None:
            ax.imshow(labels[:, :, col], cmap=colours, vmin=0, vmax=7, alpha=0.6, interpolation="nearest", aspect="auto")
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path
