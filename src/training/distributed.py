"""Training on several processes with torchrun (PyTorch DDP): who this process is, and the few collective
steps that src/train.py and the training loop (src/training/loop.py) need.

``bash train.sh fold=0 gpus=N`` runs ``torchrun --standalone --nproc_per_node=N -m src.train ...``.
torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; :func:`setup` turns them into a process group (NCCL on
CUDA, gloo on CPU). Without them every function here is a no-op for one process, so the loop keeps a
single code path.

- src/train.py: :func:`setup` / :func:`shutdown`; :func:`main_first` around the build-up (demo data,
  cache, folds, localisation table), so that rank 0 builds and the other ranks only read what it wrote;
  :func:`quiet_unless_main` so that one rank prints.
- the loop: :func:`batch_shards` + :func:`gather_batches` for validation. Each rank predicts whole
  batches of the one-process batch order and the results are put back in that order, so the gathered
  outputs are, bit for bit, what one process computes from the same weights: oof.csv and score match.
  :func:`sync_buffers` before validation, :func:`all_gather_object` for the per-rank RNG states that
  last.pt keeps, :func:`broadcast_object` for the final metrics, :func:`mean_over_ranks` for the loss.

Rank 0 may work alone for a long time while the others wait (building the cache of 2,000 studies,
training the localiser, uploading a W&B artifact); NCCL's watchdog would call that a hang. Those waits
therefore go through a separate gloo group with a long timeout, and everything else through the default.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

LONG_WAIT = timedelta(days=2)  # rank 0 building the real cache or localiser: hours, not minutes


@dataclass(frozen=True)
class Context:
    """This process's place in the job; the default is the one-process job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_SINGLE = Context()
_context = _SINGLE
_wait_group = None
_alone = False  # inside main_first on rank 0: the work there runs as a one-process job


def env_context(environ=None) -> Context:
    """The Context torchrun's environment variables describe (one process when they are absent)."""
    environ = os.environ if environ is None else environ
    try:
        world = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", "0"))
        local_rank = int(environ.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise RuntimeError(f"RANK / LOCAL_RANK / WORLD_SIZE must be integers ({err}); launch with torchrun "
                           f"(bash train.sh gpus=N) or unset them for one process") from None
    if world < 1 or not 0 <= rank < world:
        raise RuntimeError(f"RANK={rank} and WORLD_SIZE={world} do not describe a job; launch with torchrun")
    return Context(rank=rank, world_size=world, local_rank=local_rank)


def current() -> Context:
    return _SINGLE if _alone else _context


def setup(device: str = "auto") -> Context:
    """Join the job torchrun started (if any). ``device`` is the config's (auto | cpu | cuda): CUDA ranks
    use NCCL, each on the GPU of its LOCAL_RANK; CPU ranks use gloo."""
    global _context, _wait_group
    ctx = env_context()
    if not ctx.enabled or dist.is_initialized():
        _context = ctx if dist.is_initialized() else _SINGLE
        return _context
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if device == "cuda" and not use_cuda:
        raise RuntimeError("device=cuda but no CUDA device is visible; use device=auto or device=cpu")
    if use_cuda:
        visible = torch.cuda.device_count()
        if ctx.local_rank >= visible:
            raise RuntimeError(f"local rank {ctx.local_rank} has no GPU: {visible} visible on this node; "
                               f"ask for at most gpus={visible} (or --nproc_per_node={visible})")
        torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", ctx.local_rank))
    else:
        dist.init_process_group("gloo")
    _wait_group = dist.new_group(backend="gloo", timeout=LONG_WAIT)
    _context = ctx
    return ctx


def shutdown() -> None:
    global _context, _wait_group
    if dist.is_initialized():
        dist.destroy_process_group()
    _context, _wait_group = _SINGLE, None


def wait() -> None:
    """Barrier over all ranks, patient enough for rank 0's long solo steps."""
    if current().enabled:
        dist.barrier(group=_wait_group)


@contextlib.contextmanager
def main_first():
    """Run the block on rank 0 first, then on the first rank of every other node, then on the rest.

    Rank 0 builds what is missing (demo data, cache, folds, localisation table) as a one-process job, so
    a localiser it trains does not wait for the others. With the data on storage every node shares, the
    later ranks find everything built; a node with its own disk gets it built once, by its first rank.
    Every rank passes the same two barriers. A no-op for one process.
    """
    global _alone
    ctx = current()
    if not ctx.enabled:
        yield
        return
    builds = ctx.is_main or ctx.local_rank == 0  # phase 1: rank 0; phase 2: each other node's first rank
    if not ctx.is_main:
        wait()
    if not builds:
        wait()
        yield
        return
    _alone = True
    try:
        yield
    finally:
        _alone = False
    # not reached when the block fails: torchrun then stops the waiting ranks
    wait()
    if ctx.is_main:
        wait()


@contextlib.contextmanager
def quiet_unless_main():
    """Standard output of ranks other than 0 goes nowhere (errors and warnings still show)."""
    if current().is_main:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def all_gather_object(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    ctx = current()
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj, group=_wait_group)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank."""
    if not current().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_wait_group)
    return box[0]


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over the ranks; NaN or inf on any rank makes it non-finite on all of them,
    so every rank stops at the same step instead of some waiting forever for the others."""
    if not current().enabled:
        return value
    total = value.detach().float().clone()
    dist.all_reduce(total)
    return total / current().world_size


def sync_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every rank. DDP broadcasts them before
    each training forward, so after the last one each rank holds its own update; validation must use
    rank 0's, the ones best.pt and last.pt keep."""
    if current().enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


# ---- sharded validation: pure functions of sizes and arrays, tested without processes ----

def batch_shards(n_items: int, batch_size: int, rank: int, world_size: int) -> list[list[int]]:
    """This rank's validation batches: the one-process batches (0..B-1, B..2B-1, ...) dealt out in turn.

    Whole batches, not items, so every batch a rank predicts is one that a single process predicts too:
    a convolution's result can depend on the batch it is computed in, and the outputs must match exactly.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    batches = [list(range(start, min(start + batch_size, n_items))) for start in range(0, n_items, batch_size)]
    return batches[rank::world_size]


def merge_batches(parts: list[list[tuple]]) -> tuple[float, int, dict]:
    """Put every rank's ``(first_index, loss_sum, n_with_loss, outputs)`` batches back in one-process order.

    Returns the loss summed in that order (so even its rounding matches one process), the number of
    items with a loss, and each output key's array over all items in dataset order.
    """
    batches = sorted((b for part in parts for b in part), key=lambda b: b[0])
    loss_sum, n_with_loss, collected = 0.0, 0, {}
    for _, batch_loss, n, outputs in batches:
        loss_sum += batch_loss
        n_with_loss += n
        for key, value in outputs.items():
            collected.setdefault(key, []).append(value)
    return loss_sum, n_with_loss, {key: np.concatenate(parts) for key, parts in collected.items()}


def gather_batches(own: list[tuple]) -> tuple[float, int, dict]:
    """:func:`merge_batches` over all ranks, on every rank (so that every rank can check the outputs)."""
    return merge_batches(all_gather_object(own))


def rank_streams(state: dict, ctx: Context | None = None) -> dict | None:
    """This rank's RNG states from a checkpoint written by the loop, or None if it holds none for it."""
    ctx = ctx or current()
    per_rank = state.get("rng_per_rank")
    if not ctx.enabled:
        return state["rng"]
    if per_rank is not None and len(per_rank) == ctx.world_size:
        return per_rank[ctx.rank]
    return None

