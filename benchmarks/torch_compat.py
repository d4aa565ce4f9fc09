"""Do trained checkpoints load under another torch (Kaggle's, say)? Run it with that environment's python.

    /path/to/other-env/bin/python benchmarks/torch_compat.py runs/effnet_gru/fold0 runs/localiser/fold0

For each fold folder: its best.pt read with ``torch.load(weights_only=True)`` (as inference reads it),
then the model built from the saved config and given the weights (src/models/checkpoint.py
``trained_model``) and run once on a zero input of its task's shape where that is cheap to make.
Prints the versions it ran with and one line per fold; exit 1 if any fold failed. Not a test: which
torch is installed is the point, and that differs per machine (README, "Submitting to Kaggle").
"""
from __future__ import annotations

import sys
import traceback
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def main(folders: list[str]) -> int:
    import torch

    from src.models.checkpoint import trained_model

    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, torchvision {version('torchvision')}, "
          f"timm {version('timm')}, monai {version('monai')}")
    failed = 0
    for folder in map(Path, folders):
        try:
            state = torch.load(folder / "best.pt", map_location="cpu", weights_only=True)
            model, config = trained_model(folder)
            line = f"{folder}: {len(state['model'])} tensors, {config['model']} built and loaded"
            if config["model"] == "localiser":
                with torch.no_grad():
                    shape = [int(s) for s in config["localiser"]["shape"]]
                    out = model({"volume": torch.zeros(1, 1, *shape)})["logits"]
                line += f", forward {tuple(out.shape)}"
            print(line)
        except Exception as err:  # report every fold, whatever breaks
            failed += 1
            print(f"{folder}: FAILED {type(err).__name__}: {err}")
            traceback.print_exc(limit=2)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
