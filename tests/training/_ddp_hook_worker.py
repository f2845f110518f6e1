"""Spawned by tests/training/test_ddp_hooks.py: 2 gloo processes train a toy embedding model under DDP for a few
AdamW steps, once with DDP's dense all-reduce and once with the sparse-embedding hook, per layout; rank 0 saves
both runs' weights, last gradients and the hook's counters to ``out``."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lorentz_rag.training.ddp_hooks import MIN_ELEMENTS, choose_weights, register_sparse_embedding_hook
from lorentz_rag.training.distributed import end_distributed

DIM, STEPS, MICRO = 8, 4, 2
VOCAB = MIN_ELEMENTS // DIM  # the smallest table the auto rule picks

#: name -> (DDP keyword arguments, whether the output head is tied to the token embedding)
LAYOUTS = {
    # the trainer's settings: one bucket at first (the embedding between other gradients), then rebuilt
    "trainer_buckets": ({"bucket_cap_mb": 25.0, "gradient_as_bucket_view": True}, False),
    # tiny buckets, gradients copied in and out of them: the embedding in a bucket of its own
    "small_buckets_copied": ({"bucket_cap_mb": 0.001, "gradient_as_bucket_view": False}, False),
    # a head tied to the embedding touches every row: the hook falls back to the dense all-reduce
    "tied_head": ({"bucket_cap_mb": 25.0, "gradient_as_bucket_view": True}, True),
}


class Toy(nn.Module):
    """Token ids ``[B, T]`` -> a scalar loss; ``pre`` is registered before the embedding so that DDP's first
    bucket (parameters in reverse order) holds gradients on both sides of the embedding's."""

    def __init__(self, tied: bool) -> None:
        super().__init__()
        self.pre = nn.Linear(DIM, DIM)
        self.tokens = nn.Embedding(VOCAB, DIM, padding_idx=0)
        self.positions = nn.Embedding(6, DIM)  # too small for the auto rule: reduced by DDP's average
        self.head = nn.Linear(DIM, 3)
        self.tied = tied

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.pre(self.tokens(ids) + self.positions.weight[: ids.shape[1]]))
        loss = self.head(h.mean(1)).square().mean()
        if self.tied:
            loss = loss + F.cross_entropy(h.reshape(-1, DIM) @ self.tokens.weight.T, ids.reshape(-1))
        return loss


def _train(rank: int, ddp_kwargs: dict, tied: bool, sparse: bool) -> dict:
    torch.manual_seed(0)
    model = Toy(tied)
    ddp = nn.parallel.DistributedDataParallel(model, **ddp_kwargs)
    state = None
    if sparse:
        weights, _ = choose_weights(model, None, dist.get_backend())  # the auto rule: tokens, not positions
        assert list(weights) == ["tokens.weight"], list(weights)
        state = register_sparse_embedding_hook(ddp, weights.values())
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01)
    data = torch.Generator().manual_seed(100 + rank)  # each rank its own tokens
    for _ in range(STEPS):
        for micro in range(MICRO):
            ids = torch.randint(0, 400 if rank else VOCAB, (3, 6), generator=data)
            ids[0, -2:] = 0  # padding: its row gets no gradient
            sync = ddp.no_sync() if micro < MICRO - 1 else torch.enable_grad()
            with sync:
                ddp(ids).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    counters = None
    if state is not None:
        counters = {k: getattr(state, k) for k in ("calls", "rows_reduced", "rows_total", "dense_fallbacks")}
    return {"weights": weights, "grads": grads, "counters": counters}


def run(rank: int, store_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=2)
    try:
        results = {
            name: {mode: _train(rank, kwargs, tied, mode == "sparse") for mode in ("dense", "sparse")}
            for name, (kwargs, tied) in LAYOUTS.items()
        }
        if rank == 0:
            torch.save(results, Path(out))
        dist.barrier()
    finally:
        end_distributed()  # after every DDP wrapper is gone
