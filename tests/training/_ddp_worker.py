"""Launched by tests/training/test_distributed.py under ``torchrun --nproc-per-node=2`` (gloo, CPU).

Each rank embeds its half of a fixed batch with a DDP-wrapped tiny encoder, computes the gathered InfoNCE
loss (plain, then through GradCache) and rank 0 saves the DDP-averaged gradients to ``argv[1]``.
"""

from __future__ import annotations

import sys

import torch

# Run as a script, so this folder is on sys.path.
from _ddp_case import build_case
from torch.nn.parallel import DistributedDataParallel

from lorentz_rag.training.distributed import command_process_group, world_info
from lorentz_rag.training.grad_cache import grad_cache_backward


def _gradients(world) -> dict:
    """Both modes' DDP-averaged gradients; the DDP wrappers end with this function."""
    case = build_case()
    results = {}
    for mode in ("plain", "grad_cache"):
        model, loss_fn = case.fresh_model_and_loss()
        ddp = DistributedDataParallel(model)
        queries, docs, positive_index = case.rank_inputs(world.rank)

        def loss_of(q, d, loss_fn=loss_fn, model=model, positive_index=positive_index):
            return loss_fn(q, d, positive_index, c=model.curvature())

        if mode == "plain":
            loss = loss_of(ddp(**queries), ddp(**docs))
            loss.backward()
        else:
            loss = grad_cache_backward(
                lambda b, ddp=ddp: ddp(**b), [queries, docs], loss_of, chunk_size=3, no_sync=ddp.no_sync
            )
        # The logit scale is not inside DDP: average its gradient by hand, as DDP does for the model.
        scale_grad = loss_fn.logit_scale.log_logit_scale.grad.clone()
        torch.distributed.all_reduce(scale_grad)
        results[mode] = {n: p.grad.clone() for n, p in model.named_parameters()} | {
            "logit_scale": scale_grad / world.world_size
        }
        results[mode + "_loss"] = loss.detach()
    return results


def main(out_path: str) -> None:
    with command_process_group() as world:
        assert world.world_size == 2 and torch.distributed.get_backend() == "gloo", world
        assert world_info() == world
        results = _gradients(world)
        if world.rank == 0:
            torch.save(results, out_path)
        torch.distributed.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
