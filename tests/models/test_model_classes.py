"""Each embedding model saves (lorentz_rag_config) and rebuilds (from_config) itself; the factory only dispatches
on model_type. The no-decay rule and the setting names are defined once."""

from __future__ import annotations

import typing

import pytest
import torch

from lorentz_rag.geometry import pooling, similarity
from lorentz_rag.models import build_model, packaged_minilm_path
from lorentz_rag.models.args import ModelArgs
from lorentz_rag.models.base import no_decay
from lorentz_rag.models.euclidean import SentenceTransformerModel
from lorentz_rag.models.factory import MODEL_CLASSES
from lorentz_rag.models.settings import (
    EUCLIDEAN_SIMILARITIES,
    HYPERBOLIC_POOLINGS,
    HYPERBOLIC_SIMILARITIES,
)

MINILM = str(packaged_minilm_path())
TEXTS = ["a saved section rebuilds the same model", "short"]


def test_every_model_type_has_a_class():
    model_types = typing.get_args(ModelArgs.model_fields["model_type"].annotation)
    assert set(MODEL_CLASSES) == set(model_types)


def test_setting_names_are_the_geometry_names():
    assert set(HYPERBOLIC_POOLINGS) == {*pooling.POOLERS, "mean"}
    assert HYPERBOLIC_SIMILARITIES == similarity.HYPERBOLIC_KINDS
    assert EUCLIDEAN_SIMILARITIES == similarity.EUCLIDEAN_KINDS


@pytest.mark.parametrize(
    "args",
    [
        {"model_type": "hyte_fh", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2},
        {
            "model_type": "hyte_h",
            "embedding_dim": 8,
            "num_hyperbolic_blocks": 1,
            "num_attention_heads": 2,
            "projection_scale": 0.5,
            "max_norm": 3.0,
            "curvature": 2.0,
            "trainable_base_layers": 1,
            "base_lr_multiplier": 0.25,
        },
        {
            "model_type": "hyte_h",
            "hyte_h_head": "pooled",
            "pooling": "cls",
            "radius_init": 1.5,
            "radius_gain": 3.0,
        },
        {
            "model_type": "euclidean",
            "euclidean_base": "pretrained",
            "euclidean_head": "direction_norm",
            "embedding_dim": 8,
            "similarity": "euclidean",
            "max_norm": 7.0,
            "freeze_base": True,
        },
    ],
    ids=["hyte_fh", "hyte_h_token_blocks", "hyte_h_pooled", "euclidean_direction_norm"],
)
def test_from_config_rebuilds_what_lorentz_rag_config_saved(args):
    torch.manual_seed(0)
    model = build_model({"model_name": MINILM, **args}).eval()
    section = {**model.settings.to_dict(), **model.lorentz_rag_config(), "curvature": None}
    if model.curvature() is not None:
        section["curvature"] = float(model.curvature().detach())
    rebuilt = type(model).from_config(section, model.tokenizer, model.settings).eval()
    # Every setting the class saves is read back by from_config: the rebuilt model saves the same section.
    assert rebuilt.lorentz_rag_config() == model.lorentz_rag_config()
    assert rebuilt is not model and type(rebuilt) is MODEL_CLASSES[args["model_type"]]
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt.encode(TEXTS), model.encode(TEXTS), atol=0, rtol=0)


def test_no_decay_is_one_rule_for_models_and_training():
    matrix = torch.zeros(3, 3)
    for name in ("layer.bias", "curvature_module.log_c", "loss.log_logit_scale", "log_scale"):
        assert no_decay(name, torch.zeros(1)), name  # every tensor with ndim < 2
    assert no_decay("x.log_c", torch.zeros(()))
    assert not no_decay("projection.weight", matrix)
    for name in (
        "layers.0.attn_norm.weight",
        "relative_attention_bias.weight",
        "curvature.table",
        "logit_scale_table",
        "Final_Norm.weight",
    ):
        assert no_decay(name, matrix), name


def test_a_class_outside_the_registry_is_not_rebuilt_from_a_section() -> None:
    assert SentenceTransformerModel not in MODEL_CLASSES.values()
    with pytest.raises(TypeError, match="MODEL_CLASSES"):
        SentenceTransformerModel._from_section({}, None, None, None)
