"""What ``python -m src.ensemble`` computes: member CVs, nested ensemble CVs in both spaces, final weights.

Called by src/ensemble.py (the command line) and the tests. Input: the members' aligned out-of-fold
rows (src/ensembling/oof.py). For each combine space (prob, logit):

- ``nested_cv``   per fold k, weights fitted on the other folds' rows and scored on fold k's; the mean.
                  This is the honest estimate of the ensemble, to compare with each member's CV.
- ``in_sample``   weights fitted and scored on all rows: always at least as good, and optimistic.
- ``weights``     fitted on all rows: what inference uses.

The space with the better nested CV is chosen unless one is asked for. Then calibration of the combined
probabilities (src/ensembling/calibration.py) is judged by the same nested CV and kept only if it helps. With oof rows from a single fold
(one fold trained), the nested CV uses ``inner_folds`` random groups of those studies instead, and says so.

``patient`` other than ``keep`` also judges the patient-level models of src/ensembling/patient.py on the
combined prediction, nested the same way (for held-out fold k, the ensemble combined with the weights
fitted without k, the patient model fitted without k); ``auto`` takes the best nested CV, ``keep``
(the members' own patient_overall) unless a model beats it.
"""
from __future__ import annotations

import numpy as np

from . import patient as patient_models
from .calibration import judge_calibration
from .oof import AlignedOof
from .weights import COMBINE_SPACES, combine, fit_weights, nested_cv, per_fold_score, split_groups
from ..metric import competition_score


def fit_ensemble(aligned: AlignedOof, combine_space: str = "auto", inner_folds: int = 5, seed: int = 0,
                 calibrate: bool = True, patient: str = "keep") -> dict:
    folds = aligned.folds
    notes = list(aligned.notes)
    if len(np.unique(folds)) < 2:
        k = max(2, min(int(inner_folds), len(folds)))
        folds = split_groups(len(folds), k, seed)
        notes.append(f"out-of-fold rows come from one fold only; the nested CV uses {k} random groups of its "
                     f"{len(folds)} studies instead of folds")
    member_cv = {run: per_fold_score(aligned.labels, aligned.probs[i], folds)["score"]
                 for i, run in enumerate(aligned.members)}
    spaces = {}
    for space in COMBINE_SPACES:
        nested = nested_cv(aligned.labels, aligned.probs, folds, space)
        weights = fit_weights(aligned.labels, aligned.probs, space)
        in_sample = competition_score(aligned.labels, combine(aligned.probs, weights, space))
        spaces[space] = {"nested_cv": nested["score"], "nested_per_fold": {str(k): v for k, v in nested["per_fold"].items()},
                         "in_sample": in_sample, "weights": weights.tolist(), "fold_weights": nested["weights"]}
    if combine_space == "auto":
        chosen = min(COMBINE_SPACES, key=lambda s: spaces[s]["nested_cv"])
    elif combine_space in COMBINE_SPACES:
        chosen = combine_space
    else:
        raise ValueError(f"combine must be auto, prob or logit, got {combine_space!r}")
    calibration = (judge_calibration(aligned.labels, aligned.probs, folds, chosen, spaces[chosen]["weights"])
                   if calibrate else {"method": "none", "params": {}, "kept": False})
    patient_result = None
    if patient != "keep":
        chosen_space = spaces[chosen]
        fold_probs = {k: combine(aligned.probs, w, chosen) for k, w in chosen_space["fold_weights"].items()}
        combined = combine(aligned.probs, chosen_space["weights"], chosen)
        judged = patient_models.nested_cv(aligned.labels, combined, folds, fold_probs)
        method = patient_models.choose(judged, patient)
        patient_result = {"method": method, "params": patient_models.fit(aligned.labels, combined, method),
                          "nested_cv": {m: judged[m]["score"] for m in patient_models.METHODS},
                          "in_sample": judged["in_sample"]}
    for space in spaces.values():
        space.pop("fold_weights")
    result = {
        "members": list(aligned.members),
        "weights": spaces[chosen]["weights"],
        "combine": chosen,
        "calibration": calibration,
        "member_cv": member_cv,
        "nested_cv": {"score": spaces[chosen]["nested_cv"], **{s: spaces[s]["nested_cv"] for s in COMBINE_SPACES}},
        "spaces": spaces,
        "n_studies": len(aligned.study_uids),
        "n_folds": int(len(np.unique(folds))),
        "notes": notes,
    }
    if patient_result is not None:  # ensemble.json keeps its old keys when no patient model is asked for
        result["patient"] = patient_result
    return result


def format_report(result: dict) -> str:
    lines = [f"ensemble of {len(result['members'])} members on {result['n_studies']} common out-of-fold studies "
             f"({result['n_folds']} folds); lower is better"]
    width = max(12, *(len(m) for m in result["members"]))
    lines.append(f"  {'member':<{width}}  {'CV':>8}  " + "  ".join(f"{'w_' + s:>8}" for s in COMBINE_SPACES))
    for i, run in enumerate(result["members"]):
        ws = "  ".join(f"{result['spaces'][s]['weights'][i]:8.3f}" for s in COMBINE_SPACES)
        lines.append(f"  {run:<{width}}  {result['member_cv'][run]:8.4f}  {ws}")
    for space in COMBINE_SPACES:
        s = result["spaces"][space]
        mark = "  <- chosen" if space == result["combine"] else ""
        lines.append(f"  ensemble ({space:<5})  nested CV {s['nested_cv']:.4f}   in-sample {s['in_sample']:.4f}"
                     f" (optimistic){mark}")
    cal = result.get("calibration") or {}
    if "nested_cv" in cal:
        tried = "   ".join(f"{m} {v:.4f}" for m, v in cal["nested_cv"].items())
        lines.append(f"  calibration, nested CV: {tried}   -> {cal['method']}"
                     f"{' ' + str(cal['params']) if cal['kept'] else ' (none beats no calibration)'}")
    patient = result.get("patient")
    if patient:
        for method, score in patient["nested_cv"].items():
            mark = "  <- chosen" if method == patient["method"] else ""
            lines.append(f"  patient_overall from {method:<9} nested CV {score:.4f}   in-sample "
                         f"{patient['in_sample'][method]:.4f}{mark}")
    for note in result["notes"]:
        lines.append(f"  note: {note}")
    best_member = min(result["member_cv"].values())
    lines.append(f"nested_cv={result['nested_cv']['score']:.6f} best_member_cv={best_member:.6f}")
    return "\n".join(lines)
