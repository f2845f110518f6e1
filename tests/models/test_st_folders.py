"""Saved lorentz_rag folders are sentence-transformers models: same embeddings, and dot-product ranking equal to
the geodesic ranking for hyperbolic models (lorentz_rag.models.st_export)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from sentence_transformers import SentenceTransformer

from lorentz_rag.data.beir import load_beir
from lorentz_rag.data.bundled import faq_dev_path
from lorentz_rag.geometry.lorentz import ip_query
from lorentz_rag.models import build_model, load_model, packaged_minilm_path

MINILM = str(packaged_minilm_path())
TINY = {"model_name": MINILM, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
TEXTS = ["Lorentz model of hyperbolic space", "short", "the saved folder must not depend on the base path"]
PREFIXES = {"query_prefix": "q: ", "document_prefix": "d: "}

CASES = {
    "hyte_h": (
        {"model_type": "hyte_h", "model_name": MINILM, "embedding_dim": 16, "max_seq_length": 64},
        "dot",
    ),
    "hyte_h_blocks": (
        {
            "model_type": "hyte_h",
            "model_name": MINILM,
            "embedding_dim": 16,
            "num_hyperbolic_blocks": 1,
            "num_attention_heads": 2,
            "hyte_h_head": "token_radius",
        },
        "dot",
    ),
    "hyte_fh": ({"model_type": "hyte_fh", "pooling": "outward_einstein_midpoint", **TINY}, "dot"),
    "euclidean_modernbert": ({"model_type": "euclidean", "pooling": "cls", **TINY}, "cosine"),
    "euclidean_pretrained": (
        {"model_type": "euclidean", "euclidean_base": "pretrained", "model_name": MINILM, "embedding_dim": 8},
        "cosine",
    ),
    "euclidean_direction_norm": (
        {
            "model_type": "euclidean",
            "euclidean_base": "pretrained",
            "model_name": MINILM,
            "embedding_dim": 8,
            "euclidean_head": "direction_norm",
            "similarity": "euclidean",
        },
        "euclidean",
    ),
}


def _perturb(module: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))


def _module_types(path) -> list[str]:
    types = [m["type"] for m in json.loads((path / "modules.json").read_text())]
    if (path / "router_config.json").is_file():
        types += json.loads((path / "router_config.json").read_text())["types"].values()
    return types


@pytest.mark.parametrize("case", list(CASES))
def test_sentence_transformers_loads_every_model_type_with_identical_outputs(tmp_path, case):
    args, similarity = CASES[case]
    torch.manual_seed(0)
    model = build_model({**args, **PREFIXES}).eval()
    _perturb(model)
    model.save_pretrained(tmp_path)
    native = all(t.startswith("sentence_transformers.") for t in _module_types(tmp_path))
    assert native == (case in ("euclidean_modernbert", "euclidean_pretrained"))
    # Native folders load without trusting any code; lorentz_rag modules need lorentz_rag installed and the flag.
    st = SentenceTransformer(str(tmp_path), device="cpu", trust_remote_code=not native)
    assert st.similarity_fn_name == similarity
    assert st.prompts == {"query": "q: ", "document": "d: "}
    lorentz_rag_model = load_model(tmp_path)
    want_q, want_d = lorentz_rag_model.encode(TEXTS, "query"), lorentz_rag_model.encode(TEXTS, "document")
    if model.is_hyperbolic:
        want_q = ip_query(want_q)
    got_q = st.encode_query(TEXTS, convert_to_tensor=True).cpu()
    got_d = st.encode_document(TEXTS, convert_to_tensor=True).cpu()
    torch.testing.assert_close(got_q, want_q, atol=1e-6, rtol=0)
    torch.testing.assert_close(got_d, want_d, atol=1e-6, rtol=0)
    assert st.get_embedding_dimension() == model.embedding_dim


def test_hyperbolic_dot_product_ranks_faq_dev_exactly_as_the_geodesic_distance(tmp_path):
    torch.manual_seed(0)
    model = build_model(
        {
            "model_type": "hyte_h",
            "model_name": MINILM,
            "embedding_dim": 32,
            "curvature": 1.5,
            # The ranking identity does not depend on the length; 64 tokens keep the two encodes short.
            "max_seq_length": 64,
            **PREFIXES,
        }
    ).eval()
    _perturb(model)
    model.save_pretrained(tmp_path)
    data = load_beir(faq_dev_path())
    doc_ids = list(data.corpus)
    doc_texts = [(d.get("title", "") + " " + d["text"]).strip() for d in data.corpus.values()]
    queries = list(data.queries.values())
    assert len(queries) >= 100 and len(doc_texts) >= 100

    lorentz_rag_model = load_model(tmp_path)
    docs = lorentz_rag_model.encode(doc_texts, "document", batch_size=64)
    geodesic = lorentz_rag_model.similarity(
        lorentz_rag_model.encode(queries, "query").double(), docs.double()
    )

    st = SentenceTransformer(str(tmp_path), device="cpu", trust_remote_code=True)
    st_docs = st.encode_document(doc_texts, convert_to_tensor=True, batch_size=64).cpu()
    st_queries = st.encode_query(queries, convert_to_tensor=True).cpu()
    torch.testing.assert_close(st_docs, docs, atol=1e-6, rtol=0)
    dot = st.similarity(st_queries.double(), st_docs.double())

    def top10(scores):
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :10]
        return [[doc_ids[i] for i in row] for row in order.tolist()]

    assert top10(dot) == top10(geodesic)
    # sentence-transformers' own float32 scores rank the same way on this set.
    assert top10(st.similarity(st_queries, st_docs)) == top10(geodesic)
    # The scores themselves differ (<q,x>_L vs -d), but only by a monotone map: -d = -arcosh(-c<q,x>_L)/sqrt(c).
    c = float(lorentz_rag_model.curvature().detach())
    torch.testing.assert_close(
        -torch.arccosh((-c * dot).clamp_min(1.0)) / c**0.5, geodesic, atol=1e-4, rtol=1e-4
    )


def test_folders_without_sentence_transformers_files_still_load(tmp_path):
    """Folders written before modules.json was added (config.json + weights + tokenizer) load as before."""
    torch.manual_seed(0)
    model = build_model({"model_type": "hyte_fh", **TINY, **PREFIXES}).eval()
    model.save_pretrained(tmp_path / "new")
    old = tmp_path / "old"
    old.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tmp_path / "new" / name, old / name)
    for path in (tmp_path / "new", old):
        torch.testing.assert_close(load_model(path).encode(TEXTS, "query"), model.encode(TEXTS, "query"))


def _front_matter(path):
    import yaml

    text = (path / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---", 2)[1]), text


def test_saved_folder_has_a_model_card_with_hub_metadata(tmp_path):
    torch.manual_seed(0)
    model = build_model(
        {"model_type": "hyte_h", "model_name": MINILM, "embedding_dim": 16, "curvature": 2.0, **PREFIXES}
    ).eval()
    model.card_data = {
        "training_data": "data/pairs.jsonl",
        "training_steps": 123,
        "eval_results": {"faq-dev": {"ndcg_at_10": 0.5}},
    }
    model.save_pretrained(tmp_path)
    meta, text = _front_matter(tmp_path)
    assert meta["library_name"] == "lorentz-rag" and meta["pipeline_tag"] == "sentence-similarity"
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["license"] == "apache-2.0"  # read from the packaged base folder's own card
    assert {"hyperbolic", "hyte_h", "sentence-transformers"} <= set(meta["tags"])
    result = meta["model-index"][0]["results"][0]
    assert result["dataset"]["name"] == "faq-dev" and result["metrics"] == [
        {"type": "ndcg_at_10", "value": 0.5}
    ]
    for expected in (
        "| Embedding dimensions | 17 (time coordinate first) |",
        "c = 2 (trained)",
        "| Pooling | `outward_einstein_midpoint`, exponent p = 1 |",
        "| Similarity | `geodesic` |",
        "`'q: '`",
        "| Training data | data/pairs.jsonl |",
        "| Training steps | 123 |",
        "lorentz_rag.load_model(",
        "trust_remote_code=True",
        "arXiv:2602.07739",
    ):
        assert expected in text, expected


def test_model_card_of_a_scratch_model_claims_no_base_or_training(tmp_path):
    torch.manual_seed(0)
    build_model({"model_type": "euclidean", "pooling": "cls", **TINY}).save_pretrained(tmp_path)
    meta, text = _front_matter(tmp_path)
    assert "model-index" not in meta and "Training steps" not in text and "Curvature" not in text
    assert "base_model" not in meta and "| Base model | none (trained from scratch) |" in text
    assert "trust_remote_code" not in text  # native sentence-transformers modules
