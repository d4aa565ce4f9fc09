"""Pictures of a trained run's studies and the page that lays them out: the work of ``python -m src.explain``.

For one fold of a run (``runs/<run>/fold<k>/``, finished), the studies to explain are named (a UID or a
comma-separated list) or chosen from its ``oof.csv``: ``top_errors`` (the held-out studies with the highest
competition loss, worst first) or ``fractured`` (the held-out studies labelled patient_overall = 1). Each
is read from the study cache, cut into crops by the run's own settings and localisation table (the
item builder its validation used), predicted with ``best.pt``, and drawn (src/tasks/explanation*.py):
``<out>/<uid>.png`` and ``<out>/index.html``. Data, cache and table are where the run's config.yaml
says, unless given. A held-out study's probabilities are checked against oof.csv, so a picture of a
study whose cache or table changed since training says so.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import TARGETS
from ..config import ConfigError
from ..models.checkpoint import trained_model
from ..models.registry import get_model_class, model_settings, model_task
from ..paths import check_uid, locate_data_dir, localisation_path, resolve_cache_dir
from ..runs import select_folds

SELECTIONS = ("top_errors", "fractured")


def choose_studies(studies: str, oof: pd.DataFrame | None, labels: pd.DataFrame, n: int) -> list[str]:
    """The UIDs ``studies`` names: ``top_errors``, ``fractured`` (of ``oof``), or UIDs separated by commas."""
    from ..tasks.explanation import fractured_studies, worst_studies

    if studies in SELECTIONS:
        if oof is None:
            raise ConfigError(f"studies={studies} needs the run's oof.csv; name studies with study=<UID> instead")
        return worst_studies(oof, labels, n) if studies == "top_errors" else fractured_studies(oof, labels, n)
    uids = [u.strip() for u in str(studies).split(",") if u.strip()]
    if not uids:
        raise ConfigError(f"studies= names no study; give {', '.join(SELECTIONS)} or UIDs separated by commas")
    return [check_uid(u, source="studies=") for u in uids]


def explain_run(runs_dir: Path, run: str, fold: int, studies: str, n: int = 8, out: Path | None = None,
                data_dir: str = "", cache_dir: str = "", localisation_table: str = "", device="cpu",
                announce=print) -> dict:
    """Draw the chosen studies of ``run``'s fold ``fold``; returns {"pictures": {uid: png}, "page": html path}."""
    from ..data.cache import cached_uids
    from ..tasks.explanation import explain_cached
    from ..tasks.explanation_figure import draw_explanation
    from ..tasks.explanation_page import page_entry, write_page
    from ..localisation.table import read_table
    from ..tasks.vertebra import VertebraDataset

    folder = select_folds(runs_dir, run, [fold])[fold]
    model, config = trained_model(folder, device)
    task = model_task(get_model_class(config["model"]))
    if task != "vertebra":
        raise ConfigError(f"run '{run}' is a {config['model']} ({task} task): only vertebra classifiers with "
                          f"attention (effnet_gru) can be explained")
    where = dict(config, **{k: v for k, v in (("data_dir", data_dir), ("cache_dir", cache_dir),
                                                ("localisation_table", localisation_table)) if v})
    data = locate_data_dir(where)
    cache = resolve_cache_dir(where, data)
    table = read_table(localisation_path(where, cache), complete=False)
    labels = pd.read_csv(data / "train.csv", dtype={"StudyInstanceUID": str})
    oof_path = Path(folder) / "oof.csv"
    oof = pd.read_csv(oof_path, dtype={"StudyInstanceUID": str}) if oof_path.exists() else None
    uids = choose_studies(studies, oof, labels, n)
    missing = sorted(set(uids) - set(cached_uids(cache, "train_images")))
    if missing:
        raise ConfigError(f"{len(missing)} of the studies are not in the cache {cache / 'train_images'} "
                          f"(e.g. {missing[0]}); name cached training studies, or point cache_dir= at the run's cache")
    dataset = VertebraDataset(cache, uids, table, model_settings(config), config["windows"])
    truth = labels.set_index("StudyInstanceUID")
    predicted = oof.set_index("StudyInstanceUID") if oof is not None else pd.DataFrame()
    out = Path(out) if out else Path(folder) / "explanations"
    pictures, entries = {}, []
    for uid in uids:
        held_out = uid in predicted.index
        known = truth.loc[uid, TARGETS].to_numpy(float) if uid in truth.index else None
        role = "held out" if held_out else "a training study of this fold"
        expl = explain_cached(model, dataset, uid, known, source=f"{run} fold {fold}, {role}")
        if held_out and not np.allclose(expl.probs, predicted.loc[uid, TARGETS].to_numpy(float), atol=1e-3):
            announce(f"[explain] {uid}: probabilities differ from {oof_path} (the cache or localisation table "
                     f"changed since training?)")
        pictures[uid] = draw_explanation(expl, out / f"{uid}.png")
        entries.append(page_entry(expl, pictures[uid]))
    page = write_page(entries, out / "index.html", f"{run} fold {fold}: {studies}")
    return {"pictures": pictures, "page": page, "out": out}

