"""How right are the level checks, and what do repair and calibration do? Measured on the demo.

    python benchmarks/levels.py                              # fold 0 of the demo (runs/, cache/demo)
    python benchmarks/levels.py -- runs_dir=/tmp/x/runs cache_dir=/tmp/x/cache/demo ...   # config overrides

1. The truth: each demo study's true slice ranges of C1..C7. Every synthetic study is rendered again from
   its seed (src.synth.generate.plan_dataset, make_study; no DICOM is written) and its label volume gives
   the ranges in cache order; the segmented studies' cached masks must agree with it (checked).
2. The checks (src/localisation/levels.py) on every study of the localisation table: how many are flagged,
   and how many of those are real errors (some vertebra's slice-range IoU with the truth under 0.3).
3. Repair: each flagged train study localised again (its labels) and repaired where the evidence allows;
   real errors before and after. Then the issue's miscount made on purpose in the predicted labels of
   held-out studies (C3 taken into C2, every later label one level up, T1 labelled C7): flagged, restored?
   The classifier's best.pt is re-evaluated on its held-out fold (src.training.evaluate.evaluate_checkpoint)
   with the table as it is, repaired, with those studies miscounted, and miscounted then repaired.
4. Calibration: src.ensembling.calibration judged by nested CV on the run's out-of-fold rows.

Prints one line per figure and writes ``--out`` (JSON) with all of them. Needs the demo data, its cache and
localisation table, a trained localiser and classifier (``bash train.sh fold=0``); about 10 minutes on a CPU.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

IOU_ERROR = 0.3  # a vertebra whose predicted slice range overlaps the true one by less than this is wrong


def synth_truth(data_dir: Path, progress: bool = True) -> pd.DataFrame:
    """True inclusive slice-index ranges (cache order, head first) of C1..C7 for every demo study."""
    from tqdm import tqdm

    from src.localisation.levels import mask_ranges
    from src.synth.generate import plan_dataset
    from src.synth.study import make_study

    summary = json.loads((data_dir / "synth_summary.json").read_text())
    n_seg = len(list((data_dir / "segmentations").glob("*.nii")))
    tasks, _ = plan_dataset(summary["n_train"], summary["n_test"], summary["size"], summary["seed"],
                            n_seg / max(summary["n_train"], 1), False)
    rows = []
    for task in tqdm(tasks, desc="truth", disable=not progress):
        study = make_study(task["uid"], task["seed"], size=task["size"], fractured=task["fractured"],
                           with_fractures=False)
        for v, r in mask_ranges(study.labels).items():
            rows.append({"StudyInstanceUID": task["uid"], "split": task["split"], "vertebra": v,
                         "lo": r[0] if r else -1, "hi": r[1] if r else -1, "n_slices": study.hu.shape[0]})
    return pd.DataFrame(rows)


def below(ranges: dict, name: str) -> tuple[int, int]:
    """The range one vertebra under ``name``'s (same height, same gap as above it): where T1 would be
    when ``name`` is C7."""
    from src import VERTEBRAE

    lo, hi = ranges[name]
    above = ranges[VERTEBRAE[VERTEBRAE.index(name) - 1]]
    step = lo - above[0]
    return lo + step, hi + step


def miscount(ranges: dict, kind: str) -> dict:
    """A localisation made wrong on purpose, the ways a localiser miscounts:
    ``merge``  C2 spans C2 and C3, then every label one vertebra low (the issue's study: its "C7" on T1);
    ``skip``   C4 skipped: C4..C6 on the true C5..C7, C7 on T1;
    ``shift``  every label one vertebra low: C1 on C2, ..., C7 on T1;
    ``swap``   C4 and C5 exchanged."""
    from src import VERTEBRAE

    r = dict(ranges)
    t1 = below(ranges, "C7")
    if kind == "merge":
        r["C2"] = (ranges["C2"][0], ranges["C3"][1])
        for a, b in zip(VERTEBRAE[2:], VERTEBRAE[3:]):
            r[a] = ranges[b]
        r["C7"] = t1
    elif kind == "skip":
        for a, b in zip(VERTEBRAE[3:], VERTEBRAE[4:]):
            r[a] = ranges[b]
        r["C7"] = t1
    elif kind == "shift":
        for a, b in zip(VERTEBRAE, VERTEBRAE[1:]):
            r[a] = ranges[b]
        r["C7"] = t1
    elif kind == "swap":
        r["C4"], r["C5"] = ranges["C5"], ranges["C4"]
    else:
        raise ValueError(kind)
    return r


MISCOUNTS = ("merge", "skip", "shift", "swap")


def masks_agree(truth: pd.DataFrame, cache_dir: Path, metas: dict) -> tuple[int, int]:
    """(segmented studies whose cached mask gives exactly the rendered truth's ranges, segmented studies)."""
    from src.data.cache import load_study
    from src.localisation.levels import mask_ranges

    segmented = [uid for uid, m in metas.items() if m.get("has_mask")]
    agree = 0
    for uid in segmented:
        rows = truth[truth["StudyInstanceUID"] == uid]
        rendered = {r.vertebra: (int(r.lo), int(r.hi)) for r in rows.itertuples()}
        agree += int(mask_ranges(load_study(cache_dir, "train_images", uid).mask) == rendered)
    return agree, len(segmented)


def min_ious(table: pd.DataFrame, truth: pd.DataFrame, metas: dict) -> pd.Series:
    """Each study's lowest slice-range IoU over C1..C7 between ``table`` and the truth."""
    from src import VERTEBRAE
    from src.localisation.levels import index_ranges
    from src.localisation.metrics import range_iou

    true = {uid: {r.vertebra: (int(r.lo), int(r.hi)) for r in rows.itertuples()} for uid, rows in truth.groupby("StudyInstanceUID")}
    out = {}
    for uid, rows in table.groupby("StudyInstanceUID", sort=False):
        pred = index_ranges(rows, metas[uid]["slice_numbers"])
        out[uid] = min(range_iou(pred[v], true[uid][v]) for v in VERTEBRAE)
    return pd.Series(out)


def checked_tables(cfg, cache_dir: Path, table: pd.DataFrame, metas: dict, fold_of: dict):
    """The table with its level columns, flag-only and with repair, through the pipeline's own
    src.localisation.build.check_table; and the localiser models (for the label-level repair)."""
    from omegaconf import OmegaConf

    from src.data.cache import load_study
    from src.localisation.build import check_table, fold_checkpoints, localiser_config
    from src.localisation.levels import mask_ranges
    from src.localisation.predict import load_localisers
    from src.localisation.table import COLUMNS

    loc_cfg = localiser_config(cfg, cache_dir)
    checkpoints = fold_checkpoints(loc_cfg)
    models = dict(zip(checkpoints, load_localisers(checkpoints.values())))
    truths = {uid: mask_ranges(load_study(cache_dir, "train_images", uid).mask) for uid, m in metas.items()
              if m.get("has_mask") and uid in fold_of}
    studies = {uid: ("train_images", float(m["slice_spacing"]), m["slice_numbers"]) for uid, m in metas.items()}
    base = table[COLUMNS]
    flagged, _ = check_table(loc_cfg, cache_dir, base, truths, studies, models, fold_of)
    repair_cfg = OmegaConf.merge(loc_cfg, {"localiser": {"repair_levels": True}})
    repaired, _ = check_table(repair_cfg, cache_dir, base, truths, studies, models, fold_of)
    return flagged, repaired, models, loc_cfg


def injected(table: pd.DataFrame, metas: dict, learned) -> dict:
    """Per miscount kind (and ``correct``): the share of studies flagged and the median level confidence,
    the miscount made on purpose on every study's localisation."""
    from src.localisation.levels import check_levels, index_ranges

    out = {}
    ranges = {uid: index_ranges(rows, metas[uid]["slice_numbers"]) for uid, rows in table.groupby("StudyInstanceUID")}
    for kind in ("correct", *MISCOUNTS):
        checks = [check_levels(r if kind == "correct" else miscount(r, kind), float(metas[uid]["slice_spacing"]), learned)
                  for uid, r in ranges.items()]
        out[kind] = {"flagged": float(np.mean([c.flagged for c in checks])),
                     "median_confidence": float(np.median([c.confidence for c in checks]))}
    return out


def label_repair(uids, cache_dir: Path, data_dir: Path, models: dict, learned, cfg) -> dict:
    """The issue's miscount made in the localiser's own predicted labels of ``uids``: C3 taken into C2,
    C4..C7 labelled one level up, and the true T1 labelled C7. How many are flagged, how many the repair
    restores (every vertebra's slice-range IoU with the truth at least IOU_ERROR) and their mean IoU; and
    those studies' table rows, miscounted and after the repair."""
    from src import VERTEBRAE
    from src.data.cache import load_study
    from src.localisation.extents import extents_for, min_voxels
    from src.localisation.levels import judge_extents
    from src.localisation.metrics import range_iou, true_slice_ranges
    from src.localisation.predict import segment_study
    from src.localisation.table import study_rows
    from src.synth.generate import plan_dataset
    from src.synth.study import make_study

    summary = json.loads((data_dir / "synth_summary.json").read_text())
    n_seg = len(list((data_dir / "segmentations").glob("*.nii")))
    tasks = {t["uid"]: t for t in plan_dataset(summary["n_train"], summary["n_test"], summary["size"], summary["seed"],
                                               n_seg / max(summary["n_train"], 1), False)[0]}
    flagged = restored = 0
    before, after, wrong_rows, fixed_rows = [], [], [], []
    for uid in uids:
        task = tasks[uid]
        true_labels = make_study(uid, task["seed"], size=task["size"], fractured=task["fractured"],
                                 with_fractures=False).labels
        study = load_study(cache_dir, "train_images", uid)
        labels, confidence = segment_study(list(models.values()), study.volume)
        wrong = labels.copy()
        for level in range(3, 8):
            wrong[labels == level] = level - 1
        wrong[(true_labels == 8) & (labels == 0)] = 7
        truth = true_slice_ranges(np.where(true_labels <= 7, true_labels, 0))
        extents = extents_for(wrong, confidence, min_voxels(cfg, wrong.shape))
        fixed, check = judge_extents(wrong, extents, float(study.meta["slice_spacing"]), learned, repair=True)
        iou_before = min(range_iou(extents[v].slice_range, truth[v]) for v in VERTEBRAE)
        iou_after = min(range_iou(fixed[v].slice_range, truth[v]) for v in VERTEBRAE)
        wrong_rows.append(study_rows(uid, extents, study.meta, wrong.shape))
        fixed_rows.append(study_rows(uid, fixed, study.meta, wrong.shape))
        flagged += int(check.flagged or check.repaired)
        restored += int(check.repaired and iou_after >= IOU_ERROR)
        before.append(iou_before)
        after.append(iou_after)
    figures = {"studies": len(uids), "flagged": flagged, "restored": restored,
               "min_iou_before": float(np.mean(before)), "min_iou_after": float(np.mean(after))}
    return figures, pd.concat(wrong_rows, ignore_index=True), pd.concat(fixed_rows, ignore_index=True)


def held_out_score(cfg, table_path: Path) -> float:
    """The classifier's best.pt re-evaluated on its held-out fold with the localisation table ``table_path``."""
    from omegaconf import OmegaConf

    from src.data.folds import ensure_folds
    from src.paths import locate_data_dir, resolve_cache_dir
    from src.runs import run_dir
    from src.tasks import get_task_class
    from src.training.evaluate import evaluate_checkpoint

    cfg = OmegaConf.merge(cfg, {"localisation_table": str(table_path)})
    data_dir = locate_data_dir(cfg)
    task = get_task_class("vertebra")(cfg, data_dir, resolve_cache_dir(cfg, data_dir), ensure_folds(cfg, data_dir),
                                      announce=lambda *_: None)
    metrics, _ = evaluate_checkpoint(cfg, task, run_dir(cfg) / "best.pt")
    return float(metrics["score"])


def calibration_figures(cfg, data_dir: Path) -> dict:
    """src.ensemble's fit on the run's out-of-fold rows: nested CV without and with each calibration."""
    from src.ensembling.fit import fit_ensemble
    from src.ensembling.oof import align_members
    from src.paths import _abs

    aligned = align_members(_abs(cfg["runs_dir"]), [cfg["experiment"]], pd.read_csv(data_dir / "train.csv"))
    result = fit_ensemble(aligned)
    return {"studies": len(aligned.study_uids), "folds": result["n_folds"], **result["calibration"],
            "notes": result["notes"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (after --)")
    parser.add_argument("--out", default="levels_benchmark.json", help="where the figures go (JSON)")
    parser.add_argument("--label-studies", type=int, default=40, help="studies given the miscount in their labels")
    parser.add_argument("--no-eval", action="store_true", help="skip re-evaluating the classifier")
    args = parser.parse_args()

    from demo_inputs import synthetic_inputs
    from src.data.folds import ensure_folds
    from src.localisation.levels import LevelRanges, RANGES_FILE
    from src.localisation.table import COLUMNS

    cfg, data_dir, cache_dir, table = synthetic_inputs(args.overrides, "only a synthetic study's truth is known")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    truth_path = out.with_name(out.stem + "_truth.csv")
    if truth_path.exists():
        truth = pd.read_csv(truth_path, dtype={"StudyInstanceUID": str})
    else:
        truth = synth_truth(data_dir)
        truth.to_csv(truth_path, index=False)
    metas = {uid: json.loads((cache_dir / "train_images" / uid / "meta.json").read_text())
             for uid in table["StudyInstanceUID"].unique()}
    agree, segmented = masks_agree(truth, cache_dir, metas)
    print(f"[truth] rendered again from the seeds; it matches the masks of {agree} of {segmented} segmented studies")
    folds = ensure_folds(cfg, data_dir)
    fold_of = dict(zip(folds["StudyInstanceUID"], folds["fold"]))
    flagged, repaired, models, loc_cfg = checked_tables(cfg, cache_dir, table, metas, fold_of)
    from src.runs import run_dir

    learned = LevelRanges.from_json(run_dir(loc_cfg, fold=0).parent / RANGES_FILE)
    iou = min_ious(flagged, truth, metas)
    study_flags = flagged.drop_duplicates("StudyInstanceUID").set_index("StudyInstanceUID")
    wrong = iou < IOU_ERROR
    conf = study_flags["level_confidence"]
    fig = {"studies": int(len(iou)), "truth_matches_masks": [agree, segmented], "flagged": int(study_flags["level_flag"].sum()),
           "real_errors": int(wrong.sum()),
           "flagged_and_wrong": int((study_flags["level_flag"] & wrong.reindex(study_flags.index)).sum()),
           "median_level_confidence": float(conf.median()),
           "tolerance_slices": learned.tolerance, "ranges_from": learned.n_studies}
    iou_repaired = min_ious(repaired, truth, metas)
    rep = repaired.drop_duplicates("StudyInstanceUID").set_index("StudyInstanceUID")["level_repaired"]
    fig["repaired"] = int(rep.sum())
    fig["real_errors_after_repair"] = int((iou_repaired < IOU_ERROR).sum())
    if rep.any():
        fig["repaired_min_iou_before"] = float(iou[rep[rep].index].mean())
        fig["repaired_min_iou_after"] = float(iou_repaired[rep[rep].index].mean())
    print(f"[levels] {fig['flagged']} of {fig['studies']} studies flagged; {fig['real_errors']} real errors "
          f"(a vertebra's slice-range IoU < {IOU_ERROR}), {fig['flagged_and_wrong']} of them flagged")
    print(f"[repair] {fig['repaired']} flagged studies repaired; real errors after repair {fig['real_errors_after_repair']}"
          + (f"; their min IoU {fig['repaired_min_iou_before']:.3f} -> {fig['repaired_min_iou_after']:.3f}" if rep.any() else ""))
    fig["injected"] = injected(table, metas, learned)
    for kind, v in fig["injected"].items():
        print(f"[injected] {kind:<7} flagged {100 * v['flagged']:.1f}%  median level confidence {v['median_confidence']:.2f}")
    held = [u for u in folds.loc[folds["fold"] == cfg["fold"], "StudyInstanceUID"] if u in metas]
    fig["label_repair"], wrong_rows, fixed_rows = label_repair(held[:args.label_studies], cache_dir, data_dir, models,
                                                               learned, loc_cfg)
    lr = fig["label_repair"]
    print(f"[label repair] the miscount in the predicted labels of {lr['studies']} studies: {lr['flagged']} flagged, "
          f"{lr['restored']} restored; mean min IoU {lr['min_iou_before']:.3f} -> {lr['min_iou_after']:.3f}")
    if not args.no_eval:
        tables = out.parent
        flagged.to_csv(tables / "localisation_flagged.csv", index=False)
        repaired.to_csv(tables / "localisation_repaired.csv", index=False)
        changed = sorted(set(rep[rep].index) & set(held))
        fig["held_out_changed_by_repair"] = len(changed)
        fig["held_out_score"] = held_out_score(cfg, tables / "localisation_flagged.csv")
        fig["held_out_score_repaired"] = (held_out_score(cfg, tables / "localisation_repaired.csv") if changed
                                          else fig["held_out_score"])
        print(f"[score] fold {cfg['fold']} held out: {fig['held_out_score']:.4f} with the table, "
              f"{fig['held_out_score_repaired']:.4f} repaired ({len(changed)} of its studies changed)")
        # the same fold with the miscount made in the labels of the first --label-studies studies, then repaired
        base = flagged[~flagged["StudyInstanceUID"].isin(set(wrong_rows["StudyInstanceUID"]))][COLUMNS]
        for name, rows in (("miscounted", wrong_rows), ("miscounted_repaired", fixed_rows)):
            path = tables / f"localisation_{name}.csv"
            pd.concat([base, rows], ignore_index=True).to_csv(path, index=False)
            fig[f"held_out_score_{name}"] = held_out_score(cfg, path)
        print(f"[score] with {len(wrong_rows) // 7} of those studies miscounted: {fig['held_out_score_miscounted']:.4f}; "
              f"after repair {fig['held_out_score_miscounted_repaired']:.4f}")
    fig["calibration"] = calibration_figures(cfg, data_dir)
    cal = fig["calibration"]
    print(f"[calibration] nested CV on {cal['studies']} oof studies ({cal['folds']} groups): "
          + ", ".join(f"{m} {v:.4f}" for m, v in cal["nested_cv"].items()) + f"; kept: {cal['method']}")
    out.write_text(json.dumps(fig, indent=1, default=float))
    print(f"[done] {out}")


if __name__ == "__main__":
    main()
