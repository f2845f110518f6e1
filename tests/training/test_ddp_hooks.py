"""The sparse-embedding DDP hook: which weights it picks, which rows count as touched, and 2 gloo processes
training bit for bit as with DDP's dense all-reduce."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from _ddp_hook_worker import LAYOUTS, VOCAB
from _ddp_hook_worker import run as hook_worker
from _tiny_run import TINY_RUN_OVERRIDES
from safetensors.torch import load_file
from torch import nn

from lorentz_rag.data.bundled import pair_paths
from lorentz_rag.nn import LorentzEmbedding
from lorentz_rag.training.config import load_config
from lorentz_rag.training.ddp_hooks import MIN_ELEMENTS, choose_weights, embedding_weights, touched_rows
from lorentz_rag.training.trainer import build_training_model
from torchrun_launch import run_torchrun

REPO = Path(__file__).resolve().parents[2]
PYTHON_PAIRS = next(p for p in pair_paths() if "python_docs" in p.name)


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
        self.positions = LorentzEmbedding(8, 16)
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


def test_the_rule_picks_hyte_fh_token_embeddings():
    config = load_config(
        REPO / "configs/train/cpu_tiny_contrastive.yaml", ["model_args.init_from=null"], dotenv_dir=None
    )
    chosen, line = choose_weights(build_training_model(config), None, "gloo")
    assert list(chosen) == ["model.embeddings.weight"], line


def test_asking_for_the_hook_without_an_embedding_is_refused():
    with pytest.raises(ValueError, match="ddp_sparse_embedding_hook=true"):
        choose_weights(nn.Linear(3, 3), True, "gloo")


@pytest.mark.slow
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
            assert counters["dense_fallbacks"] == 4, counters
        else:
            # a few dozen of the token table's rows per step; the rest of the bucket reduced around them
            assert 0 < counters["rows_reduced"] < 0.01 * counters["rows_total"], (layout, counters)
            assert counters["dense_fallbacks"] == 0, (layout, counters)


@pytest.mark.slow
def test_the_trainer_with_the_hook_trains_the_same_bits_as_with_the_dense_all_reduce(tmp_path: Path):
    """torchrun, 2 processes, HyTE-FH contrastive, 2 micro-batches per step: the auto rule turns the hook on
    (the log says so) and the final weights equal those of ddp_sparse_embedding_hook=false bit for bit."""
    weights, logs = {}, {}
    for setting in ("null", "false"):
        out = tmp_path / setting
        logs[setting] = run_torchrun(
            [
                "train.py",
                "--config=configs/train/cpu_tiny_contrastive.yaml",
                f"--train_args.output_dir={out}",
                f"--data_args.data_path={PYTHON_PAIRS}",
                "--train_args.max_steps=3",
                "--train_args.gradient_accumulation_steps=2",
                f"--train_args.ddp_sparse_embedding_hook={setting}",
                *TINY_RUN_OVERRIDES,
            ],
            timeout=400,
        )
        weights[setting] = load_file(out / "final" / "model.safetensors")
    said = {k: [line for line in log.splitlines() if line.startswith("ddp:")] for k, log in logs.items()}
    assert (
        len(said["null"]) == 1
        and "rows some rank touched of model.model.embeddings.weight [" in said["null"][0]
    )
    assert len(said["false"]) == 1 and "dense all-reduce of every gradient" in said["false"][0]
    assert weights["null"].keys() == weights["false"].keys()
    for key, value in weights["false"].items():
        assert torch.equal(value.view(torch.uint8), weights["null"][key].view(torch.uint8)), key
