"""The settings of ``python infer.py``: configs/infer.yaml plus checked ``key=value`` overrides.

Called by infer.py and by src.ensemble (which reads the default member list from here). infer.yaml is
not an experiment (it trains nothing and inherits nothing), so it is read on its own with
src.config.parse_overrides: an unknown key or a value of the wrong type is an error, as everywhere.
Also resolves the member list against an ensemble file written by ``python -m src.ensemble``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config import CONFIG_DIR, ConfigError, load_experiment_file, parse_overrides
from ..data.demo import resolve_data_dir
from ..paths import _abs, has_labels
from ..runs import COMBINE_SPACES, ensemble_path, read_ensemble

INFER_CONFIG = CONFIG_DIR / "infer.yaml"
_MEMBER_KEYS = {"run", "weight", "folds"}


@dataclass
class MemberSpec:
    run: str
    weight: float = 1.0
    folds: object = "all"  # "all" or a list of fold numbers


def infer_defaults(path: Path = INFER_CONFIG) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read the inference settings ({err})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return data


def load_infer_config(argv: list[str] | None = None, path: Path = INFER_CONFIG) -> dict:
    """configs/infer.yaml with the overrides applied and checked; members normalised to dicts."""
    cfg = parse_overrides(argv, infer_defaults(path))
    cfg["members"] = [vars(m) for m in parse_members(cfg["members"])]
    if cfg["combine"] not in ("auto", *COMBINE_SPACES):
        raise ConfigError(f"combine={cfg['combine']!r}; expected auto, {' or '.join(COMBINE_SPACES)}")
    if cfg["device"] not in ("auto", "cpu", "cuda") and not str(cfg["device"]).startswith("cuda:"):
        raise ConfigError(f"device={cfg['device']!r}; expected auto, cpu or cuda")
    if cfg["precision"] not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"precision={cfg['precision']!r}; expected auto, bf16 or fp32")
    shifts = cfg["tta_shifts"]
    if not isinstance(shifts, list) or not all(isinstance(s, (int, float)) and not isinstance(s, bool)
                                               and -1 < s < 1 for s in shifts):
        raise ConfigError(f"tta_shifts={shifts!r}; expected a list of fractions of the slice spacing between -1 "
                          f"and 1, e.g. [-0.5, 0.5] (or [] for none)")
    if cfg["workers"] < 0:
        raise ConfigError(f"workers={cfg['workers']}; expected the number of reading processes, 0 or more")
    return cfg


def parse_members(entries) -> list[MemberSpec]:
    """``members`` entries (a run name, or {run, weight, folds}) as MemberSpecs; anything else is refused."""
    if isinstance(entries, str):
        entries = [e for e in entries.strip("[]").split(",") if e.strip()]
    if not isinstance(entries, list) or not entries:
        raise ConfigError("members must be a non-empty list of run names or {run: NAME, weight: W, folds: all|[..]}")
    specs = []
    for entry in entries:
        if isinstance(entry, str):
            entry = {"run": entry.strip()}
        if not isinstance(entry, dict) or "run" not in entry:
            raise ConfigError(f"member {entry!r}: expected a run name or {{run: NAME, weight: W, folds: all|[0, 1]}}")
        unknown = set(entry) - _MEMBER_KEYS
        if unknown:
            raise ConfigError(f"member {entry!r}: unknown key(s) {sorted(unknown)}; a member has {sorted(_MEMBER_KEYS)}")
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ConfigError(f"member {entry['run']}: weight must be a number >= 0, got {weight!r}")
        folds = entry.get("folds", "all")
        if isinstance(folds, int) and not isinstance(folds, bool):
            folds = [folds]
        if folds != "all" and not (isinstance(folds, list) and folds
                                   and all(isinstance(f, int) and not isinstance(f, bool) and f >= 0 for f in folds)):
            raise ConfigError(f"member {entry['run']}: folds must be 'all' or a list of fold numbers, got {folds!r}")
        specs.append(MemberSpec(str(entry["run"]), float(weight), folds))
    names = [s.run for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"a run is listed twice in members: {names}")
    if sum(s.weight for s in specs) <= 0:
        raise ConfigError("every member has weight 0; give at least one a positive weight")
    return specs


def resolve_test_data(cfg: dict, announce=print) -> Path:
    """The folder holding test.csv: ``data_dir`` when it has one (Kaggle's hidden test set has no labels
    beside it in some setups, so train.csv is not required), else the demo dataset as in training."""
    data_dir = _abs(cfg["data_dir"])
    if (data_dir / "test.csv").exists():
        return data_dir
    defaults = load_experiment_file("default")
    demo_cfg = {"data_dir": str(data_dir), "demo": defaults["demo"]}
    if has_labels(data_dir):
        raise ConfigError(f"data_dir={cfg['data_dir']}: {data_dir} has train.csv but no test.csv; point data_dir at "
                          f"the competition folder")
    return resolve_data_dir(demo_cfg, announce=announce)


def read_ensemble_file(path: Path) -> dict:
    """``ensemble.json`` checked against its schema (src/runs.py), a bad one a config error naming it."""
    try:
        return read_ensemble(path)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def chosen_ensemble(cfg: dict, members, announce=print) -> tuple[dict | None, str]:
    """(the ensemble file's contents, where they came from), or (None, the configured weights) when none
    applies: ``ensemble=auto`` takes ``<runs_dir>/ensemble.json`` when it names exactly the configured runs
    (a file fitted for other runs is ignored with a note); ``ensemble=<path>`` must exist."""
    choice = str(cfg["ensemble"]).strip()
    if choice.lower() in ("none", "null", ""):
        return None, "configs/infer.yaml weights"
    if choice == "auto":
        path = ensemble_path(_abs(cfg["runs_dir"]))
        if path.exists():
            found = read_ensemble_file(path)
            if sorted(found["members"]) == sorted(m.run for m in members):
                return found, f"{path} (fitted by src.ensemble)"
            announce(f"[ensemble] {path} was fitted for {found['members']}, not these members "
                     f"{[m.run for m in members]}; using the configured weights")
        return None, "configs/infer.yaml weights"
    path = _abs(choice)
    if not path.exists():
        raise ConfigError(f"ensemble={choice}: no such file; run `python -m src.ensemble` or set ensemble=auto")
    return read_ensemble_file(path), f"{path} (fitted by src.ensemble)"


@dataclass
class EnsembleChoice:
    members: list            # MemberSpec, with their final weights
    combine: str             # the space the members are combined in: prob | logit
    source: str              # where the weights came from (the ensemble file, or configs/infer.yaml)
    calibration: dict | None = None  # what the ensemble file kept beyond the weights: its calibration
    patient: dict | None = None      # and its patient-level model; None when there is none


def resolve_ensemble(cfg: dict, announce=print) -> EnsembleChoice:
    """The members, their weights and what goes with them, from one reading of the ensemble file
    :func:`chosen_ensemble` picks: its members replace the configured ones (their folds are kept when a run
    is configured too), and its calibration and patient model come along (None for calibration ``none``
    and patient ``keep``). Without a file, the members and weights of configs/infer.yaml alone.
    """
    members = parse_members(cfg["members"])
    data, source = chosen_ensemble(cfg, members, announce)
    combine = cfg["combine"]
    calibration = patient = None
    if data is not None:
        folds = {m.run: m.folds for m in members}
        members = [MemberSpec(str(run), float(w), folds.get(str(run), "all"))
                   for run, w in zip(data["members"], data["weights"])]
        if combine == "auto":
            combine = data["combine"]
        if sum(m.weight for m in members) <= 0:
            raise ConfigError(f"{source}: every weight is 0")
        calibration, patient = data.get("calibration"), data.get("patient")
    if combine == "auto":
        combine = "prob"
    return EnsembleChoice(members, combine, source,
                          calibration if calibration and calibration.get("method", "none") != "none" else None,
                          patient if patient and patient.get("method", "keep") != "keep" else None)
