"""The localisation table of a whole dataset: train the fold localisers it needs, predict every cached
study, write ``src.paths.localisation_path`` atomically, and keep each study's voxel labels beside its
cached volume (src/localisation/stored_labels.py) for the classifier's mask channel.

Called by ``python -m src.localise`` (always rebuilds the table) and by :func:`ensure_localisation`
(src/localisation/__init__.py; train.sh, when a classifier needs the table and it is missing).

Which model predicts which study:

- a segmented train study: the model of the fold that held it out, so its rows are out-of-fold and its
  Dice/IoU are honest; if that fold was not trained, the nearest trained fold (it saw the study in
  training: counted and announced as in-sample);
- every other study (unsegmented train studies, cached test studies): all trained fold models averaged.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .. import VERTEBRAE
from ..config import load_config
from ..data.cache import cached_uids, load_study
from ..io_utils import atomic_write_csv
from ..paths import localisation_path
from ..runs import is_finished, old_name_hint, run_dir
from ..training.run_folder import RunFolderError
from . import LOCALISER_EXPERIMENT, LOCALISER_MODEL
from .extents import extents_for, min_voxels
from .levels import (RANGES_FILE, check_levels, index_ranges, judge_extents, learn_ranges, mask_ranges, relabelled,
                     with_level_columns)
from .metrics import nanmean
from .predict import load_localisers, segment_study
from .stored_labels import missing_labels, save_labels
from .table import study_rows
from .task import judge_study

SPLITS = ("train_images", "test_images")


def wanted_folds(cfg) -> list[int]:
    """``localiser.folds``, or every fold when it is empty."""
    folds = list(cfg["localiser"]["folds"]) or list(range(cfg["n_folds"]))
    bad = [k for k in folds if not 0 <= int(k) < cfg["n_folds"]]
    if bad:
        raise ValueError(f"localiser.folds {folds}: fold(s) {bad} outside 0..{cfg['n_folds'] - 1}")
    return [int(k) for k in folds]


def fold_checkpoints(cfg) -> dict[int, Path]:
    """Fold -> best.pt of the localiser experiment ``cfg.experiment``, for the folds whose training finished
    (an interrupted fold's best.pt is only the best epoch so far, and is never used)."""
    found = {}
    for k in range(cfg["n_folds"]):
        folder = run_dir(cfg, fold=k)
        if is_finished(folder) and (folder / "best.pt").exists():
            found[k] = folder / "best.pt"
    return found


def train_missing_folds(cfg, data_dir: Path, cache_dir: Path, folds: pd.DataFrame, announce=print) -> None:
    """Train, through the one training loop, each wanted fold whose training has not finished: a fold never
    started trains from scratch, an interrupted one is resumed from its last.pt (the loop says so)."""
    from omegaconf import OmegaConf

    from ..training import fit
    from .task import LocalisationTask

    todo = [k for k in wanted_folds(cfg) if not is_finished(run_dir(cfg, fold=k))]
    hint = old_name_hint(run_dir(cfg, fold=0).parent.parent, cfg["experiment"])
    if todo and hint:  # a run from before the rename: say so rather than train it again for a quarter hour
        raise RunFolderError(f"no localiser run '{cfg['experiment']}' yet{hint} (or move it out of the way "
                             f"to train a new one)")
    for k in todo:
        fold_cfg = OmegaConf.merge(cfg, {"fold": k})
        folder = run_dir(fold_cfg)
        if (folder / "last.pt").exists():
            announce(f"[localisation] the localiser for fold {k} was interrupted: finishing it in {folder} "
                     f"({fold_cfg['epochs']} epochs)")
        else:
            announce(f"[localisation] training the localiser for fold {k} into {folder} ({fold_cfg['epochs']} epochs)")
        task = LocalisationTask(fold_cfg, data_dir, cache_dir, folds, announce=announce)
        fit(fold_cfg, task, folder, dataset_kind=fold_cfg["dataset_kind"], announce=announce)


def nearest_fold(fold: int, available) -> int:
    return min(available, key=lambda k: (abs(k - fold), k))


def build_table(cfg, data_dir: Path, cache_dir: Path, folds: pd.DataFrame, announce=print) -> tuple[pd.DataFrame, dict]:
    """Predict every cached study with the trained fold localisers; write the table; return it and a summary
    (out-of-fold Dice and slice IoU over the segmented studies, studies and estimated rows counted)."""
    from tqdm import tqdm

    from ..training.loop import pick_device

    checkpoints = fold_checkpoints(cfg)
    if not checkpoints:
        raise FileNotFoundError(f"no finished localiser run in {run_dir(cfg, fold=0).parent} (fold*/metrics.json); "
                                f"train one with `bash train.sh config={cfg['experiment']} fold=0`")
    device = pick_device(cfg)
    models = dict(zip(checkpoints, load_localisers(checkpoints.values(), device)))
    announce(f"[localisation] predicting with the localisers of fold(s) {sorted(models)} on {device}")
    fold_of = dict(zip(folds["StudyInstanceUID"], folds["fold"]))
    studies = [(split, uid) for split in SPLITS for uid in cached_uids(cache_dir, split)]
    if not studies:
        raise FileNotFoundError(f"no cached studies in {cache_dir}; run `python -m src.prepare` first")
    parts, dices, ious, in_sample, truths, spacings = [], [], [], 0, {}, {}
    for split, uid in tqdm(studies, desc="localise", unit="study", disable=not cfg["progress"]):
        study = load_study(cache_dir, split, uid)
        segmented = split == "train_images" and study.mask is not None and uid in fold_of
        if segmented:
            k = nearest_fold(int(fold_of[uid]), models)
            in_sample += int(k != fold_of[uid])
            labels, confidence = segment_study([models[k]], study.volume)
            rows, dice, iou = judge_study(labels, confidence, study, cfg)
            truths[uid] = mask_ranges(study.mask)
            if k == fold_of[uid]:
                dices.append(dice)
                ious.append(iou)
        else:
            labels, confidence = segment_study(list(models.values()), study.volume)
            rows = study_rows(uid, extents_for(labels, confidence, min_voxels(cfg, labels.shape)), study.meta,
                              labels.shape)
        save_labels(cache_dir, split, uid, labels)
        spacings[uid] = (split, float(study.meta["slice_spacing"]), study.meta["slice_numbers"])
        parts.append(rows)
    table = pd.concat(parts, ignore_index=True)
    table, level_summary = check_table(cfg, cache_dir, table, truths, spacings, models, fold_of, announce)
    path = localisation_path(cfg, cache_dir)
    atomic_write_csv(path, table)
    summary = {
        "studies": len(studies), "estimated_rows": int(table["estimated"].sum()),
        "oof_studies": len(dices), "in_sample_studies": in_sample,
        "dice": nanmean([nanmean(d.values()) for d in dices]) if dices else float("nan"),
        "slice_iou": nanmean([nanmean(d.values()) for d in ious]) if ious else float("nan"),
        "per_target_dice": {v: nanmean([d[v] for d in dices]) for v in VERTEBRAE},
        "per_target_slice_iou": {v: nanmean([d[v] for d in ious]) for v in VERTEBRAE},
        **level_summary,
    }
    announce(f"[localisation] wrote {path}: {len(studies)} studies, {summary['estimated_rows']} estimated rows of "
             f"{len(table)}")
    if in_sample:
        announce(f"[localisation] {in_sample} segmented studies were predicted by a localiser that trained on them "
                 f"(their fold is not trained; set localiser.folds=[] for all folds)")
    if dices:
        announce(f"[localisation] out-of-fold on {len(dices)} segmented studies: dice {summary['dice']:.4f}, "
                 f"slice_iou {summary['slice_iou']:.4f}")
    return table, summary


def check_table(cfg, cache_dir: Path, table: pd.DataFrame, truths: dict, studies: dict, models: dict,
                fold_of: dict, announce=print) -> tuple[pd.DataFrame, dict]:
    """The level columns on every study of ``table`` (src/localisation/levels.py): ranges learned from the
    segmented studies' masks (``truths``: uid -> true ranges) and the localiser's error on them, written to
    ``runs/<localiser>/levels.json`` for inference; with ``localiser.repair_levels`` a flagged study is
    localised again and repaired where its labels allow. ``studies``: uid -> (split, spacing, slice numbers)."""
    by_uid = {uid: rows for uid, rows in table.groupby("StudyInstanceUID", sort=False)}
    if not truths:
        announce("[levels] no segmented study: the level checks are left out")
        return table, {}
    uids = list(truths)
    try:
        learned = learn_ranges([(truths[u], studies[u][1]) for u in uids],
                               [index_ranges(by_uid[u], studies[u][2]) for u in uids])
    except ValueError as err:
        announce(f"[levels] the level checks are left out: {err}")
        return table, {}
    ranges_path = learned.to_json(run_dir(cfg, fold=0).parent / RANGES_FILE)
    repair = bool(cfg["localiser"]["repair_levels"])
    parts, flagged, repaired = [], 0, 0
    for uid, rows in by_uid.items():
        split, spacing, numbers = studies[uid]
        check = check_levels(index_ranges(rows, numbers), spacing, learned)
        if check.flagged and repair:
            study = load_study(cache_dir, split, uid)
            chosen = [models[nearest_fold(int(fold_of[uid]), models)]] if uid in truths else list(models.values())
            labels, confidence = segment_study(chosen, study.volume)
            fixed, check = judge_extents(labels, extents_for(labels, confidence, min_voxels(cfg, labels.shape)),
                                         spacing, learned, repair=True)
            if check.repaired:
                rows = study_rows(uid, fixed, study.meta, labels.shape)
                save_labels(cache_dir, split, uid, relabelled(labels, fixed))
        flagged += int(check.flagged or check.repaired)  # failed the checks, before any repair
        repaired += int(check.repaired)
        parts.append(with_level_columns(rows, check))
    announce(f"[levels] ranges from {learned.n_studies} segmented studies -> {ranges_path}; {flagged} of {len(by_uid)} "
             f"studies fail the level checks{f', {repaired} repaired' if repair else ' (localiser.repair_levels=false: flagged only)'}")
    return pd.concat(parts, ignore_index=True), {"level_flagged": flagged, "level_repaired": repaired}


# Keys of the calling experiment that the localiser must share: where the data, cache, folds, runs and
# table live, how folds are cut, and how runs are executed and logged.
SHARED_KEYS = ("data_dir", "demo.dir", "cache_dir", "folds_dir", "runs_dir", "localisation_table", "n_folds",
               "seed", "device", "num_workers", "progress", "profile", "wandb.mode", "wandb.dir", "wandb.project",
               "wandb.entity")


def localiser_config(cfg, cache_dir: Path | None = None):
    """configs/localiser.yaml with the calling experiment's shared settings (``SHARED_KEYS``)."""
    overrides = []
    for key in SHARED_KEYS:
        node = cfg
        for part in key.split("."):
            node = node[part]
        if key == "cache_dir" and cache_dir is not None:
            node = str(cache_dir)
        overrides.append(f"{key}={node if isinstance(node, str) else json.dumps(node)}")
    return load_config(overrides, default_experiment=LOCALISER_EXPERIMENT)


def ensure_localisation(cfg, data_dir: Path, cache_dir: Path, announce=print) -> Path:
    """The localisation table's path, building it first if it is missing or lacks cached train studies:
    trains the localiser folds ``localiser.folds`` of configs/localiser.yaml that have no best.pt yet,
    then predicts every cached study. A classifier with ``mask_channel`` also needs the localiser's voxel
    labels beside its cached train studies; a table built before they were kept is predicted again by
    the localiser run that is there (the same run gives the same rows), never by a newly trained one."""
    from ..data.folds import ensure_folds
    from ..models.registry import model_settings
    from .table import read_table

    path = localisation_path(cfg, cache_dir)
    # called with the localiser's own config (src.localise, tests): keep it; from a classifier: localiser.yaml
    loc_cfg = cfg if cfg["model"] == LOCALISER_MODEL else None
    if path.exists():
        train_uids = cached_uids(cache_dir, "train_images")
        lacking = set(train_uids) - set(read_table(path)["StudyInstanceUID"])
        unlabelled = []
        if cfg["model"] != LOCALISER_MODEL and model_settings(cfg).get("mask_channel"):
            unlabelled = missing_labels(cache_dir, "train_images", train_uids)
        if not lacking and not unlabelled:
            announce(f"[localisation] {path}: present for every cached study")
            return path
        if lacking:
            announce(f"[localisation] {path} lacks {len(lacking)} cached studies: rebuilding it")
        else:
            loc_cfg = localiser_config(cfg, cache_dir)
            if not fold_checkpoints(loc_cfg):
                raise FileNotFoundError(
                    f"the mask channel needs the localiser's voxel labels beside the cache, which {len(unlabelled)} "
                    f"cached studies lack (e.g. {unlabelled[0]}), and {run_dir(loc_cfg, fold=0).parent} holds no "
                    f"finished localiser to predict them again. Set runs_dir= to the runs folder whose localiser "
                    f"built {path}, or link that localiser run there")
            announce(f"[localisation] the mask channel needs the localiser's voxel labels, which {len(unlabelled)} "
                     f"cached studies lack: predicting the table again with them")
    else:
        announce(f"[localisation] no table at {path}: building it with configs/{LOCALISER_EXPERIMENT}.yaml")
    if loc_cfg is None:
        loc_cfg = localiser_config(cfg, cache_dir)
    folds = ensure_folds(loc_cfg, data_dir, announce=announce)
    train_missing_folds(loc_cfg, data_dir, cache_dir, folds, announce=announce)
    build_table(loc_cfg, data_dir, cache_dir, folds, announce=announce)
    return path
