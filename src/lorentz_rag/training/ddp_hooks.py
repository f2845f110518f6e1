"""A DDP communication hook that all-reduces only the token-embedding rows some rank touched.

A step looks up at most ``batch x sequence length`` rows of a token embedding ``[V, d]``; every other row's
gradient is zero on every rank, and so is its all-reduced mean. DDP's dense all-reduce still sends all
``V x d`` numbers (HyTE-FH at the benchmark size: 30522 x 64, 96% of the parameters, 7.5 MiB of float32,
after the backward with nothing left to overlap it with). :func:`sparse_embedding_hook` reduces a bucket
that holds such a weight in two collectives instead of one:

1. the row mask ``[V]`` (uint8, MAX): the union of the rows whose gradient has a non-zero **bit** on some
   rank (``-0.0`` and NaN count as touched, so an untouched row is ``+0.0`` everywhere);
2. one packed tensor: the parts of the bucket around the embedding and the union's rows ``[k, d]``, divided
   by the world size and all-reduced (DDP's average), then written back into the bucket.

Buckets without a chosen weight go through DDP's own average (divide, then all-reduce). The result is bit
for bit DDP's dense all-reduce with 2 processes (``tests/training/test_ddp_hooks.py``): each element is
``x_0 / 2 + x_1 / 2`` either way, and an untouched row stays ``+0.0`` as ``0 / 2 + 0 / 2`` is. With more
processes every element is still the sum of the same ``W`` numbers, but the collective's order of adding
them depends on where the element sits in the reduced tensor, so the last bit may differ. When a union
holds more than :data:`DENSE_FRACTION` of its weight's rows (a tied output head touches every row) the
bucket is all-reduced whole, as DDP does.

When the trainer uses it (``train_args.ddp_sparse_embedding_hook``, :func:`choose_weights`): ``true`` for
every trainable embedding table (``nn.Embedding``, ``LorentzEmbedding``) that no other module shares;
``null`` (the default) for those with at least :data:`MIN_ELEMENTS` elements, when the process group's
backend is gloo or NCCL; ``false`` never.
"""

# No ``from __future__ import annotations`` here: DDP's register_comm_hook compares the hook's annotations with
# the classes dist.GradBucket and Future[Tensor], and refuses strings.
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.futures import Future

from lorentz_rag.nn.embedding import LorentzEmbedding

__all__ = [
    "DENSE_FRACTION",
    "EMBEDDING_TYPES",
    "MIN_ELEMENTS",
    "SparseEmbeddingState",
    "choose_weights",
    "embedding_weights",
    "register_sparse_embedding_hook",
    "sparse_embedding_hook",
    "touched_rows",
]

#: ``ddp_sparse_embedding_hook: null`` picks embeddings of at least this many elements (1 MiB of float32):
#: below it the dense all-reduce is a fraction of a millisecond and the mask's extra collective would not pay.
MIN_ELEMENTS = 2**18
#: A union holding more than this share of the rows is all-reduced whole (gathering it would cost more).
DENSE_FRACTION = 0.5
#: Token-embedding tables: ``weight [V, d]`` read by row lookup (F.embedding), so a step touches few rows.
EMBEDDING_TYPES = (nn.Embedding, LorentzEmbedding)
#: The backends whose all-reduce the auto rule relies on (uint8 MAX for the mask, SUM for the rest).
AUTO_BACKENDS = ("gloo", "nccl")

#: What the packed all-reduce carries: ``(values, None)`` for a slice of the bucket, ``(rows, (view, row ids))``
#: for a weight's union rows, written back into ``view`` at ``row ids``.
_Part = tuple[Tensor, tuple[Tensor, Tensor] | None]
_SAME_WIDTH_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def touched_rows(grad: Tensor) -> Tensor:
    """``grad [V, d]`` -> ``[V]`` bool: rows holding any element whose bits are not all zero (``-0.0``, NaN
    and infinities count; only ``+0.0`` is untouched)."""
    bits = grad.view(_SAME_WIDTH_INT[grad.element_size()])
    # Some non-zero integer <=> max > 0 or min < 0; two reductions are ~20x faster than bits.any(dim=1) on CPU.
    return (bits.amax(dim=1) != 0) | (bits.amin(dim=1) != 0)


def embedding_weights(module: nn.Module) -> dict[str, nn.Parameter]:
    """``{name: weight}`` of the trainable embedding tables in ``module`` (:data:`EMBEDDING_TYPES`, not
    ``nn.Embedding(sparse=True)``) whose weight no other module holds (a head tied to the embedding, e.g.
    HyTE-FH's ``tie_mlm_head``, gives every row a gradient, so reducing rows would not pay)."""
    holders: dict[int, int] = {}
    for _, param in module.named_parameters(remove_duplicate=False):
        holders[id(param)] = holders.get(id(param), 0) + 1
    return {
        f"{name}.weight" if name else "weight": sub.weight
        for name, sub in module.named_modules()
        if isinstance(sub, EMBEDDING_TYPES)
        and sub.weight.requires_grad
        and not getattr(sub, "sparse", False)
        and holders.get(id(sub.weight)) == 1
    }


def choose_weights(
    module: nn.Module, setting: bool | None, backend: str
) -> tuple[dict[str, nn.Parameter], str]:
    """The embedding weights the hook reduces by rows under ``train_args.ddp_sparse_embedding_hook=setting``,
    and one line for the run's log saying which and why (module docstring: the rule)."""
    if setting is False:
        return {}, "ddp: dense all-reduce of every gradient (train_args.ddp_sparse_embedding_hook=false)"
    found = embedding_weights(module)
    if setting is None:
        found = {name: w for name, w in found.items() if w.numel() >= MIN_ELEMENTS}
        if backend not in AUTO_BACKENDS or not found:
            why = (
                f"backend {backend}"
                if found
                else f"no untied trainable embedding of >= {MIN_ELEMENTS} elements"
            )
            return {}, f"ddp: dense all-reduce of every gradient (ddp_sparse_embedding_hook=null: {why})"
    elif not found:
        raise ValueError(
            "train_args.ddp_sparse_embedding_hook=true, but the model has no trainable embedding table (nn.Embedding, "
            "LorentzEmbedding) whose weight no other module shares; set it to null or false"
        )
    sizes = ", ".join(f"{name} [{w.shape[0]} x {w.shape[1]}]" for name, w in found.items())
    rule = "" if setting else f" (null: embeddings of >= {MIN_ELEMENTS} elements, backend {backend})"
    return found, f"ddp: all-reduces only the rows some rank touched of {sizes}{rule}"


@dataclass
class SparseEmbeddingState:
    """What :func:`sparse_embedding_hook` needs: the process group and the weights it reduces by rows (by
    ``id``), plus counters of the rows it reduced (``rows_reduced`` of ``rows_total``, summed over calls)."""

    process_group: dist.ProcessGroup | None
    weight_ids: frozenset[int]
    dense_fraction: float = DENSE_FRACTION
    rows_reduced: int = 0
    rows_total: int = 0
    dense_fallbacks: int = 0
    calls: int = 0


def register_sparse_embedding_hook(
    ddp: nn.parallel.DistributedDataParallel, weights: Iterable[nn.Parameter]
) -> SparseEmbeddingState:
    """Register :func:`sparse_embedding_hook` on ``ddp`` for ``weights``; returns its state (the counters)."""
    state = SparseEmbeddingState(
        process_group=ddp.process_group, weight_ids=frozenset(id(w) for w in weights)
    )
    ddp.register_comm_hook(state, sparse_embedding_hook)
    return state


def _average(tensor: Tensor, group: dist.ProcessGroup | None, world: int) -> Future:
    """DDP's average of a contiguous tensor, in place: divide by the world size, then all-reduce (SUM)."""
    tensor.div_(world)
    return dist.all_reduce(tensor, group=group, async_op=True).get_future()


def sparse_embedding_hook(state: SparseEmbeddingState, bucket: dist.GradBucket) -> Future[Tensor]:
    """DDP communication hook (module docstring): reduce the bucket's chosen embedding weights by the union of
    touched rows, everything else as DDP does. Returns a future of the reduced bucket buffer."""
    buffer = bucket.buffer()  # [n] flat: the bucket's gradients one after another, in parameters() order
    group = state.process_group
    world = dist.get_world_size(group)
    segments, start = [], 0  # (start, rows, dim) of each chosen weight inside the buffer
    for param in bucket.parameters():
        if id(param) in state.weight_ids:
            segments.append((start, param.shape[0], param.shape[1]))
        start += param.numel()
    if not segments:
        return _average(buffer, group, world).then(lambda _: buffer)
    state.calls += 1
    views = [buffer[s : s + rows * dim].view(rows, dim) for s, rows, dim in segments]
    mask = torch.cat([touched_rows(view) for view in views]).to(torch.uint8)
    dist.all_reduce(mask, op=dist.ReduceOp.MAX, group=group)  # the union, on every rank
    row_ids = [rows_mask.nonzero().squeeze(1) for rows_mask in mask.split([v.shape[0] for v in views])]
    state.rows_total += sum(view.shape[0] for view in views)
    if any(ids.numel() > state.dense_fraction * view.shape[0] for view, ids in zip(views, row_ids)):
        state.dense_fallbacks += 1  # e.g. a tied head: gathering the rows would cost more than it saves
        state.rows_reduced += sum(view.shape[0] for view in views)
        return _average(buffer, group, world).then(lambda _: buffer)
    # One all-reduce for the rest: the parts of the bucket around the weights, then each weight's union rows
    # (a weight no rank touched is +0.0 everywhere, its mean).
    parts: list[_Part] = []
    edges = [0, *(bound for s, rows, dim in segments for bound in (s, s + rows * dim)), buffer.numel()]
    parts += [(buffer[lo:hi], None) for lo, hi in zip(edges[::2], edges[1::2]) if hi > lo]
    for view, ids in zip(views, row_ids):
        state.rows_reduced += ids.numel()
        if ids.numel():
            parts.append((view.index_select(0, ids).view(-1), (view, ids)))
    if not parts:
        done: Future = Future()
        done.set_result(buffer)
        return done
    packed = torch.cat([values for values, _ in parts])

    def write_back(reduced: Future) -> Tensor:
        reduced.wait()  # raises a failed all-reduce's error here
        for (values, target), chunk in zip(parts, packed.split([v.numel() for v, _ in parts])):
            if target is None:
                values.copy_(chunk)
            else:
                view, ids = target
                view.index_copy_(0, ids, chunk.view(ids.numel(), view.shape[1]))
        return buffer

    return _average(packed, group, world).then(write_back)
