"""Does the classifier's attention fall on the fractures? Measured on held-out fractured demo studies.

    python benchmarks/attention_on_cleft.py                  # the effnet_gru run of fold 0 on the demo
    python benchmarks/attention_on_cleft.py -- fold=1 runs_dir=/elsewhere/runs   # config overrides after --

Only synthetic data can answer this: ``synth_fractures.csv`` says which DICOM slices each cleft crosses.
For every cleft of a fractured vertebra in the held-out fold's studies, the vertebra's ``n_slices`` sampled
slices (the crops validation fed the model, src/tasks/vertebra.py) split into those the cleft crosses and
the rest. Three shares of the vertebra's attention (the GRU pooling's weights, src/models/effnet_gru.py)
fall on the crossed ones:

- ``attention``: the trained model on the study as cached (what validation saw);
- ``no cleft``: the same model on the same study rendered again without its clefts (src.synth.study.make_study
  with_fractures=False; nothing else changes), so the same slices at the same places: the attention those
  slices get for where they are (mid-vertebra, say) rather than for what they show;
- ``uniform``: their share of the sampled slices, what attention spread evenly would give.

Printed per cleft kind (body, arch, ring, dens): clefts, how many cross at least one sampled slice, the
mean of each share over those, and how often the attention share beats the no-cleft one. Needs the demo
data, the cache, the localisation table and a trained run (``bash train.sh fold=0``); a minute or two on
a CPU.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cleft_shares(slice_numbers: np.ndarray, attention: np.ndarray, slice_min: int, slice_max: int) -> dict:
    """For one vertebra's sampled slices (their DICOM numbers) and its attention weights: which the cleft
    crossing ``slice_min..slice_max`` crosses, their attention share and their uniform share."""
    crossed = (slice_numbers >= min(slice_min, slice_max)) & (slice_numbers <= max(slice_min, slice_max))
    return {"crossed": int(crossed.sum()), "attention": float(attention[crossed].sum()),
            "uniform": float(crossed.mean())}


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
    from src.tasks.explanation import explain_study
    from src.tasks.vertebra import VertebraDataset

    cfg, data_dir, cache_dir, table = synthetic_inputs(
        args.overrides, "only synthetic studies say which slices each cleft crosses")
    folder = run_dir(cfg)
    if not (folder / "best.pt").exists():
        sys.exit(f"no {folder / 'best.pt'}; train it first (bash train.sh fold={cfg['fold']})")
    model, config = trained_model(folder)
    clefts = pd.read_csv(data_dir / "synth_fractures.csv", dtype={"StudyInstanceUID": str})
    labels = pd.read_csv(data_dir / "train.csv", dtype={"StudyInstanceUID": str}).set_index("StudyInstanceUID")
    chosen = sorted(held_out_fractured(cfg, data_dir), key=lambda t: t["uid"])
    dataset = VertebraDataset(cache_dir, [t["uid"] for t in chosen], table, config["effnet_gru"], config["windows"])

    rows, skipped = [], []
    for task in tqdm(chosen, desc="attention with and without clefts", unit="study"):
        uid = task["uid"]
        versions = with_and_without_clefts(task, cache_dir)
        if versions is None:
            skipped.append(uid)
            continue
        cached, volume, intact = versions
        plans = dataset.plans.get(uid, {})
        predicted = load_labels(cache_dir, "train_images", uid) if dataset.crops.mask_channel else None
        seen = explain_study(model, dataset.crops, uid, volume, cached.meta, plans, predicted=predicted)
        control = explain_study(model, dataset.crops, uid, intact, cached.meta, plans, predicted=predicted)
        for cleft in clefts[(clefts["StudyInstanceUID"] == uid) & (clefts["split"] == "train_images")].itertuples():
            k = VERTEBRAE.index(cleft.vertebra)
            if cleft.slice_min < 0 or labels.loc[uid, cleft.vertebra] != 1:
                continue
            shares = cleft_shares(seen.slice_numbers[k], seen.attention[k], cleft.slice_min, cleft.slice_max)
            without = cleft_shares(control.slice_numbers[k], control.attention[k], cleft.slice_min, cleft.slice_max)
            rows.append({"study": uid, "vertebra": cleft.vertebra, "kind": cleft.component, **shares,
                         "no_cleft": without["attention"], "probability": float(seen.probs[k + 1])})
    if skipped:
        print(f"{len(skipped)} studies skipped: the cache is not the rendered study (e.g. {skipped[0]})")
    if not rows:
        sys.exit("no held-out cleft to measure")
    frame = pd.DataFrame(rows)
    crossing = frame[frame["crossed"] > 0]
    summary = pd.DataFrame({
        "clefts": frame.groupby("kind").size(),
        "crossing_a_sampled_slice": crossing.groupby("kind").size(),
        "attention": crossing.groupby("kind")["attention"].mean(),
        "no_cleft": crossing.groupby("kind")["no_cleft"].mean(),
        "uniform": crossing.groupby("kind")["uniform"].mean(),
        "attention_above_no_cleft": crossing.assign(up=crossing["attention"] > crossing["no_cleft"])
        .groupby("kind")["up"].mean(),
    }).fillna(0)
    summary.loc["all"] = [len(frame), len(crossing), crossing["attention"].mean(), crossing["no_cleft"].mean(),
                          crossing["uniform"].mean(), (crossing["attention"] > crossing["no_cleft"]).mean()]
    pd.set_option("display.width", 160)
    print(f"{folder}: share of a fractured vertebra's attention on the slices its cleft crosses, held-out fold "
          f"{cfg['fold']} ({frame['study'].nunique()} studies, {config['effnet_gru']['n_slices']} sampled slices "
          f"a vertebra); means over the clefts that cross a sampled slice")
    print(summary.round(3).to_string())


if __name__ == "__main__":
    main()
