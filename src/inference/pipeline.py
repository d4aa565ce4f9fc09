"""test_images -> submission.csv: the whole of ``python infer.py`` (infer.py only parses and calls).

For each study of test.csv, in its order: read the DICOM folder (src/inference/reading.py), localise
the vertebrae if a member needs them (src/inference/localiser.py), run every fold model of every
member (src/inference/members.py), combine the members with their weights in probability or logit
space (src/ensembling/weights.py). Whatever goes wrong with one study costs only that study's
prediction, never its rows: it falls back to the remaining members or the label prior, and the
fallback is recorded (src/inference/fallbacks.py) and summarised at the end. The submission is
checked against test.csv before it is written, atomically.
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

from ..data.dicom_reader import StudyReadError
from ..ensembling.weights import combine as combine_members
from ..paths import InvalidUID, _abs, check_uid
from .fallbacks import FallbackLog
from .localiser import Localiser, load_localiser
from .members import Member, finite_probs, load_member, pick_device
from .prior import label_prior
from .reading import read_test_study, stage_study
from .settings import resolve_members, resolve_test_data
from .test_csv import build_submission, read_test_csv, study_order, write_submission


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
            log.add("unreadable", uid, f"unexpected {type(err).__name__}: {err}")
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
                log.add("localiser", uid, f"{type(err).__name__}: {err}; vertebrae placed by an even split")
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
                log.add("member", uid, f"{member.run}: {type(err).__name__}: {err}")
            self.timings[f"member:{member.run}"] += time.perf_counter() - start
        if not probs:
            log.add("all_members", uid, "no member could predict it")
            return None
        return combine_members(np.stack(probs)[:, None, :], weights, self.combine)[0]


def load_predictor(cfg: dict, announce=print) -> Predictor:
    """Members (with their final weights), the localiser when needed, the device. Fails before any study
    is read if a named run does not exist (listing the runs that do) or cannot be loaded."""
    device = pick_device(cfg["device"])
    runs_dir = _abs(cfg["runs_dir"])
    specs, combine, source = resolve_members(cfg, announce)
    announce(f"[ensemble] weights from {source}; combine in {combine} space; device {device}; "
             f"tta {'on (left-right mirror)' if cfg['tta'] else 'off'}")
    members = []
    for spec in specs:
        if spec.weight <= 0:
            announce(f"[members] {spec.run}: weight 0, not loaded")
            continue
        members.append(load_member(runs_dir, spec.run, spec.weight, spec.folds, device, announce))
    localiser = None
    if any(m.needs_localisation for m in members):
        localiser = load_localiser(runs_dir, cfg["localizer"], device, cfg.get("localisation_table"), announce)
    scratch = cfg.get("scratch_dir")
    if scratch:
        _abs(scratch).mkdir(parents=True, exist_ok=True)
    return Predictor(members, combine, localiser, device, cfg["precision"], bool(cfg["tta"]), int(cfg["min_slices"]),
                     str(_abs(scratch)) if scratch else None)


def run_inference(cfg: dict, announce=print) -> dict:
    """Write the submission; return {path, submission, log, n_studies, seconds, timings}."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    data_dir = resolve_test_data(cfg, announce)
    test = read_test_csv(data_dir / "test.csv")
    uids = study_order(test)
    image_root = data_dir / cfg["split"]
    folders = {p.name for p in image_root.iterdir() if p.is_dir()} if image_root.is_dir() else set()
    if not image_root.is_dir():
        announce(f"[data] warning: {image_root} does not exist; every study gets the prior")
    ignored = sorted(folders - set(uids))
    if ignored:
        announce(f"[data] {len(ignored)} folder(s) in {image_root} that test.csv does not name are ignored "
                 f"(e.g. {ignored[0]})")
    prior, prior_source = label_prior(data_dir)
    predictor = load_predictor(cfg, announce)
    announce(f"[data] {len(uids)} studies ({len(test)} rows) in {data_dir / 'test.csv'}; prior: {prior_source}")

    log = FallbackLog()
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
                    log.add("error", uid, f"{type(err).__name__}: {err}")
        predictions[uid] = prior if prediction is None else np.clip(prediction, 0.0, 1.0)
    bar.close()

    submission = build_submission(test, predictions)
    path = write_submission(submission, test, _abs(cfg["output"]))
    seconds = time.perf_counter() - started
    announce(log.summary(len(uids), prior_source))
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in predictor.timings.items())
    announce(f"[done] {path}: {len(submission)} rows for {len(uids)} studies in {seconds:.1f} s ({stages})")
    return {"path": path, "submission": submission, "log": log, "n_studies": len(uids), "seconds": seconds,
            "timings": dict(predictor.timings)}
