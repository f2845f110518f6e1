"""What a vector store holds: the model's geometry, the norm bound ``R`` and the stored vector form.

Every store searches squared L2 distances, with one form per similarity (``eval/index.py`` explains why
each ranks exactly as the model does):

==================  ====================================  ======================  ============================
similarity          stored vector ``b`` (float32)         query ``a``             ``|a - b|^2``
==================  ====================================  ======================  ============================
geodesic,           ``(x, sqrt(R^2 - |x|^2))``            ``(ip_query(q), 0)``    ``|a|^2 + R^2 - 2 <q, x>_L``
lorentz_inner       ``[D+1]``, ``x`` re-lifted
euclidean           ``x``                                 ``q``                   ``|q - x|^2``
cosine              ``x / |x|``                           ``q / |q|``             ``2 - 2 cos``
==================  ====================================  ======================  ============================

The hyperbolic row is the MIPS -> L2 reduction: every stored vector has norm ``R``, so an ANN graph or IVF
index built on L2 links documents that are close as points (over the raw inner-product form, HNSW recall@10
was about 1%). ``R`` is fixed when the store is created, so documents added later need no rebuild; it is
the norm of a point at hyperbolic radius ``r``, ``|x|^2 = x0^2 + |xs|^2 = cosh(2 sqrt(c) r) / c``, for a
radius bound ``r`` every document must respect (a document beyond it is refused).

``r`` must be tight: the store resolves distances only to about ``2^-24 R^2``, and ``R^2`` grows as
``exp(2 sqrt(c) r)``. The model's own bound is a valid ``r`` (HyTE-H's clip ``max_norm`` or its head's
``max_radius``: every midpoint of points within it lies within it) but usually a loose one: the quickstart
HyTE-H's bound is 10 while its documents lie at radius about 2, and with ``r = 10`` the reduced form
resolved distances only to about 15, ANN recall@10 fell to 0.00-0.14 and exact search had to fetch the
whole store (``benchmarks/results/vector_stores.md``). So when a store is created from documents and no
``max_radius`` is given, ``r`` is the documents' largest radius plus :data:`RADIUS_HEADROOM` (one unit of
hyperbolic distance: room for later documents of the same kind, at 7x the ``R^2`` for ``c = 1``), never more
than the model's bound. Models without a bound (HyTE-FH, HyTE-H with hyperbolic blocks) get the same
default; creating an empty store for them needs an explicit ``max_radius``.
The Euclidean-distance twin's stored form is ``x`` itself (``R`` only refuses documents, precision does not
depend on it): its bound is its head's ``max_radius``, else the documents' largest norm times
``1 + RADIUS_HEADROOM``; cosine's is 1.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lorentz_rag.eval.index import HYPERBOLIC, search_form, stored_form
from lorentz_rag.geometry import lorentz
from lorentz_rag.geometry import similarity as similarity_fns
from lorentz_rag.models.euclidean import EuclideanEncoder
from lorentz_rag.models.hyte_h import HyteH

__all__ = [
    "RADIUS_HEADROOM",
    "STORE_FORMAT_VERSION",
    "StoreLayout",
    "documents_radius",
    "layout_for_model",
    "model_radius_bound",
]

STORE_FORMAT_VERSION = 1
# Relative slack on R: float32 model outputs at the bound land within a few ulps of it.
_SLACK = 1e-4
#: Room above the documents' largest radius (hyperbolic distance; relative for a Euclidean norm) that a
#: store created from documents keeps for later ones, when no max_radius is given (module docstring).
RADIUS_HEADROOM = 1.0


def model_radius_bound(model: Any) -> float | None:
    """The largest radius ``model`` can produce (hyperbolic: geodesic distance from the origin; Euclidean:
    the vector norm), or ``None`` where it has no bound."""
    if isinstance(model, HyteH):
        if len(model.blocks):  # hyperbolic blocks move points after the clip
            return None
        return model.max_norm if model.head_kind == "token" else model.head.max_radius
    if isinstance(model, EuclideanEncoder) and model.head is not None:
        return model.head.max_radius
    return None


@dataclass(frozen=True)
class StoreLayout:
    """The settings a store records in its table or collection metadata (one JSON object).

    ``dim``: the embedding length ``D``; ``max_radius``: the radius bound ``r`` (``None`` for cosine).
    """

    similarity: str
    curvature: float | None
    dim: int
    max_radius: float | None
    model_fingerprint: str | None = None
    model_path: str | None = None
    format_version: int = STORE_FORMAT_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"dim must be a positive int, got {self.dim!r}")
        similarity_fns.check_kind(self.similarity, self.curvature)
        if self.is_hyperbolic and not (self.curvature or 0) > 0:
            raise ValueError(f"similarity {self.similarity!r} needs a curvature c > 0, got {self.curvature}")
        if self.similarity != "cosine" and not (self.max_radius is not None and self.max_radius > 0):
            raise ValueError(
                f"a {self.similarity!r} store needs a radius bound max_radius > 0, got {self.max_radius}"
            )

    @property
    def is_hyperbolic(self) -> bool:
        return self.similarity in HYPERBOLIC

    @property
    def width(self) -> int:
        """Length of a stored vector: ``D + 1`` (hyperbolic, the reduction's extra coordinate) or ``D``."""
        return self.dim + self.is_hyperbolic

    @property
    def norm_bound(self) -> float:
        """``R``: the Euclidean norm every stored point ``x`` respects (module docstring)."""
        if self.similarity == "cosine":
            return 1.0 + _SLACK
        r = float(self.max_radius)  # type: ignore[arg-type]
        if not self.is_hyperbolic:
            return r * (1.0 + _SLACK)
        c = float(self.curvature)  # type: ignore[arg-type]
        return math.sqrt(math.cosh(2.0 * math.sqrt(c) * r) / c) * (1.0 + _SLACK)

    @property
    def offset(self) -> float:
        """``B`` in ``|a - b|^2 = |a|^2 + B - 2 s``: the certification score ``s`` of a store distance."""
        return {"cosine": 1.0, "euclidean": 0.0}.get(self.similarity, self.norm_bound**2)

    @property
    def stored_form(self) -> str:
        """The stored vector form, by name (recorded for readers of the metadata; checked on open)."""
        return {"cosine": "unit", "euclidean": "raw"}.get(self.similarity, "l2_reduced")

    def to_json(self) -> str:
        return json.dumps(
            {**asdict(self), "stored_form": self.stored_form, "norm_bound": self.norm_bound}, sort_keys=True
        )

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> StoreLayout:
        """The layout a store recorded; ``where`` names the table or collection in errors."""
        try:
            data = json.loads(text)
            if data.get("format_version") != STORE_FORMAT_VERSION:
                raise ValueError(f"unsupported format_version {data.get('format_version')!r}")
            form, bound = data.pop("stored_form", None), data.pop("norm_bound", None)
            layout = cls(**data)
            if form != layout.stored_form or bound is None or not math.isclose(bound, layout.norm_bound):
                raise ValueError(
                    f"stored form {form!r} with norm bound {bound} is not this version's "
                    f"{layout.stored_form!r} with {layout.norm_bound}"
                )
            return layout
        except (ValueError, TypeError, AttributeError) as error:
            raise ValueError(f"{where}: unreadable lorentz-rag store metadata: {error}") from None

    # --- vector forms ---------------------------------------------------------------------------------

    def document_vectors(self, ids: list[str], embeddings: Tensor) -> np.ndarray:
        """Stored vectors ``[n, width]`` float32 of document embeddings ``[n, D]``; a document beyond the
        bound is refused, naming its id."""
        x32 = stored_form(embeddings, self.similarity, self.curvature).to(torch.float32)
        if self.similarity == "euclidean":
            x32 = x32[:, :-1]  # the store searches L2 on x itself
        norms = x32.to(torch.float64).norm(dim=-1)
        bound = self.norm_bound
        beyond = (norms > bound).nonzero().flatten().tolist()
        if beyond:
            i = beyond[0]
            radius = documents_radius(x32[i : i + 1], self.similarity, self.curvature)
            raise ValueError(
                f"{len(beyond)} of {len(ids)} documents lie beyond the store's radius bound "
                f"{self.max_radius:g}, the first {ids[i]!r} at radius {radius:g}: a store keeps one bound for every "
                "document it will ever hold (so approximate search needs no rebuild); create the store with a "
                "larger max_radius (--max-radius)"
            )
        if not self.is_hyperbolic:
            return np.ascontiguousarray(x32.numpy())
        extra = (bound**2 - norms.pow(2)).clamp_min(0.0).sqrt().to(torch.float32)
        return np.ascontiguousarray(torch.cat([x32, extra.unsqueeze(1)], dim=1).numpy())

    def query_forms(self, queries: Tensor) -> tuple[Tensor, np.ndarray]:
        """(float64 stored forms ``[n, D']`` for the re-rank, float32 store queries ``[n, width]``)."""
        q64 = stored_form(queries, self.similarity, self.curvature)
        if self.is_hyperbolic:
            a = torch.cat([search_form(q64, self.similarity), torch.zeros_like(q64[:, :1])], dim=1)
        elif self.similarity == "euclidean":
            a = q64[:, :-1]
        else:
            a = q64
        return q64, np.ascontiguousarray(a.to(torch.float32).numpy())

    def rerank_form(self, vectors: np.ndarray) -> Tensor:
        """float64 points ``[m, D']`` as :func:`lorentz_rag.eval.index.candidate_scores` reads them, from
        stored vectors ``[m, width]``."""
        x = torch.from_numpy(np.asarray(vectors, dtype=np.float32)).to(torch.float64)
        if self.similarity == "euclidean":
            return stored_form(x, "euclidean", None)
        return x[:, : self.dim]


def documents_radius(embeddings: Tensor, similarity: str, c: float | None) -> float:
    """The largest radius among document embeddings ``[n, D]``: hyperbolic distance from the origin, or the
    vector norm for the Euclidean-distance twin."""
    x = torch.as_tensor(embeddings).detach().to(torch.float64)
    if similarity in HYPERBOLIC:
        return float(lorentz.radius(lorentz.lift(x[:, 1:], c), c).max())  # type: ignore[arg-type]
    return float(x.norm(dim=-1).max())


def layout_for_model(
    model: Any,
    *,
    max_radius: float | None = None,
    documents: Tensor | None = None,
    model_path: str | None = None,
) -> StoreLayout:
    """The layout of a store for ``model``'s embeddings: its similarity, curvature, fingerprint, and the
    radius bound: ``max_radius`` when given; else, with ``documents`` (their embeddings ``[n, D]``), their
    largest radius plus :data:`RADIUS_HEADROOM`, capped by the model's own bound
    (:func:`model_radius_bound`; for the Euclidean-distance twin its bound first); else the model's bound."""
    similarity = model.settings.similarity
    c = model.curvature()
    curvature = None if c is None else float(c.detach())
    radius = None
    if similarity != "cosine":
        radius = max_radius if max_radius is not None else _default_radius(model, documents, curvature)
        if radius is None:
            raise ValueError(
                f"{type(model).__name__} has no radius bound (no clip or head bound on its output): pass "
                "max_radius (--max-radius), the largest radius any document will have, or create the store "
                "from documents; documents beyond it are refused"
            )
    return StoreLayout(
        similarity=similarity,
        curvature=curvature,
        dim=int(model.embedding_dim),
        max_radius=None if radius is None else float(radius),
        model_fingerprint=model.fingerprint() if hasattr(model, "fingerprint") else None,
        model_path=model_path,
    )


def _default_radius(model: Any, documents: Tensor | None, c: float | None) -> float | None:
    bound = model_radius_bound(model)
    similarity = model.settings.similarity
    if documents is None or len(documents) == 0 or (bound is not None and similarity not in HYPERBOLIC):
        return bound
    r = documents_radius(documents, similarity, c)
    r = r + RADIUS_HEADROOM if similarity in HYPERBOLIC else r * (1.0 + RADIUS_HEADROOM)
    return r if bound is None else min(r, bound)
