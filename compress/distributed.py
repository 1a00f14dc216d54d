"""torch.distributed for training: the process group, this process's rank and device, seeding and RNG state, and
BatchNorm synchronised over processes.

torchrun's environment describes the job (gloo on CPU, NCCL on CUDA); alone, every function is a no-op. torch's
SyncBatchNorm is CUDA-only: on CUDA (NCCL) it is swapped in; on the CPU (gloo) a small BatchNorm subclass that
all-reduces its moments (differentiably) takes its place.

Teardown is deterministic (`distributed_job` / `shutdown_distributed`): the DDP objects are released, every rank
meets in a final barrier (no rank closes its connections while another still communicates, and no collective is
still in flight), then the group is destroyed, in a `finally`. Without that, when ranks finished at different
moments, a process could reach interpreter finalization with Gloo's worker threads still holding work (DDP keeps the
Gloo group and its threads alive even after destroy_process_group), and abort with "terminate called without an
active exception". A group still alive at exit (an exception on the way out) is destroyed by an atexit handler,
while the interpreter is still whole.
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import gc
import os
import random
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn



@dataclasses.dataclass(frozen=True)
class DistInfo:
    """This process's place in a torch.distributed job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # this module initialised the process group and tears it down

    @property
    def main(self) -> bool:
        return self.rank == 0


_EXIT_HOOK = False  # _destroy_at_exit registered


def init_distributed(*, cuda: bool | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment (gloo on CPU, NCCL on CUDA); no-op when alone.
    `cuda`: whether the job trains on GPUs (default: when CUDA is available; --device cpu says no)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1:
        return DistInfo()
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda:
        torch.cuda.set_device(local_rank)
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, owned=False)
    # rank 0 evaluates alone at the end while the others wait in a barrier: allow a long evaluation
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=3))
    global _EXIT_HOOK
    if not _EXIT_HOOK:
        atexit.register(_destroy_at_exit)
        _EXIT_HOOK = True
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, owned=True)


def shutdown_distributed(info: DistInfo, *, ok: bool = True) -> None:
    """End this process's part of the job deterministically; a no-op alone or without a process group.

    Unreachable objects (a DDP wrapper, its reducer and autograd hooks) are collected first. `ok` (this rank got
    here normally, and so do the others): a final barrier, so every rank has finished all its collectives (Gloo's
    barrier also waits for this process's pending work) before any rank closes its connections. Then the group is
    destroyed when this module created it (`info.owned`), in a finally, so also when the barrier fails. Not `ok`
    (an exception is on its way out): no barrier, which the other ranks might never reach; destroy at once.
    """
    if info.world <= 1 or not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    try:
        if ok:
            dist.barrier()
    finally:
        if info.owned:
            dist.destroy_process_group()


@contextlib.contextmanager
def distributed_job(*, cuda: bool | None = None) -> Iterator[DistInfo]:
    """`with distributed_job() as info:` joins the process group (init_distributed) and tears it down on the way
    out (shutdown_distributed: a final barrier when the block ended normally, destroy in any case). Keep DDP objects
    local to a function called inside the block, so that they are gone before the teardown."""
    info = init_distributed(cuda=cuda)
    ok = False
    try:
        yield info
        ok = True
    finally:
        shutdown_distributed(info, ok=ok)


def _destroy_at_exit() -> None:
    # a group left at exit (an exception skipped the teardown) goes while the interpreter is whole, not during its
    # finalization; no barrier: the other ranks may be gone
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def select_device(info: DistInfo) -> torch.device:
    return torch.device("cuda", info.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def all_reduce_mean(values: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Average logged scalars over ranks, so that every rank logs and checks the same numbers (and a non-finite
    loss stops every rank at the same step instead of leaving the others waiting in an all-reduce)."""
    if info.world == 1:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(values, (t / info.world).tolist()))


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose gradient is again the sum over processes (each rank's loss depends on every
    rank's input through the shared batch statistics)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _SyncBatchNormMixin:
    """BatchNorm whose training statistics are those of the global batch over all processes (two-pass mean and
    variance through differentiable all-reduces). Outside training or without a process group it is plain BN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        count = torch.tensor([xf.numel() / xf.shape[1]], dtype=xf.dtype, device=xf.device)
        n = all_reduce(count)
        mean = all_reduce(xf.sum(dims)) / n  # (C,)
        var = all_reduce(((xf - mean.view(shape)) ** 2).sum(dims)) / n  # biased, as used for normalising
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1), alpha=m)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


class _SyncBatchNorm1d(_SyncBatchNormMixin, nn.BatchNorm1d):
    pass


class _SyncBatchNorm2d(_SyncBatchNormMixin, nn.BatchNorm2d):
    pass


_SYNC_BN = {nn.BatchNorm1d: _SyncBatchNorm1d, nn.BatchNorm2d: _SyncBatchNorm2d}


def set_sync_batchnorm(model: nn.Module, enabled: bool, *, cuda: bool = False) -> int:
    """Switch BatchNorm1d/2d layers to (or back from) a synchronised variant in place, keeping the parameter and
    buffer objects and state_dict keys. `cuda`: torch.nn.SyncBatchNorm (NCCL's fused kernels), else this module's
    all-reduce variant (any backend, gloo on the CPU). Returns the number of layers switched."""
    n = 0
    for m in model.modules():
        if enabled and type(m) in _SYNC_BN:
            m._plain_class = type(m)  # restored when switched back
            m.__class__ = nn.SyncBatchNorm if cuda else _SYNC_BN[type(m)]
            if cuda:
                m.process_group = None  # the default group, as SyncBatchNorm's constructor sets it
            n += 1
        elif not enabled and hasattr(m, "_plain_class"):
            m.__class__ = m._plain_class
            del m._plain_class
            n += 1
    return n


# ----------------------------------------------------------------------------------------------- RNG


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 32-bit seed that depends on (seed, epoch, rank) only."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """torch / CUDA / numpy / python RNG states as weights_only-loadable data (tensors, ints, floats, lists)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, pystate, pygauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "python": {"version": version, "state": list(pystate), "gauss": pygauss},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
