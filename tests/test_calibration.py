"""Calibration of the ensemble's probabilities (src/ensembling/calibration.py): kept only when the nested
CV says it helps, applied exactly as fitted."""
from __future__ import annotations

import numpy as np

from src.ensembling.calibration import apply_calibration, fit_calibration, judge_calibration
from src.ensembling.fit import fit_ensemble
from src.ensembling.oof import AlignedOof
from src.ensembling.weights import logit, sigmoid


def truth_and_probs(n: int, sharpen: float, seed: int = 0):
    """Labels drawn from true probabilities, and a prediction whose logits are ``sharpen`` x the true ones
    (1: calibrated; above 1: overconfident)."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(-1.0, 1.5, size=(n, 8))
    labels = (rng.random((n, 8)) < sigmoid(true_logits)).astype(float)
    return labels, sigmoid(sharpen * true_logits)


def test_an_overconfident_prediction_is_calibrated_and_kept():
    labels, probs = truth_and_probs(600, sharpen=3.0)
    folds = np.arange(600) % 5
    result = judge_calibration(labels, probs[None], folds, "prob", [1.0])
    assert result["kept"] and result["method"] != "none"
    assert result["nested_cv"][result["method"]] < result["nested_cv"]["none"]
    if result["method"] == "temperature":  # it softens: every temperature above 1
        assert min(result["params"]["temperature"]) > 1.0


def test_a_prediction_already_right_for_the_metric_is_left_alone():
    # the metric weighs a positive twice a negative, so the best prediction for it is 2p / (1 + p) of the
    # true probability p: nothing left for a calibration to gain, and nested CV says so
    labels, probs = truth_and_probs(200, sharpen=1.0, seed=0)
    probs = 2 * probs / (1 + probs)
    result = judge_calibration(labels, probs[None], np.arange(200) % 5, "prob", [1.0])
    assert not result["kept"] and result["method"] == "none" and result["params"] == {}
    assert min(result["nested_cv"].values()) == result["nested_cv"]["none"]
    np.testing.assert_array_equal(apply_calibration(probs, result), probs)


def test_apply_is_the_fitted_map():
    labels, probs = truth_and_probs(300, sharpen=2.0, seed=2)
    temp = fit_calibration(labels, probs, "temperature")
    t = np.asarray(temp["params"]["temperature"])
    np.testing.assert_allclose(apply_calibration(probs, temp), sigmoid(logit(probs) / t))
    floor = fit_calibration(labels, probs, "floor")
    f = floor["params"]["floor"]
    out = apply_calibration(probs, floor)
    assert out.min() >= f and out.max() <= 1 - f
    np.testing.assert_allclose(apply_calibration(probs[0], floor), out[0])  # one study's eight values alike


def test_the_ensemble_file_records_the_calibration():
    labels, probs = truth_and_probs(300, sharpen=3.0, seed=3)
    aligned = AlignedOof(["a", "b"], [str(i) for i in range(300)], np.stack([probs, probs]), labels,
                         np.arange(300) % 3)
    result = fit_ensemble(aligned)
    assert result["calibration"]["kept"] and set(result["calibration"]["nested_cv"]) == {"none", "temperature", "floor"}
    assert fit_ensemble(aligned, calibrate=False)["calibration"]["method"] == "none"
