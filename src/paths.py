"""Where the data, cache, folds and runs live, and the one check that turns a study UID into a path.

``data_dir`` defaults to the real Kaggle folder (docs/data.md#layout); when that holds no ``train.csv`` the
demo dataset under ``demo.dir`` is used instead, generated on first use. ``cache_dir`` defaults to
``cache/<dataset>``, folds live in ``folds/<dataset>.csv``; run folders are src/runs.py's.
"""
from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class InvalidUID(ValueError):
    pass


def check_uid(uid: str, source: str = "") -> str:
    """Return ``uid`` if it is a valid DICOM UID (digits and dots, at most 64 chars); refuse anything else.

    Every UID that becomes part of a path goes through here, so a hostile CSV or folder name
    (``../../etc``) can never make the pipeline read or write outside the data and cache folders.
    """
    uid = str(uid).strip()
    if len(uid) > 64 or not _UID.match(uid):
        where = f" (from {source})" if source else ""
        raise InvalidUID(f"{uid!r}{where} is not a valid DICOM UID: only digits and dots, at most 64 characters")
    return uid


def dataset_name(data_dir: Path | str) -> str:
    return Path(data_dir).resolve().name


def has_labels(data_dir: Path | str) -> bool:
    return (Path(data_dir) / "train.csv").exists()


def is_synthetic(data_dir: Path | str) -> bool:
    """True for a dataset written by src.synth (it leaves synth_summary.json beside train.csv)."""
    return (Path(data_dir) / "synth_summary.json").exists()


def locate_data_dir(cfg: DictConfig | dict) -> Path:
    """The configured data folder, or the demo dataset standing in when it has no train.csv; raises
    FileNotFoundError when neither has labels (src/data/demo.py's ``resolve_data_dir`` generates the demo)."""
    data_dir = _abs(cfg["data_dir"])
    if has_labels(data_dir):
        return data_dir
    demo = _abs(cfg["demo"]["dir"])
    if not has_labels(demo):
        raise FileNotFoundError(f"no train.csv in {data_dir} and no demo data in {demo}; run `python -m src.synthesise`")
    return demo


def resolve_cache_dir(cfg: DictConfig | dict, data_dir: Path) -> Path:
    return _abs(cfg["cache_dir"]) if cfg.get("cache_dir") else _abs("cache") / dataset_name(data_dir)


def folds_path(cfg: DictConfig | dict, data_dir: Path) -> Path:
    return _abs(cfg["folds_dir"]) / f"{dataset_name(data_dir)}.csv"


def localisation_path(cfg: DictConfig | dict, cache_dir: Path) -> Path:
    return _abs(cfg["localisation_table"]) if cfg.get("localisation_table") else cache_dir / "localisation.csv"


def _abs(path: str | Path) -> Path:
    """Relative paths are relative to the working directory, as on any command line (train.sh runs from the repo root)."""
    return Path(path).expanduser().resolve()
