"""The quickstart's measurements of one model: retrieval on the tune and report halves of every BEIR set
(with per-query scores for the paired bootstrap) and the radius by WordNet level on each half of the probe.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorentz_rag.data.bundled import part_of
from lorentz_rag.eval.hierarchy import embedding_radii, hierarchy_probe, radius_stats
from lorentz_rag.eval.retrieval import evaluate_beir

__all__ = [
    "EncodeOnce",
    "EvalSets",
    "evaluate_model",
    "evaluate_retrieval",
    "probe_hierarchy",
    "probe_radii",
    "set_max_length",
]


def set_max_length(model: Any, max_length: int) -> Any:
    """Truncate ``model``'s inputs to ``max_length`` tokens from now on (and in its saved config); returns it.

    A sentence-transformers baseline tokenizes through its own ``max_seq_length``, so that is set too.
    """
    model.settings.max_seq_length = int(max_length)
    st = getattr(model, "st", None)
    if st is not None:
        st.max_seq_length = int(max_length)
    return model


@dataclass
class EvalSets:
    """The evaluation data of one run: BEIR folders by name and the hierarchy probe rows."""

    beir: dict[str, Path]
    probe_rows: list[dict[str, Any]]


def evaluate_retrieval(model: Any, eval_dir: Path, split: str = "report") -> dict[str, Any]:
    """BEIR metrics (with per-query nDCG@10 / MRR@10) of one model on a split of ``eval_dir``."""
    return evaluate_beir(model, eval_dir, split, batch_size=32, top_k=100, per_query=True)


def probe_radii(model: Any, rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Radius (or norm) by WordNet level on each part of the probe: ``{part: radius_stats + kind}``."""
    radii, _, kind = embedding_radii(model, [r["text"] for r in rows], batch_size=32)
    out = {}
    for part in ("tune", "report"):
        idx = [i for i, r in enumerate(rows) if part_of(str(r["id"])) == part]
        stats = radius_stats(radii[idx], [int(rows[i]["level"]) for i in idx])
        out[part] = {**stats, "radius_kind": kind}
    return out


class EncodeOnce:
    """``model`` whose :meth:`encode` remembers each (texts, prompt type) call, so the tune and report parts
    of a set, which share its corpus, embed it once. Everything else is the model's own."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self._memo: dict[tuple[Any, ...], Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def encode(self, texts: Sequence[str], prompt_type: Any = None, **kwargs: Any) -> Any:
        key = (tuple(texts), str(prompt_type))
        if key not in self._memo:
            self._memo[key] = self._model.encode(list(texts), prompt_type=prompt_type, **kwargs)
        return self._memo[key]


def evaluate_model(model: Any, sets: EvalSets) -> dict[str, Any]:
    """Every measurement of one model: ``{set: {part: metrics}}`` for each BEIR set, and the probe."""
    model = EncodeOnce(model)
    result: dict[str, Any] = {
        name: {part: evaluate_retrieval(model, folder, part) for part in ("tune", "report")}
        for name, folder in sets.beir.items()
    }
    result["probe"] = probe_radii(model, sets.probe_rows)
    return result


def probe_hierarchy(models: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], out_dir: Path) -> None:
    """:func:`lorentz_rag.eval.hierarchy.hierarchy_probe` on the probe rows for ``{label: model}``: writes
    ``hierarchy.json``, ``radius_by_level.png`` and ``embeddings_2d.png`` into ``out_dir``."""
    hierarchy_probe(models, list(rows), out_dir, batch_size=32)
