"""The vertebra localiser at inference: its fold models, and the seven table rows of one test study.

Called by the inference pipeline when a member classifies vertebra crops. The models and the per-study
step are src/localisation/predict.py's (``load_localisers``, ``localise_volume``), the same code that
built the training table, fed the study at the localiser's own cache size. ``localisation_table=``
(a CSV in the format of docs/data.md#the-localisation-table) takes a study's rows from that file instead when it has all seven, which
is how a parity check reproduces the table the classifier was validated on (rows only: a mask-channel
classifier then draws its mask from the boxes, where validation had the localiser's voxel labels). With the run's level ranges
(``runs/<run>/levels.json``, written with the table) each study's rows carry the level columns
(src/localisation/levels.py), and the pipeline records a failing study as ``levels``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import VERTEBRAE
from ..config import ConfigError
from .fallbacks import one_line
from ..localisation.predict import load_localisers
from ..localisation.table import read_table
from ..runs import select_folds


@dataclass
class Localiser:
    run: str
    models: list
    cfg: dict           # the first fold's config: min_voxel_fraction and the cache size
    table: pd.DataFrame | None = None
    left_out: list = field(default_factory=list)  # (fold, why) for folds whose best.pt could not load
    levels: object = None  # the run's LevelRanges (runs/<run>/levels.json), None: rows are not checked
    repair: bool = False   # the run's localiser.repair_levels

    @property
    def size(self) -> int:
        return int(self.cfg["prepare"]["size"])

    def rows_for(self, uid: str, volumes: dict[int, tuple[np.ndarray, dict]],
                 with_labels: bool = False) -> tuple[pd.DataFrame, np.ndarray | None]:
        """The study's seven rows, and with ``with_labels`` the localiser's voxel labels in compact form
        (the mask channel's source, src/localisation/stored_labels.py; else None): rows from the given
        table when it has them all (then no labels: a mask channel falls back to the boxes), else both
        from the models."""
        if self.table is not None:
            rows = self.table[self.table["StudyInstanceUID"] == uid]
            if set(rows["vertebra"]) >= set(VERTEBRAE):
                return rows.reset_index(drop=True), None
        from ..localisation.predict import localise_volume

        if not self.models:
            raise RuntimeError(f"no localiser models (run '{self.run}') and no table rows for {uid}")
        volume, meta = volumes[self.size]
        found = localise_volume(self.models, volume, meta, self.cfg, study_uid=uid, levels=self.levels,
                                repair=self.repair, with_labels=with_labels)
        rows, labels = found if with_labels else (found, None)
        rows["StudyInstanceUID"] = uid
        return rows, labels


def load_localiser(runs_dir: Path, run: str, device, table_path: str | None = None, announce=print) -> Localiser:
    """The localiser run's fold models (every fold with best.pt); with ``table_path``, also that table.

    Called by the inference pipeline when a member needs vertebra crops. With a table, a missing
    localiser run is not an error: the table alone serves the studies it covers (the others then fail
    over to the classifier's own even-split fallback, with a note). A fold whose best.pt cannot load is
    left out (``Localiser.left_out``); with none left, every study takes that same fallback. A table
    that cannot be read is a ConfigError: it is a setting, not an input.
    """
    table = _read_table(table_path) if table_path else None
    try:
        folds = select_folds(runs_dir, run, "all")
    except FileNotFoundError:
        if table is None:
            raise
        announce(f"[localiser] no run '{run}' in {runs_dir}: rows come from {table_path} only")
        return Localiser(run, [], {"prepare": {"size": 0}}, table)
    models, cfg, left_out = [], None, []
    for fold, fold_dir in folds.items():
        try:
            model, = load_localisers([fold_dir], device)
        except Exception as err:  # a broken best.pt costs this fold, not the run
            left_out.append((fold, f"{Path(fold_dir) / 'best.pt'}: {one_line(err)}"))
            announce(f"[localiser] {run} fold {fold} left out: {left_out[-1][1]}")
            continue
        models.append(model)
        cfg = cfg or model.config
    if not models:
        announce(f"[localiser] {run}: no fold could load; vertebra crops come from "
                 f"{'the table, else ' if table is not None else ''}an even split of each study")
        return Localiser(run, [], {"prepare": {"size": 0}}, table, left_out)
    levels, repair = _level_ranges(Path(runs_dir) / run, cfg, announce)
    announce(f"[localiser] {run}: folds {[f for f in folds if f not in dict(left_out)]}, grid "
             f"{cfg['localiser']['shape']}, cache size {cfg['prepare']['size']}")
    return Localiser(run, models, cfg, table, left_out, levels, repair)


def _level_ranges(experiment_dir: Path, cfg, announce):
    """The run's level ranges and repair setting; (None, False) with a note when it has none (a run from
    before the level checks, or a table never built): the studies are then not checked."""
    from ..localisation.levels import RANGES_FILE, LevelRanges

    path = experiment_dir / RANGES_FILE
    if not path.exists():
        announce(f"[localiser] no {path}: level checks off (`python -m src.localise` writes it)")
        return None, False
    try:
        return LevelRanges.from_json(path), bool(cfg["localiser"].get("repair_levels", False))
    except ValueError as err:
        announce(f"[localiser] level checks off: {one_line(err)}")
        return None, False


def _read_table(table_path: str) -> pd.DataFrame:
    try:
        table = read_table(Path(table_path), complete=False)
    except (OSError, ValueError) as err:  # pandas' parser errors are ValueErrors
        raise ConfigError(f"localisation_table={table_path}: cannot use it ({one_line(err)})") from None
    table["StudyInstanceUID"] = table["StudyInstanceUID"].astype(str)
    return table
