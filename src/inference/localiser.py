"""The vertebra localiser at inference: its fold models, and the seven table rows of one test study.

Called by the inference pipeline when a member classifies vertebra crops. The models and the per-study
step are src/localisation/predict.py's (``load_localizers``, ``localise_volume``), the same code that
built the training table, fed the study at the localiser's own cache size. ``localisation_table=``
(a CSV in the SPEC's format) takes a study's rows from that file instead when it has all seven, which
is how a parity check reproduces the table the classifier was validated on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import VERTEBRAE
from .runs import select_folds


@dataclass
class Localiser:
    run: str
    models: list
    cfg: dict           # the first fold's config: min_voxel_fraction and the cache size
    table: pd.DataFrame | None = None

    @property
    def size(self) -> int:
        return int(self.cfg["prepare"]["size"])

    def rows_for(self, uid: str, volumes: dict[int, tuple[np.ndarray, dict]]) -> pd.DataFrame:
        """The study's seven rows: from the given table when it has them all, else from the models."""
        if self.table is not None:
            rows = self.table[self.table["StudyInstanceUID"] == uid]
            if set(rows["vertebra"]) >= set(VERTEBRAE):
                return rows.reset_index(drop=True)
        from ..localisation.predict import localise_volume

        if not self.models:
            raise RuntimeError(f"no localiser models (run '{self.run}') and no table rows for {uid}")
        volume, meta = volumes[self.size]
        rows = localise_volume(self.models, volume, meta, self.cfg, study_uid=uid)
        rows["StudyInstanceUID"] = uid
        return rows


def load_localiser(runs_dir: Path, run: str, device, table_path: str | None = None, announce=print) -> Localiser:
    """The localiser run's fold models (every fold with best.pt); with ``table_path``, also that table.

    With a table, a missing localiser run is not an error: the table alone serves the studies it covers
    (the others then fail over to the classifier's own even-split fallback, with a note).
    """
    from omegaconf import OmegaConf

    table = None
    if table_path:
        from ..tasks.vertebra import read_localisation

        table = read_localisation(Path(table_path))
        table["StudyInstanceUID"] = table["StudyInstanceUID"].astype(str)
    try:
        folds = select_folds(runs_dir, run, "all")
    except FileNotFoundError:
        if table is None:
            raise
        announce(f"[localiser] no run '{run}' in {runs_dir}: rows come from {table_path} only")
        return Localiser(run, [], {"prepare": {"size": 0}}, table)
    from ..localisation.predict import load_localizers
    import torch

    models = load_localizers(list(folds.values()), device)
    state = torch.load(Path(folds[next(iter(folds))]) / "best.pt", map_location="cpu", weights_only=True)
    cfg = OmegaConf.to_container(OmegaConf.create(state["config"]), resolve=True)
    announce(f"[localiser] {run}: folds {list(folds)}, grid {cfg['localizer']['shape']}, cache size {cfg['prepare']['size']}")
    return Localiser(run, models, cfg, table)
