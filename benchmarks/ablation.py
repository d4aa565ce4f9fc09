"""Which stage-2 ingredients earn their place? The default experiment trained with each switched the other way,
on the same folds and seeds, in one table.

    python benchmarks/ablation.py                                          # demo data, folds 0 and 1, all ingredients
    python benchmarks/ablation.py --folds 0 --ingredients aux mixup -- epochs=3   # key=value overrides after --
    python benchmarks/ablation.py --data-dir data/synth2 --synth n_train=480 n_test=20 seed=7 seg_fraction=0.3 box_fraction=0.1
    python benchmarks/ablation.py --jobs 2 --ingredients mixup              # two trainings at a time, cores shared out
    python benchmarks/ablation.py --report-only                            # the table from runs already there

``base`` is ``bash train.sh``'s default experiment as configured (configs/effnet_gru.yaml, its demo profile
on synthetic data, plus the overrides after ``--``). Each ingredient (:data:`INGREDIENTS`) is switched the
other way in one variant: on where base has it off (the variant is named after it), off where base has it
on (``no_<name>``, e.g. ``no_aux`` on the demo, whose profile trains with the auxiliary loss); ``all``
switches on every training ingredient base lacks. Each is trained by ``python -m src.train`` (niced; the
folds, seeds and data order are the config's, the same for every variant) into
``<runs-dir>/ablation_<variant>/fold<k>/``, one at a time, or ``--jobs N`` at a time with the cores shared
out (two one-thread trainings get more done on two cores than one two-thread training; what they train on,
the data, cache, folds and localisation table, is built first, once, here). The thread count
changes float rounding and with it every number, so compare variants trained with the same one. A run
already finished is not trained again, so a stopped ablation continues where it stopped; a run that fails
costs only itself: the others train, the table shows them, and the script ends with exit code 1.
``patient`` trains nothing: it is the patient-level model of src/ensembling/patient.py (logistic on the
seven vertebra logits) fitted on the base variant's out-of-fold rows and scored by nested CV, over the
folds given (with one fold, over 5 random groups of its studies) exactly as ``src.ensemble`` judges it.

The table: per variant and fold, the held-out competition score (lower is better), patient_overall's and
each vertebra's log loss and the mean AUC of the eight targets, then the mean over the folds and its
difference from ``base`` over the same folds (a variant with a fold not yet trained: ``mean of 0``, say,
and the difference on fold 0 alone). ``--synth KEY=VALUE ...`` first writes a second synthetic dataset at
``--data-dir`` (python -m src.synthesise with those options, e.g. another seed, seg_fraction, fewer boxes) when it holds
none; src.train then builds its cache, folds, localiser and localisation table as for the demo.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# ingredient -> (its config key, the value that switches it on, the value that switches it off); the on
# values are the winners' settings (1st/4th/5th place, issue 18) except aux, whose demo-measured 1.0 it is
INGREDIENTS = {
    "aux": ("effnet_gru.aux_loss_weight", "1.0", "0.0"),
    "mask": ("effnet_gru.mask_channel", "true", "false"),
    "order_jitter": ("effnet_gru.order_jitter", "0.2", "0.0"),
    "mixup": ("effnet_gru.mixup_prob", "0.5", "0.0"),
    "top_k": ("average_top_k", "5", "0"),
    "ema": ("ema_decay", "0.99", "0.0"),
}
POST_HOC = ("patient",)  # computed from base's oof rows, no training


def is_on(cfg, key: str) -> bool:
    """Whether ``cfg`` (a resolved config) has the ingredient at ``key`` switched on."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    return bool(node) and float(node) > (1 if key == "average_top_k" else 0)


def variants_for(cfg, ingredients: list[str]) -> dict[str, list[str]]:
    """{variant: its overrides}: ``base`` is the config as it is; each ingredient is switched the other way,
    named after it when that switches it on and ``no_<name>`` when it is on already and switches it off;
    ``all`` switches on every training ingredient that is off."""
    variants = {"base": []}
    for name in ingredients:
        if name in POST_HOC:
            variants[name] = []
        elif name == "all":
            variants["all"] = [f"{key}={on}" for key, on, _ in INGREDIENTS.values() if not is_on(cfg, key)]
        else:
            key, on, off = INGREDIENTS[name]
            if is_on(cfg, key):
                variants[f"no_{name}"] = [f"{key}={off}"]
            else:
                variants[name] = [f"{key}={on}"]
    return variants


def train_variant(variant: str, overrides: list[str], fold: int, common: list[str], nice: int, log_dir: Path,
                  threads: int = 0) -> str:
    """``python -m src.train`` for one variant and fold, with ``threads`` intra-op threads (0: the environment's
    OMP_NUM_THREADS, else PyTorch's default). Returns "" when it finished, else why not (its log's end)."""
    args = [f"experiment=ablation_{variant}", f"fold={fold}", *common, *overrides]
    command = [sys.executable, "-m", "src.train", *args]
    if nice:
        command = ["nice", "-n", str(nice), *command]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{variant}_fold{fold}.log"
    print(f"[ablation] {variant} fold {fold}: {' '.join(args)} ({env.get('OMP_NUM_THREADS', 'default')} "
          f"thread(s); log {log})", flush=True)
    with open(log, "w") as out:
        code = subprocess.call(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    if code == 0:
        print(f"[ablation] {variant} fold {fold} finished", flush=True)
        return ""
    tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
    return f"{variant} fold {fold} failed (exit {code}); the end of {log}:\n{tail}"


def prepare_once(configs: list) -> None:
    """Build what the runs of ``configs`` train on (data, cache, folds, localisation table; src.train's own
    first step) in this process, before runs that would otherwise all build it at once."""
    from src.train import prepare_training_data
    from src.training import STOPS_WITH_A_SENTENCE

    for cfg in configs:
        try:
            prepare_training_data(cfg)
        except STOPS_WITH_A_SENTENCE as err:  # every run would stop on it: say it once, as src.train would
            raise SystemExit(f"[stopped] {err}") from None


def threads_per_job(jobs: int) -> int:
    """Intra-op threads for each of ``jobs`` trainings at a time: the cores shared out, or 0 (the environment
    decides) when OMP_NUM_THREADS is set or for one job, which then has PyTorch's default as ``bash train.sh``."""
    if os.environ.get("OMP_NUM_THREADS") or jobs <= 1:
        return 0
    return max(1, (os.cpu_count() or 1) // jobs)


def train_all(runs: list[tuple[str, list[str], int]], jobs: int, train) -> list[str]:
    """Train ``runs`` ((variant, overrides, fold), in order), ``jobs`` at a time; ``train(variant, overrides,
    fold)`` returns "" or why it failed. A failed run costs only itself: the others go on. Returns the failures."""
    if jobs <= 1:
        return [why for why in (train(*run) for run in runs) if why]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return [why for why in pool.map(lambda run: train(*run), runs) if why]


def row_metrics(labels: np.ndarray, probs: np.ndarray) -> dict:
    """score, patient_overall and per-vertebra log loss, mean AUC over the eight targets."""
    from src import TARGETS
    from src.metric import competition_score, per_target_auc, per_target_log_loss

    losses = per_target_log_loss(labels, probs)
    aucs = [v for v in per_target_auc(labels, probs).values() if v == v]  # NaN where a target has one class
    row = {"score": competition_score(labels, probs), "patient_ll": losses[TARGETS[0]]}
    row.update({f"{t}_ll": losses[t] for t in TARGETS[1:]})
    row["auc"] = float(np.mean(aucs)) if aucs else float("nan")
    return row


def read_oof(runs_dir: Path, variant: str, fold: int, truth: pd.DataFrame):
    """(labels, probs) of one variant's fold, in the oof file's study order; None if it is not trained."""
    from src import TARGETS

    path = runs_dir / f"ablation_{variant}" / f"fold{fold}" / "oof.csv"
    if not path.exists():
        return None
    oof = pd.read_csv(path, dtype={"StudyInstanceUID": str})
    labels = truth.set_index("StudyInstanceUID").loc[oof["StudyInstanceUID"], TARGETS].to_numpy(float)
    return labels, oof[TARGETS].to_numpy(float)


def patient_rows(runs_dir: Path, folds: list[int], truth: pd.DataFrame) -> list[dict]:
    """The logistic patient model on base's oof rows, judged by nested CV (src/ensembling/patient.py)."""
    from src.ensembling.patient import apply, fit, nested_cv
    from src.ensembling.weights import split_groups

    parts = [(k, read_oof(runs_dir, "base", k, truth)) for k in folds]
    parts = [(k, p) for k, p in parts if p is not None]
    if not parts:
        return []
    labels = np.concatenate([p[0] for _, p in parts])
    probs = np.concatenate([p[1] for _, p in parts])
    fold_of = np.concatenate([np.full(len(p[0]), k) for k, p in parts])
    groups = fold_of if len(parts) > 1 else split_groups(len(labels), 5, seed=0)
    nested = nested_cv(labels, probs, groups)
    rows = []
    for k, _ in parts:
        held = fold_of == k
        # each study's prediction from the model fitted without its group
        predicted = np.empty_like(probs)
        for g in np.unique(groups):
            inside = groups == g
            predicted[inside] = apply(probs[inside], "logistic", fit(labels[~inside], probs[~inside], "logistic"))
        rows.append({"variant": "patient", "fold": k, **row_metrics(labels[held], predicted[held])})
    print(f"[ablation] patient model nested CV (mean over {len(np.unique(groups))} groups): "
          + ", ".join(f"{m} {nested[m]['score']:.4f}" for m in ("keep", "noisy_or", "max", "logistic")))
    return rows


def table(runs_dir: Path, variants: list[str], folds: list[int], truth: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for variant in variants:
        if variant in POST_HOC:
            rows.extend(patient_rows(runs_dir, folds, truth))
            continue
        for fold in folds:
            found = read_oof(runs_dir, variant, fold, truth)
            if found is not None:
                rows.append({"variant": variant, "fold": fold, **row_metrics(*found)})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    means = frame.groupby("variant", sort=False).mean(numeric_only=True).reset_index()
    scores = frame.pivot(index="fold", columns="variant", values="score")  # NaN where a fold is not trained
    trained = {v: list(scores[v].dropna().index) for v in scores}
    means["fold"] = ["mean" if len(trained[v]) == len(folds) else "mean of " + " ".join(map(str, trained[v]))
                     for v in means["variant"]]
    # the difference on the folds both have, so a variant with a fold still to train is not judged against
    # base's mean over other folds (NaN without base)
    base = scores["base"] if "base" in scores else np.nan
    means["vs_base"] = means["variant"].map(scores.sub(base, axis=0).mean())
    return pd.concat([frame, means], ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every variant (after --)")
    parser.add_argument("--data-dir", default="", help="data to train on (default: the config's, i.e. the demo)")
    parser.add_argument("--runs-dir", default="runs/ablation", help="where the variants' run folders go")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--ingredients", nargs="+", default=[*INGREDIENTS, "all", *POST_HOC],
                        choices=[*INGREDIENTS, "all", *POST_HOC], help="variants besides base")
    parser.add_argument("--synth", nargs="*", default=None,
                        help="write a synthetic dataset at --data-dir first, with these python -m src.synthesise KEY=VALUE options")
    parser.add_argument("--nice", type=int, default=10, help="niceness of the training processes (0: none)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="trainings at a time, each with its share of the cores (OMP_NUM_THREADS overrides it)")
    parser.add_argument("--report-only", action="store_true", help="train nothing; the table from finished runs")
    parser.add_argument("--csv", default="", help="also write the table here")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs takes a whole number of at least 1 (got {args.jobs})")

    from src.config import load_config
    from src.data.folds import read_labels

    runs_dir = Path(args.runs_dir).resolve()
    common = [f"runs_dir={runs_dir}", "wandb.mode=disabled", "progress=false", *args.overrides]
    if args.data_dir:
        common.insert(0, f"data_dir={Path(args.data_dir).resolve()}")
        if args.synth is not None and not (Path(args.data_dir) / "train.csv").exists():
            command = [sys.executable, "-m", "src.synthesise", f"out={Path(args.data_dir).resolve()}", *args.synth]
            print(f"[ablation] writing a synthetic dataset: {' '.join(command[2:])}", flush=True)
            subprocess.check_call((["nice", "-n", str(args.nice)] if args.nice else []) + command, cwd=ROOT)
    cfg = load_config([a for a in common if not a.startswith(("progress=", "wandb."))])
    variants = variants_for(cfg, args.ingredients)
    for variant, overrides in variants.items():
        if overrides:
            print(f"[ablation] {variant}: {' '.join(overrides)}", flush=True)
    failures = []
    if not args.report_only:
        runs = [(variant, overrides, fold) for fold in args.folds for variant, overrides in variants.items()
                if variant not in POST_HOC
                and not (runs_dir / f"ablation_{variant}" / f"fold{fold}" / "metrics.json").exists()]
        if args.jobs > 1 and runs:
            print("[ablation] first the data, cache, folds and localisation table, once, for the parallel runs", flush=True)
            to_train = {variant: overrides for variant, overrides, _ in runs}  # a variant's overrides are the same on every fold
            prepare_once([load_config([*common, f"experiment=ablation_{variant}", f"fold={runs[0][2]}", *overrides])
                          for variant, overrides in to_train.items()])
        threads = threads_per_job(args.jobs)
        failures = train_all(runs, args.jobs, lambda variant, overrides, fold: train_variant(
            variant, overrides, fold, common, args.nice, runs_dir / "logs", threads))
    from src.data.demo import resolve_data_dir

    truth = read_labels(resolve_data_dir(cfg, announce=lambda *a, **k: None))
    result = table(runs_dir, list(variants), args.folds, truth)
    for why in failures:
        print(f"[ablation] {why}", file=sys.stderr)
    if result.empty:
        raise SystemExit("[ablation] no finished variant to report")
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.float_format", "{:.4f}".format):
        print(result.to_string(index=False))
    if args.csv:
        result.to_csv(args.csv, index=False)
        print(f"[ablation] wrote {args.csv}")
    if failures:
        raise SystemExit(f"[ablation] {len(failures)} run(s) failed (above); the table holds the others")


if __name__ == "__main__":
    main()
