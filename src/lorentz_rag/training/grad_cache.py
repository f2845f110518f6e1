"""GradCache: contrastive batches larger than memory allows, with the gradients of the full batch.

InfoNCE couples every query with every document, so the batch cannot simply be split into gradient
accumulation steps (that would shrink the set of in-batch negatives). GradCache (Gao et al., 2021) keeps
the full-batch loss exactly:

1. embed every input in chunks **without** a graph, remembering the RNG state before each chunk;
2. compute the loss on the full embedding matrices (detached leaves that require grad) and backpropagate
   it to them: this caches ``dL/de`` for every embedding and gives the loss's own parameters
   (logit scale, curvature as used inside the loss) their gradients;
3. re-embed each chunk **with** a graph, with the RNG state of step 1 restored so dropout draws the same
   masks, and backpropagate the cached ``dL/de`` into the model.

The parameter gradients equal those of the plain (unchunked) loss computed on the same embeddings; with
dropout active, "the same embeddings" means the chunk-by-chunk forward of step 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["chunk_batch", "grad_cache_backward"]

Batch = Mapping[str, Any]


def _batch_size(batch: Batch) -> int:
    sizes = {v.shape[0] for v in batch.values() if isinstance(v, Tensor) and v.dim() > 0}
    if len(sizes) != 1:
        raise ValueError(f"cannot tell the batch size: tensors have leading sizes {sorted(sizes)}")
    return sizes.pop()


def chunk_batch(batch: Batch, chunk_size: int) -> list[dict[str, Any]]:
    """Split a batch of tensors ``{name: [B, ...]}`` along dim 0 into chunks of at most ``chunk_size`` rows.

    Non-tensor values (and 0-d tensors) are passed to every chunk unchanged.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n = _batch_size(batch)
    chunks = []
    for start in range(0, n, chunk_size):
        chunks.append(
            {
                k: v[start : start + chunk_size] if isinstance(v, Tensor) and v.dim() > 0 else v
                for k, v in batch.items()
            }
        )
    return chunks


class _RngState:
    """The CPU and CUDA generator states at one moment; ``restore()`` is a context that replays from there."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda_devices: list[int] = []
        self.cuda: list[Tensor] = []
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            self.cuda_devices = list(range(torch.cuda.device_count()))
            self.cuda = [torch.cuda.get_rng_state(d) for d in self.cuda_devices]

    @contextlib.contextmanager
    def restore(self):
        # fork_rng puts the surrounding state back afterwards, so replaying a chunk leaves the caller's
        # random stream exactly where step 1 left it.
        with torch.random.fork_rng(devices=self.cuda_devices):
            torch.set_rng_state(self.cpu)
            for device, state in zip(self.cuda_devices, self.cuda):
                torch.cuda.set_rng_state(state, device)
            yield


def grad_cache_backward(
    embed: Callable[[Batch], Tensor],
    batches: Sequence[Batch],
    loss_fn: Callable[..., Tensor],
    *,
    chunk_size: int,
    backward: Callable[[Tensor], None] | None = None,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> Tensor:
    """Backpropagate ``loss_fn(*embeddings)`` through ``embed`` chunk by chunk; return the loss, detached.

    embed: maps a batch (e.g. ``{"input_ids": [b, T], "attention_mask": [b, T]}``) to embeddings ``[b, D]``
    (``model(**batch)``); batches: the full inputs, e.g. ``[query_batch, document_batch]``; loss_fn: takes
    one full embedding matrix per batch (``[B_i, D]``, in order) and returns a 0-d loss, e.g.
    ``lambda q, d: info_nce_loss(q, d, positive_index, ...)``.

    ``backward(loss)`` runs step 2's backward (default ``loss.backward()``; pass
    ``lambda l: scaler.scale(l).backward()`` with a GradScaler: the cached gradients then carry the scale and
    step 3 propagates them unchanged, so every gradient is scaled once). ``no_sync`` (e.g. a DDP model's
    ``no_sync``) wraps every chunk's backward but the last, so DDP all-reduces once per step.
    Gradients accumulate into ``.grad`` like a normal backward.
    """
    if not batches:
        raise ValueError("grad_cache_backward needs at least one batch")
    chunked = [chunk_batch(batch, chunk_size) for batch in batches]

    # Step 1: embeddings without a graph, and the RNG state before every chunk.
    states: list[list[_RngState]] = []
    leaves: list[Tensor] = []
    with torch.no_grad():
        for chunks in chunked:
            states.append([])
            parts = []
            for chunk in chunks:
                states[-1].append(_RngState())
                parts.append(embed(chunk))
            leaves.append(torch.cat(parts, dim=0).detach().requires_grad_(True))

    # Step 2: the full-batch loss, backpropagated to the cached embeddings (and the loss's own parameters).
    loss = loss_fn(*leaves)
    if backward is None:
        loss.backward()
    else:
        backward(loss)
    cached = [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves]

    # Step 3: re-embed with a graph, same dropout masks, and push the cached gradients into the model.
    jobs = [
        (chunk, state, grad_part)
        for chunks, chunk_states, grad in zip(chunked, states, cached)
        for chunk, state, grad_part in zip(chunks, chunk_states, grad.split(chunk_size, dim=0))
    ]
    for i, (chunk, state, grad_part) in enumerate(jobs):
        last = i == len(jobs) - 1
        sync = contextlib.nullcontext() if (no_sync is None or last) else no_sync()
        with sync, state.restore():
            emb = embed(chunk)
            torch.autograd.backward(emb, grad_tensors=grad_part.to(emb.dtype))
    return loss.detach()
