"""How a vector database is named: the store spec grammar of every backend, in one table.

A spec is ``SCHEME:REST``. Each backend declares the schemes it answers to and what ``REST`` becomes (a local
folder ``path``, or a server ``url``), the name of one collection of documents there (a LanceDB *table*, a
Qdrant *collection*) and the ANN index kinds it offers besides ``flat`` (brute force, certified exact).
Parsing, help texts and error messages all read :data:`BACKENDS`; the classes that open and create stores
are registered beside it in :mod:`lorentz_rag.stores`. Standard library only, so ``lorentz-rag --help`` can
print the grammar without importing a database client or torch.

Adding a backend: a module under ``stores/`` with a :class:`lorentz_rag.stores.base.VectorStore` subclass
(``open``, ``create``, ``documents_in`` taking the ``where`` keys as keywords), one :class:`BackendSpec`
line here and one class line in ``lorentz_rag.stores``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BACKENDS", "STORE_SPECS", "BackendSpec", "backend_of", "parse_store_spec", "store_kinds"]


@dataclass(frozen=True)
class BackendSpec:
    """One backend's spec grammar. ``schemes``: ``(scheme, key)`` pairs: ``key`` ``path`` takes ``REST`` as a
    folder; ``url`` takes ``SCHEME:REST`` with ``//`` after the colon as a URL whose scheme is the part after
    ``+`` (``qdrant+https://h`` -> ``https://h``). ``forms``: the spec forms as help texts show them."""

    name: str
    schemes: tuple[tuple[str, str], ...]
    forms: tuple[str, ...]
    container: str
    ann_kinds: tuple[str, ...]

    def parse(self, scheme: str, rest: str) -> dict[str, str] | None:
        """``where`` (``{"path": ...}`` or ``{"url": ...}``) for a spec of this backend, else ``None``."""
        for known, key in self.schemes:
            if scheme != known or not rest:
                continue
            if key == "url":
                return {"url": f"{scheme.partition('+')[2]}:{rest}"} if rest.startswith("//") else None
            return {key: rest}
        return None

    def is_local(self, where: dict[str, str]) -> bool:
        """Whether ``where`` names a folder on this machine (a store that files can be kept beside)."""
        return "path" in where


BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec(
            name="lancedb",
            schemes=(("lancedb", "path"),),
            forms=("lancedb:PATH",),
            container="table",
            ann_kinds=("ivf_pq", "ivf_hnsw_sq", "ivf_hnsw_pq", "ivf_flat", "ivf_sq"),
        ),
        BackendSpec(
            name="qdrant",
            schemes=(("qdrant", "path"), ("qdrant+http", "url"), ("qdrant+https", "url")),
            forms=("qdrant:PATH", "qdrant+http://HOST[:PORT]"),
            container="collection",
            ann_kinds=("hnsw",),
        ),
    )
}


def _describe() -> str:
    forms = [form for spec in BACKENDS.values() for form in spec.forms]
    return forms[0] if len(forms) == 1 else ", ".join(forms[:-1]) + " or " + forms[-1]


#: Every spec form, for help texts and error messages: ``lancedb:PATH, qdrant:PATH or qdrant+http://HOST[:PORT]``.
STORE_SPECS = _describe()


def parse_store_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``(backend name, where)``: ``"lancedb:PATH"`` -> ``("lancedb", {"path": PATH})``; ``"qdrant:PATH"`` ->
    ``("qdrant", {"path": PATH})``; ``"qdrant+http(s)://HOST[:PORT]"`` -> ``("qdrant", {"url": ...})``."""
    scheme, sep, rest = str(spec).partition(":")
    if sep:
        for backend in BACKENDS.values():
            where = backend.parse(scheme, rest)
            if where is not None:
                return backend.name, where
    raise ValueError(f"unknown store {spec!r}: give {STORE_SPECS}")


def backend_of(spec: str) -> BackendSpec:
    """The :class:`BackendSpec` that ``spec`` names (unknown specs are refused as :func:`parse_store_spec`)."""
    return BACKENDS[parse_store_spec(spec)[0]]


def store_kinds(spec: str) -> tuple[str, ...]:
    """The index kinds a store accepts: ``flat`` (brute force) and its backend's ANN kinds."""
    return ("flat", *backend_of(spec).ann_kinds)
