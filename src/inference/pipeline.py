"""test_images -> submission.csv: the whole of ``python infer.py`` (infer.py only parses and calls).

For each study of test.csv, in its order: read the DICOM folder (src/inference/reading.py), localise
the vertebrae if a member needs them (src/inference/localiser.py), run every fold model of every
member (src/inference/members.py), combine the members with their weights in probability or logit
space (src/ensembling/weights.py). Whatever goes wrong with one study costs only that study's
prediction, never its rows: it falls back to the remaining members or the label prior, and the
fallback is recorded (src/inference/fallbacks.py) and summarised at the end. The same holds before
the loop: a member (or fold) whose best.pt cannot load is left out and the others predict; a row of
test.csv that names no study gets a fallback value and is named (src/inference/test_csv.py). Only
what leaves nothing to predict with, or no valid file to write, is an error, in one line. The
submission is checked against test.csv before it is written, atomically.
"""
from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import ConfigError
from ..data.dicom_reader import StudyReadError
from ..ensembling.weights import combine as combine_members
from ..paths import InvalidUID, _abs, check_uid
from .fallbacks import FallbackLog, one_line
from .localiser import Localiser, load_localiser
from .members import Member, MemberLoadError, finite_probs, load_member, pick_device
from .prior import label_prior
from .reading import read_test_study, stage_study
from .settings import resolve_members, resolve_test_data
from .test_csv import build_submission, read_test_rows, study_order, write_submission


@dataclass
class Predictor:
    """Everything loaded once and used for every study."""

    members: list[Member]
    combine: str
    localiser: Localiser | None
    device: object
    precision: str = "auto"
    tta: bool = False
    min_slices: int = 10
    scratch_root: str | None = None  # where each study is staged as a one-study cache; None = the system temp
    timings: dict = field(default_factory=lambda: defaultdict(float))  # seconds per stage, all studies

    @property
    def sizes(self) -> set[int]:
        sizes = set().union(*(m.sizes for m in self.members))
        if self.localiser is not None and self.localiser.models:
            sizes.add(self.localiser.size)
        return sizes

    def predict_study(self, uid: str, study_dir: Path, log: FallbackLog) -> np.ndarray | None:
        """The ensemble's eight probabilities for one study, or None when only the prior is left."""
        start = time.perf_counter()
        try:
            volumes, _ = read_test_study(study_dir, self.sizes, self.min_slices)
        except StudyReadError as err:
            log.add("unreadable", uid, str(err))
            return None
        except Exception as err:  # an odd file must cost this study, not the run
            log.add("unreadable", uid, f"unexpected {one_line(err)}")
            return None
        finally:
            self.timings["read"] += time.perf_counter() - start
        skipped = next(iter(volumes.values()))[1].get("skipped_files", [])
        if skipped:
            log.add("slices", uid, f"{len(skipped)} unreadable slice(s) skipped ({', '.join(skipped[:3])}"
                                   f"{', ...' if len(skipped) > 3 else ''})")

        localisation = None
        if self.localiser is not None and any(m.needs_localisation for m in self.members):
            start = time.perf_counter()
            try:
                localisation = self.localiser.rows_for(uid, volumes)
            except Exception as err:
                log.add("localiser", uid, f"{one_line(err)}; vertebrae placed by an even split")
            self.timings["localise"] += time.perf_counter() - start

        start = time.perf_counter()
        scratch = Path(tempfile.mkdtemp(prefix=f"infer-{uid}-", dir=self.scratch_root))
        try:
            staged = stage_study(volumes, uid, scratch)
            del volumes  # the members read the staged copy; free the decoded study before the models run
            self.timings["stage"] += time.perf_counter() - start
            return self._combine_members(uid, staged, localisation, log)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _combine_members(self, uid: str, staged: dict, localisation, log: FallbackLog) -> np.ndarray | None:
        probs, weights = [], []
        for member in self.members:
            start = time.perf_counter()
            try:
                p = member.predict(staged, uid, localisation, self.device, self.precision, self.tta)
                if not finite_probs(p):
                    raise ValueError(f"probabilities not finite or outside [0, 1]: {p}")
                probs.append(p)
                weights.append(member.weight)
            except Exception as err:
                log.add("member", uid, f"{member.run}: {one_line(err)}")
            self.timings[f"member:{member.run}"] += time.perf_counter() - start
        if not probs:
            log.add("all_members", uid, "no member could predict it")
            return None
        return combine_members(np.stack(probs)[:, None, :], weights, self.combine)[0]


def load_predictor(cfg: dict, announce=print, log: FallbackLog | None = None) -> Predictor:
    """Members (with their final weights), the localiser when needed, the device.

    Called by run_inference and the inference benchmark. Fails before any study is read if a named
    run does not exist (listing the runs that do), or if no member at all can load. A member, a fold
    of one or a localiser fold whose best.pt cannot load is left out, announced and recorded in
    ``log`` (kind ``left_out``), and the rest predict.
    """
    log = log if log is not None else FallbackLog()
    device = pick_device(cfg["device"])
    runs_dir = _abs(cfg["runs_dir"])
    specs, combine, source = resolve_members(cfg, announce)
    announce(f"[ensemble] weights from {source}; combine in {combine} space; device {device}; "
             f"tta {'on (left-right mirror)' if cfg['tta'] else 'off'}")
    members = load_members(specs, runs_dir, device, announce, log)
    localiser = None
    if any(m.needs_localisation for m in members):
        localiser = load_localiser(runs_dir, cfg["localizer"], device, cfg.get("localisation_table"), announce)
        record_left_out(log, localiser.run, localiser.left_out, whole=not localiser.models)
    return Predictor(members, combine, localiser, device, cfg["precision"], bool(cfg["tta"]), int(cfg["min_slices"]),
                     scratch_root(cfg.get("scratch_dir")))


def load_members(specs, runs_dir: Path, device, announce, log: FallbackLog) -> list[Member]:
    """Every member with a positive weight that loads; ConfigError (one line, each file and why) if none does."""
    members, failures = [], []
    for spec in specs:
        if spec.weight <= 0:
            announce(f"[members] {spec.run}: weight 0, not loaded")
            continue
        try:
            member = load_member(runs_dir, spec.run, spec.weight, spec.folds, device, announce)
        except MemberLoadError as err:
            announce(f"[members] {spec.run} left out: no fold could load")
            log.add("left_out", spec.run, str(err))
            failures.append(f"{spec.run}: {err}")
            continue
        record_left_out(log, member.run, member.left_out, whole=False)
        members.append(member)
    if not members:
        raise ConfigError(f"no member could be loaded ({'; '.join(failures)}); re-train them, or list members= "
                          f"whose best.pt loads")
    return members


def record_left_out(log: FallbackLog, run: str, left_out: list[tuple[int, str]], whole: bool) -> None:
    """Name what could not load once: the run when nothing of it loaded, else each fold."""
    if whole and left_out:
        log.add("left_out", run, "; ".join(reason for _, reason in left_out))
    elif left_out:
        for fold, reason in left_out:
            log.add("left_out", f"{run} fold {fold}", reason)


def scratch_root(scratch_dir) -> str | None:
    """Where studies are staged (None: the system temp); a folder that cannot be made is a setting error."""
    if not scratch_dir:
        return None
    try:
        _abs(scratch_dir).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"scratch_dir={scratch_dir}: cannot create it ({err}); choose another folder or null") from None
    return str(_abs(scratch_dir))


def study_folders(image_root: Path, announce) -> set[str]:
    """The folder names under test_images; none (every study then gets the prior) when it cannot be listed."""
    try:
        return {p.name for p in image_root.iterdir() if p.is_dir()}
    except OSError as err:
        announce(f"[data] warning: cannot list {image_root} ({err}); every study gets the prior")
        return set()


def run_inference(cfg: dict, announce=print) -> dict:
    """Write the submission; return {path, submission, log, summary, predictions, n_studies, seconds, timings}.

    Called by infer.py. ``predictions`` maps each study of test.csv to the eight values its rows got.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    data_dir = resolve_test_data(cfg, announce)
    log = FallbackLog()
    test, problems = read_test_rows(data_dir / "test.csv")
    for kind, subject, detail in problems:
        log.add(kind, subject, detail)
    uids = study_order(test)
    image_root = data_dir / cfg["split"]
    folders = study_folders(image_root, announce) if image_root.is_dir() else set()
    if not image_root.is_dir():
        announce(f"[data] warning: {image_root} does not exist; every study gets the prior")
    ignored = sorted(folders - set(uids))
    if ignored:
        announce(f"[data] {len(ignored)} folder(s) in {image_root} that test.csv does not name are ignored "
                 f"(e.g. {ignored[0]})")
    for name in ignored:
        log.add("unnamed_folder", name, f"{image_root / name} is not in test.csv")
    prior, prior_source = label_prior(data_dir)
    predictor = load_predictor(cfg, announce, log)
    announce(f"[data] {len(uids)} studies ({len(test)} rows) in {data_dir / 'test.csv'}; prior: {prior_source}")

    predictions: dict[str, np.ndarray] = {}
    limit = int(cfg["limit_studies"])
    bar = tqdm(uids, unit="study", desc="infer", disable=not cfg["progress"], smoothing=0.1)
    for index, uid in enumerate(bar):
        prediction = None
        try:
            safe_uid = check_uid(uid, source="test.csv")
        except InvalidUID as err:
            log.add("bad_uid", uid, str(err))
            safe_uid = None
        if safe_uid is None:
            pass
        elif limit > 0 and index >= limit:
            log.add("not_requested", uid, f"limit_studies={limit}")
        elif safe_uid not in folders:
            log.add("absent", uid, f"no folder {image_root / safe_uid}")
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # what matters is in the log; the bar stays readable
                try:
                    prediction = predictor.predict_study(safe_uid, image_root / safe_uid, log)
                except Exception as err:  # e.g. the scratch disk is full: this study gets the prior, the run goes on
                    log.add("error", uid, one_line(err))
        predictions[uid] = prior if prediction is None else np.clip(prediction, 0.0, 1.0)
    bar.close()

    submission = build_submission(test, predictions, prior)
    path = write_submission(submission, test, _abs(cfg["output"]))
    seconds = time.perf_counter() - started
    summary = log.summary(len(uids), prior_source)
    announce(summary)
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in predictor.timings.items())
    announce(f"[done] {path}: {len(submission)} rows for {len(uids)} studies in {seconds:.1f} s ({stages})")
    return {"path": path, "submission": submission, "log": log, "summary": summary, "predictions": predictions,
            "n_studies": len(uids), "seconds": seconds, "timings": dict(predictor.timings)}
