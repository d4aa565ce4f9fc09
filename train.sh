#!/usr/bin/env bash
# Train one experiment on one fold: `bash train.sh fold=0`, `bash train.sh config=cnn3d fold=1 epochs=2`.
# Sets up .venv on first use, then builds whatever the run lacks (demo data, cache, folds, localisation
# table) and trains; see README.md. Every argument is a key=value override of configs/<config>.yaml.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_venv.sh
exec python -m src.train "$@"
