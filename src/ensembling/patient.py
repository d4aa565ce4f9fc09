"""A patient-level model: patient_overall predicted from the seven vertebra probabilities, trained on the
competition loss, and judged by nested cross-validation exactly as the ensemble weights are.

Called by src/ensembling/fit.py (``python -m src.ensemble patient=...``) and benchmarks/ablation.py.
Shapes: ``probs`` (N studies, 8) in TARGETS order, ``labels`` (N, 8), ``folds`` (N,).

Methods for the patient_overall column:
``keep``      the members' own column (the classifier's patient head), unchanged;
``noisy_or``  1 - prod(1 - p_v): fractured unless every vertebra is intact, assuming independence;
``max``       the largest vertebra probability;
``logistic``  a logistic regression (scikit-learn) on the seven vertebra logits and the noisy-OR logit,
              each study weighted as the metric weighs its patient_overall term (7 or 14 over the study's
              weight sum), so minimising its loss minimises the metric (the vertebra columns are unchanged).
              1st place's patient model gained about 0.02 on patient_overall this way.
``auto``      the method with the best nested CV (ties keep the earlier in METHODS: ``keep`` wins a tie,
              so a fitted model is only taken when the held-out folds say it helps).
"""
from __future__ import annotations

import numpy as np

from ..metric import competition_score, sample_weights
from ..runs import PATIENT_METHODS as METHODS  # the schema of ensemble.json owns the names
EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def features(probs: np.ndarray) -> np.ndarray:
    """(N, 8): the seven vertebra logits and the logit of their noisy-OR."""
    vertebrae = np.asarray(probs, dtype=float)[:, 1:]
    noisy_or = 1 - np.prod(1 - np.clip(vertebrae, 0, 1), axis=1)
    return np.column_stack([_logit(vertebrae), _logit(noisy_or)])


def fit_logistic(labels: np.ndarray, probs: np.ndarray, c: float = 1.0) -> dict:
    """{"coef": [...], "intercept": float} of the logistic patient model fitted on these rows."""
    labels = np.asarray(labels, dtype=float)
    weights = sample_weights(labels)
    row_weight = weights[:, 0] / weights.sum(axis=1)  # the patient term's share of each study's score
    y = (labels[:, 0] > 0.5).astype(int)
    if len(np.unique(y)) < 2:  # one class only: a constant at its (clipped) rate is the fit
        rate = float(np.clip(y.mean(), EPS, 1 - EPS))
        return {"coef": [0.0] * features(probs).shape[1], "intercept": float(np.log(rate / (1 - rate)))}
    from sklearn.linear_model import LogisticRegression  # fitting only: inference applies the saved coefficients

    model = LogisticRegression(C=c, max_iter=1000)
    model.fit(features(probs), y, sample_weight=row_weight * len(y) / row_weight.sum())
    return {"coef": model.coef_[0].tolist(), "intercept": float(model.intercept_[0])}


def apply(probs: np.ndarray, method: str, params: dict | None = None) -> np.ndarray:
    """``probs`` with patient_overall replaced by ``method`` (``params`` from :func:`fit_logistic` for logistic)."""
    if method not in METHODS:
        raise ValueError(f"patient method must be one of {', '.join(METHODS)}, got {method!r}")
    out = np.array(probs, dtype=float, copy=True)
    vertebrae = out[:, 1:]
    if method == "noisy_or":
        out[:, 0] = 1 - np.prod(1 - vertebrae, axis=1)
    elif method == "max":
        out[:, 0] = vertebrae.max(axis=1)
    elif method == "logistic":
        z = features(probs) @ np.asarray(params["coef"], dtype=float) + float(params["intercept"])
        out[:, 0] = 1 / (1 + np.exp(-np.clip(z, -50, 50)))
    return out


def fit(labels: np.ndarray, probs: np.ndarray, method: str) -> dict | None:
    """The fitted parameters of ``method`` on these rows (None for the methods that fit nothing)."""
    return fit_logistic(labels, probs) if method == "logistic" else None


def nested_cv(labels, probs, folds, fold_probs: dict | None = None) -> dict:
    """Every method scored per fold k, fitted (logistic) on the other folds' rows only.

    ``fold_probs`` (fold -> (N, 8)), when given, is the prediction to use while holding out that fold
    (an ensemble combined with the weights fitted without it), so the whole chain stays nested.
    Returns {method: {"score": mean over folds, "per_fold": {k: score}}} and "in_sample" (each method
    fitted and scored on all rows: at least as good as its nested score, optimistic).
    """
    labels = np.asarray(labels, dtype=float)
    folds = np.asarray(folds)
    distinct = sorted(np.unique(folds).tolist())
    if len(distinct) < 2:
        raise ValueError("nested cross-validation needs rows from at least two folds")
    result = {m: {"per_fold": {}} for m in METHODS}
    for fold in distinct:
        p = np.asarray(fold_probs[fold] if fold_probs else probs, dtype=float)
        held = folds == fold
        for method in METHODS:
            params = fit(labels[~held], p[~held], method)
            result[method]["per_fold"][fold] = competition_score(labels[held], apply(p[held], method, params))
    for method in METHODS:
        result[method]["score"] = float(np.mean(list(result[method]["per_fold"].values())))
    probs = np.asarray(probs, dtype=float)
    result["in_sample"] = {m: competition_score(labels, apply(probs, m, fit(labels, probs, m))) for m in METHODS}
    return result


def choose(result: dict, method: str = "auto") -> str:
    """``method`` itself, or for ``auto`` the method with the lowest nested CV (``keep`` first in a tie)."""
    if method != "auto":
        if method not in METHODS:
            raise ValueError(f"patient must be auto or one of {', '.join(METHODS)}, got {method!r}")
        return method
    return min(METHODS, key=lambda m: (result[m]["score"], METHODS.index(m)))
