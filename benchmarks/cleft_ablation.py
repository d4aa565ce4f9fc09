"""Does the trained classifier look at the fractures? Held-out fractured demo studies with and without their clefts.

    python benchmarks/cleft_ablation.py                      # the effnet_gru run of fold 0 on the demo
    python benchmarks/cleft_ablation.py -- fold=1            # key=value config overrides after --

Only synthetic data can answer this: every demo study can be rendered again from its seed with its
clefts left out (src.synth.study.make_study(with_fractures=False); nothing else in the study changes). For
each fractured study of the held-out fold this renders both versions, checks that the fractured one is
exactly the volume in the cache (so both go through the very crops the classifier saw in validation),
predicts both with the run's ``best.pt`` and prints, per fractured vertebra, the probability with and
without its cleft, then the means per level. A classifier that reads the clefts drops to near its intact
predictions without them; one that learned a shortcut (the box, the slice range, some other study trait)
keeps its probability. Needs the demo data, the cache, the localisation table and a trained run
(``bash train.sh fold=0`` builds them all); about a minute on a CPU.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (after --)")
    args = parser.parse_args()

    from tqdm import tqdm

    from demo_inputs import held_out_fractured, synthetic_inputs, with_and_without_clefts
    from src import VERTEBRAE
    from src.localisation.stored_labels import load_labels
    from src.models.checkpoint import trained_model
    from src.runs import run_dir
    from src.tasks.vertebra import VertebraDataset

    cfg, data_dir, cache_dir, table = synthetic_inputs(
        args.overrides, "only demo studies can be rendered without their clefts")
    checkpoint = run_dir(cfg) / "best.pt"
    if not checkpoint.exists():
        sys.exit(f"no {checkpoint}; train it first (bash train.sh fold={cfg['fold']})")
    chosen = held_out_fractured(cfg, data_dir)
    dataset = VertebraDataset(cache_dir, [t["uid"] for t in chosen], table, cfg["effnet_gru"], cfg["windows"])
    model, _ = trained_model(checkpoint)

    rows, skipped = [], []
    for task in tqdm(chosen, desc="render and predict", unit="study"):
        uid = task["uid"]
        versions = with_and_without_clefts(task, cache_dir)
        if versions is None:
            skipped.append(uid)
            continue
        cached, volume, intact = versions
        probs = {}
        predicted = load_labels(cache_dir, "train_images", uid) if dataset.crops.mask_channel else None
        for name, vol in (("with", volume), ("without", intact)):
            plans = dataset.plans[uid]
            images = np.stack([dataset.crops.vertebra_stack(vol, cached.meta, plans[v], vertebra=v, predicted=predicted)
                               for v in VERTEBRAE])
            with torch.no_grad():
                probs[name] = torch.sigmoid(model({"images": torch.from_numpy(images)[None]})["logits"][0]).numpy()
        for k, vertebra in enumerate(VERTEBRAE):
            if vertebra in task["fractured"]:
                rows.append({"study": uid, "vertebra": vertebra, "with_cleft": probs["with"][k + 1],
                             "without_cleft": probs["without"][k + 1]})
    if skipped:
        print(f"{len(skipped)} studies skipped: the cache is not the rendered study (e.g. {skipped[0]}); "
              "was the demo regenerated with other settings?")
    if not rows:
        sys.exit("no held-out fractured vertebra to compare")
    frame = pd.DataFrame(rows)
    pd.set_option("display.width", 160)
    print(frame.round(3).to_string(index=False))
    summary = frame.groupby("vertebra")[["with_cleft", "without_cleft"]].agg(["mean", "count"]).round(3)
    print(f"\n{run_dir(cfg)}: mean probability of each fractured level, held-out fold {cfg['fold']}")
    print(summary.to_string())
    print(f"all: {frame['with_cleft'].mean():.3f} with the clefts, {frame['without_cleft'].mean():.3f} without "
          f"({len(frame)} vertebrae in {frame['study'].nunique()} studies)")


if __name__ == "__main__":
    main()
