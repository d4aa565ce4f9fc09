"""Every training run is recorded in W&B: offline without a login, with the config, the per-epoch
metrics, the end-of-run figures and the oof/metrics artifact. Read back with wandb's own `leet inspect`."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fake_training_data import install_folds, make_tiny_dataset, overrides
from src import TARGETS
from src.train import main
from src.config import flatten
from src.training.wandb_log import resolve_mode


def test_mode_auto_is_offline_without_a_login(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_mode("auto") == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("auto") == "disabled"
    assert resolve_mode("offline") == "offline"  # an explicit mode wins


def test_mode_auto_is_online_with_an_api_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"


def test_config_is_flattened_with_dotted_keys():
    assert flatten({"a": 1, "cnn3d": {"shape": [1, 2], "deep": {"x": None}}}) == \
        {"a": 1, "cnn3d.shape": [1, 2], "cnn3d.deep.x": None}


def leet_records(run_dir: Path) -> list[dict]:
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_a_training_run_writes_its_wandb_files_and_history(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    tiny = make_tiny_dataset(tmp_path)
    install_folds(tiny)
    metrics = main(["config=cnn3d", "cnn3d.shape=[8,16,16]", "cnn3d.widths=[4,8]", "tags=[smoke]"]
                   + overrides(tiny, epochs=1) + ["wandb.mode=auto", f"wandb.dir={tmp_path}"])
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    records = leet_records(runs[0])

    run = next(r["run"] for r in records if r["type"] == "run")
    assert run["display_name"] == "cnn3d-fold0" and run["run_group"] == "cnn3d" and run["job_type"] == "train"
    assert set(run["tags"]) >= {"cnn3d", "real", "smoke"}
    config = run["config"]["update"]
    assert "cnn3d.shape" in config and "wandb.mode" in config  # the whole config, flattened

    history_keys = set()
    for record in records:
        if record["type"] == "history":
            history_keys |= set(record["history"]["item"])
    expected = {"train_loss", "val_loss", "score", "lr", "val_C3_auc", *[f"val_{t}_logloss" for t in TARGETS]}
    assert expected <= history_keys, expected - history_keys
    assert {"confusion_matrices.path", "roc_curves.path"} <= history_keys  # the end-of-run images

    summary = {}
    for record in records:
        if record["type"] == "summary":
            summary.update(record["summary"]["update"])
    assert summary["score"] == pytest.approx(metrics["score"])
    artifact = next(r["artifact"] for r in records if r["type"] == "artifact")
    assert artifact["name"] == "cnn3d-fold0-oof"
    assert list((runs[0] / "files" / "media" / "images").glob("*.png"))


_OFFLINE_CHILD = """
import sys
from pathlib import Path
sys.path[:0] = [sys.argv[2], sys.argv[2] + "/tests"]
from fake_training_data import install_folds, make_tiny_dataset, overrides
from src.train import main
root = Path(sys.argv[1])
tiny = make_tiny_dataset(root)
install_folds(tiny)
main(["config=cnn3d", "cnn3d.shape=[8,16,16]", "cnn3d.widths=[4,8]", "cnn3d.blocks=1"]
     + overrides(tiny, epochs=1) + ["wandb.mode=auto", f"wandb.dir={root}"])
"""


def _outward_connects(trace: str) -> list[str]:
    """connect() calls in an strace log to anything but a local socket or the loopback addresses."""
    local = ("sa_family=AF_UNIX", 'inet_addr("127.', 'inet_pton(AF_INET6, "::1"', "AF_NETLINK")
    return [line for line in trace.splitlines() if "connect(" in line and not any(mark in line for mark in local)]


@pytest.mark.slow  # about a minute: wandb's service under strace in a namespace of its own
def test_a_run_without_login_or_wandb_mode_opens_no_network_connection(tmp_path):
    """wandb's service is a separate process, so this watches every process of a tiny training with strace,
    inside a network namespace of its own (loopback only): any connect() elsewhere is a W&B leak."""
    import os
    import shutil

    if not (shutil.which("strace") and shutil.which("unshare") and shutil.which("ip")):
        pytest.skip("needs strace, unshare and ip")
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a network namespace here (needs root or user namespaces)")
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY")}
    env["HOME"] = str(tmp_path / "home")  # no ~/.netrc: not logged in
    (tmp_path / "home").mkdir()
    trace = tmp_path / "connect.trace"
    repo = Path(__file__).resolve().parent.parent
    child = f"{sys.executable} -c '{_OFFLINE_CHILD}' {tmp_path} {repo}"
    out = subprocess.run(["unshare", "-n", "sh", "-c",
                          f"ip link set lo up && strace -f -qq -e trace=connect -o {trace} {child}"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert list((tmp_path / "wandb").glob("offline-run-*")), "the run was not recorded offline"
    assert _outward_connects(trace.read_text()) == []
