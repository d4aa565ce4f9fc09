"""Prepare throughput end to end (read, order by z, HU, resize, write the cache), beside the naive path.

    python benchmarks/prepare.py                             # 2 studies x 200 slices, about 2-3 minutes
    python benchmarks/prepare.py --studies 4 --slices 300 --workers 1 2
    python benchmarks/prepare.py --source generator          # studies from src.synth (size="full")

Full-size 512x512 synthetic studies in the real data's format mix (every other slice JPEG Lossless,
the rest uncompressed), plus one JPEG 2000 study reported apart (its decoder is ~10x slower). Each
measurement runs in its own process, so its peak memory is its own:

- ``ours``: src.data.prepare.prepare_dataset with N workers; slices/s by wall clock and per CPU-second,
  studies/s, peak RSS per worker;
- ``naive``: what the project before ours did, one process: pydicom per slice, HU, bone window to
  uint8, resize, write a JPEG file per slice (lossy, and one file per slice).

Files are in the page cache when timed, so this is the CPU cost; the note at the end turns the
per-core figure into the time and disk bandwidth needed for the real train set (711,601 slices) on
16 cores.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

REAL_TRAIN_SLICES = 711_601
TARGET_CORES = 16

OURS = r"""
import json, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from src.data.prepare import prepare_dataset
wall = time.perf_counter()
summary = prepare_dataset(Path({data!r}), Path({cache!r}), size={size}, workers={workers}, min_slices=5,
                          progress=False)
print(json.dumps({{"wall": time.perf_counter() - wall, "cpu": summary["cpu_seconds"], "slices": summary["slices"],
                  "studies": summary["done"], "peak_mb": summary["peak_worker_rss_mb"]}}))
"""

NAIVE = r"""
import json, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
import cv2, numpy as np, pydicom
from src.data.prepare import peak_rss_mb
cv2.setNumThreads(1)
data, out, size = Path({data!r}), Path({out!r}), {size}
wall, cpu = time.perf_counter(), time.process_time()
n = 0
for study in sorted((data / "train_images").iterdir()):
    target = out / study.name
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(study.glob("*.dcm"), key=lambda p: int(p.stem)):
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        image = np.clip((hu - (400 - 900)) / 1800 * 255, 0, 255).astype(np.uint8)
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(target / (path.stem + ".jpg")), image)
        n += 1
print(json.dumps({{"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "slices": n,
                  "peak_mb": peak_rss_mb()}}))
"""


def run_child(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_simple_dataset(data: Path, studies: int, slices: int, syntaxes: list[str], seed: int) -> None:
    """Kaggle-layout studies of CT-like 512x512 slices (benchmarks/decode.py's pattern), head first."""
    from benchmarks.decode import ct_like_slice
    from src.synth.dicom_writer import write_series

    rng = np.random.default_rng(seed)
    for k in range(studies):
        uid = f"1.2.826.0.1.3680043.8.498.{seed}{k:04d}"
        hu = np.stack([ct_like_slice(rng, level=i) for i in range(slices)])
        per_slice = [syntaxes[i % len(syntaxes)] for i in range(slices)]
        write_series(data / "train_images" / uid, hu, study_uid=uid, slice_numbers=list(range(1, slices + 1)),
                     z_positions=[-0.8 * i for i in range(slices)], pixel_spacing=(0.35, 0.35), slice_thickness=0.8,
                     transfer_syntaxes=per_slice)
    (data / "train.csv").write_text("StudyInstanceUID,patient_overall,C1,C2,C3,C4,C5,C6,C7\n")


def write_generator_dataset(data: Path, studies: int, seed: int) -> None:
    from src.synth.generate import generate_dataset

    generate_dataset(data, n_train=studies, n_test=0, size="full", seed=seed, seg_fraction=0.0, progress=False)


def file_mix(data: Path) -> tuple[float, dict]:
    import pydicom

    sizes, syntaxes = [], {}
    for path in (data / "train_images").rglob("*.dcm"):
        sizes.append(path.stat().st_size)
        name = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID.name
        syntaxes[name] = syntaxes.get(name, 0) + 1
    return float(np.mean(sizes)) / 1024, syntaxes


def report(label: str, result: dict, workers: int) -> float:
    per_cpu = result["slices"] / result["cpu"] if result["cpu"] else float("nan")
    wall_rate = result["slices"] / result["wall"]
    studies = f"{result['studies'] / result['wall']:5.2f} studies/s, " if "studies" in result else " " * 18
    print(f"  {label:38s} {per_cpu:5.0f} slices/CPU-s | wall {result['wall']:5.1f} s: {wall_rate:5.0f} slices/s, "
          f"{studies}| peak RSS {result['peak_mb']:4.0f} MB" + (" per worker" if workers > 1 else ""), flush=True)
    return per_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=2)
    parser.add_argument("--slices", type=int, default=200, help="slices per study (source simple)")
    parser.add_argument("--size", type=int, default=256, help="cached in-plane size")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--j2k-slices", type=int, default=40, help="slices of the JPEG 2000 study (0: skip)")
    parser.add_argument("--source", choices=["simple", "generator"], default="simple")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="prepare_bench_") as scratch:
        scratch = Path(scratch)
        data = scratch / "data"
        start = time.perf_counter()
        if args.source == "generator":
            write_generator_dataset(data, args.studies, args.seed)
        else:
            write_simple_dataset(data, args.studies, args.slices, ["explicit_le", "jpeg_lossless"], args.seed)
        kb, mix = file_mix(data)
        n_slices = sum(mix.values())
        print(f"prepare benchmark: {args.studies} {args.source} studies, {n_slices} slices 512x512 "
              f"(mean {kb:.0f} KB/file; {', '.join(f'{v} {k}' for k, v in mix.items())}), "
              f"cached at {args.size}x{args.size}; written in {time.perf_counter() - start:.0f} s")
        print("files in the page cache; slices/CPU-s = slices per second of one busy core (worker start-up excluded),\n"
              "which neighbours on a shared machine do not distort; wall figures are what this machine gave now")

        best_per_cpu = None
        for workers in args.workers:
            result = run_child(OURS.format(root=str(ROOT), data=str(data), cache=str(scratch / f"cache{workers}"),
                                           size=args.size, workers=workers))
            per_cpu = report(f"ours, {workers} worker(s)", result, workers)
            if workers == 1:
                best_per_cpu = per_cpu
        naive = run_child(NAIVE.format(root=str(ROOT), data=str(data), out=str(scratch / "naive"), size=args.size))
        naive_per_cpu = report("naive (pydicom + window + JPEG file)", naive, 1)

        if args.j2k_slices:
            j2k = scratch / "j2k"
            write_simple_dataset(j2k, 1, args.j2k_slices, ["jpeg2000_lossless"], args.seed + 1)
            result = run_child(OURS.format(root=str(ROOT), data=str(j2k), cache=str(scratch / "cache_j2k"),
                                           size=args.size, workers=1))
            report("ours, JPEG 2000 only, 1 worker", result, 1)

        if best_per_cpu is not None:
            seconds = REAL_TRAIN_SLICES / (best_per_cpu * TARGET_CORES)
            disk = best_per_cpu * TARGET_CORES * kb / 1024
            print(f"ours vs naive, per CPU-second: {best_per_cpu / naive_per_cpu:.1f}x")
            print(f"projection: {REAL_TRAIN_SLICES:,} slices on {TARGET_CORES} cores at {best_per_cpu:.0f} "
                  f"slices/CPU-s/core = {seconds / 60:.1f} min of CPU, if the disk delivers {disk:.0f} MB/s "
                  f"({kb:.0f} KB/file); a disk slower than that is the bound")


if __name__ == "__main__":
    main()
