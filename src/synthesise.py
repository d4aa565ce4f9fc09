"""``python -m src.synthesise out=DIR n_train=N n_test=M size=demo|full seed=S seg_fraction=F box_fraction=B overwrite=false trap=false``

Writes a synthetic dataset in the Kaggle layout (see src/synth/generate.py). Defaults come from the
``demo:`` section of configs/default.yaml, the same set the training entry points generate.
"""
from __future__ import annotations

import json
import sys

from .config import load_experiment_file, parse_overrides, run_main
from .synth.generate import BOX_FRACTION, generate_dataset


def defaults() -> dict:
    demo = load_experiment_file("default")["demo"]
    return {"out": demo["dir"], "n_train": demo["n_train"], "n_test": demo["n_test"], "size": demo["size"],
            "seed": demo["seed"], "seg_fraction": demo["seg_fraction"], "overwrite": False, "trap": False,
            "workers": 2, "progress": True, "box_fraction": BOX_FRACTION}


def main(argv: list[str]) -> None:
    args = parse_overrides(argv, defaults())
    try:
        summary = generate_dataset(args["out"], n_train=args["n_train"], n_test=args["n_test"], size=args["size"],
                                   seed=args["seed"], seg_fraction=args["seg_fraction"], overwrite=args["overwrite"],
                                   plant_test_trap=args["trap"], progress=args["progress"], workers=args["workers"],
                                   box_fraction=args["box_fraction"])
    except (FileExistsError, NotADirectoryError, ValueError) as err:
        print(f"synth: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    run_main(main)
