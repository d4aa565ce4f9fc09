"""GPU speed of the default experiment: training throughput and memory for fp32 vs bf16 and eager vs
torch.compile, and inference studies/s, on synthetic tensors of the real data's shapes.

    python benchmarks/gpu_bench.py                  # a CUDA machine: the full table, at most --budget seconds
    python benchmarks/gpu_bench.py --cpu-smoke      # tiny shapes on the CPU: proves the script runs (minutes)

benchmarks/gpu_check.sh runs it on a lent GPU machine. The model is the EfficientNet + GRU of
configs/effnet_gru.yaml at its top level (the real-data settings, not ``on_demo``), built from the YAML
read with PyYAML alone: the GPU machine has torch and timm but not omegaconf, wandb or the DICOM stack.
A training step is what src/training/loop.py does per batch: autocast forward with the competition
loss, backward, gradient clipping, AdamW. A vertebra-sample is one vertebra's stack of ``n_slices``
crops; a study is seven. Eager variants share one process (peak memory reset between them); each
compiled variant gets its own, with a time limit, so a slow or failing compile costs only its row.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
N_VERTEBRAE = 7
SMOKE = {"effnet_gru": {"n_slices": 2, "crop_size": 32}, "batch_size": 1}
SMOKE_COMPILED = {"effnet_gru": {"encoder": "test_efficientnet", "n_slices": 2, "crop_size": 32, "gru_hidden": 8,
                                 "grad_checkpointing": False}, "batch_size": 1}


def merge(base: dict, child: dict) -> dict:
    out = dict(base)
    for key, value in child.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def real_config(experiment: str = "effnet_gru", overrides: dict | None = None) -> dict:
    """configs/<experiment>.yaml on its inherit chain, top level only (real data), as a plain dict."""
    import yaml

    chain = []
    name = experiment
    while True:
        data = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text()) or {}
        data.pop("on_demo", None)
        parent = data.pop("inherit", "default" if name != "default" else None)
        chain.append(data)
        if parent is None:
            break
        name = parent
    cfg = {}
    for data in reversed(chain):
        cfg = merge(cfg, data)
    cfg["experiment"] = experiment
    return merge(cfg, {"pretrained": False, **(overrides or {})})  # speed does not depend on the weights


def synthetic_batch(cfg: dict, batch: int, device, labels: bool = True) -> dict:
    import torch

    from src.models.effnet_gru import input_channels

    c = cfg["effnet_gru"]
    shape = (batch, N_VERTEBRAE, c["n_slices"], input_channels(cfg), c["crop_size"], c["crop_size"])
    out = {"images": torch.rand(shape, device=device)}  # float32, as the DataLoader delivers it
    if labels:
        out["labels"] = (torch.rand(batch, 8, device=device) < 0.2).float()
    return out


def build(cfg: dict, device, compiled: bool):
    import torch

    from src.models.effnet_gru import EffNetGRU

    model = EffNetGRU(cfg).to(device)
    if cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    return model, (torch.compile(model) if compiled else model)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_memory(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device):
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None


def measure_train(cfg: dict, precision: str, compiled: bool, steps: int, warmup: int, device) -> dict:
    import torch

    _reset_memory(device)
    model, net = build(cfg, device, compiled)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    batch = synthetic_batch(cfg, cfg["batch_size"], device)
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step():
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = net(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        optimizer.step()
        return loss

    loss, warmup_s, seconds = _timed(step, warmup, steps, device)
    if not torch.isfinite(loss):
        raise RuntimeError(f"training loss is {float(loss)}")
    studies = cfg["batch_size"] * steps
    return {"what": "train", "precision": precision, "mode": "compiled" if compiled else "eager",
            "batch": f"{cfg['batch_size']} studies", "step_ms": round(1000 * seconds / steps, 1),
            "per_s": round(studies * N_VERTEBRAE / seconds, 2), "unit": "vertebra-samples/s",
            "first_steps_s": round(warmup_s, 1), "peak_gib": _peak_gib(device)}


def _timed(step, warmup: int, steps: int, device):
    """Run ``step`` ``warmup`` times, then ``steps`` timed times; (last result, warm-up s, timed s)."""
    started = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    warmup_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        result = step()
    _sync(device)
    return result, warmup_s, time.perf_counter() - started


def measure_infer(cfg: dict, precision: str, compiled: bool, batch_studies: int, steps: int, warmup: int, device) -> dict:
    import torch

    _reset_memory(device)
    model, net = build(cfg, device, compiled)
    model.eval()
    batch = synthetic_batch(cfg, batch_studies, device, labels=False)
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step():
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return net(batch)["logits"]

    logits, warmup_s, seconds = _timed(step, warmup, steps, device)
    if not torch.isfinite(logits).all():
        raise RuntimeError("inference logits are not finite")
    return {"what": "infer", "precision": precision, "mode": "compiled" if compiled else "eager",
            "batch": f"{batch_studies} studies", "step_ms": round(1000 * seconds / steps, 1),
            "per_s": round(batch_studies * steps / seconds, 2), "unit": "studies/s",
            "first_steps_s": round(warmup_s, 1), "peak_gib": _peak_gib(device)}


def run_child(jobs: list[dict], cfg: dict, device_name: str) -> None:
    """Measure ``jobs`` in this process, printing one JSON line per result (or per failure)."""
    import torch

    device = torch.device(device_name)
    torch.backends.cudnn.benchmark = True  # as the training loop does on a GPU
    for job in jobs:
        try:
            if job["what"] == "train":
                result = measure_train(cfg, job["precision"], job["compiled"], job["steps"], job["warmup"], device)
            else:
                result = measure_infer(cfg, job["precision"], job["compiled"], job["batch"], job["steps"],
                                       job["warmup"], device)
        except Exception as err:  # noqa: BLE001 - one failing variant (out of memory, compile) must not hide the rest
            result = {**job, "mode": "compiled" if job["compiled"] else "eager", "error": f"{type(err).__name__}: {err}"[:300]}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print("RESULT " + json.dumps(result), flush=True)


def spawn(jobs: list[dict], cfg: dict, device: str, timeout: float) -> list[dict]:
    cmd = [sys.executable, __file__, "--child", json.dumps({"jobs": jobs, "cfg": cfg, "device": device})]
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        out, err, note = done.stdout, done.stderr, f"exit code {done.returncode}"
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        err, note = "", f"stopped after {timeout:.0f} s"
    results = [json.loads(line[len("RESULT "):]) for line in out.splitlines() if line.startswith("RESULT ")]
    seen = len(results)
    for job in jobs[seen:]:  # what the child never reached
        tail = err.strip().splitlines()[-1] if err.strip() else ""
        results.append({**job, "mode": "compiled" if job["compiled"] else "eager", "error": f"{note} {tail}"[:300]})
    return results


def table(rows: list[dict]) -> str:
    head = f"{'what':<6}{'precision':<10}{'mode':<10}{'batch':<12}{'throughput':>28}{'step ms':>10}{'peak GiB':>10}{'first steps s':>15}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['what']:<6}{r['precision']:<10}{r['mode']:<10}{'':<12}  failed: {r['error']}")
            continue
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        lines.append(f"{r['what']:<6}{r['precision']:<10}{r['mode']:<10}{r['batch']:<12}"
                     f"{r['per_s']:>10.2f} {r['unit']:<17}{r['step_ms']:>10.1f}{peak:>10}{r['first_steps_s']:>15.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes and steps on the CPU: a check that it runs")
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (cuDNN autotuning, compilation)")
    parser.add_argument("--infer-steps", type=int, default=10)
    parser.add_argument("--budget", type=float, default=230, help="seconds for everything; compiled rows that "
                        "would not fit are cut short and reported as such")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--compile-fp32", action="store_true", help="also compile the fp32 training step")
    parser.add_argument("--compile-timeout", type=float, default=170, help="at most this many seconds per compiled variant")
    parser.add_argument("--json", default="", help="also write the rows to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        run_child(spec["jobs"], spec["cfg"], spec["device"])
        return

    import torch

    if args.cpu_smoke:
        device, steps, warmup, infer_steps = "cpu", 1, 1, 1
        cfg, compiled_cfg = real_config(overrides=SMOKE), real_config(overrides=SMOKE_COMPILED)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device visible: run on a GPU machine, or use --cpu-smoke to check the script")
        device, steps, warmup, infer_steps = "cuda", args.steps, args.warmup, args.infer_steps
        cfg = compiled_cfg = real_config()
    c = cfg["effnet_gru"]
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"[gpu_bench] {name}, torch {torch.__version__}; effnet_gru real-data config: {c['encoder']}, "
          f"{c['n_slices']} slices x {len(cfg['windows']) * (2 * c['neighbours'] + 1)} channels x {c['crop_size']} px, "
          f"grad_checkpointing {c['grad_checkpointing']}, channels_last {cfg['channels_last']}, "
          f"batch {cfg['batch_size']} studies (x7 vertebrae)" + ("  [CPU SMOKE: tiny shapes]" if args.cpu_smoke else ""),
          flush=True)

    def train(precision, compiled=False):
        return {"what": "train", "precision": precision, "compiled": compiled, "steps": steps, "warmup": warmup}

    def infer(precision, batch, compiled=False):
        return {"what": "infer", "precision": precision, "compiled": compiled, "batch": batch, "steps": infer_steps,
                "warmup": warmup}

    eager = [train("fp32"), train("bf16"), infer("bf16", 1), infer("bf16", 4), infer("fp32", 1)]
    began = time.perf_counter()
    deadline = began + args.budget
    rows = spawn(eager, cfg, device, timeout=max(30.0, deadline - began))
    print(f"[gpu_bench] eager variants done in {time.perf_counter() - began:.0f} s", flush=True)
    if not args.no_compile:
        compiled_jobs = [[train("bf16", True)], [infer("bf16", 1, True)]]
        if args.compile_fp32:
            compiled_jobs.insert(1, [train("fp32", True)])
        for jobs in compiled_jobs:
            left = deadline - time.perf_counter()
            if left < 30 and not args.cpu_smoke:
                rows += [{**job, "mode": "compiled", "error": f"skipped: {left:.0f} s of --budget left"} for job in jobs]
                continue
            started = time.perf_counter()
            timeout = max(args.compile_timeout, 400) if args.cpu_smoke else min(args.compile_timeout, left)  # CPU compiles slowly
            rows += spawn(jobs, compiled_cfg, device, timeout=timeout)
            print(f"[gpu_bench] compiled {jobs[0]['what']} {jobs[0]['precision']} done in "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
    if args.cpu_smoke and not args.no_compile:
        print("[gpu_bench] (smoke: the compiled rows use a tiny test encoder; on the GPU they use the real one)")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    failed = [r for r in rows if "error" in r]
    if failed and len(failed) == len(rows):
        raise SystemExit(1)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
