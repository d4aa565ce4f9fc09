"""Calibration of the ensemble's final probabilities, fitted on out-of-fold rows and kept only when the
nested CV says it helps. Pure functions of arrays (shapes as in src/ensembling/weights.py).

Log loss punishes a confident mistake far more than it rewards a confident hit, so two small maps are
tried on the combined probabilities:

``temperature``  per target t, ``sigmoid(logit(p) / T_t)``: T above 1 pulls a target's probabilities
                 toward 0.5, below 1 pushes them out; eight numbers fitted together on the metric;
``floor``        every probability clipped into ``[f, 1 - f]``: no prediction can cost more than -ln f.

:func:`judge_calibration` scores each the way the ensemble's weights are scored: for each fold k,
the member weights AND the calibration fitted on the other folds' rows, the result scored on fold k's;
the mean over folds is compared with the same nested CV without calibration. The best method is kept
only if it beats "none"; otherwise ``method`` is ``none`` and inference changes nothing. Called by
src/ensembling/fit.py (``python -m src.ensemble``) and, for :func:`apply_calibration`, by inference.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize, minimize_scalar

from ..metric import competition_score
from .weights import combine, fit_weights, logit, sigmoid

METHODS = ("temperature", "floor")
FLOOR_MAX = 0.2          # a floor above this would flatten every prediction toward 0.5
LOG_T_BOUNDS = (-3.0, 3.0)  # temperatures between e^-3 and e^3


def apply_calibration(probs, calibration: dict | None) -> np.ndarray:
    """(N, 8) or (8,) probabilities through ``calibration`` (``{"method", "params"}`` as ensemble.json holds
    it); None or method ``none`` returns them unchanged."""
    probs = np.asarray(probs, dtype=float)
    if not calibration or calibration.get("method", "none") == "none":
        return probs
    method, params = calibration["method"], calibration["params"]
    if method == "temperature":
        return sigmoid(logit(probs) / np.asarray(params["temperature"], dtype=float))
    if method == "floor":
        f = float(params["floor"])
        return np.clip(probs, f, 1.0 - f)
    raise ValueError(f"unknown calibration method {method!r}; expected none or one of {', '.join(METHODS)}")


def fit_calibration(labels, probs, method: str) -> dict:
    """The ``method``'s parameters minimising the competition metric of ``probs`` (N, 8) on these rows."""
    labels = np.asarray(labels, dtype=float)
    probs = np.asarray(probs, dtype=float)
    if method == "temperature":
        logits = logit(probs)

        def loss(log_t):
            return competition_score(labels, sigmoid(logits / np.exp(log_t)))

        start = np.zeros(probs.shape[1])
        result = minimize(loss, start, method="L-BFGS-B", bounds=[LOG_T_BOUNDS] * len(start))
        best = result.x if np.all(np.isfinite(result.x)) and loss(result.x) <= loss(start) else start
        return {"method": method, "params": {"temperature": np.round(np.exp(best), 6).tolist()}}
    if method == "floor":
        result = minimize_scalar(lambda f: competition_score(labels, np.clip(probs, f, 1 - f)),
                                 bounds=(1e-6, FLOOR_MAX), method="bounded")
        return {"method": method, "params": {"floor": round(float(result.x), 6)}}
    raise ValueError(f"unknown calibration method {method!r}; expected one of {', '.join(METHODS)}")


def nested_scores(labels, member_probs, folds, space: str, method: str | None) -> dict:
    """Per fold k: weights (and, with ``method``, the calibration on their combined rows) fitted on the
    other folds, fold k scored. ``{"score": mean, "per_fold": {k: score}}``."""
    labels = np.asarray(labels, dtype=float)
    member_probs = np.asarray(member_probs, dtype=float)
    folds = np.asarray(folds)
    per_fold = {}
    for fold in sorted(np.unique(folds).tolist()):
        held = folds == fold
        w = fit_weights(labels[~held], member_probs[:, ~held], space)
        held_probs = combine(member_probs[:, held], w, space)
        if method is not None:
            fitted = fit_calibration(labels[~held], combine(member_probs[:, ~held], w, space), method)
            held_probs = apply_calibration(held_probs, fitted)
        per_fold[fold] = competition_score(labels[held], held_probs)
    return {"score": float(np.mean(list(per_fold.values()))), "per_fold": per_fold}


def judge_calibration(labels, member_probs, folds, space: str, weights) -> dict:
    """Each method's nested CV beside no calibration's; the winner fitted on all rows (combined with the
    final ``weights``) when it beats none, else ``method: none``. What ensemble.json stores as ``calibration``."""
    labels = np.asarray(labels, dtype=float)
    member_probs = np.asarray(member_probs, dtype=float)
    scores = {"none": nested_scores(labels, member_probs, folds, space, None)}
    for method in METHODS:
        scores[method] = nested_scores(labels, member_probs, folds, space, method)
    best = min(scores, key=lambda m: scores[m]["score"])
    out = {"method": "none", "params": {}, "kept": False}
    if best != "none":
        out = {**fit_calibration(labels, combine(member_probs, weights, space), best), "kept": True}
    out["nested_cv"] = {m: s["score"] for m, s in scores.items()}
    out["nested_per_fold"] = {m: {str(k): v for k, v in s["per_fold"].items()} for m, s in scores.items()}
    return out
