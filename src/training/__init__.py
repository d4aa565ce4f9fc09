"""The one training loop every model goes through (``python -m src.train`` calls :func:`fit`).

- loop.py        fit(): AdamW, warm-up + cosine, bf16 autocast on GPU, clipping, validation, run folder
- schedule.py    the learning-rate curve
- checkpoint.py  last.pt / best.pt: weights, optimiser, schedule, RNG states; plain tensors only
- wandb_log.py   the W&B run of a training run (offline unless logged in)
- plots.py       per-target confusion matrices and ROC curves (PNG)
- distributed.py torchrun / DDP: ranks, rank-0-first build-up, validation shared out and gathered in order

The model/task interface the loop relies on is written down in src/models/registry.py and
src/tasks/__init__.py.
"""
from ..data.folds import FoldsError
from ..locks import Busy
from ..models.checkpoint import CheckpointError
from .loop import TrainingStopped, fit
from .run_folder import RunFolderError

# a finished run, an unfinished one with other settings, a training already in progress, a damaged
# checkpoint (a localiser's, say), unusable folds: the user's to resolve, so the commands that train
# (src.train, src.localise) print one line rather than a traceback
STOPS_WITH_A_SENTENCE = (RunFolderError, Busy, CheckpointError, FoldsError)

__all__ = ["STOPS_WITH_A_SENTENCE", "TrainingStopped", "fit"]
