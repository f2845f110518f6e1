"""The sparse-embedding DDP hook: which weights it picks, which rows count as touched, and 2 gloo processes
training bit for bit as with DDP's dense all-reduce."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from _ddp_hook_worker import LAYOUTS, VOCAB
from _ddp_hook_worker import run as hook_worker
from torch import nn

from lorentz_rag.training.ddp_hooks import MIN_ELEMENTS, choose_weights, embedding_weights, touched_rows


def test_touched_rows_are_rows_with_any_nonzero_bit():
    grad = torch.zeros(6, 3)
    grad[1, 2] = 2.0**-20  # tiny, and representable in float16
    grad[2, 0] = -0.0  # equal to 0, but not +0.0: the dense mean would keep its sign bit
    grad[3, 1] = float("nan")
    grad[4, 0] = float("-inf")
    assert touched_rows(grad).tolist() == [False, True, True, True, True, False]
    for dtype in (torch.float64, torch.bfloat16, torch.float16):
        assert touched_rows(grad.to(dtype)).tolist() == [False, True, True, True, True, False], dtype


class _Model(nn.Module):
    def __init__(self, vocab: int, tie: bool = False) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, 16)
        self.positions = nn.Embedding(8, 16)
        self.frozen = nn.Embedding(vocab, 16).requires_grad_(False)
        self.head = nn.Linear(16, vocab, bias=False)
        if tie:
            self.head.weight = self.tokens.weight


def test_the_rule_picks_large_untied_trainable_embeddings():
    large = MIN_ELEMENTS // 16
    assert list(embedding_weights(_Model(large))) == ["tokens.weight", "positions.weight"]
    assert list(embedding_weights(_Model(large, tie=True))) == ["positions.weight"]

    chosen, line = choose_weights(_Model(large), None, "gloo")
    assert list(chosen) == ["tokens.weight"] and f"tokens.weight [{large} x 16]" in line and "null" in line
    chosen, line = choose_weights(_Model(large - 1), None, "nccl")
    assert chosen == {} and "dense" in line
    chosen, line = choose_weights(_Model(large), None, "mpi")
    assert chosen == {} and "backend mpi" in line
    chosen, _ = choose_weights(_Model(large - 1), True, "mpi")  # explicit: every untied one, any backend
    assert list(chosen) == ["tokens.weight", "positions.weight"]
    assert choose_weights(_Model(large), False, "gloo")[0] == {}


def test_asking_for_the_hook_without_an_embedding_is_refused():
    with pytest.raises(ValueError, match="ddp_sparse_embedding_hook=true"):
        choose_weights(nn.Linear(3, 3), True, "gloo")


def test_two_gloo_processes_train_bit_for_bit_as_with_the_dense_all_reduce(tmp_path: Path):
    out = tmp_path / "results.pt"
    mp.spawn(hook_worker, args=(str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    results = torch.load(out)
    assert results.keys() == LAYOUTS.keys()
    for layout, runs in results.items():
        dense, sparse = runs["dense"], runs["sparse"]
        for kind in ("grads", "weights"):
            for name, value in dense[kind].items():
                # torch.equal treats -0.0 == +0.0; compare the bits
                same = torch.equal(value.view(torch.int32), sparse[kind][name].view(torch.int32))
                assert same, f"{layout}: {kind} of {name} differ"
        touched = int(touched_rows(dense["grads"]["tokens.weight"]).sum())
        assert touched == VOCAB if layout == "tied_head" else 0 < touched < VOCAB // 10, (layout, touched)
        counters = sparse["counters"]
        assert counters["calls"] == 4, (
            layout
        )  # one per optimizer step: the micro-batch under no_sync skips it
        if layout == "tied_head":
            assert counters["rows_reduced"] == counters["rows_total"], counters
        else:
            # tokens: a few dozen of 3000 rows per step, positions (6 rows, all used) whole
            assert counters["rows_reduced"] < 0.1 * counters["rows_total"], (layout, counters)
            assert counters["dense_fallbacks"] == 4, (layout, counters)
