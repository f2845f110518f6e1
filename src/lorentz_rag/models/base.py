"""The one embedding-model interface shared by HyTE-FH, HyTE-H, the Euclidean twin and sentence-transformers
baselines (docs/internals.md, "the embedding-model interface").

An :class:`EmbeddingModel` maps texts to one vector each:

- hyperbolic models return points of the hyperboloid ``[n, d+1]`` (time coordinate first, curvature ``-c``),
  compared by ``-d(q, x)`` (``geodesic``) or ``<q, x>_L + 1/c`` (``lorentz_inner``);
- Euclidean models return ``[n, d]`` vectors compared by cosine similarity.

Subclasses implement :meth:`EmbeddingModel.forward` (token ids -> pooled embeddings) and
:meth:`EmbeddingModel.lorentz_rag_config` (what :func:`lorentz_rag.models.load_model` needs to rebuild them); everything
else (prefixes, tokenization, batching, similarity, optimizer groups, saving) lives here once.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lorentz_rag.geometry import lorentz
from lorentz_rag.geometry import similarity as similarity_fns
from lorentz_rag.geometry.relation import DEFAULT_RADIUS_WEIGHT, check_relation, relation_pairwise
from lorentz_rag.models.companions import ModelCompanions
from lorentz_rag.models.hf_base import base_from_config_dict
from lorentz_rag.models.hub import push_to_hub
from lorentz_rag.models.io import save_embedding_model
from lorentz_rag.models.settings import (
    EUCLIDEAN_POOLINGS,
    EUCLIDEAN_SIMILARITIES,
    HYPERBOLIC_POOLINGS,
    HYPERBOLIC_SIMILARITIES,
    ModelSettings,
)
from lorentz_rag.search.graph_knn import ConceptGraph
from lorentz_rag.search.relation import relation_route

__all__ = [
    "EUCLIDEAN_POOLINGS",
    "EUCLIDEAN_SIMILARITIES",
    "HYPERBOLIC_POOLINGS",
    "HYPERBOLIC_SIMILARITIES",
    "EmbeddingModel",
    "ModelSettings",
    "NonFiniteEmbeddingError",
    "check_finite_embeddings",
    "check_texts",
    "euclidean_pool",
    "no_decay",
]


# Parameter-name fragments that never take weight decay (besides every tensor with ndim < 2).
_NO_DECAY_NAMES = ("log_c", "logit_scale", "curvature", "bias", "norm")


def no_decay(name: str, param: Tensor) -> bool:
    """True for a parameter that takes no weight decay: every tensor with fewer than 2 dimensions (biases,
    norm gains, scales), norms, biases, the curvature ``log c`` (decay would drag ``c`` towards 1) and the
    contrastive loss's log logit scale (it would drag the temperature towards 1), by name. The one rule of
    :meth:`EmbeddingModel.param_groups` and of the trainer's groups for other models."""
    lowered = name.lower()
    return param.ndim < 2 or any(fragment in lowered for fragment in _NO_DECAY_NAMES)


class NonFiniteEmbeddingError(ValueError):
    """A model produced NaN or infinite embeddings; the message counts the texts and quotes the first."""


def check_texts(texts: Sequence[Any]) -> None:
    """Raise ``TypeError`` naming the first entry of ``texts`` that is not a string (``None``, a number, ...)."""
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(
                f"texts[{i}] is {text!r} ({type(text).__name__}); every text to embed must be a str"
            )


def check_finite_embeddings(
    embeddings: Tensor, texts: Sequence[str] | None = None, what: str = "texts"
) -> Tensor:
    """Return ``embeddings`` ``[n, D]`` unchanged, or raise :class:`NonFiniteEmbeddingError` if a row holds
    NaN or inf: a NaN embedding would otherwise rank as a tie (documents in file order) and score plausibly."""
    emb = torch.as_tensor(embeddings)
    bad = ~torch.isfinite(emb.reshape(len(emb), -1)).all(dim=1) if emb.ndim else ~torch.isfinite(emb)
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        first = f"the first at position {rows[0]}"
        if texts is not None and rows[0] < len(texts):
            text = texts[rows[0]]
            first += f": {text if len(text) <= 80 else text[:77] + '...'!r}"
        raise NonFiniteEmbeddingError(
            f"the model produced NaN or infinite embeddings for {len(rows)} of {len(emb)} {what}, {first}. Its "
            "weights or inputs are broken (a diverged training run?); results computed from them would be "
            "meaningless"
        )
    return embeddings


def euclidean_pool(name: str, hidden: Tensor, mask: Tensor) -> Tensor:
    """Euclidean pooling of token states ``[B, T, d]`` with mask ``[B, T]`` -> ``[B, d]`` (float32 or wider).

    ``mean`` averages the unmasked tokens only (padding has weight 0), ``cls`` takes the first token.
    """
    if name == "cls":
        return hidden[:, 0].float()
    if name != "mean":
        raise ValueError(f"unknown Euclidean pooling {name!r}; choose one of {list(EUCLIDEAN_POOLINGS)}")
    w = mask.to(torch.float32 if hidden.dtype != torch.float64 else torch.float64)
    counts = w.sum(-1, keepdim=True)
    if bool((counts == 0).any()):
        empty = (counts.squeeze(-1) == 0).nonzero().flatten().tolist()
        raise ValueError(f"cannot pool a sequence with no unmasked token (batch rows {empty})")
    # Zero padded states first: they may hold anything (a where, not a product, so NaN cannot leak).
    h = torch.where(w.unsqueeze(-1) > 0, hidden.to(w.dtype), torch.zeros((), dtype=w.dtype, device=w.device))
    return h.sum(1) / counts


class EmbeddingModel(ModelCompanions, nn.Module, abc.ABC):
    """Base class: texts -> embeddings ``[n, D]``, a similarity, optimizer groups, and saving.

    Subclasses set ``settings``, ``tokenizer`` and ``is_hyperbolic`` and implement :meth:`forward` and
    :meth:`lorentz_rag_config`; hyperbolic ones also :meth:`curvature`.
    """

    is_hyperbolic: bool = False

    def __init__(self, settings: ModelSettings, tokenizer: Any) -> None:
        super().__init__()
        self.settings = settings
        self.tokenizer = tokenizer

    # --- shape and geometry --------------------------------------------------------------------------

    @property
    def embedding_dim(self) -> int:
        """Length of one embedding: ``d+1`` (hyperbolic, time first) or ``d`` (Euclidean)."""
        return self.settings.embedding_dim

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def curvature(self) -> Tensor | None:
        """The curvature ``c`` as a 0-d tensor (graph-connected when trainable); ``None`` if Euclidean."""
        return None

    # --- text -> ids ----------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str], prompt_type: Any = None) -> dict[str, Tensor]:
        """Prefix, tokenize with the model's own tokenizer, truncate to ``max_seq_length`` and pad.

        Returns ``input_ids`` and ``attention_mask``, both ``[B, T]`` (T = the longest text in the batch).
        """
        if isinstance(texts, str):
            texts = [texts]
        prefix = self.settings.prefix(prompt_type)
        enc = self.tokenizer(
            [prefix + t for t in texts],
            padding=True,
            truncation=True,
            max_length=self.settings.max_seq_length,
            return_tensors="pt",
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    @abc.abstractmethod
    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Pooled embeddings ``[B, D]`` (float32) for ``input_ids``/``attention_mask`` ``[B, T]``."""

    @torch.no_grad()
    def encode(
        self,
        texts: Iterable[str] | str,
        prompt_type: Any = None,
        batch_size: int = 32,
        show_progress_bar: bool = False,
        device: str | torch.device | None = None,
        **_: Any,
    ) -> Tensor:
        """Embed ``texts``: float32 CPU tensor ``[n, D]``, in input order.

        Texts are sorted by length so each batch pads little, embedded in eval mode without gradients, and
        put back in order; an embedding does not depend on its batch-mates or on padding (every layer and
        pooler masks padding). ``prompt_type`` selects the saved query/document prefix.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        check_texts(texts)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = torch.empty(len(texts), self.embedding_dim, dtype=torch.float32)
        if not texts:
            return out
        if device is not None:
            self.to(device)
        target = self.device
        was_training = self.training
        self.eval()
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        starts = range(0, len(order), batch_size)
        if show_progress_bar:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="encode", unit="batch")
        try:
            for start in starts:
                idx = order[start : start + batch_size]
                batch = self.tokenize([texts[i] for i in idx], prompt_type)
                emb = self(**{k: v.to(target) for k, v in batch.items()})
                out[torch.tensor(idx)] = emb.detach().to("cpu", torch.float32)
        finally:
            self.train(was_training)
        return check_finite_embeddings(out, texts)

    # --- similarity -----------------------------------------------------------------------------------

    def _similarity_c(self, a: Tensor, b: Tensor) -> Tensor:
        c = self.curvature()
        if c is None:
            raise RuntimeError(f"{type(self).__name__} is hyperbolic but has no curvature")
        # Scoring fixed embeddings (evaluation) must not build a graph through a trainable c.
        return c if (a.requires_grad or b.requires_grad) else c.detach()

    def _similarity_args(self, a: Tensor, b: Tensor) -> tuple[str, Tensor | None]:
        kind = self.settings.similarity
        return kind, (self._similarity_c(a, b) if kind in similarity_fns.HYPERBOLIC_KINDS else None)

    def similarity(self, a: Tensor, b: Tensor) -> Tensor:
        """All similarities, higher = closer: a ``[n, D]``, b ``[m, D]`` -> ``[n, m]``.

        ``geodesic``: ``-d(a_i, b_j)``; ``lorentz_inner``: ``<a_i, b_j>_L + 1/c`` (0 for identical points);
        ``cosine``: cosine similarity; ``euclidean``: ``-|a_i - b_j|`` (:mod:`lorentz_rag.geometry.similarity`).
        Computed in the wider of the inputs' dtype and float32 (pass float64 embeddings to score in float64).
        """
        return similarity_fns.pairwise(a, b, *self._similarity_args(a, b))

    def similarity_pairwise(self, a: Tensor, b: Tensor) -> Tensor:
        """Row-by-row similarity of ``a[i]`` and ``b[i]``: ``[n, D]`` x ``[n, D]`` -> ``[n]``."""
        return similarity_fns.rowwise(a, b, *self._similarity_args(a, b))

    def relation_scores(
        self, a: Tensor, b: Tensor, relation: str = "similar", radius_weight: float = DEFAULT_RADIUS_WEIGHT
    ) -> Tensor:
        """All relation scores ``[n, m]`` of queries ``a: [n, D]`` and candidates ``b: [m, D]``: ``similar`` is
        :meth:`similarity`; ``broader`` / ``narrower`` are ``-d(a_i, b_j) -/+ radius_weight (r(b_j) - r(a_i))``
        (:mod:`lorentz_rag.geometry.relation`; refused for cosine models, which have no radius)."""
        kind, c = self._similarity_args(a, b)
        if relation == "similar":
            return similarity_fns.pairwise(a, b, kind, c)
        return relation_pairwise(a, b, relation, kind, c, radius_weight)

    @torch.no_grad()
    def search(
        self,
        queries: Sequence[str] | str,
        documents: Sequence[str] | Tensor,
        k: int = 10,
        *,
        relation: str = "similar",
        radius_weight: float | None = None,
        batch_size: int = 32,
        block_size: int = 256,
        taxonomy: Any = None,
        doc_ids: Sequence[str] | None = None,
    ) -> list[list[tuple[int, float]]]:
        """Exact top-``k`` documents per query: ``(document position, score)`` lists, best first, ties to the
        earlier document.

        ``documents`` are texts (embedded with the document prefix) or their embeddings ``[m, D]``; queries
        are embedded with the query prefix. Every document is scored in float64 (``block_size`` queries at a
        time), by the model's similarity (``relation="similar"``) or by the ``broader`` / ``narrower`` score
        (:meth:`relation_scores`). For a large corpus build a :class:`lorentz_rag.eval.index.VectorIndex`,
        whose ``search`` takes the same ``relation``.

        Which score ranks ``broader`` / ``narrower`` (:func:`lorentz_rag.search.relation.relation_route`):

        - a taxonomy: ``taxonomy`` (a :class:`lorentz_rag.search.graph_knn.ConceptGraph` built with this model,
          ``ConceptGraph.from_taxonomy(model, path)``), else the one the model carries (:attr:`concept_graph`,
          saved by the taxonomy recipe and restored by ``load_model``): graph-kNN over it (any similarity,
          cosine included), mixed with the hierarchy channel where the model has one;
        - else a hierarchy channel (:attr:`hierarchy_channel`): ``(1 - w) z(similarity) + w z(H's relation
          score)`` per query, ``w`` the channel's saved weight (:mod:`lorentz_rag.models.hierarchy_channel`);
        - else the geometric relation score with ``radius_weight`` (default 0.5; models with a radius).

        The first two are exact over every document in float64; documents given as embeddings are the model's,
        and H is applied to them; ``doc_ids`` (optional) link a document whose id is a concept id to it
        directly. ``radius_weight`` is refused where the chosen score has no use for it.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if taxonomy is not None:
            if not isinstance(taxonomy, ConceptGraph):
                raise TypeError(
                    "taxonomy= takes lorentz_rag.search.graph_knn.ConceptGraph.from_taxonomy(model, path), "
                    f"got {type(taxonomy).__name__}"
                )
            if relation == "similar":
                raise ValueError(
                    "a taxonomy ranks broader or narrower documents: pass relation='broader' / 'narrower'"
                )
        graph = taxonomy if taxonomy is not None else self.concept_graph
        route = relation_route(
            relation, channel=self.hierarchy_channel, graph=graph, radius_weight=radius_weight, where="search"
        )
        if route in ("graph", "channel"):
            queries = [queries] if isinstance(queries, str) else list(queries)
            return self._companion_search(
                queries, documents, k, relation, graph if route == "graph" else None, batch_size, doc_ids
            )
        radius_weight = DEFAULT_RADIUS_WEIGHT if radius_weight is None else radius_weight
        check_relation(relation, self.settings.similarity, radius_weight)  # before any encoding
        queries = [queries] if isinstance(queries, str) else list(queries)
        docs = documents if isinstance(documents, Tensor) else self.encode(documents, "document", batch_size)
        if docs.ndim != 2 or docs.shape[1] != self.embedding_dim:
            raise ValueError(
                f"documents must be texts or embeddings [m, {self.embedding_dim}], got {tuple(docs.shape)}"
            )
        q = self.encode(queries, "query", batch_size).double()
        d = docs.detach().double()
        results: list[list[tuple[int, float]]] = []
        for start in range(0, len(q), block_size):
            scores = self.relation_scores(q[start : start + block_size], d, relation, radius_weight)
            top = torch.sort(scores, dim=1, descending=True, stable=True)
            for row_scores, row_pos in zip(top.values[:, :k].tolist(), top.indices[:, :k].tolist()):
                results.append(list(zip(row_pos, row_scores)))
        return results

    def radius(self, embeddings: Tensor) -> Tensor:
        """How far from the centre each embedding lies, ``[n, D] -> [n]``: ``d(o, x)`` on the hyperboloid,
        the Euclidean norm otherwise (the quantity a hierarchy makes grow with depth)."""
        c = self.curvature()
        if self.is_hyperbolic and c is not None:
            return lorentz.radius(embeddings.float(), c if embeddings.requires_grad else c.detach())
        return embeddings.float().norm(dim=-1)

    # --- training -------------------------------------------------------------------------------------

    def base_parameters(self) -> list[nn.Parameter]:
        """Parameters of a pretrained base encoder (trained with ``lr * base_lr_multiplier``); none here."""
        return []

    @property
    def base_lr_multiplier(self) -> float:
        return 1.0

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups (``torch.optim`` format, plus a ``name`` per group).

        Base-encoder parameters get ``lr * base_lr_multiplier``; biases, norm weights, scales and the
        curvature's ``log_c`` get no weight decay (:func:`no_decay`). Frozen parameters are left out. Empty
        groups are dropped.
        """
        base_ids = {id(p) for p in self.base_parameters()}
        buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if p.requires_grad:
                buckets.setdefault((id(p) in base_ids, no_decay(name, p)), []).append(p)
        groups = []
        for (is_base, plain), params in sorted(buckets.items()):
            groups.append(
                {
                    "name": f"{'base' if is_base else 'model'}/{'no_decay' if plain else 'decay'}",
                    "params": params,
                    "lr": lr * (self.base_lr_multiplier if is_base else 1.0),
                    "weight_decay": 0.0 if plain else weight_decay,
                }
            )
        return groups

    # --- saving ---------------------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """A sha256 of the settings, the curvature and every weight (names, dtypes, shapes, bytes): what an
        index records so that searching it with another model, or a changed model folder, is refused."""
        digest = hashlib.sha256(json.dumps(self.settings.to_dict(), sort_keys=True).encode("utf-8"))
        c = self.curvature()
        digest.update(repr(None if c is None else float(c.detach())).encode("ascii"))
        for name, tensor in sorted(self.state_dict().items()):
            t = tensor.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    @abc.abstractmethod
    def lorentz_rag_config(self) -> dict[str, Any]:
        """Model-specific entries of the saved ``config.json`` ``lorentz_rag`` section (architecture configs)."""

    @classmethod
    def from_config(
        cls,
        section: Mapping[str, Any],
        tokenizer: Any,
        settings: ModelSettings,
        *,
        attn_implementation: str = "sdpa",
        base: nn.Module | None = None,
    ) -> EmbeddingModel:
        """The inverse of :meth:`lorentz_rag_config`: the model a ``lorentz_rag`` section describes, with placeholder
        weights (:func:`lorentz_rag.models.load_model` then loads the saved ones strictly). ``section`` is a saved
        section or one built from ``model_args`` (whose keys are the same); ``base``, when given, is a
        pretrained base encoder used instead of one rebuilt from ``section["base_config"]``."""
        if base is None and section.get("base_config") is not None:
            base = base_from_config_dict(section["base_config"], attn_implementation)
        return cls._from_section(section, tokenizer, settings, base)

    @classmethod
    def _from_section(
        cls, section: Mapping[str, Any], tokenizer: Any, settings: ModelSettings, base: Any
    ) -> Any:
        """:meth:`from_config` of one class, with its base encoder (or ``None``) already resolved. Every class
        in ``models.factory.MODEL_CLASSES`` defines it; the others (the sentence-transformers baseline, which
        loads from its own folder) are never rebuilt from a ``lorentz_rag`` section, so reaching this is a bug."""
        raise TypeError(
            f"{cls.__name__} has no lorentz_rag section to be rebuilt from; only the classes of "
            "lorentz_rag.models.factory.MODEL_CLASSES are"
        )

    @property
    def native_st_modules(self) -> bool:
        """Whether the saved folder's sentence-transformers modules are native ones (Transformer, Pooling,
        Dense) rather than lorentz_rag's own (:mod:`lorentz_rag.models.st_export`)."""
        return False

    def save_pretrained(self, path: str | Path) -> None:
        """Write ``config.json`` (with a ``lorentz_rag`` section), ``model.safetensors``, the tokenizer files, the
        sentence-transformers files and the model card (:func:`lorentz_rag.models.io.save_embedding_model`)."""
        save_embedding_model(self, path)
        self.save_companions(path)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload the saved folder (with its model card) to the Hub repo ``repo_id``; keyword arguments
        ``private``, ``token``, ``revision``, ``commit_message`` (:func:`lorentz_rag.models.hub.push_to_hub`)."""
        return push_to_hub(self, repo_id, **kwargs)
