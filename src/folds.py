"""``python -m src.folds data_dir=... n_folds=5 seed=42``: make the patient-level folds anew and print each
fold's label rates. The folds themselves are src/data/folds.py's; training makes them on first use.
"""
from __future__ import annotations

import sys

from .config import load_config, run_main
from .data.folds import FoldsError, describe, ensure_folds, read_labels
from .paths import folds_path


def main(argv: list[str]) -> None:
    from .data.demo import resolve_data_dir

    cfg = load_config(argv)
    data_dir = resolve_data_dir(cfg)
    path = folds_path(cfg, data_dir)
    if path.exists():
        path.unlink()  # asked for explicitly: make them anew with the given seed
    folds = ensure_folds(cfg, data_dir)
    print(describe(read_labels(data_dir), folds))


def cli(argv: list[str] | None = None) -> None:
    """The command line: an unusable train.csv is one line on stderr and exit code 2 (src.config.run_main)."""
    run_main(main, sys.argv[1:] if argv is None else argv, input_errors=(FoldsError,))


if __name__ == "__main__":
    cli()
