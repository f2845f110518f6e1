"""The one embedding-model interface: ModelArgs validation, encode (padding/batch-mate invariance, order,
prefixes), similarity, optimizer groups, sentence-transformers folders."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from lorentz_rag.geometry import lorentz
from lorentz_rag.models import ModelArgs, build_model, load_model, packaged_minilm_path, resolve_model_name
from lorentz_rag.models.base import EUCLIDEAN_POOLINGS, HYPERBOLIC_POOLINGS

MINILM = str(packaged_minilm_path())
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "max_seq_length": 96}
SHORT = "What is a hyperbolic embedding?"
LONG = " ".join(["Retrieval augmented generation grounds a language model in documents."] * 6)


def _build(model_type: str, **extra):
    torch.manual_seed(0)
    if model_type == "hyte_h":
        args = {"model_type": "hyte_h", "model_name": MINILM, "embedding_dim": 16, "max_seq_length": 96}
    else:
        args = {"model_type": model_type, "model_name": MINILM, **TINY}
    return build_model({**args, **extra})


@pytest.fixture(scope="module")
def models():
    return {
        "hyte_fh": _build("hyte_fh"),
        "hyte_h": _build("hyte_h", num_hyperbolic_blocks=1, num_attention_heads=2),
        "euclidean": _build("euclidean"),
    }


# --- ModelArgs --------------------------------------------------------------------------------------


def test_unknown_key_names_the_closest_valid_key():
    with pytest.raises(ValidationError, match=r"unknown model_args key 'poolng'; did you mean 'pooling'"):
        ModelArgs.model_validate({"model_type": "hyte_h", "poolng": "cls"})


def test_defaults_depend_on_the_geometry():
    hyp = ModelArgs(model_type="hyte_fh")
    euc = ModelArgs(model_type="euclidean")
    assert (hyp.pooling, hyp.similarity) == ("outward_einstein_midpoint", "geodesic")
    assert (euc.pooling, euc.similarity) == ("mean", "cosine")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"model_type": "euclidean", "pooling": "outward_einstein_midpoint"}, "not valid for model_type"),
        ({"model_type": "hyte_h", "similarity": "cosine"}, "not valid for model_type"),
        ({"model_type": "hyte_fh", "num_hyperbolic_blocks": 2}, "only used by model_type='hyte_h'"),
        ({"model_type": "hyte_fh", "hidden_size": 30, "num_attention_heads": 4}, "divisible"),
        ({"model_type": "hyte_fh", "curvature": 20.0}, "less than or equal to 10"),
        ({"model_type": "hyte_fh", "pooling_p": 0.0}, "greater than 0"),
    ],
)
def test_invalid_values_are_rejected(args, message):
    with pytest.raises(ValidationError, match=message):
        ModelArgs.model_validate(args)


def test_euclidean_base_auto_resolution():
    assert ModelArgs(model_type="euclidean").resolved_euclidean_base() == "pretrained"
    assert ModelArgs(model_type="euclidean", hidden_size=64).resolved_euclidean_base() == "modernbert"
    assert ModelArgs(model_type="euclidean", init_from="/x").resolved_euclidean_base() == "modernbert"


def test_minilm_names_resolve_to_the_packaged_folder_offline():
    # tests/conftest.py sets HF_HUB_OFFLINE=1.
    assert resolve_model_name("all-MiniLM-L6-v2") == MINILM
    assert resolve_model_name("sentence-transformers/all-MiniLM-L6-v2") == MINILM
    assert resolve_model_name("answerdotai/ModernBERT-base") == "answerdotai/ModernBERT-base"


# --- encode -----------------------------------------------------------------------------------------


def _poolings(model_type: str) -> tuple[str, ...]:
    return EUCLIDEAN_POOLINGS if model_type == "euclidean" else HYPERBOLIC_POOLINGS


@pytest.mark.parametrize("model_type", ["hyte_fh", "hyte_h", "euclidean"])
def test_padding_and_batch_mates_do_not_change_an_embedding(models, model_type):
    model = models[model_type]
    assert len(model.tokenize([LONG])["input_ids"][0]) > 3 * len(model.tokenize([SHORT])["input_ids"][0])
    for name in _poolings(model_type):
        model.settings.pooling = name
        alone = model.encode([SHORT], prompt_type="query")
        beside = model.encode([SHORT, LONG], prompt_type="query", batch_size=2)
        assert beside.shape == (2, model.embedding_dim)
        torch.testing.assert_close(beside[0], alone[0], atol=1e-5, rtol=1e-5, msg=f"pooling {name}")
        # The long text must actually produce a different point, or the check above is vacuous.
        assert (beside[1] - beside[0]).abs().max() > 1e-3
    model.settings.pooling = _poolings(model_type)[-1 if model_type != "euclidean" else 0]


@pytest.mark.parametrize("model_type", ["hyte_fh", "hyte_h", "euclidean"])
def test_encode_restores_input_order_and_returns_float32_cpu(models, model_type):
    model = models[model_type]
    texts = [SHORT, LONG, "tiny", LONG[:90], "another short one"]
    batched = model.encode(texts, prompt_type="document", batch_size=2)
    one_by_one = torch.cat([model.encode([t], prompt_type="document") for t in texts])
    assert batched.dtype == torch.float32 and batched.device.type == "cpu"
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=1e-5)
    model.train()
    model.encode(["x"])
    assert model.training  # encode switches to eval only while it runs
    model.eval()


def test_hyperbolic_embeddings_lie_on_the_hyperboloid(models):
    for model_type in ("hyte_fh", "hyte_h"):
        model = models[model_type]
        x = model.encode([SHORT, LONG, "a"]).double()
        c = float(model.curvature().detach())
        torch.testing.assert_close(
            lorentz.inner(x, x), torch.full((3,), -1 / c, dtype=torch.float64), atol=1e-4, rtol=1e-4
        )
        assert bool((x[:, 0] > 0).all())


def test_prefixes_are_applied_to_the_tokenized_text(models):
    model = models["hyte_h"]
    decode = model.tokenizer.decode
    ids_q = model.tokenize(["hello world"], "query")["input_ids"][0]
    ids_d = model.tokenize(["hello world"], "document")["input_ids"][0]
    ids_n = model.tokenize(["hello world"], None)["input_ids"][0]
    assert decode(ids_q, skip_special_tokens=True) == "search _ query : hello world"
    assert decode(ids_d, skip_special_tokens=True) == "search _ document : hello world"
    assert decode(ids_n, skip_special_tokens=True) == "hello world"
    q, d = model.encode(["hello world"], "query"), model.encode(["hello world"], "document")
    assert (q - d).abs().max() > 1e-4
    with pytest.raises(ValueError, match="prompt_type must be"):
        model.tokenize(["x"], "passage")


def test_truncation_to_max_seq_length(models):
    model = models["euclidean"]
    ids = model.tokenize([LONG * 4])["input_ids"]
    assert ids.shape[1] == model.settings.max_seq_length


# --- similarity -------------------------------------------------------------------------------------


def test_geodesic_similarity_is_minus_distance_and_peaks_on_the_diagonal(models):
    model = models["hyte_fh"]
    x = model.encode([SHORT, LONG, "tiny", "something else entirely"])
    sim = model.similarity(x, x[:3])
    assert sim.shape == (4, 3)
    assert bool((sim <= 1e-6).all())
    assert torch.equal(sim[:3].argmax(dim=1), torch.arange(3))
    c = model.curvature().detach()
    torch.testing.assert_close(sim[1, 0], -lorentz.geodesic_distance(x[1], x[0], c), atol=1e-5, rtol=1e-5)
    pair = model.similarity_pairwise(x[:3], x[1:4])
    assert pair.shape == (3,)
    torch.testing.assert_close(pair, torch.diagonal(model.similarity(x[:3], x[1:4])), atol=1e-5, rtol=1e-5)
    assert not sim.requires_grad  # scoring fixed embeddings builds no graph through c


def test_lorentz_inner_similarity(models):
    model = models["hyte_h"]
    x = model.encode([SHORT, LONG, "tiny"]).double()
    model.settings.similarity = "lorentz_inner"
    try:
        sim = model.similarity(x, x)
        c = float(model.curvature().detach())
        expected = lorentz.pairwise_inner(x, x) + 1 / c
        torch.testing.assert_close(sim, expected)
        torch.testing.assert_close(
            torch.diagonal(sim), torch.zeros(3, dtype=torch.float64), atol=1e-6, rtol=0
        )
        assert bool((sim[~torch.eye(3, dtype=torch.bool)] < 0).all())
        torch.testing.assert_close(
            model.similarity_pairwise(x, x.flip(0)), torch.diagonal(model.similarity(x, x.flip(0)))
        )
    finally:
        model.settings.similarity = "geodesic"


def test_cosine_similarity(models):
    model = models["euclidean"]
    x = model.encode([SHORT, LONG, "tiny"])
    sim = model.similarity(x, x)
    torch.testing.assert_close(torch.diagonal(sim), torch.ones(3))
    expected = torch.nn.functional.cosine_similarity(x[0], x[1], dim=0)
    torch.testing.assert_close(sim[0, 1], expected)
    torch.testing.assert_close(model.similarity_pairwise(x, x.flip(0)), torch.diagonal(sim.flip(1)))


# --- training hooks ---------------------------------------------------------------------------------


def test_param_groups_apply_base_lr_multiplier_and_weight_decay_rules():
    model = _build("hyte_h", base_lr_multiplier=0.1)
    groups = {g["name"]: g for g in model.param_groups(lr=1e-3, weight_decay=0.05)}
    assert set(groups) == {"base/decay", "base/no_decay", "model/decay", "model/no_decay"}
    assert groups["base/decay"]["lr"] == pytest.approx(1e-4)
    assert groups["model/decay"]["lr"] == pytest.approx(1e-3)
    no_decay = {id(p) for name in ("base/no_decay", "model/no_decay") for p in groups[name]["params"]}
    named = dict(model.named_parameters())
    for name in ("curvature_module.log_c", "log_scale", "projection.bias"):
        assert id(named[name]) in no_decay, name
    assert id(named["projection.weight"]) in {id(p) for p in groups["model/decay"]["params"]}
    assert all(g["weight_decay"] == 0.0 for n, g in groups.items() if n.endswith("no_decay"))
    counted = sum(len(g["params"]) for g in groups.values())
    assert counted == sum(1 for p in model.parameters() if p.requires_grad)


def test_hyte_fh_bf16_autocast_forward_backward_is_finite(models):
    model = models["hyte_fh"]
    model.train()
    batch = model.tokenize([SHORT, LONG], "query")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch)
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    model.similarity_pairwise(out, out.flip(0)).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    model.zero_grad(set_to_none=True)
    model.eval()


# --- sentence-transformers folders ------------------------------------------------------------------


def test_sentence_transformers_folder_loads_as_a_cosine_baseline():
    from sentence_transformers import SentenceTransformer

    model = load_model(MINILM)
    assert model.settings.similarity == "cosine" and not model.is_hyperbolic
    assert (model.settings.query_prefix, model.settings.document_prefix) == ("", "")
    texts = [SHORT, LONG]
    ours = model.encode(texts, prompt_type="query")
    reference = SentenceTransformer(MINILM, device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(ours, reference.float(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(2))  # its Normalize module is honoured
    alone = model.encode([SHORT])
    torch.testing.assert_close(alone[0], ours[0], atol=1e-5, rtol=1e-5)
    batch = model.tokenize(texts)
    torch.testing.assert_close(model(batch["input_ids"], batch["attention_mask"]), ours, atol=1e-5, rtol=1e-5)
