"""MTEB (mteb 2.x) for lorentz_rag models: an encoder adapter, local BEIR tasks, and a summary table.

How mteb scores with *our* similarity: for retrieval, mteb wraps any object that satisfies its
``EncoderProtocol`` (``encode``, ``similarity``, ``similarity_pairwise``, ``mteb_model_meta``) in
``SearchEncoderWrapper``, which ranks documents with ``model.similarity(queries, docs)`` (a ``torch.topk``
per corpus chunk). ``ModelMeta.similarity_fn_name`` is only consulted by mteb's own ``AbsEncoder`` base
class (and its FAISS backend), which :class:`MTEBEncoder` does not inherit from, so mteb calls
:meth:`MTEBEncoder.similarity`: ``-d(q, x)`` or ``<q, x>_L + 1/c`` in float64 for hyperbolic models,
cosine for Euclidean ones. The meta still says ``custom`` (hyperbolic) or ``cosine`` so nothing in mteb
silently substitutes cosine or dot product.

Local BEIR folders become mteb retrieval tasks (:func:`beir_task`), which is how MTEB runs offline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lorentz_rag.data.beir import load_beir
from lorentz_rag.errors import names_path, run_entry_point
from lorentz_rag.eval.mteb_args import DEFAULT_BENCHMARK, SCORINGS, add_mteb_arguments
from lorentz_rag.eval.retrieval import pairwise_scores
from lorentz_rag.geometry import similarity as similarity_fns
from lorentz_rag.models import load_model
from lorentz_rag.models.base import check_finite_embeddings

__all__ = [
    "MTEBEncoder",
    "add_mteb_arguments",
    "aggregate_summary",
    "beir_task",
    "load_mteb_encoder",
    "run_mteb",
    "run_mteb_command",
]


class MTEBEncoder:
    """mteb's ``EncoderProtocol`` around a lorentz_rag embedding model.

    ``scoring`` (``geodesic`` | ``lorentz_inner``) overrides a hyperbolic model's saved similarity for the
    ranking; a Euclidean model ranks by its saved similarity (``cosine``, or ``euclidean`` for the
    Euclidean-distance twin), and ``scoring`` must be ``None`` or that (see :func:`run_mteb_command`).
    """

    def __init__(
        self,
        model: Any,
        scoring: str | None = None,
        *,
        model_name: str | None = None,
        revision: str | None = None,
        model_path: str | None = None,
    ) -> None:
        self.model = model
        # Where lorentz_rag.load_model finds the model again (a folder or a Hub id): the meta's loader needs it.
        self.model_path = model_path
        self._meta: Any = None
        if model.is_hyperbolic:
            scoring = scoring or model.settings.similarity
            if scoring not in SCORINGS:
                raise ValueError(
                    f"scoring must be one of {list(SCORINGS)} for a hyperbolic model, got {scoring!r}"
                )
            c = model.curvature()
            self.curvature: float | None = float(c.detach()) if isinstance(c, Tensor) else float(c)
        else:
            saved = model.settings.similarity
            if scoring not in (None, saved):
                raise ValueError(f"this Euclidean model ranks by {saved}; scoring {scoring!r} does not apply")
            scoring = saved
            self.curvature = None
        self.scoring = scoring
        self.model_name = model_name or f"lorentz_rag/{type(model).__name__}"
        self.revision = revision or "local"

    # --- EncoderProtocol --------------------------------------------------------------------------------

    def encode(
        self,
        inputs: Iterable[Mapping[str, Any]],
        *,
        task_metadata: Any = None,
        hf_split: str | None = None,
        hf_subset: str | None = None,
        prompt_type: Any = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Embed every text of mteb's dataloader: ``[n, D]`` float32.

        mteb's ``PromptType.query`` / ``PromptType.document`` select the model's saved query/document
        prefix; ``None`` (symmetric tasks such as STS or classification) uses no prefix.
        """
        texts: list[str] = []
        for batch in inputs:
            if "text" not in batch:
                raise ValueError(f"lorentz_rag models embed text; the batch has columns {sorted(batch)}")
            texts.extend(batch["text"])
        kind = None if prompt_type is None else str(getattr(prompt_type, "value", prompt_type))
        emb = self.model.encode(texts, prompt_type=kind, batch_size=int(kwargs.get("batch_size", 32)))
        # Every model, sentence-transformers ones included: a NaN row would score as a tie, not fail.
        check_finite_embeddings(emb, texts)
        return torch.as_tensor(emb).to(torch.float32).numpy()

    def similarity(self, embeddings1: Any, embeddings2: Any) -> Tensor:
        """All float64 similarities, higher = closer: ``[n, D]`` x ``[m, D]`` -> ``[n, m]``.

        mteb calls this with all queries against one corpus chunk (50,000 documents by default), so the
        result takes ``8 * n * m`` bytes (plus a few temporaries of that size for the geodesic).
        """
        a, b = _as_2d(embeddings1), _as_2d(embeddings2)
        return pairwise_scores(a, b, self.scoring, self.curvature)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> Tensor:
        """Row-by-row float64 similarity: ``[n, D]`` x ``[n, D]`` -> ``[n]``."""
        a = _as_2d(embeddings1).to(torch.float64)
        b = _as_2d(embeddings2).to(torch.float64)
        return similarity_fns.rowwise(a, b, self.scoring, self.curvature)

    @property
    def mteb_model_meta(self) -> Any:
        """The ``ModelMeta``; with a ``model_path`` its ``load_model()`` rebuilds this encoder (same scoring)
        through :func:`load_mteb_encoder`. mteb's ``load_model`` assigns its own copy here afterwards."""
        if self._meta is not None:
            return self._meta
        from mteb.models.model_meta import ModelMeta, ScoringFunction

        n_params = None
        if hasattr(self.model, "parameters"):
            n_params = sum(p.numel() for p in self.model.parameters())
        return ModelMeta(
            loader=load_mteb_encoder if self.model_path else None,
            loader_kwargs={"model_path": self.model_path} if self.model_path else {},
            name=self.model_name,
            revision=self.revision,
            release_date=None,
            languages=None,
            n_parameters=n_params,
            memory_usage_mb=None,
            max_tokens=getattr(self.model.settings, "max_seq_length", None),
            embed_dim=int(self.model.embedding_dim),
            license=None,
            open_weights=None,
            public_training_code=None,
            public_training_data=None,
            framework=["PyTorch"],
            # Informational only (see the module docstring): mteb calls self.similarity either way.
            similarity_fn_name=ScoringFunction.COSINE if self.scoring == "cosine" else ScoringFunction.CUSTOM,
            use_instructions=bool(self.model.settings.query_prefix or self.model.settings.document_prefix),
            training_datasets=None,
            experiment_kwargs={"scoring": self.scoring},
        )

    @mteb_model_meta.setter
    def mteb_model_meta(self, meta: Any) -> None:
        self._meta = meta


def load_mteb_encoder(
    model_name: str,
    revision: str | None = None,
    *,
    model_path: str | None = None,
    scoring: str | None = None,
    device: str | None = None,
    **_: Any,
) -> MTEBEncoder:
    """``ModelMeta.loader``: mteb's ``EncoderProtocol`` constructor signature (``model_name``, ``revision``,
    keyword arguments). Loads ``model_path`` (default: ``model_name``) with :func:`lorentz_rag.load_model` and
    wraps it with ``scoring`` (the meta's ``experiment_kwargs``)."""
    source = model_path or model_name
    model = load_model(source, device=device or "cpu")
    return MTEBEncoder(model, scoring, model_name=model_name, revision=revision, model_path=source)


def _as_2d(x: Any) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    return t.unsqueeze(0) if t.ndim == 1 else t


# --- local BEIR folders as mteb retrieval tasks ------------------------------------------------------------


def _task_name(folder: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", folder.resolve().name).strip("-")
    return f"BEIR-{name or 'local'}"


def _folder_revision(folder: Path, split: str) -> str:
    digest = hashlib.sha256()
    for rel in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        path = folder / rel
        digest.update(path.read_bytes() if path.is_file() else rel.encode())
    return digest.hexdigest()[:12]


def beir_task(folder: str | Path, split: str = "test") -> Any:
    """An ``AbsTaskRetrieval`` over a local BEIR folder (name ``BEIR-<folder name>``, main score nDCG@10).

    ``load_data`` reads the folder with :func:`lorentz_rag.data.beir.load_beir` (errors name file and line);
    documents keep ``title`` and ``text`` separately, which mteb joins as ``title + " " + text``.
    """
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.task_metadata import TaskMetadata

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder}: not a BEIR folder (corpus.jsonl, queries.jsonl, qrels/{split}.tsv)"
        )
    name = _task_name(folder)
    metadata = TaskMetadata(
        name=name,
        dataset={"path": str(folder.resolve()), "revision": _folder_revision(folder, split)},
        description=f"Local BEIR folder {folder.resolve()} (split {split}), registered by lorentz_rag.",
        reference=None,
        type="Retrieval",
        category="t2t",
        modalities=["text"],
        eval_splits=[split],
        eval_langs=["eng-Latn"],
        main_score="ndcg_at_10",
        date=None,
        domains=None,
        task_subtypes=None,
        license=None,
        annotations_creators=None,
        dialect=None,
        sample_creation=None,
        bibtex_citation="",
    )

    def load_data(self: Any, num_proc: int | None = None, **kwargs: Any) -> None:
        from datasets import Dataset

        if self.data_loaded:
            return
        data = load_beir(folder, split)
        corpus = Dataset.from_dict(
            {
                "id": list(data.corpus),
                "title": [doc["title"] for doc in data.corpus.values()],
                "text": [doc["text"] for doc in data.corpus.values()],
            }
        )
        queries = Dataset.from_dict({"id": list(data.queries), "text": list(data.queries.values())})
        self.dataset = {
            "default": {
                split: {
                    "corpus": corpus,
                    "queries": queries,
                    "relevant_docs": {q: dict(rel) for q, rel in data.qrels.items()},
                    "top_ranked": None,
                }
            }
        }
        self.data_loaded = True

    cls = type(
        re.sub(r"\W", "_", name),
        (AbsTaskRetrieval,),
        {"metadata": metadata, "load_data": load_data, "__module__": __name__},
    )
    return cls()


# --- running and summarising -------------------------------------------------------------------------------


def _main_score(task_result: Any) -> float:
    return float(task_result.get_score())


def aggregate_summary(task_scores: Mapping[str, tuple[str, float]]) -> dict[str, Any]:
    """The paper's Table 1 format from ``{task name: (task type, main score)}`` (scores in [0, 1]).

    ``mean_task``: mean over tasks; ``by_type``: mean per task type; ``mean_task_type``: mean of those.
    """
    if not task_scores:
        raise ValueError("no task results to summarise")
    by_type: dict[str, list[float]] = {}
    for task_type, score in task_scores.values():
        by_type.setdefault(task_type, []).append(score)
    type_means = {t: float(np.mean(v)) for t, v in sorted(by_type.items())}
    return {
        "tasks": {name: {"type": t, "main_score": s} for name, (t, s) in task_scores.items()},
        "by_type": type_means,
        "n_tasks_by_type": {t: len(v) for t, v in sorted(by_type.items())},
        "mean_task": float(np.mean([s for _, s in task_scores.values()])),
        "mean_task_type": float(np.mean(list(type_means.values()))),
    }


def format_summary(summary: Mapping[str, Any]) -> str:
    """A plain-text table of :func:`aggregate_summary` (scores x 100)."""
    width = max(24, *(len(n) for n in summary["tasks"]))
    lines = [f"{'task':<{width}}  {'type':<22}  {'main':>7}", "-" * (width + 33)]
    for name, row in summary["tasks"].items():
        lines.append(f"{name:<{width}}  {row['type']:<22}  {100 * row['main_score']:>7.2f}")
    lines.append("-" * (width + 33))
    for task_type, mean in summary["by_type"].items():
        lines.append(f"{'mean ' + task_type:<{width}}  {'':<22}  {100 * mean:>7.2f}")
    lines.append(f"{'Mean (Task)':<{width}}  {'':<22}  {100 * summary['mean_task']:>7.2f}")
    lines.append(f"{'Mean (TaskType)':<{width}}  {'':<22}  {100 * summary['mean_task_type']:>7.2f}")
    return "\n".join(lines)


def run_mteb(
    encoder: MTEBEncoder,
    tasks: Sequence[Any],
    output_dir: str | Path,
    *,
    batch_size: int = 32,
    show_progress_bar: bool = False,
) -> dict[str, Any]:
    """Evaluate ``encoder`` on mteb ``tasks``; mteb's per-task JSON goes under ``output_dir`` (a
    ``ResultCache``), ``aggregate_summary.json`` next to it. Returns the summary plus each task's scores.
    """
    import mteb

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    types = {task.metadata.name: task.metadata.type for task in tasks}
    started = time.perf_counter()
    try:
        result = mteb.evaluate(
            encoder,
            list(tasks),
            cache=mteb.ResultCache(cache_path=out),
            overwrite_strategy="always",
            encode_kwargs={"batch_size": batch_size, "show_progress_bar": show_progress_bar},
            show_progress_bar=show_progress_bar,
        )
    except Exception as error:
        hub = [t.metadata.name for t in tasks if not Path(str(t.metadata.dataset["path"])).is_dir()]
        if hub:
            raise RuntimeError(
                f"MTEB failed ({type(error).__name__}: {error}). Tasks {hub[:5]} load their data from the "
                "Hugging Face hub: this needs internet access and HF_HUB_OFFLINE unset. Run local BEIR "
                "folders offline with --beir DIR."
            ) from error
        raise
    scores = {
        tr.task_name: (types.get(tr.task_name, "unknown"), _main_score(tr)) for tr in result.task_results
    }
    summary = aggregate_summary(scores)
    summary["meta"] = {
        "model": encoder.model_name,
        "scoring": encoder.scoring,
        "curvature": encoder.curvature,
        "seconds": time.perf_counter() - started,
    }
    summary["scores"] = {tr.task_name: tr.scores for tr in result.task_results}
    with names_path(out / "aggregate_summary.json"):  # a full disk names the file
        (out / "aggregate_summary.json").write_text(
            json.dumps(summary, indent=2, default=float) + "\n", encoding="utf-8"
        )
    return summary


def _select_tasks(args: argparse.Namespace) -> list[Any]:
    tasks: list[Any] = [beir_task(folder, args.split) for folder in args.beir]
    names = [t.strip() for t in (args.tasks or "").split(",") if t.strip()]
    benchmark = args.benchmark
    if not tasks and not names and benchmark is None:
        benchmark = DEFAULT_BENCHMARK
    if names or benchmark:
        import mteb

        if names:
            tasks.extend(mteb.get_tasks(tasks=names))
        if benchmark:
            tasks.extend(mteb.get_benchmark(benchmark).tasks)
    return tasks


def run_mteb_command(args: argparse.Namespace) -> dict[str, Any]:
    """``lorentz-rag eval mteb`` / ``eval_mteb_hyperbolic.py``: load, select tasks, run, print the table."""
    model = load_model(args.model)
    scoring = args.scoring
    if scoring and not model.is_hyperbolic:
        print(f"note: {args.model} is a Euclidean model; --scoring {scoring} ignored, ranking by cosine")
        scoring = None
    name = Path(args.model).resolve().name or "model"
    config = Path(args.model) / "config.json"
    revision = hashlib.sha256(config.read_bytes()).hexdigest()[:12] if config.is_file() else "local"
    encoder = MTEBEncoder(
        model, scoring, model_name=f"lorentz_rag/{name}", revision=revision, model_path=str(args.model)
    )
    tasks = _select_tasks(args)
    summary = run_mteb(encoder, tasks, args.output_dir, batch_size=args.batch_size)
    print(format_summary(summary))
    print(f"scoring {encoder.scoring}; results in {args.output_dir} (aggregate_summary.json)")
    if not all(math.isfinite(row["main_score"]) for row in summary["tasks"].values()):
        raise RuntimeError("non-finite MTEB main score")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``eval_mteb_hyperbolic.py`` (user errors: one ``error:`` line, exit status 2)."""
    return run_entry_point(_main, argv)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="eval_mteb_hyperbolic.py",
        description="Run MTEB with a lorentz-rag model, ranking by its hyperbolic similarity. The model type "
        "comes from the saved config (--hybrid is accepted and ignored). Hub tasks need internet access; "
        "--beir DIR runs local BEIR folders offline.",
    )
    add_mteb_arguments(parser)
    run_mteb_command(parser.parse_args(argv))
    return 0
