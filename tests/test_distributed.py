"""Training on several processes (src/training/distributed.py): two CPU ranks on gloo stand in for GPUs.

The fast tests check the sharding arithmetic and that validation shared out over two ranks gives exactly
one process's oof and score. The slow ones launch `bash train.sh gpus=2` (torchrun) end to end: one run
folder, one W&B run, and a run killed after its first epoch that resumes to the very same weights.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from fake_training_data import install_folds, make_tiny_dataset, overrides
from src.training import distributed

ROOT = Path(__file__).resolve().parent.parent
TINY_CNN = ["config=cnn3d", "cnn3d.shape=[8,16,16]", "cnn3d.widths=[4,8]", "cnn3d.blocks=1"]
RUN = dict(epochs=2, max_steps_per_epoch=3, batch_size=2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # 15 studies: 3 validate on fold 0, so batches of 2 leave the second rank a batch of 1
    data = make_tiny_dataset(tmp_path_factory.mktemp("ddp"), n_studies=15)
    install_folds(data)
    return data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_as_rank(rank: int, world: int, port: int) -> None:
    """What torchrun would have set up for this process."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)  # as under torchrun, so sums are taken in the same order


# ---- the arithmetic, no processes ----

@pytest.mark.parametrize("n_items,batch_size,world", [(3, 2, 2), (10, 3, 2), (7, 2, 3), (1, 4, 2), (0, 2, 2)])
def test_batch_shards_deal_whole_one_process_batches_covering_every_item_once(n_items, batch_size, world):
    shards = [distributed.batch_shards(n_items, batch_size, r, world) for r in range(world)]
    one_process = distributed.batch_shards(n_items, batch_size, 0, 1)
    dealt = sorted((b for shard in shards for b in shard), key=lambda b: b[0])
    assert dealt == one_process
    assert sorted(i for b in dealt for i in b) == list(range(n_items))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1  # no rank gets more than one batch extra


def test_batch_shards_refuse_a_zero_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        distributed.batch_shards(4, 0, 0, 2)


def test_merge_batches_restores_dataset_order_and_the_loss_sum():
    logits = np.arange(5 * 8, dtype=np.float32).reshape(5, 8)
    batches = [(0, 0.1 * 2, 2, {"logits": logits[0:2]}), (2, 0.3 * 2, 2, {"logits": logits[2:4]}),
               (4, 0.7, 1, {"logits": logits[4:5]})]
    rank0, rank1 = [batches[0], batches[2]], [batches[1]]
    loss_sum, n, outputs = distributed.merge_batches([rank1, rank0])
    np.testing.assert_array_equal(outputs["logits"], logits)
    assert n == 5 and loss_sum == 0.0 + 0.1 * 2 + 0.3 * 2 + 0.7  # summed in batch order, as one process does
    assert distributed.merge_batches([[], []]) == (0.0, 0, {})


def test_env_context_reads_torchrun_variables_and_refuses_nonsense():
    assert distributed.env_context({}) == distributed.Context()
    ctx = distributed.env_context({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert (ctx.rank, ctx.local_rank, ctx.world_size, ctx.enabled, ctx.is_main) == (3, 1, 4, True, False)
    with pytest.raises(RuntimeError, match="torchrun"):
        distributed.env_context({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(RuntimeError, match="integers"):
        distributed.env_context({"RANK": "x", "WORLD_SIZE": "2"})


def test_rank_streams_picks_this_ranks_rng_state_or_none():
    state = {"rng": "rank0", "rng_per_rank": ["a", "b"]}
    assert distributed.rank_streams(state, distributed.Context()) == "rank0"
    assert distributed.rank_streams(state, distributed.Context(rank=1, world_size=2)) == "b"
    assert distributed.rank_streams(state, distributed.Context(rank=1, world_size=3)) is None  # other job size
    assert distributed.rank_streams({"rng": "r"}, distributed.Context(rank=0, world_size=2)) is None


def test_main_first_builds_on_rank_0_then_each_nodes_first_rank_then_the_rest(monkeypatch):
    """Two nodes of two ranks: where each rank runs the block relative to the two barriers, and whether it
    runs it as a one-process job (a localiser trained there must not wait for the others)."""
    seen = {}
    for ctx in [distributed.Context(rank=r, world_size=4, local_rank=r % 2) for r in range(4)]:
        events = []
        monkeypatch.setattr(distributed, "_context", ctx)
        monkeypatch.setattr(distributed, "wait", lambda events=events: events.append("barrier"))
        with distributed.main_first():
            events.append("alone" if not distributed.current().enabled else "block")
        assert distributed.current() is ctx  # back to the job afterwards
        seen[ctx.rank] = events
    assert seen[0] == ["alone", "barrier", "barrier"]
    assert seen[2] == ["barrier", "alone", "barrier"]  # first rank of the second node
    assert seen[1] == seen[3] == ["barrier", "barrier", "block"]


# ---- two ranks on gloo ----

def task_for(args):
    from src.config import load_config
    from src.data.folds import ensure_folds
    from src.tasks import get_task_class

    cfg = load_config(args)
    return cfg, get_task_class("volume")(cfg, cfg["data_dir"], cfg["cache_dir"], ensure_folds(cfg, cfg["data_dir"]))


def _evaluate_on_rank(rank, world, port, args, checkpoint, out_dir):
    join_as_rank(rank, world, port)
    from src.training.evaluate import evaluate_checkpoint

    distributed.setup("cpu")
    try:
        cfg, task = task_for(args)
        metrics, oof = evaluate_checkpoint(cfg, task, checkpoint)
        if rank == 0:
            oof.to_csv(Path(out_dir) / "oof.csv", index=False)
            (Path(out_dir) / "score.json").write_text(json.dumps({"score": metrics["score"]}))
        else:
            assert metrics is None and oof is None
    finally:
        distributed.shutdown()


def test_validation_shared_over_two_ranks_gives_exactly_one_processes_oof_and_score(tiny, tmp_path):
    from src.models.registry import build_model
    from src.models.checkpoint import model_state
    from src.training.checkpoint import save_checkpoint
    from src.training.evaluate import evaluate_checkpoint

    args = TINY_CNN + overrides(tiny, batch_size=2)
    cfg, task = task_for(args)
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # weights far from the label prior: predictions that differ between studies
        for param in model.parameters():
            param.normal_(0, 0.5)
    checkpoint = tmp_path / "best.pt"
    save_checkpoint(checkpoint, model=model_state(model))

    torch.set_num_threads(1)
    try:
        metrics, oof = evaluate_checkpoint(cfg, task, checkpoint)
    finally:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    mp.spawn(_evaluate_on_rank, args=(2, free_port(), args, checkpoint, str(tmp_path)), nprocs=2)

    assert len(oof) == 3 and oof["StudyInstanceUID"].is_unique
    assert (tmp_path / "oof.csv").read_text() == oof.to_csv(index=False)  # the file, character for character
    assert json.loads((tmp_path / "score.json").read_text())["score"] == metrics["score"]


# ---- end to end through train.sh (torchrun) ----

def train_sh(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", WANDB_MODE="offline", WANDB_SILENT="true")
    done = subprocess.run(["bash", str(ROOT / "train.sh"), "gpus=2", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def run_args(tiny, runs_dir: Path, wandb_dir: Path, **extra) -> list[str]:
    return TINY_CNN + overrides(tiny, **RUN, **extra, runs_dir=str(runs_dir)) + ["wandb.mode=offline",
                                                                                    f"wandb.dir={wandb_dir}"]


@pytest.fixture(scope="module")
def two_rank_run(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("straight")
    done = train_sh(run_args(tiny, root / "runs", root), cwd=root)
    return {"root": root, "folder": root / "runs" / "cnn3d" / "fold0", "stdout": done.stdout}


def wandb_ids(wandb_dir: Path) -> list[str]:
    return [p.name.rsplit("-", 1)[-1] for p in sorted((wandb_dir / "wandb").glob("offline-run-*"))]


@pytest.mark.slow
def test_two_ranks_write_one_run_folder_one_wandb_run_and_one_processes_oof(tiny, two_rank_run):
    folder = two_rank_run["folder"]
    runs = two_rank_run["root"] / "runs"
    assert [p.relative_to(runs) for p in runs.glob("*/*") if not p.name.startswith(".")] == [Path("cnn3d/fold0")]
    assert (runs / "cnn3d" / ".fold0.lock").exists()  # rank 0 alone took the folder's lock
    for name in ["config.yaml", "last.pt", "best.pt", "history.csv", "metrics.json", "oof.csv"]:
        assert (folder / name).exists(), name
    assert list(pd.read_csv(folder / "history.csv")["epoch"]) == [0, 1]
    assert two_rank_run["stdout"].count("[done]") == 1 and "x 2 processes" in two_rank_run["stdout"]  # rank 0 prints

    ids = wandb_ids(two_rank_run["root"])
    last = torch.load(folder / "last.pt", weights_only=True)
    assert ids == [last["wandb_id"]]
    assert len(last["rng_per_rank"]) == 2

    # one process judging the same best.pt writes the same oof.csv and score
    cfg, task = task_for(TINY_CNN + overrides(tiny, batch_size=RUN["batch_size"]))
    from src.training.evaluate import evaluate_checkpoint

    torch.set_num_threads(1)
    try:
        metrics, oof = evaluate_checkpoint(cfg, task, folder / "best.pt")
    finally:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    assert (folder / "oof.csv").read_text() == oof.to_csv(index=False)
    assert json.loads((folder / "metrics.json").read_text())["score"] == metrics["score"]


class Killed(Exception):
    pass


def _train_then_die_after_first_epoch(rank, world, port, args):
    join_as_rank(rank, world, port)
    import src.training.loop as loop
    from src.train import main

    real_save = loop.save_checkpoint

    def save_then_die(path, **content):
        real_save(path, **content)
        if path.name == "last.pt":
            raise Killed("killed after the first epoch's last.pt")

    loop.save_checkpoint = save_then_die
    main(args)


@pytest.mark.slow
def test_a_two_rank_run_killed_after_one_epoch_resumes_to_the_same_weights(tiny, two_rank_run, tmp_path):
    args = run_args(tiny, tmp_path / "runs", tmp_path)
    with pytest.raises(mp.ProcessRaisedException, match="Killed"):
        mp.spawn(_train_then_die_after_first_epoch, args=(2, free_port(), args), nprocs=2)
    folder = tmp_path / "runs" / "cnn3d" / "fold0"
    assert torch.load(folder / "last.pt", weights_only=True)["epoch"] == 0

    done = train_sh(args + ["resume=true"], cwd=tmp_path)
    assert "continuing at epoch 1" in done.stdout
    straight = torch.load(two_rank_run["folder"] / "last.pt", weights_only=True)
    resumed = torch.load(folder / "last.pt", weights_only=True)
    assert resumed["epoch"] == straight["epoch"] == 1
    for key in straight["model"]:
        assert torch.equal(straight["model"][key], resumed["model"][key]), key
    assert list(pd.read_csv(folder / "history.csv")["epoch"]) == [0, 1]
    ids = wandb_ids(tmp_path)
    assert len(ids) == 2 and len(set(ids)) == 1  # two launches, one W&B run (resumed by its id)


def test_train_sh_refuses_a_bad_gpus_value(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "train.sh"), "gpus=two"], cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES=""), timeout=120)
    assert done.returncode == 2 and "gpus and nodes take a whole number" in done.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
