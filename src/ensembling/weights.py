"""Member weights for an ensemble, fitted by minimising the competition metric; pure functions of arrays.

Called by src/ensembling/fit.py (``python -m src.ensemble``) and, for :func:`combine`, by inference.
Shapes: ``member_probs`` is (M members, N studies, 8 targets) in TARGETS order, ``labels`` (N, 8).

Two ways to combine, both with weights on the simplex (non-negative, summing to one):
``prob``  the weighted mean of probabilities;
``logit`` the sigmoid of the weighted mean of logits (a geometric-style mean: one confident member
          moves the result more).
The weights fitted and scored on the same rows flatter the ensemble, so :func:`nested_cv` fits on the
other folds' rows and scores each fold on its own.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from ..metric import competition_score
from ..runs import COMBINE_SPACES  # the schema of ensemble.json owns the names

# Probabilities are clipped this far from 0 and 1 before a logit: a member's hard 0 or 1 would
# otherwise dominate the logit mean with an infinite vote.
LOGIT_EPS = 1e-6
MIN_WEIGHT = 1e-3  # fitted weights below this are set to 0 (the member is then not even loaded by infer.py)


def _check_space(space: str) -> str:
    if space not in COMBINE_SPACES:
        raise ValueError(f"combine must be one of {', '.join(COMBINE_SPACES)}, got {space!r}")
    return space


def logit(probs: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=float), LOGIT_EPS, 1 - LOGIT_EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))


def normalise(weights) -> np.ndarray:
    """Non-negative weights scaled to sum to one; all-zero weights become uniform."""
    w = np.clip(np.asarray(weights, dtype=float), 0, None)
    total = w.sum()
    return w / total if total > 0 else np.full(len(w), 1.0 / len(w))


def combine(member_probs, weights, space: str = "prob") -> np.ndarray:
    """(M, N, 8) probabilities and M weights -> (N, 8) ensemble probabilities in [0, 1]."""
    _check_space(space)
    probs = np.asarray(member_probs, dtype=float)
    w = normalise(weights)
    if probs.ndim < 1 or probs.shape[0] != len(w):
        raise ValueError(f"{len(w)} weights for {probs.shape[0] if probs.ndim else 0} members")
    if space == "prob":
        return np.tensordot(w, probs, axes=1)
    return sigmoid(np.tensordot(w, logit(probs), axes=1))


def fit_weights(labels, member_probs, space: str = "prob") -> np.ndarray:
    """Simplex weights that minimise the competition metric of the combined prediction on these rows.

    SLSQP from the uniform start, with the sum-to-one constraint and [0, 1] bounds; it needs a few
    dozen metric evaluations for a handful of members. One member gets weight 1 without a fit.
    """
    _check_space(space)
    probs = np.asarray(member_probs, dtype=float)
    labels = np.asarray(labels, dtype=float)
    m = probs.shape[0]
    if m == 1:
        return np.ones(1)
    if space == "logit":
        member_logits = logit(probs)  # computed once, not at every evaluation

        def loss(w):
            return competition_score(labels, sigmoid(np.tensordot(w, member_logits, axes=1)))
    else:
        def loss(w):
            return competition_score(labels, np.tensordot(w, probs, axes=1))

    start = np.full(m, 1.0 / m)
    result = minimize(loss, start, method="SLSQP", bounds=[(0.0, 1.0)] * m,
                      constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
                      options={"maxiter": 200, "ftol": 1e-10})
    best = normalise(result.x) if np.all(np.isfinite(result.x)) else start
    # a weight the optimiser left at ~1e-9 would still cost a whole member at inference: drop it
    best = normalise(np.where(best < MIN_WEIGHT, 0.0, best))
    # SLSQP can stop at a point no better than where it began (flat metric, failed line search)
    return best if loss(best) <= loss(start) else start


def nested_cv(labels, member_probs, folds, space: str = "prob") -> dict:
    """For each fold k: weights fitted on the rows of the other folds, scored on fold k's rows.

    Returns ``{"score": mean over folds, "per_fold": {k: score}, "weights": {k: [...]}}``.
    Needs at least two distinct folds.
    """
    labels = np.asarray(labels, dtype=float)
    probs = np.asarray(member_probs, dtype=float)
    folds = np.asarray(folds)
    distinct = sorted(np.unique(folds).tolist())
    if len(distinct) < 2:
        raise ValueError("nested cross-validation needs rows from at least two folds")
    per_fold, fold_weights = {}, {}
    for fold in distinct:
        held = folds == fold
        w = fit_weights(labels[~held], probs[:, ~held], space)
        per_fold[fold] = competition_score(labels[held], combine(probs[:, held], w, space))
        fold_weights[fold] = w.tolist()
    return {"score": float(np.mean(list(per_fold.values()))), "per_fold": per_fold, "weights": fold_weights}


def per_fold_score(labels, probs, folds) -> dict:
    """Mean over folds of the score of one prediction (N, 8), the CV a member reports beside nested_cv."""
    labels = np.asarray(labels, dtype=float)
    probs = np.asarray(probs, dtype=float)
    folds = np.asarray(folds)
    per_fold = {f: competition_score(labels[folds == f], probs[folds == f]) for f in sorted(np.unique(folds).tolist())}
    return {"score": float(np.mean(list(per_fold.values()))), "per_fold": per_fold}


def split_groups(n: int, k: int = 5, seed: int = 0) -> np.ndarray:
    """A random assignment of n rows to k groups of near-equal size (stand-in folds for one-fold oof)."""
    rng = np.random.default_rng(seed)
    groups = np.arange(n) % k
    rng.shuffle(groups)
    return groups
