#!/usr/bin/env bash
# One epoch of the default experiment's real-data config on full-size synthetic studies, on a GPU (issue 18):
# configs/effnet_gru.yaml's top level (tf_efficientnetv2_s, 24 slices x 7 vertebrae a study, 384 px crops,
# the auxiliary loss at 0.25, bf16, 2 studies a batch) through the real pipeline: DICOM written by
# src.synthesise size=full (512 px, 200-600 slices), the HU cache, a localiser trained one epoch for the
# table, then src.train. Prints the training vertebra-samples/s (history.csv's train_items_per_s x 7) and
# peak GPU memory (peak_gpu_gib) of that epoch. The encoder starts from random weights (pretrained=false:
# nothing is downloaded), which changes neither figure.
#
#   bash benchmarks/gpu_epoch.sh                 # on the GPU machine; N studies (default 24), about 6-8 minutes
#   N=8 bash benchmarks/gpu_epoch.sh --cpu-smoke # here: demo-size studies and the demo profile; proves it runs
#
# Everything is written under GPU_EPOCH_DIR (default /tmp/gpu_epoch), reused when run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
N="${N:-24}"
WORK="${GPU_EPOCH_DIR:-/tmp/gpu_epoch}"
size=full profile=real device=cuda workers="$(nproc)"
if [ "${1:-}" = "--cpu-smoke" ]; then
    size=demo profile=demo device=cpu workers=2
fi
common=("data_dir=$WORK/data" "cache_dir=$WORK/cache" "folds_dir=$WORK/folds" "runs_dir=$WORK/runs"
        "profile=$profile" "device=$device" "n_folds=4" "fold=0" "wandb.mode=disabled" "progress=false"
        "prepare.workers=$workers")
start=$SECONDS
stamp() { echo "[gpu_epoch] $1 ($(( SECONDS - start )) s)"; }

if [ ! -f "$WORK/data/train.csv" ]; then
    "$PY" -m src.synthesise "out=$WORK/data" "n_train=$N" n_test=0 "size=$size" seed=11 seg_fraction=1.0 \
        "workers=$workers" progress=false >/dev/null
fi
stamp "$N synthetic $size studies in $WORK/data"
"$PY" -m src.localise "${common[@]}" epochs=1 "localiser.folds=[0]"
stamp "cache and localisation table"
"$PY" -m src.train "${common[@]}" epochs=1 pretrained=false explain_studies=0 overwrite=true
stamp "one epoch of effnet_gru"

"$PY" - "$WORK/runs/effnet_gru/fold0" <<'EOF'
import sys
from pathlib import Path

import pandas as pd
import yaml

folder = Path(sys.argv[1])
row = pd.read_csv(folder / "history.csv").iloc[-1]
cfg = yaml.safe_load((folder / "config.yaml").read_text())
settings = cfg["effnet_gru"]
per_item = 1 if settings["train_unit"] == "vertebra" else 7
peak = f"{row['peak_gpu_gib']:.2f} GiB" if "peak_gpu_gib" in row else "n/a (no GPU)"
print(f"[gpu_epoch] {cfg['profile']} profile: {settings['encoder']}, {settings['n_slices']} slices, "
      f"{settings['crop_size']} px, aux {settings['aux_loss_weight']}, batch {cfg['batch_size']}, "
      f"precision {cfg['precision']}; epoch {row['seconds']:.1f} s")
print(f"[gpu_epoch] training {row['train_items_per_s'] * per_item:.2f} vertebra-samples/s, peak GPU memory {peak}")
EOF
