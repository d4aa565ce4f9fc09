"""Inference: test_images -> submission.csv, offline, never a missing row (``python infer.py``).

- ``settings``   configs/infer.yaml + overrides; the member list and weights (ensemble.json)
- ``runs``       finding run folders; a missing run lists the ones that exist
- ``members``    a run's fold models from best.pt, predicting one study (mean over folds and TTA)
- ``inputs``     what each fold is fed; its task builds it from the study's arrays (src/tasks study_batch)
- ``localiser``  the localiser's fold models, or a given table, -> seven rows per study
- ``reading``    a DICOM folder -> cache-format volume(s) at each member's size, in memory
- ``studies``    studies read (and their early inputs built) in worker processes ahead of the models
- ``prior``      the fallback prediction
- ``fallbacks``  what fell back and why; the end-of-run summary
- ``test_csv``   test.csv in, the checked submission out
- ``pipeline``   the loop over studies that ties these together
"""
