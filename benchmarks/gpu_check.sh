#!/usr/bin/env bash
# One short check (under 5 minutes) for a GPU machine that has python3 with torch, timm, numpy, pandas and
# PyYAML but not this project's data and logging stack. Prints, for the default experiment's real-data
# config (configs/effnet_gru.yaml, top level): training vertebra-samples/s and peak GPU memory for fp32
# vs bf16 and eager vs torch.compile, and inference studies/s, all on synthetic tensors
# (benchmarks/gpu_bench.py); then benchmarks/train_throughput.py --device cuda, and benchmarks/inference.py
# only if everything it imports is there and time is left.
#
#   bash benchmarks/gpu_check.sh                # on the GPU machine, from anywhere
#   bash benchmarks/gpu_check.sh --cpu-smoke    # here, on a CPU: tiny shapes, proves the script runs
#
# Wheels in .whl/ (ignored by git) are installed into /tmp/site first when present, for the optional parts.
# GPU_CHECK_BUDGET (seconds, default 285) bounds the whole script; each part gets what is left.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && ! "$PY" -c "import torch" 2>/dev/null && PY=.venv/bin/python
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
budget="${GPU_CHECK_BUDGET:-285}"
start=$SECONDS
left() { echo $(( budget - (SECONDS - start) )); }

smoke=0
[ "${1:-}" = "--cpu-smoke" ] && smoke=1

if compgen -G ".whl/*.whl" >/dev/null; then
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        2>/tmp/gpu_check_pip.log; then
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
        echo "[gpu_check] installed $(ls .whl/*.whl | wc -l) wheels from .whl/ into /tmp/site"
    else
        echo "[gpu_check] could not install .whl/ (see /tmp/gpu_check_pip.log); going on without them"
    fi
fi

echo "== machine"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" - <<'EOF'
import platform, torch, timm
print(f"python {platform.python_version()}, torch {torch.__version__}, timm {timm.__version__}, "
      f"cuda {torch.version.cuda}, visible GPUs {torch.cuda.device_count()}")
EOF

echo "== effnet_gru (real-data config), synthetic tensors: benchmarks/gpu_bench.py"
if [ "$smoke" = 1 ]; then
    "$PY" benchmarks/gpu_bench.py --cpu-smoke
else
    "$PY" benchmarks/gpu_bench.py --budget "$(( $(left) - 55 ))"
fi
status=$?

echo "== benchmarks/train_throughput.py --device cuda"
if [ "$smoke" = 1 ]; then
    echo "skipped in --cpu-smoke (needs CUDA)"
elif [ ! -f benchmarks/train_throughput.py ]; then
    echo "skipped: not in this checkout"
elif [ "$(left)" -lt 40 ]; then
    echo "skipped: $(left) s of the budget left"
else
    timeout "$(( $(left) - 5 ))" "$PY" benchmarks/train_throughput.py --device cuda --only real --steps 3 --warmup 1 \
        || echo "train_throughput.py stopped (exit $?)"
fi

echo "== benchmarks/inference.py --device cuda"
missing=$("$PY" - <<'EOF' 2>/dev/null
import importlib
need = ["omegaconf", "pydicom", "monai", "nibabel", "src.inference.pipeline", "src.synth.generate"]
gone = []
for name in need:
    try:
        importlib.import_module(name)
    except Exception as err:  # the module itself or one of its imports is absent
        gone.append(f"{name} ({type(err).__name__}: {err})")
print("; ".join(gone))
EOF
)
if [ "$smoke" = 1 ]; then
    echo "skipped in --cpu-smoke (needs CUDA)${missing:+; would also lack: $missing}"
elif [ ! -f benchmarks/inference.py ]; then
    echo "skipped: not in this checkout"
elif [ -n "$missing" ]; then
    echo "skipped: this machine lacks $missing (carry their wheels in .whl/ to include it)"
elif [ "$(left)" -lt 90 ]; then
    echo "skipped: $(left) s of the budget left (it generates full-size DICOM studies first; run it alone)"
else
    timeout "$(( $(left) - 5 ))" "$PY" benchmarks/inference.py --device cuda --studies 2 || echo "inference.py stopped (exit $?)"
fi
echo "[gpu_check] done in $(( SECONDS - start )) s"
exit $status
