"""``python -m src.kaggle build|check|push key=value ...``: from trained runs to a scored Kaggle submission.

- ``build``: dist/kaggle/{code,weights,notebook}/ from the runs infer.py would use (src/packaging/build.py);
- ``check``: the package proved offline in a clean environment, the notebook's submission compared
  with ``python infer.py``'s and its run time projected to the hidden test set (src/packaging/check.py);
- ``push``: the ``kaggle`` CLI commands that upload it and submit (src/packaging/push.py).

Keys of DEFAULTS below are this command's; any key of configs/infer.yaml (runs_dir, members, localiser,
ensemble, tta, ...) is passed to infer.py's settings, so the package holds what ``python infer.py`` with
the same keys would use. The work lives in src/packaging/.
"""
from __future__ import annotations

import os
import sys

from .config import ConfigError, parse_overrides, run_main, split_args

DEFAULTS = {
    "out": "dist/kaggle",          # where build writes and check/push read
    "owner": "",                   # Kaggle user name in the dataset and kernel ids; empty: KAGGLE_USERNAME,
                                   # else ~/.kaggle/kaggle.json's, else a placeholder push refuses
    "name": "rsna-cspine",         # slug prefix: <name>-code, <name>-weights, <name>-submission
    "competition": "rsna-2022-cervical-spine-fracture-detection",
    "python_version": "3.11",      # the Kaggle image's Python (wheels are downloaded for it)
    "platform": "manylinux_2_35_x86_64",  # the image's glibc ceiling and architecture
    "test_data": "",               # check: the competition data stand-in (test.csv, test_images/); empty: the demo
    "studies": 1500,               # check: the hidden test set's size, for the projection
    "hours": 9.0,                  # check: Kaggle's run-time limit
    "speed_factor": 0.0,           # check: the target accelerator's measured speed over this machine's (e.g. 20
                                   # for 20x faster); 0: project on this machine's own device
    "timeout": 7200,               # check: seconds the notebook may run
    "message": "",                 # push: the version and submission message
    "submit": False,               # push: also submit the notebook (needs version=)
    "version": 0,                  # push: the notebook version to submit
}
ACTIONS = ("build", "check", "push")


def settings(argv: list[str]) -> tuple[str, dict]:
    """(action, this command's settings with ``infer`` = the infer.py overrides among the arguments)."""
    from .inference.settings import infer_defaults

    if not argv or argv[0] not in ACTIONS:
        raise ConfigError(f"first argument must be one of {', '.join(ACTIONS)} (python -m src.kaggle build)")
    infer_keys = set(infer_defaults())
    own, infer = [], []
    for arg, (key, _) in zip(argv[1:], split_args(argv[1:])):
        (infer if key.split(".")[0] in infer_keys and key not in DEFAULTS else own).append(arg)
    cfg = parse_overrides(own, DEFAULTS)
    cfg["infer"] = infer
    cfg["owner"] = cfg["owner"] or default_owner()
    if cfg["speed_factor"] < 0 or cfg["studies"] < 1 or cfg["hours"] <= 0:
        raise ConfigError("speed_factor must be >= 0 (0: this machine), studies >= 1, hours > 0")
    return argv[0], cfg


def default_owner() -> str:
    from .packaging.build import PLACEHOLDER_OWNER
    from .packaging.push import credentials

    found = credentials(os.environ)
    return (found or {}).get("username") or PLACEHOLDER_OWNER


def main(argv: list[str]) -> None:
    action, cfg = settings(argv)
    if action == "build":
        from .packaging.build import build

        build(cfg)
    elif action == "check":
        from .packaging.check import CheckFailed, check

        try:
            check(cfg)
        except CheckFailed as err:
            print(f"check failed: {err}", file=sys.stderr)
            raise SystemExit(1) from None
    else:
        from .packaging.push import PushError, push

        try:
            push(cfg)
        except PushError as err:
            print(f"push: {err}", file=sys.stderr)
            raise SystemExit(2) from None


if __name__ == "__main__":
    run_main(main)
