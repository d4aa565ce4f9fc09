"""Ensembling: combining members' fracture probabilities and fitting their weights on out-of-fold rows.

- ``weights``   the maths on arrays: combine in probability or logit space, fit simplex weights by
                minimising the competition metric, nested cross-validation of that fit
- ``oof``       reading the members' ``oof.csv`` files from their run folders and the labels
- ``fit``       what ``python -m src.ensemble`` does: fit, report, write ``runs/ensemble.json``

src/inference uses :func:`weights.combine` so that test predictions are combined exactly as the fit was.
"""
