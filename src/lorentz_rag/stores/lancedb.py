"""LanceDB backend: a table in a local LanceDB folder (the same API serves object storage and LanceDB's
server), embedded in the process, no server to run.

The table has columns ``id``, ``seq``, ``text``, ``metadata`` (JSON) and ``vector`` (float32, the stored form
of :mod:`lorentz_rag.stores.layout`); the layout is the schema's ``lorentz_rag`` metadata. Without an ANN index
LanceDB searches by brute force; :meth:`LanceDBStore.create_ann_index` builds one of ``ANN_KINDS`` (IVF-PQ,
IVF-HNSW-SQ, ...) over the documents present, with the L2 metric of the stored form. Documents added later
are searched by brute force beside the index until :meth:`LanceDBStore.optimize` folds them in: nothing is
rebuilt. Readers in other processes see each commit (``read_consistency_interval=0``).

A table whose files LanceDB cannot read (a data file deleted or truncated, a manifest truncated, its
``_versions/`` folder gone) raises :class:`lorentz_rag.stores.base.StoreUnreadableError` naming the folder and
table; a full disk or a permission problem is an ``OSError`` naming the folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from lorentz_rag.store_specs import BACKENDS
from lorentz_rag.stores.base import DEFAULT_COLLECTION, Candidates, StoreUnreadableError, VectorStore
from lorentz_rag.stores.layout import StoreLayout

__all__ = ["ANN_KINDS", "LanceDBStore"]

#: LanceDB's vector index types (lower case) that :meth:`LanceDBStore.create_ann_index` builds.
ANN_KINDS = BACKENDS["lancedb"].ann_kinds
_INDEX_CLASSES = {
    "ivf_pq": "IvfPq",
    "ivf_hnsw_sq": "IvfHnswSq",
    "ivf_hnsw_pq": "IvfHnswPq",
    "ivf_flat": "IvfFlat",
    "ivf_sq": "IvfSq",
}
_META_KEY = b"lorentz_rag"


def _lancedb() -> Any:
    try:
        import lancedb
    except ImportError as error:
        raise ImportError("the LanceDB store needs lancedb (pip install 'lorentz-rag[stores]')") from error
    return lancedb


def _lancedb_index() -> Any:
    _lancedb()
    import lancedb.index

    return lancedb.index


def _pyarrow() -> Any:
    import pyarrow

    return pyarrow


# LanceDB's messages end with the Rust source locations of the error: ", /root/.cargo/.../file.rs:335:56, ...".
_RUST_LOCATION = re.compile(r",\s*/\S*\.rs:\d+.*$")
_OS_ERROR = re.compile(r"\(os error (\d+)\)")
# An I/O failure of these kinds is about the disk or the permissions, not a damaged table.
_DISK_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM)


def _reason(error: BaseException) -> str:
    """LanceDB's message without its prefixes and Rust source locations, on one line."""
    text = " ".join(str(error).split())
    text = _RUST_LOCATION.sub("", text)
    text = re.sub(r"^(lance error|External error):\s*", "", text)
    return re.sub(r"LanceError\(\w+\):\s*", "", text) or type(error).__name__


@contextlib.contextmanager
def _lance_errors(path: str | Path, name: str) -> Iterator[None]:
    """Turn LanceDB's failure to read or write table ``name`` of folder ``path`` into one message naming them:
    a full disk or a permission problem is an ``OSError`` naming the folder (the boundary says what to do),
    anything else means the table's files are damaged (:class:`StoreUnreadableError`)."""
    try:
        yield
    except (RuntimeError, ValueError, OSError) as error:
        if isinstance(error, StoreUnreadableError):
            raise
        found = _OS_ERROR.search(str(error))
        code = int(found.group(1)) if found else getattr(error, "errno", None)
        if code in _DISK_ERRNOS:
            raise OSError(code, os.strerror(code), f"lancedb:{path}") from error
        raise StoreUnreadableError(
            f"lancedb:{path} (table {name}) cannot be read, its files are damaged or missing ({_reason(error)}); "
            "restore the folder from a backup, or rebuild the table with 'lorentz-rag index build --overwrite'"
        ) from error


class LanceDBStore(VectorStore):
    """Documents in table ``name`` of the LanceDB folder ``path``.

    Create with :meth:`create` (a layout, e.g. :func:`lorentz_rag.stores.layout.layout_for_model`), reopen
    with :meth:`open`. Search options: ``nprobes`` (IVF partitions probed), ``refine_factor`` (default 4: LanceDB
    re-scores ``refine_factor * fetch`` quantized candidates with their full vectors) and ``ef`` (HNSW candidate list).
    """

    backend = "lancedb"

    def __init__(
        self,
        table: Any,
        layout: StoreLayout,
        *,
        name: str,
        path: str,
        nprobes: int = 20,
        refine_factor: int | None = 4,
        ef: int | None = None,
    ) -> None:
        super().__init__(layout, name, f"lancedb:{path}")
        self.path = path
        self.table = table
        self.nprobes = int(nprobes)
        self.refine_factor = refine_factor
        self.ef = ef

    @staticmethod
    def _connect(path: str | Path) -> Any:
        return _lancedb().connect(str(path), read_consistency_interval=timedelta(0))

    @classmethod
    def create(
        cls,
        path: str | Path,
        layout: StoreLayout,
        *,
        name: str = DEFAULT_COLLECTION,
        overwrite: bool = False,
        **options: Any,
    ) -> LanceDBStore:
        """A new empty table ``name`` in folder ``path`` (created if missing) for ``layout``; an existing
        table is an error unless ``overwrite``."""
        pa = _pyarrow()
        Path(path).mkdir(parents=True, exist_ok=True)
        db = cls._connect(path)
        schema = pa.schema(
            [
                pa.field("id", pa.string(), nullable=False),
                pa.field("seq", pa.int64()),
                pa.field("text", pa.string()),
                pa.field("metadata", pa.string()),
                pa.field("vector", pa.list_(pa.float32(), layout.width)),
            ],
            metadata={_META_KEY: layout.to_json().encode("utf-8")},
        )
        if not overwrite and name in _table_names(db):
            raise FileExistsError(f"lancedb:{path}: table {name!r} exists (rebuild it with overwrite=True)")
        with _lance_errors(path, name):
            if overwrite and name in _table_names(db):
                # Dropped first: "overwrite" mode reads the old table's manifest, which may be damaged.
                db.drop_table(name)
            table = db.create_table(name, schema=schema, mode="create")
        return cls(table, layout, name=name, path=str(path), **options)

    @classmethod
    def open(cls, path: str | Path, *, name: str = DEFAULT_COLLECTION, **options: Any) -> LanceDBStore:
        """The table ``name`` of folder ``path`` written by :meth:`create`."""
        if not Path(path).is_dir():
            raise FileNotFoundError(f"lancedb:{path}: no such LanceDB folder")
        db = cls._connect(path)
        if name not in _table_names(db):
            raise FileNotFoundError(f"lancedb:{path}: no table {name!r} (tables: {sorted(_table_names(db))})")
        with _lance_errors(path, name):
            table = db.open_table(name)
            schema = table.schema
        meta = (schema.metadata or {}).get(_META_KEY)
        if meta is None:
            raise ValueError(
                f"lancedb:{path}: table {name!r} was not written by lorentz-rag (no layout metadata)"
            )
        layout = StoreLayout.from_json(meta, f"lancedb:{path} table {name!r}")
        return cls(table, layout, name=name, path=str(path), **options)

    @classmethod
    def documents_in(cls, path: str | Path, *, name: str = DEFAULT_COLLECTION) -> int | None:
        """How many documents table ``name`` of folder ``path`` holds (any table, also one lorentz-rag did not
        write), or ``None`` where there is no such table."""
        if not Path(path).is_dir():
            return None
        db = cls._connect(path)
        if name not in _table_names(db):
            return None
        with _lance_errors(path, name):
            return int(db.open_table(name).count_rows())

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        return _lance_errors(self.path, self.name)

    # --- primitives -------------------------------------------------------------------------------------

    def _put(self, ids, seq, vectors, texts, metadata) -> None:
        pa = _pyarrow()
        width = self.layout.width
        rows = pa.table(
            {
                "id": pa.array(ids, pa.string()),
                "seq": pa.array(seq, pa.int64()),
                "text": pa.array(texts, pa.string()),
                "metadata": pa.array(metadata, pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors.reshape(-1), pa.float32()), width
                ),
            },
            schema=self.table.schema,
        )
        upsert = self.table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
        with self._errors():
            upsert.execute(rows)

    def _remove(self, ids: list[str]) -> None:
        quoted = ", ".join("'" + i.replace("'", "''") + "'" for i in ids)
        with self._errors():
            self.table.delete(f"id IN ({quoted})")

    def _count(self) -> int:
        with self._errors():
            return int(self.table.count_rows())

    def has_ann_index(self) -> bool:
        with self._errors():
            return any("vector" in index.columns for index in self.table.list_indices())

    def _nearest(self, queries: np.ndarray, fetch: int, exact: bool) -> list[Candidates]:
        builder = (
            self.table.search(list(queries), vector_column_name="vector").distance_type("l2").limit(fetch)
        )
        if exact:
            builder = builder.bypass_vector_index()
        else:
            builder = builder.nprobes(self.nprobes)
            if self.refine_factor:
                builder = builder.refine_factor(int(self.refine_factor))
            if self.ef:
                builder = builder.ef(
                    max(int(self.ef), fetch * int(self.refine_factor or 1))
                )  # LanceDB: ef >= its k
        with self._errors():
            result = builder.to_arrow()
        qi = (
            result["query_index"].to_numpy()
            if "query_index" in result.column_names
            else np.zeros(result.num_rows, int)
        )
        ids = result["id"].to_pylist()
        dist2 = result["_distance"].to_numpy().astype(np.float64)
        vectors = np.asarray(result["vector"].combine_chunks().flatten(), dtype=np.float32).reshape(
            -1, self.layout.width
        )
        seq = result["seq"].to_numpy()
        texts = result["text"].to_pylist()
        meta = result["metadata"].to_pylist()
        out = []
        for i in range(len(queries)):
            rows = np.flatnonzero(qi == i)
            rows = rows[np.argsort(dist2[rows], kind="stable")]
            out.append(
                Candidates(
                    [ids[r] for r in rows],
                    dist2[rows],
                    vectors[rows],
                    seq[rows],
                    [texts[r] or "" for r in rows],
                    [meta[r] or "" for r in rows],
                )
            )
        return out

    # --- the ANN index ----------------------------------------------------------------------------------

    def build_index(self, kind: str) -> None:
        """``index build --kind``: :meth:`create_ann_index` for an ANN kind (``flat``: none)."""
        if kind != "flat":
            self.create_ann_index(kind)

    def create_ann_index(
        self,
        kind: str = "ivf_hnsw_sq",
        *,
        num_partitions: int | None = None,
        num_sub_vectors: int | None = None,
        m: int = 20,
        ef_construction: int = 300,
    ) -> None:
        """Build (or replace) an ANN index of ``kind`` over the documents now in the table, L2 on the stored
        form. ``num_partitions`` defaults to LanceDB's (from its target partition size); search probes
        ``nprobes`` partitions."""
        if kind not in ANN_KINDS:
            raise ValueError(f"unknown LanceDB index kind {kind!r}; choose one of {list(ANN_KINDS)}")
        n = len(self)
        if n < 2:
            raise ValueError(
                f"{self.location}: an ANN index needs documents to train on; the table holds {n}"
            )
        config_cls = getattr(_lancedb_index(), _INDEX_CLASSES[kind])
        options: dict[str, Any] = {
            "distance_type": "l2",
            "num_partitions": num_partitions,
        }
        if "pq" in kind:
            options["num_sub_vectors"] = num_sub_vectors or _sub_vectors(self.layout.width)
        if "hnsw" in kind:
            options.update(m=m, ef_construction=ef_construction)
        with self._errors():
            self.table.create_index("vector", config=config_cls(**options), replace=True)

    def optimize(self) -> None:
        """Fold documents added since the index was built into it (and compact the table's files)."""
        with self._errors():
            self.table.optimize()


def _table_names(db: Any) -> list[str]:
    listed = db.list_tables()
    return list(getattr(listed, "tables", listed))


def _sub_vectors(width: int) -> int:
    """The largest divisor of ``width`` that leaves sub-vectors of at least 8 coordinates (PQ)."""
    for count in range(max(1, width // 8), 0, -1):
        if width % count == 0:
            return count
    return 1
