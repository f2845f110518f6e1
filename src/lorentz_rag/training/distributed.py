"""Distributed helpers: process-group set-up, rank queries and the one all-gather with gradient.

Launchers (``torchrun``, ``deepspeed``, ``mpirun``) describe the process with environment variables;
:func:`init_distributed` reads them and starts a process group (gloo on CPU, NCCL on GPU). Without them the
program runs as one process and every helper here degrades to the single-process answer, so training code
calls them unconditionally.

Gradient convention (used by the contrastive loss and tested in ``tests/training/test_distributed.py``):
each rank computes the mean loss over its *own* queries against the documents of *all* ranks (gathered with
:func:`gather_with_grad`). The backward of the gather sums, into each rank's local tensor, the gradients
that every rank's loss sends to it, so rank ``r``'s local embeddings receive ``W * dL/de_r`` where
``L = mean_r loss_r`` is the loss of the combined batch and ``W`` the world size. DDP and DeepSpeed then
*average* parameter gradients over ranks, which divides by ``W`` again: the averaged gradients equal those of
one process that sees the combined batch. The per-rank loss is therefore **not** multiplied by the world size.
(Exact when every rank holds the same number of queries; the readers give ranks equal shares.)
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.nn.functional import all_gather

__all__ = [
    "WorldInfo",
    "barrier",
    "command_process_group",
    "end_distributed",
    "gather_sizes",
    "gather_with_grad",
    "init_distributed",
    "is_distributed",
    "world_info",
]

# Launchers' names for (rank, world size, local rank), most common first. torchrun and deepspeed set the
# first triple; Open MPI (deepspeed --launcher openmpi, mpirun) the second.
_ENV_TRIPLES = (
    ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
)


@dataclass(frozen=True)
class WorldInfo:
    """Where this process sits: global ``rank`` in ``[0, world_size)`` and ``local_rank`` on its host."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def _env_world() -> WorldInfo | None:
    for rank_key, size_key, local_key in _ENV_TRIPLES:
        if rank_key in os.environ and size_key in os.environ:
            try:
                rank = int(os.environ[rank_key])
                size = int(os.environ[size_key])
                local = int(os.environ.get(local_key, rank))
            except ValueError as error:
                raise ValueError(
                    f"launcher environment variables {rank_key}={os.environ[rank_key]!r}, "
                    f"{size_key}={os.environ[size_key]!r} must be integers"
                ) from error
            if not 0 <= rank < size:
                raise ValueError(f"{rank_key}={rank} is outside [0, {size_key}={size})")
            return WorldInfo(rank=rank, world_size=size, local_rank=local)
    return None


def is_distributed() -> bool:
    """True when a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_info() -> WorldInfo:
    """Rank and world size from the running process group, else from the launcher's environment, else 0/1."""
    if dist.is_available() and dist.is_initialized():
        env = _env_world()
        local = env.local_rank if env is not None else 0
        return WorldInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local)
    return _env_world() or WorldInfo()


def barrier() -> None:
    """Wait for every rank; a no-op without a process group."""
    if is_distributed():
        dist.barrier()


def init_distributed(backend: str | None = None, *, timeout_s: float = 1800.0) -> WorldInfo:
    """Start the process group described by the launcher's environment, once; return this process's place.

    ``backend=None`` picks ``nccl`` when CUDA is available and ``gloo`` otherwise (CPU runs, tests). With
    NCCL the process binds to ``cuda:local_rank``. Single-process runs (no launcher variables, or a world size
    of 1) start nothing. Calling it again after the group exists returns the current :func:`world_info`.
    """
    if dist.is_available() and dist.is_initialized():
        return world_info()
    env = _env_world()
    if env is None or env.world_size == 1:
        return env or WorldInfo()
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; run as a single process")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    # env:// reads MASTER_ADDR/MASTER_PORT; mpirun does not set RANK/WORLD_SIZE, so pass them explicitly.
    missing = [key for key in ("MASTER_ADDR", "MASTER_PORT") if key not in os.environ]
    if missing:
        raise RuntimeError(
            f"a {env.world_size}-process launch needs {' and '.join(missing)} in the environment "
            "(torchrun and deepspeed set them; with mpirun export them)"
        )
    if backend == "nccl":
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=env.rank,
        world_size=env.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return world_info()


def end_distributed() -> None:
    """Destroy the process group, if one is running, once the caller has dropped its DDP wrappers.

    Garbage is collected first, so that no ``DistributedDataParallel`` left in a reference cycle outlives the
    group's registration. Otherwise its C++ reducer may hold the group's last reference and destroy it later,
    while holding the GIL. That is a deadlock under gloo: the group's destructor joins the worker thread,
    and that thread needs the GIL to free a finished work's tensors. It hung one rank at exit in about one
    run in four on a loaded 2-core host.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


@contextlib.contextmanager
def command_process_group() -> Iterator[WorldInfo]:
    """The ``torchrun`` process group of one command (:func:`init_distributed`; nothing is started without a
    launcher), ended with :func:`end_distributed` when the command is done if it was started here."""
    had_group = dist.is_available() and dist.is_initialized()
    info = init_distributed()
    try:
        yield info
    finally:
        if not had_group:
            end_distributed()


def gather_sizes(n: int, device: torch.device | str = "cpu") -> list[int]:
    """Every rank's value of ``n`` (e.g. its local batch size), in rank order; ``[n]`` in one process."""
    if not is_distributed():
        return [n]
    local = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(out, local)
    return [int(t.item()) for t in out]


def gather_with_grad(t: Tensor) -> Tensor:
    """Concatenate every rank's ``t`` along dim 0, in rank order, keeping the autograd graph.

    t: ``[n_r, ...]`` (``n_r`` may differ between ranks) -> ``[sum_r n_r, ...]``; returns ``t`` itself in a
    single process. Built on ``torch.distributed.nn.functional.all_gather``, whose backward **sums** the
    gradients of all ranks' outputs into each rank's slice (reduce-scatter with SUM): rank ``r``'s ``t``
    receives ``sum_r' d loss_r' / d t_r``. See the module docstring for why that plus the optimizer's
    gradient averaging reproduces single-process gradients. Unequal sizes are padded to the largest with
    zeros for the collective and cut out again (the padding carries no gradient).
    """
    if not is_distributed():
        return t
    sizes = gather_sizes(t.shape[0], device=t.device)
    largest = max(sizes)
    padded = t
    if t.shape[0] < largest:
        padded = torch.cat([t, t.new_zeros((largest - t.shape[0], *t.shape[1:]))], dim=0)
    with warnings.catch_warnings():
        # torch 2.13 marks this function deprecated in favour of the private _functional_collectives; it is
        # still the public autograd-aware gather (docs/design.md, section 8.2): keep it and keep logs quiet.
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
        parts = all_gather(padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes)], dim=0)
