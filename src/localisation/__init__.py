"""Stage 1 of the pipeline: find each vertebra C1..C7 in every study.

A 3D U-Net (src/models/localiser.py), trained on the studies that have masks through the one training
loop ("localise" task, src/localisation/task.py), labels the downsampled study; its labels, brought back
to every original slice, give each vertebra's slice range and box: the localisation table (src/localisation/
table.py, columns in docs/data.md#the-localisation-table) that the per-vertebra classifier and inference read.

- ``python -m src.localise``: train the fold localisers that are missing, then (re)write the table
- :func:`src.localisation.build.ensure_localisation`: what src/train.py calls for a classifier that needs the table
- :func:`src.localisation.predict.localise_volume`: the table rows of one study (inference)

Modules: metrics (Dice, slice IoU), extents (labels -> vertebra boxes, estimates for missed ones), table
(boxes -> DICOM slice numbers and original pixels), resample (study slices <-> model grid), dataset, task,
predict, build, figures.
"""
from __future__ import annotations

LOCALISER_EXPERIMENT = "localiser"
LOCALISER_MODEL = "localiser"
