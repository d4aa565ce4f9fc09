"""How learnable are a synthetic dataset's fractures at the classifier's crop size? A probe with dense labels.

    python benchmarks/fracture_probe.py                                  # demo data, demo crop settings
    python benchmarks/fracture_probe.py --encoder tf_efficientnetv2_b0 --epochs 8
    python benchmarks/fracture_probe.py -- effnet_gru.crop_size=96      # key=value overrides after --

The EfficientNet + GRU learns from one label per vertebra. Before blaming that weak supervision (or the
model) for a poor demo score, this asks the easier question: given the label of every slice, which only
a synthetic dataset has (``synth_fractures.csv``: the DICOM numbers each cleft crosses), can a 2D
encoder trained from scratch tell a fractured slice from an intact one? It crops every second slice of
every vertebra exactly as the classifier does (src/tasks/vertebra.py: the localisation table's range and
box, ``neighbours`` as channels, ``crop_size``), trains ``--encoder`` on the training folds' slices
(every fractured slice and three times as many intact ones an epoch, left-right flips), and prints, per
epoch, the held-out fold's slice AUC and vertebra AUC (a vertebra's score is its highest slice's), then
the vertebra AUC of each kind of cleft (body, arch, ring, dens) against all intact vertebrae and against
the intact vertebrae of the same levels (a ring cleft against intact C1s).

If even this probe stays near 0.5 for a kind of cleft, no classifier can learn that kind on this data at
this crop size: the fix belongs in the synthetic data (src/synth/fractures.py) or the crop settings.
Needs the cache, the folds and the localisation table (``bash train.sh fold=0`` builds them).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def slice_crops(cfg, cache_dir: Path, table: pd.DataFrame, fractures: pd.DataFrame, folds: pd.DataFrame):
    """Every second slice of every vertebra of every cached training study in the folds, cropped like the
    classifier's: (images (n, C, S, S), slice labels, fold, vertebra key "uid_Cn")."""
    from tqdm import tqdm

    from src.data.cache import load_study
    from src.tasks.vertebra import VertebraDataset, slice_range_indices

    settings = {**dict(cfg["effnet_gru"]), "n_slices": 1, "augment": 0}
    studies = VertebraDataset(cache_dir, folds["StudyInstanceUID"], table, settings, cfg["windows"])
    fold_of = dict(zip(folds["StudyInstanceUID"], folds["fold"]))
    images, labels, fold, key = [], [], [], []
    for uid in tqdm(studies.study_uids, desc="crop", unit="study"):
        study = load_study(cache_dir, "train_images", uid, with_mask=False)
        numbers = np.asarray(study.meta["slice_numbers"])
        clefts = fractures[fractures["StudyInstanceUID"] == uid]
        for vertebra, plan in studies.plans.get(uid, {}).items():
            first, last = slice_range_indices(numbers, plan[0], plan[1])
            ends = clefts.loc[clefts["vertebra"] == vertebra, ["slice_min", "slice_max"]].to_numpy()
            lows, highs = ends.min(axis=1), ends.max(axis=1)  # reversed studies number their slices downwards
            for index in range(first, last + 1, 2):
                n = numbers[index]
                inside = bool(((lows <= n) & (n <= highs)).any())
                images.append(studies.crops.vertebra_stack(study.volume, study.meta, (n, n, *plan[2:]))[0])
                labels.append(float(inside))
                fold.append(fold_of[uid])
                key.append(f"{uid}_{vertebra}")
    return torch.from_numpy(np.stack(images)), torch.tensor(labels), np.array(fold), np.array(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", default=None, help="timm name (default: the config's effnet_gru.encoder)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (after --)")
    args = parser.parse_args()

    import timm
    from sklearn.metrics import roc_auc_score

    from demo_inputs import synthetic_inputs
    from src.data.folds import ensure_folds

    cfg, data_dir, cache_dir, table = synthetic_inputs(args.overrides, "the probe needs synth_fractures.csv's slice labels")
    fractures = pd.read_csv(data_dir / "synth_fractures.csv")
    fractures = fractures[fractures["split"] == "train_images"]
    folds = ensure_folds(cfg, data_dir)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    started = time.time()
    images, labels, fold, key = slice_crops(cfg, cache_dir, table, fractures, folds)
    train, held_out = np.flatnonzero(fold != cfg["fold"]), np.flatnonzero(fold == cfg["fold"])
    positives, negatives = train[labels[train] > 0], train[labels[train] == 0]
    encoder = args.encoder or cfg["effnet_gru"]["encoder"]
    print(f"{len(images)} slice crops {tuple(images.shape[1:])} in {time.time() - started:.0f} s; "
          f"{len(positives)} fractured training slices; encoder {encoder} from scratch; "
          f"held-out fold {cfg['fold']}: {int(labels[held_out].sum())} fractured of {len(held_out)}")

    model = timm.create_model(encoder, num_classes=1, in_chans=images.shape[1])
    head = model.get_classifier()  # timm's fan-out init gives a 1-output head logits of several units
    torch.nn.init.normal_(head.weight, std=0.01)
    torch.nn.init.zeros_(head.bias)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    vertebra_truth = pd.Series(labels[held_out].numpy()).groupby(key[held_out]).max()
    for epoch in range(args.epochs):
        started = time.time()
        model.train()
        order = np.concatenate([positives, rng.choice(negatives, min(len(negatives), 3 * len(positives)), replace=False)])
        rng.shuffle(order)
        losses = []
        for start in range(0, len(order), args.batch):
            batch = order[start:start + args.batch]
            x = images[batch].flip(-1) if rng.random() < 0.5 else images[batch]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            scores = torch.cat([model(images[held_out[i:i + 256]]).squeeze(1) for i in range(0, len(held_out), 256)])
        scores = scores.sigmoid().numpy()
        vertebra_scores = pd.Series(scores).groupby(key[held_out]).max()
        print(f"epoch {epoch}: train loss {np.mean(losses):.3f}  slice AUC {roc_auc_score(labels[held_out], scores):.3f}  "
              f"vertebra AUC {roc_auc_score(vertebra_truth, vertebra_scores.loc[vertebra_truth.index]):.3f}  "
              f"{time.time() - started:.0f} s", flush=True)

    kinds = fractures.assign(key=fractures["StudyInstanceUID"] + "_" + fractures["vertebra"]).groupby("key")["component"].first()
    intact = vertebra_truth.index[vertebra_truth == 0]
    for kind in sorted(kinds.unique()):
        fractured = [k for k in vertebra_truth.index[vertebra_truth == 1] if kinds.get(k) == kind]
        if not fractured:
            continue
        levels = {k.rsplit("_", 1)[1] for k in fractured}
        same_level = [k for k in intact if k.rsplit("_", 1)[1] in levels]
        aucs = [roc_auc_score(vertebra_truth.loc[chosen], vertebra_scores.loc[chosen])
                for chosen in (list(fractured) + list(intact), list(fractured) + same_level)]
        print(f"{kind:5s} clefts: {len(fractured):3d} held-out vertebrae, vertebra AUC {aucs[0]:.3f} against every "
              f"intact vertebra, {aucs[1]:.3f} against the {len(same_level)} intact {'/'.join(sorted(levels))}")


if __name__ == "__main__":
    main()
