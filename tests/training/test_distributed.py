"""Distributed helpers, and the gathered loss under torchrun (2 processes, gloo) against one process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _ddp_case import build_case

from lorentz_rag.training.distributed import (
    WorldInfo,
    barrier,
    gather_sizes,
    gather_with_grad,
    init_distributed,
    world_info,
)
from lorentz_rag.training.grad_cache import grad_cache_backward
from torchrun_launch import LAUNCH_VARS, run_torchrun


@pytest.fixture
def clean_env(monkeypatch):
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_single_process_helpers_degrade_to_identity(clean_env):
    assert world_info() == WorldInfo(rank=0, world_size=1, local_rank=0)
    assert world_info().rank == 0  # the main process
    assert init_distributed() == WorldInfo()
    assert not torch.distributed.is_initialized()
    barrier()
    t = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(t) is t
    assert gather_sizes(3) == [3]


def test_world_info_reads_launcher_variables(clean_env):
    clean_env.setenv("RANK", "3")
    clean_env.setenv("WORLD_SIZE", "4")
    clean_env.setenv("LOCAL_RANK", "1")
    assert world_info() == WorldInfo(rank=3, world_size=4, local_rank=1)
    assert world_info().rank != 0
    clean_env.setenv("RANK", "4")
    with pytest.raises(ValueError, match=r"RANK=4 is outside \[0, WORLD_SIZE=4\)"):
        world_info()
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        clean_env.delenv(var)
    clean_env.setenv("OMPI_COMM_WORLD_RANK", "1")
    clean_env.setenv("OMPI_COMM_WORLD_SIZE", "2")
    assert world_info() == WorldInfo(rank=1, world_size=2, local_rank=1)


def test_init_distributed_names_missing_rendezvous_variables(clean_env):
    clean_env.setenv("RANK", "0")
    clean_env.setenv("WORLD_SIZE", "2")
    clean_env.delenv("MASTER_ADDR", raising=False)
    clean_env.delenv("MASTER_PORT", raising=False)
    with pytest.raises(RuntimeError, match="MASTER_ADDR and MASTER_PORT"):
        init_distributed()


def _single_process_gradients(case) -> dict[str, dict[str, torch.Tensor]]:
    queries, docs, positive_index = case.combined_inputs()
    results = {}
    for mode in ("plain", "grad_cache"):
        model, loss_fn = case.fresh_model_and_loss()

        def loss_of(q, d, loss_fn=loss_fn, model=model):
            return loss_fn(q, d, positive_index, c=model.curvature())

        if mode == "plain":
            loss = loss_of(model(**queries), model(**docs))
            loss.backward()
        else:
            loss = grad_cache_backward(lambda b, m=model: m(**b), [queries, docs], loss_of, chunk_size=4)
        results[mode] = {n: p.grad.clone() for n, p in model.named_parameters()} | {
            "logit_scale": loss_fn.logit_scale.log_logit_scale.grad.clone()
        }
    return results


@pytest.mark.slow
def test_two_process_gathered_loss_matches_one_process_with_the_combined_batch(tmp_path: Path):
    out = tmp_path / "grads.pt"
    worker = Path(__file__).with_name("_ddp_worker.py")
    run_torchrun([str(worker), str(out)], nproc=2, timeout=180)
    distributed = torch.load(out)
    single = _single_process_gradients(build_case())
    for mode in ("plain", "grad_cache"):
        assert single[mode].keys() == distributed[mode].keys()
        for name, grad in single[mode].items():
            assert grad.abs().max() > 1e-6, name  # every parameter really gets a gradient
            torch.testing.assert_close(
                distributed[mode][name], grad, rtol=1e-10, atol=1e-12, msg=f"{mode} {name}"
            )
