"""test_images -> submission.csv: the whole of ``python infer.py`` (infer.py only parses and calls).

For each study of test.csv, in its order: read the DICOM folder and build the inputs that need no
localisation, in worker processes ahead of the models (src/inference/studies.py, ``workers``);
then, here, localise the vertebrae if a member needs them (src/inference/localiser.py), build the
inputs that wait for that (src/inference/inputs.py), run every fold model of every member
(src/inference/members.py), combine the members with their weights in probability or logit space
(src/ensembling/weights.py). Nothing is written to disk but the submission (and, with ``explain=true``,
a picture of each study beside it: src/inference/explanations.py). Whatever goes wrong with
one study costs only that study's prediction, never its rows: it falls back to the remaining members
or the label prior, and the fallback is recorded (src/inference/fallbacks.py) and summarised at the
end. The same holds before the loop: a member (or fold) whose best.pt cannot load is left out and the
others predict; a row of test.csv that names no study gets a fallback value and is named
(src/inference/test_csv.py). Only what leaves nothing to predict with, or no valid file to write, is
an error, in one line. The submission is checked against test.csv before it is written, atomically.
"""
from __future__ import annotations

import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import ConfigError
from ..ensembling.calibration import apply_calibration
from ..ensembling.patient import apply as patient_model
from ..ensembling.weights import combine as combine_members
from ..paths import InvalidUID, _abs, check_uid
from ..training.device import autocast_for, pick_device
from .explanations import TestExplainer
from .fallbacks import FallbackLog, one_line
from .inputs import build_inputs, drop_failed_views
from .localiser import Localiser, load_localiser
from .members import Member, MemberLoadError, finite_probs, load_member
from .memory import keep_freed_memory
from .prior import label_prior
from .settings import resolve_ensemble, resolve_test_data
from .studies import ReadPlan, ReadStudy, StudyReader, read_study
from .test_csv import build_submission, read_test_rows, study_order, write_submission


@dataclass
class Predictor:
    """Everything loaded once and used for every study."""

    members: list[Member]
    combine: str
    localiser: Localiser | None
    device: object
    autocast: object  # the training side's (src/training/device.py autocast_for)
    tta: bool = False
    min_slices: int = 10
    workers: int = 2   # reading processes ahead of the models; 0 = read in this process
    explainer: TestExplainer | None = None  # explain=true: a picture per study (src/inference/explanations.py)
    calibration: dict | None = None  # ensemble.json's kept calibration (src/ensembling/calibration.py)
    timings: dict = field(default_factory=lambda: defaultdict(float))  # seconds per stage, all studies
    patient: dict | None = None  # ensemble.json's patient-level model (src/ensembling/patient.py), if any
    tta_shifts: tuple = ()  # slice-shift views of the vertebra crops (src/inference/inputs.py)

    @property
    def sizes(self) -> set[int]:
        sizes = set().union(*(m.sizes for m in self.members))
        if self.localiser is not None and self.localiser.models:
            sizes.add(self.localiser.size)
        return sizes

    @property
    def inputs(self) -> list:
        """Every distinct input of every member's folds (src/inference/inputs.py)."""
        return list({spec.key: spec for m in self.members for spec in m.inputs}.values())

    @property
    def plan(self) -> ReadPlan:
        """What the reading processes do: read at every size, build every input that needs no localisation."""
        return ReadPlan(tuple(sorted(self.sizes)), self.min_slices,
                        tuple(s for s in self.inputs if not s.needs_localisation))

    def read(self, jobs, announce=print):
        """A ReadStudy per (uid, study folder) of ``jobs``, in order, read ahead in ``workers`` processes."""
        return StudyReader(self.plan, self.workers, announce).read(jobs)

    def predict_study(self, uid: str, study_dir: Path, log: FallbackLog) -> np.ndarray | None:
        """One study read here and predicted (the benchmark's and a notebook's way in)."""
        return self.predict_read(read_study(uid, study_dir, self.plan), log)

    def predict_read(self, study: ReadStudy, log: FallbackLog) -> np.ndarray | None:
        """The ensemble's eight probabilities for a read study, or None when only the prior is left."""
        uid = study.uid
        for stage, seconds in study.seconds.items():
            self.timings[stage] += seconds
        if study.problem is not None:
            kind, detail = study.problem
            log.add(kind, uid, detail)
            return None
        if study.skipped:
            log.add("slices", uid, f"{len(study.skipped)} file(s) skipped, unreadable or outside the kept series "
                                   f"({', '.join(study.skipped[:3])}"
                                   f"{', ...' if len(study.skipped) > 3 else ''})")
        late = [s for s in self.inputs if s.needs_localisation]
        localisation = labels = None
        if late and self.localiser is not None:
            start = time.perf_counter()
            try:
                localisation, labels = self.localiser.rows_for(uid, study.volumes,
                                                               with_labels=any(s.needs_labels for s in late))
                record_levels(log, uid, localisation)
            except Exception as err:
                log.add("localiser", uid, f"{one_line(err)}; vertebrae placed by an even split")
            self.timings["localise"] += time.perf_counter() - start
        start = time.perf_counter()
        inputs = {**study.inputs, **build_inputs(late, study.volumes, localisation, labels, self.tta_shifts)}
        for detail in drop_failed_views(inputs):
            log.add("view", uid, detail)
        volumes = study.volumes if self.explainer is not None else None
        study.volumes = None  # the inputs are built: free the decoded study before the models run
        self.timings["inputs after localising"] += time.perf_counter() - start
        prediction = self._combine_members(uid, inputs, log)
        if self.explainer is not None and prediction is not None:
            start = time.perf_counter()
            self.explainer.add(uid, self.members, inputs, volumes, localisation)
            self.timings["explain"] += time.perf_counter() - start
        return prediction

    def _combine_members(self, uid: str, inputs: dict, log: FallbackLog) -> np.ndarray | None:
        probs, weights = [], []
        for member in self.members:
            start = time.perf_counter()
            try:
                p = member.predict(inputs, self.device, self.autocast, self.tta, self.tta_shifts)
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
        combined = combine_members(np.stack(probs)[:, None, :], weights, self.combine)  # (1, 8)
        final = apply_calibration(combined, self.calibration)
        if self.patient is not None:  # fitted on the uncalibrated combination; it replaces patient_overall
            final[:, 0] = patient_model(combined, self.patient["method"], self.patient.get("params"))[:, 0]
        return final[0]


def load_predictor(cfg: dict, announce=print, log: FallbackLog | None = None) -> Predictor:
    """Members (with their final weights), the localiser when needed, the device.

    Called by run_inference and the inference benchmark. Fails before any study is read if a named
    run does not exist (listing the runs that do), or if no member at all can load. A member, a fold
    of one or a localiser fold whose best.pt cannot load is left out, announced and recorded in
    ``log`` (kind ``left_out``), and the rest predict. Device and autocast are chosen as the training
    loop chooses them (src/training/device.py), so each fold runs as it was validated.
    """
    log = log if log is not None else FallbackLog()
    if cfg.get("keep_freed_memory"):
        keep_freed_memory()
    try:
        device = pick_device(cfg)
    except RuntimeError as err:  # device=cuda without one: a setting, so one line
        raise ConfigError(str(err)) from None
    runs_dir = _abs(cfg["runs_dir"])
    choice = resolve_ensemble(cfg, announce)
    specs, combine, source = choice.members, choice.combine, choice.source
    calibration, patient = choice.calibration, choice.patient
    if patient is not None:
        announce(f"[ensemble] patient_overall from the {patient['method']} patient model of {source}")
    shifts = f", slice shifts {list(cfg['tta_shifts'])}" if cfg["tta_shifts"] else ""
    announce(f"[ensemble] weights from {source}; combine in {combine} space; device {device}; "
             f"tta {'on (left-right mirror)' if cfg['tta'] else 'off'}{shifts}; {cfg['workers']} reading process(es)")
    members = load_members(specs, runs_dir, device, announce, log)
    localiser = None
    if any(m.needs_localisation for m in members):
        localiser = load_localiser(runs_dir, cfg["localiser"], device, cfg.get("localisation_table"), announce)
        record_left_out(log, localiser.run, localiser.left_out, whole=not localiser.models)
    if calibration is not None:
        announce(f"[ensemble] calibration from the ensemble file: {calibration['method']} {calibration['params']}")
    return Predictor(members, combine, localiser, device, autocast_for(cfg, device), bool(cfg["tta"]),
                     int(cfg["min_slices"]), int(cfg["workers"]), calibration=calibration, patient=patient,
                     tta_shifts=tuple(float(s) for s in cfg["tta_shifts"]))


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


def record_levels(log: FallbackLog, uid: str, rows) -> None:
    """Name a study whose localisation failed the level checks (src/localisation/levels.py), or was repaired."""
    if rows is None or "level_flag" not in rows.columns or not len(rows):
        return
    first = rows.iloc[0]
    if bool(first["level_flag"]) or bool(first.get("level_repaired", False)):
        verdict = "repaired" if bool(first.get("level_repaired", False)) else "flagged, levels kept"
        log.add("levels", uid, f"level confidence {float(first['level_confidence']):.2f}: {verdict}")


def record_left_out(log: FallbackLog, run: str, left_out: list[tuple[int, str]], whole: bool) -> None:
    """Name what could not load once: the run when nothing of it loaded, else each fold."""
    if whole and left_out:
        log.add("left_out", run, "; ".join(reason for _, reason in left_out))
    elif left_out:
        for fold, reason in left_out:
            log.add("left_out", f"{run} fold {fold}", reason)


def study_folders(image_root: Path, announce) -> set[str]:
    """The folder names under test_images; none (every study then gets the prior) when it cannot be listed."""
    try:
        return {p.name for p in image_root.iterdir() if p.is_dir()}
    except OSError as err:
        announce(f"[data] warning: cannot list {image_root} ({err}); every study gets the prior")
        return set()


def run_inference(cfg: dict, announce=print) -> dict:
    """Write the submission; return {path, submission, log, summary, predictions, n_studies, seconds, load_seconds,
    timings}.

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
    if cfg.get("explain"):
        predictor.explainer = TestExplainer(_abs(cfg["output"]).parent / "explanations")
    loaded = time.perf_counter() - started  # settings, test.csv and the models: the run's fixed cost
    announce(f"[data] {len(uids)} studies ({len(test)} rows) in {data_dir / 'test.csv'}; prior: {prior_source}")

    predictions: dict[str, np.ndarray] = {uid: prior for uid in uids}
    limit = int(cfg["limit_studies"])
    jobs = []  # (test.csv's UID, its folder) of every study the models predict, in test.csv's order
    for index, uid in enumerate(uids):
        try:
            safe_uid = check_uid(uid, source="test.csv")
        except InvalidUID as err:
            log.add("bad_uid", uid, str(err))
            continue
        if limit > 0 and index >= limit:
            log.add("not_requested", uid, f"limit_studies={limit}")
        elif safe_uid not in folders:
            log.add("absent", uid, f"no folder {image_root / safe_uid}")
        else:
            jobs.append((uid, image_root / safe_uid))
    bar = tqdm(total=len(jobs), unit="study", desc="infer", disable=not cfg["progress"], smoothing=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # what matters is in the log; the bar stays readable
        started_wait = time.perf_counter()
        reads = predictor.read([(folder.name, folder) for _, folder in jobs], announce)
        for (uid, _), study in zip(jobs, reads):
            predictor.timings["wait for reading"] += time.perf_counter() - started_wait
            try:
                prediction = predictor.predict_read(study, log)
            except Exception as err:  # e.g. out of memory: this study gets the prior, the run goes on
                log.add("error", uid, one_line(err))
                prediction = None
            if prediction is not None:
                predictions[uid] = np.clip(prediction, 0.0, 1.0)
            bar.update(1)
            started_wait = time.perf_counter()
    bar.close()
    if predictor.explainer is not None:
        predictor.explainer.finish(announce)

    submission = build_submission(test, predictions, prior)
    path = write_submission(submission, test, _abs(cfg["output"]))
    seconds = time.perf_counter() - started
    summary = log.summary(len(uids), prior_source)
    announce(summary)
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in predictor.timings.items())
    announce(f"[done] {path}: {len(submission)} rows for {len(uids)} studies in {seconds:.1f} s, {loaded:.1f} s of "
             f"it before the first study ({stages})")
    return {"path": path, "submission": submission, "log": log, "summary": summary, "predictions": predictions,
            "n_studies": len(uids), "seconds": seconds, "load_seconds": loaded, "timings": dict(predictor.timings)}
