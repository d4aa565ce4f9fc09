"""RSNA 2022 Cervical Spine Fracture Detection: preprocessing, localisation, classification, ensembling.

Entry points are modules run with ``python -m src.<name>``: synth, prepare, folds, localise,
train, ensemble, score, report. Every one takes ``key=value`` overrides (see src/config.py).
"""

TARGETS = ["patient_overall", "C1", "C2", "C3", "C4", "C5", "C6", "C7"]
VERTEBRAE = ["C1", "C2", "C3", "C4", "C5", "C6", "C7"]
