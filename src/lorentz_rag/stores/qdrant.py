"""Qdrant backend: a collection in local mode (``path=``, an embedded store in one folder, one process at a
time) or on a Qdrant server or cluster (``url=``).

A server runs from Qdrant's official container image::

    docker run -p 6333:6333 -v "$PWD/qdrant_storage:/qdrant/storage" qdrant/qdrant

and is then ``qdrant+http://localhost:6333`` on the command line (``QdrantStore.open(url=...)``).

Points carry the stored form (:mod:`lorentz_rag.stores.layout`) under the Euclid distance, and a payload
``{id, seq, text, metadata}``; the point id is a UUID derived from the document id. The layout is the
collection's ``lorentz_rag`` metadata. A server searches through its HNSW graph (``hnsw_m``,
``hnsw_ef_construct`` at creation; ``hnsw_ef`` per search) or by brute force with ``exact=True``; a
collection created with ``hnsw_m=0`` (``index build --kind flat``) has no graph and is always searched by
brute force, as local mode is.

A server that does not answer raises :class:`lorentz_rag.stores.base.StoreUnreachableError` naming its URL
(checked when the store is opened, with one request); a local folder another process has open raises
:class:`lorentz_rag.folder_lock.FolderInUseError` naming the folder.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import uuid
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from lorentz_rag.folder_lock import FolderInUseError
from lorentz_rag.stores.base import DEFAULT_COLLECTION, Candidates, StoreUnreachableError, VectorStore
from lorentz_rag.stores.layout import StoreLayout

__all__ = ["QdrantStore"]

_META_KEY = "lorentz_rag"
_HNSW_KEY = "lorentz_rag_hnsw_m"  # recorded beside the layout: local mode does not keep the HNSW config
# Point ids are UUIDs derived from the document ids in this namespace.
_ID_NAMESPACE = uuid.UUID("6f1c2c8e-5d0a-4e57-9a55-2b7a3f0d6c11")
_BATCH = 1024


def _qdrant() -> tuple[Any, Any]:
    try:
        from qdrant_client import QdrantClient, models
    except ImportError as error:
        raise ImportError(
            "the Qdrant store needs qdrant-client (pip install 'lorentz-rag[stores]')"
        ) from error
    return QdrantClient, models


def point_id(doc_id: str) -> str:
    """The Qdrant point id (a UUID string) of document ``doc_id``."""
    return str(uuid.uuid5(_ID_NAMESPACE, doc_id))


class QdrantStore(VectorStore):
    """Documents in collection ``name`` of a Qdrant client (``path=`` local folder or ``url=`` server).

    Local mode's client is not safe to share between threads; calls through one store are serialised
    with a lock, so a reader thread and a writer thread may share it.
    """

    backend = "qdrant"

    def __init__(
        self,
        client: Any,
        layout: StoreLayout,
        *,
        name: str,
        location: str,
        hnsw_ef: int = 128,
        hnsw_m: int = 16,
    ) -> None:
        super().__init__(layout, name, location)
        self.client = client
        self.hnsw_ef = int(hnsw_ef)
        self.hnsw_m = int(hnsw_m)  # 0: the server builds no graph (brute force, like kind "flat")
        self._local = getattr(client, "_client", None).__class__.__name__ == "QdrantLocal"
        self._lock = threading.RLock()

    @staticmethod
    def _client(path: str | Path | None, url: str | None, **client_options: Any) -> tuple[Any, str]:
        """A client of the local folder ``path`` or the server ``url``, and the store's name. A folder in use
        by another process, or a server that does not answer, is refused here, naming it."""
        if (path is None) == (url is None):
            raise ValueError("give exactly one of path= (local mode) and url= (a Qdrant server)")
        client_cls, _ = _qdrant()
        if path is not None:
            try:
                return client_cls(path=str(path), **client_options), f"qdrant:{path}"
            except RuntimeError as error:
                if "already accessed by another instance" not in str(error):
                    raise
                raise FolderInUseError(
                    f"qdrant:{path} is in use by another process (Qdrant's local mode opens a folder in one "
                    "process at a time); wait for it to finish, or serve the store from a Qdrant server "
                    "(qdrant+http://HOST:PORT) to share it"
                ) from None
        location = f"qdrant+{url}"
        # Our own one request below checks the server (and its version) at once; the client's check would
        # only warn, later, from a thread.
        client_options.setdefault("check_compatibility", False)
        client = client_cls(url=url, **client_options)
        try:
            with _server_errors(location, probe=True):
                server = client.info().version
        except BaseException:
            client.close()
            raise
        _warn_if_incompatible(location, server)
        return client, location

    @classmethod
    def build_options(cls, kind: str) -> dict[str, Any]:
        """``flat``: no HNSW graph (``hnsw_m=0``, brute force); ``hnsw``: the server builds one (``hnsw_m=16``)."""
        return {"hnsw_m": 0 if kind == "flat" else 16}

    @classmethod
    def create(
        cls,
        layout: StoreLayout,
        *,
        path: str | Path | None = None,
        url: str | None = None,
        name: str = DEFAULT_COLLECTION,
        overwrite: bool = False,
        hnsw_m: int = 16,
        hnsw_ef_construct: int = 128,
        hnsw_ef: int = 128,
        **client_options: Any,
    ) -> QdrantStore:
        """A new empty collection ``name`` for ``layout``; an existing one is an error unless ``overwrite``."""
        _, models = _qdrant()
        client, location = cls._client(path, url, **client_options)
        with _server_errors(location):
            if client.collection_exists(name):
                if not overwrite:
                    client.close()
                    raise FileExistsError(
                        f"{location}: collection {name!r} exists (rebuild it with overwrite=True)"
                    )
                client.delete_collection(name)
            client.create_collection(
                name,
                vectors_config=models.VectorParams(size=layout.width, distance=models.Distance.EUCLID),
                hnsw_config=models.HnswConfigDiff(m=hnsw_m, ef_construct=hnsw_ef_construct),
                metadata={_META_KEY: layout.to_json(), _HNSW_KEY: hnsw_m},
            )
        return cls(client, layout, name=name, location=location, hnsw_ef=hnsw_ef, hnsw_m=hnsw_m)

    @classmethod
    def open(
        cls,
        *,
        path: str | Path | None = None,
        url: str | None = None,
        name: str = DEFAULT_COLLECTION,
        hnsw_ef: int = 128,
        **client_options: Any,
    ) -> QdrantStore:
        """Collection ``name`` written by :meth:`create`."""
        if path is not None and not Path(path).is_dir():
            raise FileNotFoundError(f"qdrant:{path}: no such Qdrant folder")
        client, location = cls._client(path, url, **client_options)
        with _server_errors(location):
            if not client.collection_exists(name):
                client.close()
                raise FileNotFoundError(f"{location}: no collection {name!r}")
            config = client.get_collection(name).config
        meta = (config.metadata or {}).get(_META_KEY)
        if meta is None:
            client.close()
            raise ValueError(
                f"{location}: collection {name!r} was not written by lorentz-rag (no layout metadata)"
            )
        layout = StoreLayout.from_json(meta, f"{location} collection {name!r}")
        hnsw_m = (config.metadata or {}).get(_HNSW_KEY, getattr(config.hnsw_config, "m", None))
        return cls(
            client,
            layout,
            name=name,
            location=location,
            hnsw_ef=hnsw_ef,
            hnsw_m=16 if hnsw_m is None else hnsw_m,
        )

    @classmethod
    def documents_in(
        cls,
        *,
        path: str | Path | None = None,
        url: str | None = None,
        name: str = DEFAULT_COLLECTION,
        **client_options: Any,
    ) -> int | None:
        """How many documents collection ``name`` holds (any collection, also one lorentz-rag did not
        write), or ``None`` where there is none."""
        if path is not None and not Path(path).is_dir():
            return None
        client, location = cls._client(path, url, **client_options)
        try:
            with _server_errors(location):
                if not client.collection_exists(name):
                    return None
                return int(client.count(name, exact=True).count)
        finally:
            client.close()

    def close(self) -> None:
        with self._lock:
            self.client.close()

    def _calls(self) -> contextlib.AbstractContextManager[None]:
        """Serialise the client's calls (module docstring) and name the server if it stops answering."""
        return _locked_server_calls(self._lock, self.location)

    # --- primitives -------------------------------------------------------------------------------------

    def _put(self, ids, seq, vectors, texts, metadata) -> None:
        _, models = _qdrant()
        points = [
            models.PointStruct(
                id=point_id(doc_id),
                vector=vectors[i].tolist(),
                payload={"id": doc_id, "seq": int(seq[i]), "text": texts[i], "metadata": metadata[i]},
            )
            for i, doc_id in enumerate(ids)
        ]
        with self._calls():  # upload_points: an upsert in batches, 7x faster than upsert calls in local mode
            self.client.upload_points(self.name, points, batch_size=_BATCH, wait=True)

    def _remove(self, ids: list[str]) -> None:
        _, models = _qdrant()
        with self._calls():
            self.client.delete(self.name, models.PointIdsList(points=[point_id(i) for i in ids]), wait=True)

    def _count(self) -> int:
        with self._calls():
            return int(self.client.count(self.name, exact=True).count)

    def has_ann_index(self) -> bool:
        return not self._local and self.hnsw_m > 0  # local mode searches by brute force

    def _nearest(self, queries: np.ndarray, fetch: int, exact: bool) -> list[Candidates]:
        _, models = _qdrant()
        params = None if self._local else models.SearchParams(exact=exact, hnsw_ef=max(self.hnsw_ef, fetch))
        requests = [
            models.QueryRequest(
                query=q.tolist(), limit=fetch, params=params, with_payload=True, with_vector=True
            )
            for q in queries
        ]
        with self._calls():
            responses = self.client.query_batch_points(self.name, requests)
        out = []
        for response in responses:
            points = response.points
            payloads = [p.payload or {} for p in points]
            out.append(
                Candidates(
                    [str(p["id"]) for p in payloads],
                    np.array([float(p.score) ** 2 for p in points], dtype=np.float64),
                    np.array([p.vector for p in points], dtype=np.float32).reshape(
                        len(points), self.layout.width
                    ),
                    np.array([int(p.get("seq", 0)) for p in payloads], dtype=np.int64),
                    [str(p.get("text") or "") for p in payloads],
                    [str(p.get("metadata") or "") for p in payloads],
                )
            )
        return out


@contextlib.contextmanager
def _server_errors(location: str, *, probe: bool = False) -> Iterator[None]:
    """A server that cannot be reached ends in one message naming it; so does, for the first request
    (``probe``), one that answers with an HTTP error (not a Qdrant server, or one that refuses this client)."""
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    try:
        yield
    except ResponseHandlingException as error:
        reason = " ".join(str(error.source if error.source is not None else error).split())
        raise StoreUnreachableError(
            f"{location}: cannot reach the Qdrant server ({reason or type(error.source).__name__}); check "
            "that it is running and that the address (host and port) is right"
        ) from error
    except UnexpectedResponse as error:
        if not probe:
            raise
        content = " ".join(error.content.decode("utf-8", "replace").split())[:200]
        raise StoreUnreachableError(
            f"{location}: the server answered HTTP {error.status_code} {error.reason_phrase} ({content}); "
            "check that the address is a Qdrant server's and that it accepts this client"
        ) from error


@contextlib.contextmanager
def _locked_server_calls(lock: threading.RLock, location: str) -> Iterator[None]:
    with lock, _server_errors(location):
        yield


def _warn_if_incompatible(location: str, server_version: str) -> None:
    """What qdrant-client's own check says, on one line: a server whose version this client may not speak."""
    from qdrant_client.common.version_check import is_compatible

    client_version = version("qdrant-client")
    if not is_compatible(client_version, server_version):
        print(
            f"warning: {location} runs Qdrant {server_version}, which qdrant-client {client_version} may not "
            "support (major versions should match, minor ones differ by at most 1)",
            file=sys.stderr,
        )
