# Sourced by train.sh and test.sh: make .venv from requirements.txt unless it is already up to date.
# The stamp holds requirements.txt's checksum, so editing the requirements re-installs them.
set -e
_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${VENV:-$_repo/.venv}"
_stamp="$_venv/.requirements.sha256"
_want="$(sha256sum "$_repo/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$_venv/bin/python" ] || [ "$(cat "$_stamp" 2>/dev/null)" != "$_want" ]; then
    echo "[setup] creating $_venv from requirements.txt (first run only; a few minutes)"
    "${PYTHON:-python3}" -m venv "$_venv"
    "$_venv/bin/python" -m pip install --quiet --upgrade pip
    "$_venv/bin/python" -m pip install --quiet -r "$_repo/requirements.txt"
    echo "$_want" > "$_stamp"
fi
export PATH="$_venv/bin:$PATH"
export WANDB_SILENT="${WANDB_SILENT:-true}"
