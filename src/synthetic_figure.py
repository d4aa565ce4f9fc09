"""The README picture: a synthetic study's axial slices and sagittal reformat beside its vertebra mask.

``python -m src.synthetic_figure out=docs/synthetic_study.png seed=4 size=demo`` builds one study in
memory (a fractured one, so a cleft shows) and draws, top row, axial slices through C1, C2, C5 and
C7 and a sagittal reformat in a bone window; bottom row, the same with the mask over them
(C1..C7 coloured, thoracic grey) and the fracture boxes in red.
"""
from __future__ import annotations

import numpy as np

from .config import parse_overrides, run_main
from .synth.study import make_study

WINDOW = (400.0, 1800.0)  # centre, width: the bone window the classifiers see


def _windowed(hu: np.ndarray) -> np.ndarray:
    lo = WINDOW[0] - WINDOW[1] / 2
    return np.clip((hu.astype(np.float32) - lo) / WINDOW[1], 0.0, 1.0)


def _overlay(ax, labels: np.ndarray) -> None:
    from matplotlib.colors import ListedColormap

    colours = ["#00000000", "#e6194b", "#f58231", "#ffe119", "#3cb44b", "#42d4f4", "#4363d8", "#911eb4"] + ["#a9a9a9"] * 12
    ax.imshow(np.ma.masked_equal(labels, 0), cmap=ListedColormap(colours), vmin=0, vmax=19, alpha=0.55,
              interpolation="nearest", aspect=ax.get_aspect())


def draw(out: str, seed: int, size: str, fractured: list[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    study = make_study("1.2.826.0.1.3680043.99999", seed, size=size, fractured=fractured)
    boxes = study.bounding_boxes()
    levels = ["C1", "C2", "C5", "C7"]
    picks = []
    for name in levels:
        label = int(name[1])
        on = np.nonzero((study.labels == label).any(axis=(1, 2)))[0]
        crossed = [s for s in on if (study.cleft[s] > 0).any()]
        picks.append((name, (crossed or on)[len(crossed or on) // 2]))
    fig, axes = plt.subplots(2, len(picks) + 1, figsize=(3.2 * (len(picks) + 1), 6.8),
                             gridspec_kw={"width_ratios": [1] * len(picks) + [1.3]})
    for col, (name, s) in enumerate(picks):
        for row in (0, 1):
            ax = axes[row, col]
            ax.imshow(_windowed(study.hu[s]), cmap="gray", interpolation="nearest")
            if row == 1:
                _overlay(ax, study.labels[s])
                for box in boxes:
                    if box["slice_number"] == study.slice_numbers[s]:
                        ax.add_patch(Rectangle((box["x"], box["y"]), box["width"], box["height"], fill=False,
                                               edgecolor="red", linewidth=1.2))
            ax.set_title(f"{name}, slice {study.slice_numbers[s]}" if row == 0 else "mask", fontsize=9)
            ax.axis("off")
    # sagittal reformat through the middle of the cervical spine
    cervical = np.nonzero((study.labels >= 1) & (study.labels <= 7))
    column = int(np.median(cervical[2]))
    aspect = study.slice_spacing / study.pixel_spacing[0]
    for row in (0, 1):
        ax = axes[row, -1]
        ax.imshow(_windowed(study.hu[:, :, column]), cmap="gray", aspect=aspect, interpolation="nearest")
        if row == 1:
            _overlay(ax, study.labels[:, :, column])
        ax.set_title("sagittal (head up, face left)" if row == 0 else "mask", fontsize=9)
        ax.axis("off")
    marks = ", ".join(f"{f.vertebra} {f.component}" for f in study.fractures) or "none"
    fig.suptitle(f"synthetic study ({size}, {study.hu.shape[0]} slices of {study.hu.shape[1]} px, "
                 f"{study.slice_spacing:g} mm apart); fractures: {marks}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str]) -> None:
    args = parse_overrides(argv, {"out": "docs/synthetic_study.png", "seed": 4, "size": "demo",
                                  "fractured": ["C2", "C5"]})
    print(draw(args["out"], args["seed"], args["size"], list(args["fractured"])))


if __name__ == "__main__":
    run_main(main)
