"""The model card (``README.md`` with Hugging Face Hub metadata) that ``save_pretrained`` writes.

Everything on the card is read from the model itself: its settings, its ``model_args`` (the base encoder),
its curvature, and ``model.card_data`` when a run filled it in (``training_data``, ``training_steps``,
``eval_results`` as ``{dataset: {metric: value}}``). Nothing is claimed that the model does not record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lorentz_rag.models.hf_base import packaged_minilm_path

__all__ = ["base_model_license", "model_card", "write_model_card"]

PAPER_CITATION = """@article{madhu2026lorentz_rag,
  title   = {HypRAG: Hyperbolic Dense Retrieval for Retrieval Augmented Generation},
  author  = {Madhu and others},
  journal = {arXiv preprint arXiv:2602.07739},
  year    = {2026}
}"""

_TITLES = {"hyte_h": "HyTE-H", "hyte_fh": "HyTE-FH", "euclidean": "Euclidean twin"}
_PACKAGED_MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def _base_model(model: Any) -> tuple[str | None, Path | None]:
    """(Hub id or ``None``, local folder or ``None``) of the base encoder named in ``model_args``."""
    name = (getattr(model, "model_args", None) or {}).get("model_name")
    # HyTE-FH and the ModernBERT twin take only a tokenizer (and sizes) from model_name: no base weights.
    if not name or not hasattr(model, "base"):
        return None, None
    try:
        packaged = packaged_minilm_path()
    except ImportError:
        packaged = None
    folder = Path(name)
    if packaged is not None and folder.exists() and folder.resolve() == Path(packaged).resolve():
        return _PACKAGED_MINILM, folder
    if folder.exists():
        return None, folder
    return name, None


def base_model_license(folder: Path | None) -> str | None:
    """The ``license`` in the front matter of the base folder's ``README.md``, or ``None``."""
    readme = folder / "README.md" if folder is not None else None
    if readme is None or not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    try:
        meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return None
    value = meta.get("license") if isinstance(meta, dict) else None
    return str(value) if value else None


def model_card(model: Any, repo_id: str | None = None) -> str:
    """The ``README.md`` text for ``model``: YAML front matter, a description table, usage and citation."""
    s = model.settings
    hub_base, base_folder = _base_model(model)
    license_ = base_model_license(base_folder)
    card_data = dict(getattr(model, "card_data", None) or {})
    c = model.curvature()
    trainable_c = bool(getattr(getattr(model, "curvature_module", None), "trainable", False)) or bool(
        getattr(getattr(getattr(model, "model", None), "curvature", None), "trainable", False)
    )

    meta: dict[str, Any] = {
        "library_name": "lorentz-rag",
        "pipeline_tag": "sentence-similarity",
        "tags": [
            "lorentz-rag",
            "sentence-transformers",
            "sentence-similarity",
            "feature-extraction",
            s.model_type,
        ]
        + (["hyperbolic", "lorentz"] if model.is_hyperbolic else []),
    }
    if hub_base:
        meta["base_model"] = hub_base
    if license_:
        meta["license"] = license_
    eval_results = card_data.get("eval_results") or {}
    if eval_results:
        meta["model-index"] = [
            {
                "name": repo_id or s.model_type,
                "results": [
                    {
                        "task": {"type": "retrieval"},
                        "dataset": {"name": str(dataset), "type": str(dataset)},
                        "metrics": [{"type": str(k), "value": float(v)} for k, v in sorted(metrics.items())],
                    }
                    for dataset, metrics in sorted(eval_results.items())
                ],
            }
        ]

    rows = [
        ("Model type", f"{_TITLES.get(s.model_type, s.model_type)} (`{s.model_type}`)"),
        ("Base model", hub_base or (str(base_folder) if base_folder else "none (trained from scratch)")),
        (
            "Embedding dimensions",
            f"{s.embedding_dim}" + (" (time coordinate first)" if model.is_hyperbolic else ""),
        ),
    ]
    if c is not None:
        rows.append(
            ("Curvature", f"-c with c = {float(c.detach()):.6g} ({'trained' if trainable_c else 'fixed'})")
        )
    pooling = f"`{s.pooling}`"
    if s.pooling == "outward_einstein_midpoint":
        pooling += f", exponent p = {s.pooling_p:g}"
    rows += [
        ("Pooling", pooling),
        ("Similarity", f"`{s.similarity}`"),
        ("Query prefix", f"`{s.query_prefix!r}`"),
        ("Document prefix", f"`{s.document_prefix!r}`"),
        ("Maximum sequence length", str(s.max_seq_length)),
    ]
    if card_data.get("training_data"):
        data = card_data["training_data"]
        rows.append(("Training data", ", ".join(map(str, data)) if isinstance(data, list) else str(data)))
    if card_data.get("training_steps") is not None:
        rows.append(("Training steps", str(card_data["training_steps"])))
    rows.append(("License of the base weights", license_ or "unknown (see the base model)"))

    name = repo_id or "path/to/this/folder"
    trust = "" if model.native_st_modules else ", trust_remote_code=True"
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {_TITLES.get(s.model_type, s.model_type)} text embedding model (lorentz_rag)",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
    ]
    if eval_results:
        lines += ["## Evaluation", "", "| Dataset | Metric | Value |", "|---|---|---|"]
        for dataset, metrics in sorted(eval_results.items()):
            lines += [f"| {dataset} | {k} | {float(v):.4f} |" for k, v in sorted(metrics.items())]
        lines.append("")
    lines += [
        "## Usage with lorentz_rag",
        "",
        "```python",
        "import lorentz_rag",
        "",
        f'model = lorentz_rag.load_model("{name}")',
        'queries = model.encode(["how do I reset it?"], prompt_type="query")',
        'docs = model.encode(["Hold the button for ten seconds."], prompt_type="document")',
        "scores = model.similarity(queries, docs)  # higher = closer"
        + (" (-geodesic distance)" if model.is_hyperbolic else ""),
        "```",
        "",
        "## Usage with sentence-transformers",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        f'model = SentenceTransformer("{name}"{trust})',
        'queries = model.encode_query(["how do I reset it?"])',
        'docs = model.encode_document(["Hold the button for ten seconds."])',
        "scores = model.similarity(queries, docs)",
        "```",
        "",
    ]
    if model.is_hyperbolic:
        lines += [
            "Documents are points x of the hyperboloid; queries come out as `(-q0, qs)`, so the dot product",
            "equals the Lorentz inner product `<q, x>_L` and ranks documents exactly as the geodesic distance",
            "does. Any dot-product index (FAISS `IndexFlatIP`, a vector database with inner product) gives",
            "lorentz_rag's ranking.",
            "",
        ]
    elif not trust:
        lines += ["This folder's sentence-transformers modules are native (Transformer, Pooling, Dense).", ""]
    lines += ["## Citation", "", "```bibtex", PAPER_CITATION, "```", ""]
    return "\n".join(lines)


def write_model_card(model: Any, path: str | Path, repo_id: str | None = None) -> Path:
    """Write ``README.md`` into the saved folder ``path``."""
    file = Path(path) / "README.md"
    file.write_text(model_card(model, repo_id), encoding="utf-8")
    return file
