#!/usr/bin/env bash
# Run the test suite: `bash test.sh` (fast tests), `bash test.sh -m slow` (the slow ones), any pytest args.
# Sets up .venv on first use. Tests run on CPU, offline, on tiny synthetic data.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_venv.sh
export WANDB_MODE=offline CUDA_VISIBLE_DEVICES=""
if [ $# -eq 0 ]; then set -- -m "not slow"; fi
exec python -m pytest -q "$@"
