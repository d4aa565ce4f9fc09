"""End-to-end inference time per study, by stage, projected to Kaggle's hidden test set and 9-hour limit.

    python benchmarks/inference.py                                # CPU, real-data model settings, 2 studies
    python benchmarks/inference.py --device cuda --studies 4      # on a GPU (bf16 autocast, as validation)
    python benchmarks/inference.py --profile demo                 # the demo configs' (on_demo) sizes

What runs is what ``python infer.py`` runs (src/inference/pipeline.py ``Predictor.predict_study``):
read the DICOM folder, localise (the 3D U-Net localiser), stage the study for the members' datasets,
build each member's batch, and one forward per fold model. The models are the experiments' own
architectures at the chosen profile's sizes (``configs/<experiment>.yaml``, top level = real data),
randomly initialised (speed does not depend on the weights), saved as run folders and loaded like
trained ones. Studies are full-size synthetic ones (``src.synth`` ``size=full``: 512 px, 200-600 slices,
the real data's mix of uncompressed and JPEG Lossless), generated once into ``--data``.

The first study warms up (CUDA context, cuDNN autotuning, lazy imports) and is not counted unless it
is the only one. Per-study time with K folds per member = read + stage + localise + sum over members of
(batch + K x forward per fold); the projection multiplies by 1,500 studies (about the hidden test set).
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HIDDEN_TEST_STUDIES = 1500
KAGGLE_LIMIT_H = 9.0
EXPERIMENTS = ("effnet_gru", "cnn3d", "localizer")


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
    for experiment in EXPERIMENTS:
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


class Timers:
    """Wall time per key, with a CUDA sync around each timed call so GPU work is counted where it happens."""

    def __init__(self, device):
        self.device = device
        self.totals = defaultdict(float)

    def wrap(self, key, fn):
        import torch

        def timed(*args, **kwargs):
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            self.totals[key] += time.perf_counter() - start
            return out

        return timed


def instrument(predictor, timers: Timers) -> None:
    from src.inference import adapters, members

    for task, fn in list(adapters.ADAPTERS.items()):
        adapters.ADAPTERS[task] = timers.wrap(f"batch:{task}", fn)
    members.ADAPTERS = adapters.ADAPTERS
    for member in predictor.members:
        for fold in member.folds:
            fold.model.forward = timers.wrap(f"forward:{member.run}:fold{fold.fold}", fold.model.forward)
    if predictor.localiser is not None:
        for i, model in enumerate(predictor.localiser.models):
            model.forward = timers.wrap(f"forward:localiser:fold{i}", model.forward)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--profile", default="real", choices=["real", "demo"])
    parser.add_argument("--studies", type=int, default=2, help="full-size test studies (the first warms up)")
    parser.add_argument("--folds", type=int, default=1, help="fold models loaded per member (timed one by one)")
    parser.add_argument("--project-folds", type=int, default=5, help="folds per member in the projection")
    parser.add_argument("--tta", action="store_true", help="left-right mirror TTA (doubles the forwards)")
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "rsna_bench_full"),
                        help="folder of full-size synthetic studies (generated when missing)")
    parser.add_argument("--workers", type=int, default=2, help="processes generating the data")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--override", action="append", default=[],
                        help="EXPERIMENT:key=value for one model's config, e.g. effnet_gru:effnet_gru.n_slices=8")
    parser.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = parser.parse_args()

    import torch

    from src.inference.fallbacks import FallbackLog
    from src.inference.pipeline import load_predictor
    from src.inference.settings import load_infer_config
    from src.inference.test_csv import read_test_csv, study_order

    if args.threads:
        torch.set_num_threads(args.threads)
    data = ensure_data(Path(args.data), args.studies, 0, args.workers)
    overrides = defaultdict(list)
    for item in args.override:
        experiment, _, pair = item.partition(":")
        overrides[experiment].append(pair)
    work = Path(tempfile.mkdtemp(prefix="bench_infer_"))
    try:
        n_params = make_runs(work / "runs", args.profile, args.folds, overrides)
        cfg = load_infer_config([f"data_dir={data}", f"runs_dir={work / 'runs'}", f"device={args.device}",
                                 f"tta={str(args.tta).lower()}", "ensemble=none", "progress=false",
                                 "members=[effnet_gru, cnn3d]", f"scratch_dir={work / 'scratch'}"])
        started = time.perf_counter()
        predictor = load_predictor(cfg, announce=lambda *_: None)
        load_s = time.perf_counter() - started
        device = predictor.device
        timers = Timers(device)
        instrument(predictor, timers)
        uids = [u for u in study_order(read_test_csv(data / "test.csv")) if (data / "test_images" / u).is_dir()]
        uids = uids[:args.studies]
        log = FallbackLog()
        per_study = []
        for i, uid in enumerate(uids):
            n_slices = len(list((data / "test_images" / uid).glob("*.dcm")))
            before_stage = dict(predictor.timings)
            before_timer = dict(timers.totals)
            start = time.perf_counter()
            prediction = predictor.predict_study(uid, data / "test_images" / uid, log)
            total = time.perf_counter() - start
            stages = {k: v - before_stage.get(k, 0.0) for k, v in predictor.timings.items()}
            stages.update({k: v - before_timer.get(k, 0.0) for k, v in timers.totals.items()})
            per_study.append({"uid": uid, "slices": n_slices, "total": total, "ok": prediction is not None, **stages})
            print(f"[study {i}] {uid}: {n_slices} slices, {total:.2f} s" + ("  (warm-up)" if i == 0 and len(uids) > 1 else ""))
        if log.events:
            print(log.summary(len(uids), "prior"))
        counted = per_study[1:] if len(per_study) > 1 else per_study

        def mean(key):
            return sum(s.get(key, 0.0) for s in counted) / len(counted)

        report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
                  "profile": args.profile, "tta": args.tta, "studies_timed": len(counted),
                  "mean_slices": mean("slices"), "load_models_s": load_s, "parameters": n_params, "stages_s": {}}
        stages = report["stages_s"]
        stages["read"] = mean("read")
        stages["localise (all localiser folds)"] = mean("localise")
        stages["stage (scratch cache write)"] = mean("stage")
        per_study_k = stages["read"] + stages["localise (all localiser folds)"] + stages["stage (scratch cache write)"]
        for member in predictor.members:
            task = member.folds[0].task
            batch = mean(f"batch:{task}") / max(1, sum(1 for m in predictor.members if m.folds[0].task == task))
            forwards = [mean(f"forward:{member.run}:fold{f.fold}") for f in member.folds]
            per_fold = sum(forwards) / len(forwards)
            stages[f"{member.run}: batch"] = batch
            stages[f"{member.run}: forward per fold"] = per_fold
            per_study_k += batch + args.project_folds * per_fold
        measured_total = mean("total")
        report["measured_total_per_study_s"] = measured_total
        report["projected_per_study_s"] = per_study_k
        report["projected_hidden_test_h"] = per_study_k * HIDDEN_TEST_STUDIES / 3600
        if device.type == "cuda":
            report["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9

        print(f"\ndevice {report['device']}, profile {args.profile}, tta {args.tta}, {len(counted)} studies timed "
              f"(mean {report['mean_slices']:.0f} slices), models loaded in {load_s:.1f} s")
        for name, count in n_params.items():
            print(f"  {name:<12} {count / 1e6:8.2f} M parameters")
        for key, value in stages.items():
            print(f"  {key:<40} {value:8.3f} s/study")
        print(f"  {'measured end to end (' + str(args.folds) + ' fold(s) per member)':<40} {measured_total:8.3f} s/study")
        print(f"projected with {args.project_folds} folds per member: {per_study_k:.2f} s/study -> "
              f"{report['projected_hidden_test_h']:.2f} h for {HIDDEN_TEST_STUDIES} studies "
              f"(Kaggle limit {KAGGLE_LIMIT_H:.0f} h: {'fits' if report['projected_hidden_test_h'] < KAGGLE_LIMIT_H else 'does NOT fit'})")
        if "peak_gpu_memory_gb" in report:
            print(f"peak GPU memory {report['peak_gpu_memory_gb']:.2f} GB")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
