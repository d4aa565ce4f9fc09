#!/usr/bin/env bash
# Train one experiment on one fold: `bash train.sh fold=0`, `bash train.sh config=cnn3d fold=1 epochs=2`.
# Sets up .venv on first use, then builds whatever the run lacks (demo data, cache, folds, localisation
# table) and trains; see README.md. Every argument is a key=value override of configs/<config>.yaml,
# except three that say how many processes train (PyTorch DDP through torchrun, one per GPU):
#   gpus=N                      N processes on this machine (`bash train.sh fold=0 gpus=4`)
#   nodes=M rdzv=HOST:PORT      M machines, each running the same command with its gpus=N; they meet at
#                               HOST:PORT (any one of them, a free port) through torchrun's c10d rendezvous
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_venv.sh

gpus=1
nodes=1
rdzv=""
args=()
for arg in "$@"; do
    case "$arg" in
        gpus=*) gpus="${arg#gpus=}" ;;
        nodes=*) nodes="${arg#nodes=}" ;;
        rdzv=*) rdzv="${arg#rdzv=}" ;;
        *) args+=("$arg") ;;
    esac
done
for value in "$gpus" "$nodes"; do
    if ! [[ "$value" =~ ^[1-9][0-9]*$ ]]; then
        echo "train.sh: gpus and nodes take a whole number of at least 1 (got '$value')" >&2
        exit 2
    fi
done

if [ "$gpus" -eq 1 ] && [ "$nodes" -eq 1 ]; then
    exec python -m src.train "${args[@]+"${args[@]}"}"
fi
if [ "$nodes" -gt 1 ]; then
    if [ -z "$rdzv" ]; then
        echo "train.sh: nodes=$nodes needs rdzv=HOST:PORT, the address every node can reach (e.g. rdzv=node0:29500)" >&2
        exit 2
    fi
    # the same id on every node (and a different one per run) groups the nodes of this job
    exec python -m torch.distributed.run --nnodes="$nodes" --nproc_per_node="$gpus" --rdzv_backend=c10d \
        --rdzv_endpoint="$rdzv" --rdzv_id="${RDZV_ID:-rsna-cspine}" -m src.train "${args[@]+"${args[@]}"}"
fi
exec python -m torch.distributed.run --standalone --nproc_per_node="$gpus" -m src.train "${args[@]+"${args[@]}"}"
