"""Training speed of the EfficientNet + GRU classifier: vertebra-samples per second and peak memory.

    python benchmarks/train_throughput.py                       # demo and real-data settings, CPU
    python benchmarks/train_throughput.py --device cuda         # on a GPU (bf16 autocast, as training)
    python benchmarks/train_throughput.py --only real --slices 8 --vertebrae 1 --batch 1

Each setting runs in its own process so that its peak memory is its own. A step is what the training
loop does per batch (forward, competition-style loss, backward, AdamW step) on random inputs shaped like
the dataset's items, so the figure is the model's cost alone (the data pipeline is separate and on the
demo much cheaper). A vertebra-sample is one vertebra's stack of ``n_slices`` crops; one study is seven.
On a CPU the real-data settings are capped (``--slices``, ``--vertebrae``) to fit the time and memory;
the printed line says which cap was used. Needs only torch, timm and PyYAML (numpy, pandas via the loss).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def settings(which: str, overrides: dict) -> dict:
    """The effnet_gru experiment's config as a plain dict: its top level (real data) or with its on_demo
    section. Read with PyYAML alone (the GPU box has no omegaconf); the model accepts a dict."""
    import yaml

    def merge(base: dict, child: dict) -> dict:
        out = dict(base)
        for key, value in child.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    base = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    experiment = yaml.safe_load((ROOT / "configs" / "effnet_gru.yaml").read_text())
    experiment.pop("inherit", None)
    on_demo = experiment.pop("on_demo", None) or {}
    cfg = merge(base, experiment)
    if which == "demo":
        cfg = merge(cfg, on_demo)
    return merge(cfg, overrides)


def measure(which: str, device_name: str, steps: int, warmup: int, batch: int | None, slices: int | None,
            vertebrae: int, threads: int | None, checkpointing: str | None = None) -> dict:
    import resource

    import torch

    from src.models.effnet_gru import EffNetGRU, input_channels

    if threads:
        torch.set_num_threads(threads)
    overrides = {"pretrained": False, "effnet_gru": {"n_slices": slices} if slices else {}}
    if checkpointing:
        overrides["effnet_gru"]["grad_checkpointing"] = checkpointing == "on"
    cfg = settings(which, overrides)
    c = cfg["effnet_gru"]
    device = torch.device(device_name)
    batch = batch or cfg["batch_size"]
    model = EffNetGRU(cfg).to(device)
    if cfg["channels_last"] and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    shape = (batch, vertebrae, c["n_slices"], input_channels(cfg), c["crop_size"], c["crop_size"])
    images = torch.rand(shape, device=device)
    labels = (torch.rand(batch, vertebrae, device=device) < 0.2).float()
    use_bf16 = device.type == "cuda"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            pooled, _, _ = model.embed_vertebrae(images)
            logits = model.vertebra_head(pooled).squeeze(-1).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, weight=1 + labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    result = {
        "setting": which, "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads",
        "encoder": c["encoder"], "n_slices": c["n_slices"], "channels": input_channels(cfg), "crop_size": c["crop_size"],
        "batch_studies": batch, "vertebrae_per_study": vertebrae, "grad_checkpointing": bool(c["grad_checkpointing"]),
        "steps": steps, "seconds": round(seconds, 2),
        "vertebra_samples_per_s": round(batch * vertebrae * steps / seconds, 2),
        "slice_images_per_s": round(batch * vertebrae * c["n_slices"] * steps / seconds, 1),
    }
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    result["peak_process_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--only", choices=["demo", "real"], help="one setting (default: both)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 5 demo / 2 real on CPU, 20 on GPU)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=None, help="studies per step (default: the config's batch_size)")
    parser.add_argument("--slices", type=int, default=None, help="cap n_slices (CPU default for real: 4)")
    parser.add_argument("--vertebrae", type=int, default=None, help="vertebrae per study (default 7; CPU real: 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--grad-checkpointing", choices=["on", "off"], help="override the config's choice")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # one measurement, in its own process: print it as JSON
        print(json.dumps(measure(args.only, args.device, args.steps, args.warmup, args.batch, args.slices,
                                 args.vertebrae, args.threads, args.grad_checkpointing)))
        return
    cpu = args.device == "cpu"
    for which in [args.only] if args.only else ["demo", "real"]:
        capped_real = cpu and which == "real"
        cmd = [sys.executable, __file__, "--child", "--only", which, "--device", args.device,
               "--warmup", str(args.warmup),
               "--steps", str(args.steps or (20 if not cpu else 2 if which == "real" else 5)),
               "--vertebrae", str(args.vertebrae or (1 if capped_real else 7))]
        slices = args.slices or (4 if capped_real else None)
        batch = args.batch or (1 if capped_real else None)
        for flag, value in (("--slices", slices), ("--batch", batch), ("--threads", args.threads),
                            ("--grad-checkpointing", args.grad_checkpointing)):
            if value:
                cmd += [flag, str(value)]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{which}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        cap = " (capped for the CPU)" if capped_real and not (args.slices or args.vertebrae) else ""
        print(f"{which:5s}{cap}: {result['encoder']} {result['n_slices']} slices x {result['channels']} ch x "
              f"{result['crop_size']} px, {result['batch_studies']} studies x {result['vertebrae_per_study']} vertebrae "
              f"per step on {result['device']}: {result['vertebra_samples_per_s']} vertebra-samples/s "
              f"({result['slice_images_per_s']} slice images/s), peak "
              + (f"GPU {result['peak_gpu_memory_gib']} GiB, " if "peak_gpu_memory_gib" in result else "")
              + f"RSS {result['peak_process_rss_gib']} GiB")
        print(json.dumps(result))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
