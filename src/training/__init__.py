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
from .loop import TrainingStopped, fit

__all__ = ["TrainingStopped", "fit"]
