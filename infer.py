"""``python infer.py key=value ...``: predict every study of test.csv and write submission.csv.

Settings in configs/infer.yaml (members, weights, localiser, TTA, output...). What it does is
src/inference/pipeline.py; this file is the command line only, so that a Kaggle notebook can run
``!python infer.py data_dir=/kaggle/input/rsna-2022-cervical-spine-fracture-detection runs_dir=/kaggle/input/<weights>/runs``
(the weights dataset of ``python -m src.kaggle build``).

Bad inputs cost only themselves and are named in the end-of-run summary (src/inference/fallbacks.py).
What stops the run is one line on stderr and an exit code, never a traceback:

- 1 ``submission not written: ...``: test.csv is not a CSV with a row_id column, output= cannot be
  written, or the submission failed its checks;
- 2 ``config error: ...``: a setting is wrong (unknown key, a run that does not exist, listing those
  that do), or no member at all could be loaded (each file named, with why).
"""
from __future__ import annotations

import sys

from src.config import ConfigError, run_main
from src.runs import RunNotFoundError
from src.metric import SubmissionError


def main(argv: list[str]) -> dict:
    from src.inference.pipeline import run_inference
    from src.inference.settings import load_infer_config

    cfg = load_infer_config(argv)
    try:
        return run_inference(cfg)
    except RunNotFoundError as err:
        raise ConfigError(str(err)) from None
    except SubmissionError as err:
        print(f"submission not written: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    run_main(main)
