"""``python -m src.folds data_dir=... n_folds=5 seed=42``: make the patient-level folds anew and print each
fold's label rates. The folds themselves are src/data/folds.py's; training makes them on first use.

Folds that differ from the ones on disk replace them, but the old file is kept beside them
(``<dataset>.before-<time>.csv``, named on screen): runs trained on it judged other held-out studies, and
their out-of-fold rows no longer line up with the new split.
"""
from __future__ import annotations

import sys
import time

from .config import load_config, run_main
from .data.folds import FoldsError, describe, ensure_folds, make_folds, read_folds, read_labels
from .paths import folds_path


def main(argv: list[str]) -> None:
    from .data.demo import resolve_data_dir

    cfg = load_config(argv)
    data_dir = resolve_data_dir(cfg)
    path = folds_path(cfg, data_dir)
    labels = read_labels(data_dir)
    if path.exists():  # asked for explicitly: make them anew with the given seed, keeping the old ones
        try:
            new = make_folds(labels, cfg["n_folds"], cfg["seed"])
        except FoldsError as err:
            raise FoldsError(f"{data_dir / 'train.csv'}: {err}") from None
        try:
            unchanged = read_folds(path).sort_values("StudyInstanceUID", ignore_index=True).equals(
                new.sort_values("StudyInstanceUID", ignore_index=True))
        except FoldsError:
            unchanged = False  # an unreadable file is replaced too, and kept
        if unchanged:
            print(f"[folds] {path} already holds these folds (n_folds={cfg['n_folds']}, seed {cfg['seed']}); unchanged")
        else:
            kept = path.with_name(f"{path.stem}.before-{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}")
            path.rename(kept)
            print(f"[folds] the previous folds are kept as {kept}: runs trained on them held out other studies")
    folds = ensure_folds(cfg, data_dir)
    print(describe(labels, folds))


def cli(argv: list[str] | None = None) -> None:
    """The command line: an unusable train.csv is one line on stderr and exit code 2 (src.config.run_main)."""
    run_main(main, sys.argv[1:] if argv is None else argv, input_errors=(FoldsError,))


if __name__ == "__main__":
    cli()
