"""Learnt scalars (``log c``, the log logit scale, HyTE-H's projection scale) have shape ``[1]`` so that
DeepSpeed's weight broadcast takes them as they are; states saved when they were 0-d still load."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorentz_rag.models import build_model, load_model, packaged_minilm_path
from lorentz_rag.models.io import check_and_load_state_dict
from lorentz_rag.nn.curvature import Curvature
from lorentz_rag.training.losses import InfoNCELoss, LogitScale

TEXTS = ["Lorentz model of hyperbolic space", "short"]
SCALARS = ("log_c", "log_logit_scale", "log_scale")


def _as_0d(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` as an older save wrote it: every learnt scalar 0-d."""
    old = {k: (v.reshape(()) if k.rsplit(".", 1)[-1] in SCALARS else v) for k, v in state.items()}
    assert any(v.dim() == 0 for v in old.values())
    return old


def test_scalars_are_1_element_and_modules_still_return_0d_values():
    curvature, scale = Curvature(2.0, trainable=True), LogitScale(20.0, trainable=True)
    assert curvature.log_c.shape == (1,) and scale.log_logit_scale.shape == (1,)
    c, s = curvature(), scale()
    assert c.shape == () and s.shape == ()
    assert c.item() == pytest.approx(2.0, rel=1e-6) and s.item() == pytest.approx(20.0, rel=1e-6)
    (c * s).backward()
    assert curvature.log_c.grad.shape == (1,) and curvature.log_c.grad.item() == pytest.approx(40.0, rel=1e-5)


@pytest.mark.parametrize("loader", ["torch", "lorentz_rag"])
def test_a_0d_state_loads_into_the_1_element_parameters(loader):
    source = InfoNCELoss("geodesic", logit_scale=30.0, trainable_logit_scale=True)
    holder = torch.nn.ModuleDict({"curvature": Curvature(3.0), "loss": source})
    old = _as_0d(holder.state_dict())
    assert old["curvature.log_c"].shape == () and old["loss.logit_scale.log_logit_scale"].shape == ()

    target = torch.nn.ModuleDict({"curvature": Curvature(1.0), "loss": InfoNCELoss("geodesic")})
    if loader == "torch":
        target.load_state_dict(old)  # strict: torch's own shape check passes after the upgrade
    else:
        check_and_load_state_dict(target, old, "old.pt")
    assert target["curvature"].log_c.shape == (1,)
    assert target["curvature"]().item() == pytest.approx(3.0, rel=1e-6)
    assert target["loss"].logit_scale().item() == pytest.approx(30.0, rel=1e-6)


def test_a_wrong_shape_is_still_refused():
    with pytest.raises(RuntimeError, match="size mismatch"):
        Curvature().load_state_dict({"log_c": torch.zeros(2)})


@pytest.mark.parametrize(
    "args",
    [
        {"model_type": "hyte_fh", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
        {"model_type": "hyte_h", "embedding_dim": 16, "hyte_h_head": "token"},
    ],
    ids=["hyte_fh", "hyte_h"],
)
def test_a_saved_folder_with_0d_scalars_loads_and_encodes_the_same(tmp_path, args):
    torch.manual_seed(0)
    model = build_model({"model_name": str(packaged_minilm_path()), "curvature": 1.5, **args}).eval()
    with torch.no_grad():
        next(m for m in model.modules() if isinstance(m, Curvature)).log_c.fill_(math.log(1.7))
    model.save_pretrained(tmp_path / "saved")
    weights = tmp_path / "saved" / "model.safetensors"
    save_file(_as_0d(load_file(weights)), weights, metadata={"format": "pt"})

    loaded = load_model(tmp_path / "saved")
    assert loaded.curvature().shape == () and loaded.curvature().item() == pytest.approx(1.7, rel=1e-6)
    torch.testing.assert_close(loaded.encode(TEXTS, "query"), model.encode(TEXTS, "query"), atol=0, rtol=0)
