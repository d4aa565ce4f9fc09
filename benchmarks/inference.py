"""End-to-end inference time per study, split into the CPU side and the model forwards, projected to
Kaggle's hidden test set and 9-hour limit.

    python benchmarks/inference.py                                # CPU, real-data model settings, 3 studies
    python benchmarks/inference.py --device cuda --studies 4      # on a GPU (bf16 autocast, as validation)
    python benchmarks/inference.py --profile demo                 # the demo configs' (on_demo) sizes
    python benchmarks/inference.py --root ../other-checkout       # the same measurement of another checkout

What runs is what ``python infer.py`` runs (src/inference/pipeline.py): read the DICOM folder, build the
inputs, localise (the 3D U-Net localiser), build the crops, one forward per fold model. The models are
the experiments' own architectures at the chosen profile's sizes (``configs/<experiment>.yaml``, top
level = real data), randomly initialised (speed does not depend on the weights), saved as run folders
and loaded like trained ones; ``--override`` changes one model's config (e.g. a smaller encoder: the
inputs, and so the CPU side, stay as they are). Studies are full-size synthetic ones (``src.synth``
``size=full``: 512 px, 200-600 slices, the real data's mix of uncompressed and JPEG Lossless),
generated once into ``--data``.

Every model's forward is timed (with a CUDA sync around it); the **CPU side** of a study is the rest of
its time: reading, resizing, input and crop building, the localiser's resampling and labelling. It is
measured twice: with every step in this process, one study after another (the CPU work a study costs),
and, where the pipeline reads ahead (``workers``, src/inference/studies.py), the part of it the main
process still spends between forwards, waiting for the readers included: what a GPU waits for.
``--root`` measures another checkout of this repository with this script (its own ``src``, and its own
stage names), so that a change is measured before and after by the same code. The first study of each
pass warms up (CUDA context, cuDNN autotuning, lazy imports, the reading processes) and is not counted
unless it is the only one. The projection takes the CPU side the main process spends, plus the
localiser's forward and K forwards per member (K folds).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
HIDDEN_TEST_STUDIES = 1500
KAGGLE_LIMIT_H = 9.0
MEMBERS = ("effnet_gru", "cnn3d")


def experiments() -> tuple[str, ...]:
    """The members and the localiser, by the measured checkout's names (older ones spelled it localizer)."""
    from src.config import CONFIG_DIR

    return (*MEMBERS, "localiser" if (Path(CONFIG_DIR) / "localiser.yaml").exists() else "localizer")


def profile_config(experiment: str, profile: str, overrides: list[str]):
    """The experiment's config at its real-data top level, or with its on_demo section applied."""
    from omegaconf import OmegaConf

    from src.config import _deep_update, apply_overrides, load_experiment_file, split_args

    data = load_experiment_file(experiment)
    on_demo = data.pop("on_demo", None) or {}
    if profile == "demo":
        data = _deep_update(data, on_demo)
    data["experiment"] = experiment
    return OmegaConf.create(apply_overrides(data, split_args(["pretrained=false", *overrides])))


def make_runs(runs_dir: Path, profile: str, folds: int, overrides: dict[str, list[str]]) -> dict:
    """Run folders in the training loop's format for randomly initialised models; returns model sizes."""
    import torch
    from omegaconf import OmegaConf

    from src.models.registry import build_model

    sizes = {}
    for experiment in experiments():
        cfg = profile_config(experiment, profile, overrides.get(experiment, []))
        torch.manual_seed(0)
        model = build_model(cfg)
        sizes[experiment] = sum(p.numel() for p in model.parameters())
        plain = OmegaConf.to_container(cfg, resolve=True)
        for fold in range(folds):
            folder = runs_dir / experiment / f"fold{fold}"
            folder.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "config": dict(plain, fold=fold), "model_name": cfg["model"]},
                       folder / "best.pt")
            (folder / "metrics.json").write_text("{}")  # a finished run, as inference takes only those
    return sizes


def ensure_data(path: Path, studies: int, seed: int, workers: int) -> Path:
    if (path / "test.csv").exists() and len(list((path / "test_images").iterdir())) >= studies:
        print(f"[data] reusing {path}")
        return path
    from src.synth.generate import generate_dataset

    started = time.perf_counter()
    if path.exists():
        shutil.rmtree(path)
    generate_dataset(path, n_train=0, n_test=studies, size="full", seed=seed, seg_fraction=0.0, progress=True,
                     workers=workers)
    print(f"[data] generated {studies} full-size test studies in {time.perf_counter() - started:.0f} s into {path}")
    return path


class ForwardTimer:
    """Seconds spent in every model's forward (members' fold models and the localiser's), with a CUDA
    sync on either side so that GPU work is counted where it happens."""

    def __init__(self, device):
        self.device = device
        self.totals = defaultdict(float)

    def wrap(self, key: str, model) -> None:
        import torch

        forward = model.forward

        def timed(*args, **kwargs):
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = forward(*args, **kwargs)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            self.totals[key] += time.perf_counter() - start
            return out

        model.forward = timed

    def instrument(self, predictor) -> None:
        for member in predictor.members:
            for fold in member.folds:
                self.wrap(f"{member.run}:fold{fold.fold}", fold.model)
        if predictor.localiser is not None:
            for i, model in enumerate(predictor.localiser.models):
                self.wrap(f"localiser:fold{i}", model)

    def total(self) -> float:
        return sum(self.totals.values())


class Pass:
    """One pass over the studies: per study its time, its forwards and the predictor's stage times."""

    def __init__(self, predictor, forwards: ForwardTimer):
        self.predictor, self.forwards = predictor, forwards
        self.studies = []

    def record(self, uid: str, seconds: float, stages_before: dict, forwards_before: dict, ok: bool) -> None:
        stages = {k: v - stages_before.get(k, 0.0) for k, v in self.predictor.timings.items()}
        forwards = {k: v - forwards_before.get(k, 0.0) for k, v in self.forwards.totals.items()}
        self.studies.append({"uid": uid, "total": seconds, "forward": sum(forwards.values()), "ok": ok,
                             "stages": stages, "forwards": forwards})

    def counted(self) -> list[dict]:
        return self.studies[1:] if len(self.studies) > 1 else self.studies

    def mean(self, get) -> float:
        counted = self.counted()
        return sum(get(s) for s in counted) / len(counted)

    def cpu_side(self) -> float:
        return self.mean(lambda s: s["total"] - s["forward"])


def in_process_pass(predictor, forwards, jobs, log) -> Pass:
    """Every step of every study in this process, one study after another: the CPU work a study costs."""
    run = Pass(predictor, forwards)
    for uid, folder in jobs:
        stages, fwd = dict(predictor.timings), dict(forwards.totals)
        start = time.perf_counter()
        prediction = predictor.predict_study(uid, folder, log)
        run.record(uid, time.perf_counter() - start, stages, fwd, prediction is not None)
    return run


def read_ahead_pass(predictor, forwards, jobs, log) -> Pass:
    """As run_inference runs: studies read ahead by ``workers`` processes; a study's time is the main
    process's, from the end of the previous study to the end of this one (waiting for it included)."""
    run = Pass(predictor, forwards)
    stages, fwd = dict(predictor.timings), dict(forwards.totals)
    start = time.perf_counter()
    for study in predictor.read(jobs, announce=lambda *_: None):
        uid = study.uid
        prediction = predictor.predict_read(study, log)
        run.record(uid, time.perf_counter() - start, stages, fwd, prediction is not None)
        stages, fwd = dict(predictor.timings), dict(forwards.totals)
        start = time.perf_counter()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--profile", default="real", choices=["real", "demo"])
    parser.add_argument("--studies", type=int, default=3, help="full-size test studies (the first warms up)")
    parser.add_argument("--folds", type=int, default=1, help="fold models loaded per member (timed one by one)")
    parser.add_argument("--project-folds", type=int, default=5, help="folds per member in the projection")
    parser.add_argument("--tta", action="store_true",
                        help="infer.py's default views: the mirror and two slice shifts (six forwards of the "
                             "crop classifier, two of the others); without it the plain view alone")
    parser.add_argument("--workers", type=int, default=2, help="reading processes ahead of the models (infer.py workers=)")
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "rsna_bench_full"),
                        help="folder of full-size synthetic studies (generated when missing)")
    parser.add_argument("--data-workers", type=int, default=2, help="processes generating the data")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--override", action="append", default=[],
                        help="EXPERIMENT:key=value for one model's config, e.g. effnet_gru:effnet_gru.encoder=tinynet_e")
    parser.add_argument("--root", default=str(HERE), help="the checkout of this repository to measure")
    parser.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = parser.parse_args()

    root = Path(args.root).resolve()
    sys.path.insert(0, str(root))  # before anything imports src: the checkout measured is --root's
    import torch

    from src.inference.fallbacks import FallbackLog
    from src.inference.pipeline import load_predictor
    from src.inference.settings import infer_defaults, load_infer_config
    from src.inference.test_csv import read_test_csv, study_order

    if args.threads:
        torch.set_num_threads(args.threads)
    data = ensure_data(Path(args.data), args.studies, 0, args.data_workers)
    overrides = defaultdict(list)
    for item in args.override:
        experiment, _, pair = item.partition(":")
        overrides[experiment].append(pair)
    work = Path(tempfile.mkdtemp(prefix="bench_infer_"))
    try:
        n_params = make_runs(work / "runs", args.profile, args.folds, overrides)
        settings = [f"data_dir={data}", f"runs_dir={work / 'runs'}", f"device={args.device}",
                    f"tta={str(args.tta).lower()}", "ensemble=none", "progress=false", "members=[effnet_gru, cnn3d]"]
        known = infer_defaults()
        if "workers" in known:
            settings.append(f"workers={args.workers}")
        if "tta_shifts" in known:  # a checkout older than the slice shifts has the mirror alone
            settings.append("tta_shifts=[-0.5,0.5]" if args.tta else "tta_shifts=[]")
        if "scratch_dir" in known:  # a checkout that stages each study on disk: keep it in this run's folder
            settings.append(f"scratch_dir={work / 'scratch'}")
        cfg = load_infer_config(settings)
        started = time.perf_counter()
        predictor = load_predictor(cfg, announce=lambda *_: None)
        load_s = time.perf_counter() - started
        device = predictor.device
        forwards = ForwardTimer(device)
        forwards.instrument(predictor)
        uids = [u for u in study_order(read_test_csv(data / "test.csv")) if (data / "test_images" / u).is_dir()]
        jobs = [(u, data / "test_images" / u) for u in uids[:args.studies]]
        log = FallbackLog()
        passes = {"in process": in_process_pass(predictor, forwards, jobs, log)}
        if hasattr(predictor, "read"):
            name = f"read ahead by {args.workers} processes (their read and inputs stages ran there)"
            passes[name] = read_ahead_pass(predictor, forwards, jobs, log)
        if log.events:
            print(log.summary(2 * len(jobs), "prior"))
        report = summarise(args, root, device, passes, n_params, load_s)
        print_report(args, report)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summarise(args, root: Path, device, passes: dict, n_params: dict, load_s: float) -> dict:
    import torch

    first = next(iter(passes.values()))
    report = {"root": str(root), "device": torch.cuda.get_device_name(device) if device.type == "cuda"
              else f"cpu ({torch.get_num_threads()} threads)", "profile": args.profile, "tta": args.tta,
              "override": args.override, "studies_timed": len(first.counted()), "load_models_s": load_s,
              "parameters": n_params, "passes": {}}
    for name, run in passes.items():
        stage_names = sorted({k for s in run.counted() for k in s["stages"]})
        forward_names = sorted({k for s in run.counted() for k in s["forwards"]})
        report["passes"][name] = {
            "per_study": [{k: v for k, v in s.items() if k not in ("stages", "forwards")} for s in run.studies],
            "total_s": run.mean(lambda s: s["total"]),
            "cpu_side_s": run.cpu_side(),
            "forward_s": {k: run.mean(lambda s, k=k: s["forwards"].get(k, 0.0)) for k in forward_names},
            "stages_s": {k: run.mean(lambda s, k=k: s["stages"].get(k, 0.0)) for k in stage_names},
        }
    main_pass = report["passes"][list(passes)[-1]]
    per_fold = defaultdict(list)
    for key, seconds in main_pass["forward_s"].items():
        per_fold[key.rsplit(":", 1)[0]].append(seconds)
    projected = main_pass["cpu_side_s"] + sum(
        sum(v) if name == "localiser" else args.project_folds * sum(v) / len(v) for name, v in per_fold.items())
    report["projected_per_study_s"] = projected
    report["projected_hidden_test_h"] = projected * HIDDEN_TEST_STUDIES / 3600
    if device.type == "cuda":
        report["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    return report


def print_report(args, report: dict) -> None:
    print(f"\n{report['root']}: device {report['device']}, profile {args.profile}, tta {args.tta}, "
          f"{report['studies_timed']} studies timed per pass, models loaded in {report['load_models_s']:.1f} s"
          + (f", overrides {' '.join(args.override)}" if args.override else ""))
    for name, count in report["parameters"].items():
        print(f"  {name:<12} {count / 1e6:8.2f} M parameters")
    for name, figures in report["passes"].items():
        print(f"{name}:")
        for key, value in figures["stages_s"].items():
            print(f"  stage {key:<34} {value:8.3f} s/study")
        for key, value in figures["forward_s"].items():
            print(f"  forward {key:<32} {value:8.3f} s/study")
        print(f"  {'total':<40} {figures['total_s']:8.3f} s/study")
        print(f"  {'CPU side (total - forwards)':<40} {figures['cpu_side_s']:8.3f} s/study")
    print(f"projected with {args.project_folds} folds per member: {report['projected_per_study_s']:.2f} s/study -> "
          f"{report['projected_hidden_test_h']:.2f} h for {HIDDEN_TEST_STUDIES} studies "
          f"(Kaggle limit {KAGGLE_LIMIT_H:.0f} h: "
          f"{'fits' if report['projected_hidden_test_h'] < KAGGLE_LIMIT_H else 'does NOT fit'})")
    if "peak_gpu_memory_gb" in report:
        print(f"peak GPU memory {report['peak_gpu_memory_gb']:.2f} GB")


if __name__ == "__main__":
    main()
