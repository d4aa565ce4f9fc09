"""The picture of one explained study (src/tasks/explanation.py): one PNG a study.

Left, a row for each of C1..C7: the strip of crops the classifier read, head to feet, each with its
DICOM slice number; under each crop a bar of the attention weight the GRU gave it (the dashed line is
uniform attention, 1/N); at the row's left the vertebra's probability and, where known, its label
(red when fractured). Right, a sagittal and a coronal reformat through the middle of the localised
spine, bone window, with each vertebra's box and slice range from the localisation table (dashed when
estimated) and its sampled slices as ticks, darker where the attention was higher. The title gives the
study, patient_overall's probability and label, the study's loss and what predicted it.

Called by the vertebra task (end of training), src/reporting/explanations.py and
src/inference/explanations.py. Pure matplotlib on the Agg backend.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import VERTEBRAE
from ..data.windows import BONE, apply_windows
from .vertebra import slice_range_indices

FRACTURED = "#c62828"
INTACT = "#2e7d32"
UNKNOWN = "#424242"
BOX_COLOURS = ["#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628", "#f781bf"]


def _label_text(value) -> tuple[str, str]:
    if value is None:
        return "", UNKNOWN
    return (" label 1", FRACTURED) if value > 0.5 else (" label 0", INTACT)


def cache_boxes(expl) -> dict[str, tuple[int, int, float, float, float, float]]:
    """vertebra -> (first, last volume index, x0, y0, x1, y1 on the cached grid) from the plans used."""
    volume, meta = expl.volume, expl.meta
    rows, cols = meta.get("original_shape", volume.shape[1:])
    sy, sx = volume.shape[1] / rows, volume.shape[2] / cols
    boxes = {}
    for v, (s0, s1, x0, y0, x1, y1) in expl.plans.items():
        first, last = slice_range_indices(meta["slice_numbers"], s0, s1)
        boxes[v] = (first, last, x0 * sx, y0 * sy, x1 * sx, y1 * sy)
    return boxes


def reformats(expl) -> tuple[np.ndarray, np.ndarray, float]:
    """(sagittal (slices, H), coronal (slices, W), height/width aspect of one pixel) in [0, 1], bone
    window, cut through the median centre of the vertebra boxes."""
    boxes = cache_boxes(expl).values()
    xc = int(np.clip(np.median([(b[2] + b[4]) / 2 for b in boxes]), 0, expl.volume.shape[2] - 1))
    yc = int(np.clip(np.median([(b[3] + b[5]) / 2 for b in boxes]), 0, expl.volume.shape[1] - 1))
    sagittal = apply_windows(np.asarray(expl.volume[:, :, xc], dtype=np.float32), [BONE])[0]
    coronal = apply_windows(np.asarray(expl.volume[:, yc, :], dtype=np.float32), [BONE])[0]
    meta = expl.meta
    rows = meta.get("original_shape", expl.volume.shape[1:])[0]
    pixel = float(meta.get("pixel_spacing", [1.0, 1.0])[0]) * rows / expl.volume.shape[1]
    aspect = float(meta.get("slice_spacing") or 1.0) / pixel if pixel > 0 else 1.0
    return sagittal, coronal, aspect


def draw_explanation(expl, path: Path, dpi: int = 80) -> Path:
    """Draw ``expl`` (a StudyExplanation) to ``path`` (PNG, written atomically); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec
    from matplotlib.patches import Rectangle

    n = expl.crops.shape[1]
    strip_w = 0.62 * n  # a row is about an inch high: square crops
    fig = plt.figure(figsize=(strip_w + 1.0 + 5.5, 9.5))
    grid = GridSpec(len(VERTEBRAE), 2, figure=fig, width_ratios=[strip_w, 5.5], wspace=0.04, hspace=0.3,
                    left=1.0 / (strip_w + 6.5), right=0.99, top=0.94, bottom=0.01)
    for k, v in enumerate(VERTEBRAE):
        ax = fig.add_subplot(grid[k, 0])
        strip = np.concatenate(list(expl.crops[k]), axis=1)
        ax.imshow(strip, cmap="gray", vmin=0, vmax=1, extent=(0, n, 0, 1), aspect="auto", interpolation="nearest")
        weights = expl.attention[k]
        ax.bar(np.arange(n) + 0.5, 0.5 * weights / max(weights.max(), 1e-9), bottom=-0.62, width=0.8,
               color="#1565c0")
        ax.axhline(-0.62 + 0.5 * (1.0 / n) / max(weights.max(), 1e-9), color="#888888", lw=0.7, ls="--")
        for i in range(n):
            ax.text(i + 0.04, 0.97, str(int(expl.slice_numbers[k, i])), color="yellow", fontsize=6, va="top")
            ax.text(i + 0.5, -0.1, f"{weights[i]:.2f}", fontsize=6, ha="center", va="center")
        ax.set_xlim(0, n)
        ax.set_ylim(-0.64, 1)
        ax.set_box_aspect(1.64 / n)
        ax.set_xticks([])
        ax.set_yticks([])
        label, colour = _label_text(None if expl.labels is None else expl.labels[k + 1])
        note = "\n(estimated)" if v in expl.estimated else ""
        ax.annotate(f"{v}\np {expl.probs[k + 1]:.2f}\n{label.strip()}{note}", (0, 0.5), xycoords="axes fraction",
                    xytext=(-6, 0), textcoords="offset points", ha="right", va="center", fontsize=9, color=colour,
                    fontweight="bold" if label == " label 1" else None)

    sagittal, coronal, aspect = reformats(expl)
    boxes = cache_boxes(expl)
    right = grid[:, 1].subgridspec(1, 2, wspace=0.05)
    for j, (name, image, lo, hi) in enumerate((("sagittal", sagittal, 3, 5), ("coronal", coronal, 2, 4))):
        ax = fig.add_subplot(right[0, j])
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="bilinear")
        for k, v in enumerate(VERTEBRAE):
            first, last = boxes[v][0], boxes[v][1]
            a, b = boxes[v][lo], boxes[v][hi]
            colour = BOX_COLOURS[k]
            ax.add_patch(Rectangle((a, first - 0.5), b - a, last - first + 1, fill=False, color=colour, lw=1.0,
                                   ls="--" if v in expl.estimated else "-"))
            ax.text(b + 1, (first + last) / 2, v, color=colour, fontsize=7, va="center")
            top = max(expl.attention[k].max(), 1e-9)
            for position, weight in zip(expl.positions[k], expl.attention[k]):
                ax.plot([a, a + 0.25 * (b - a)], [position, position], color=colour, lw=1.2,
                        alpha=0.2 + 0.8 * float(weight / top))
        spine = [boxes[v][0] for v in VERTEBRAE] + [boxes[v][1] for v in VERTEBRAE]
        margin = max(5, (max(spine) - min(spine)) // 4)
        ax.set_ylim(min(image.shape[0] - 1, max(spine) + margin) + 0.5, max(0, min(spine) - margin) - 0.5)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])

    label, colour = _label_text(None if expl.labels is None else expl.labels[0])
    loss = expl.patient_loss
    title = (f"{expl.uid}   patient_overall p {expl.probs[0]:.2f}{label}"
             + (f"   study loss {loss:.3f}" if loss is not None else "") + (f"   ({expl.source})" if expl.source else ""))
    fig.suptitle(title, fontsize=11, color=colour)
    return _save(plt, fig, Path(path), dpi)


def _save(plt, fig, path: Path, dpi: int) -> Path:
    from ..io_utils import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path
