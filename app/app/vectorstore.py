"""ChromaDB (client/server mode) holding one vector per chunk, one collection per project.

A project's vectors live in the collection ``<CHROMA_COLLECTION>_<project id hex>``, so a
search is a plain nearest-neighbour query with no metadata filter (a ``where`` filter on
one shared collection cost 350 ms per query at 100k vectors; see bench/chroma_filter.py),
and deleting a project drops its collection. Every vector still carries ``project_id`` and
``document_id`` metadata: deletes go by document, and reconcile counts by it. Embeddings
are always passed in explicitly: the collections have no embedding function, so Chroma's
default embedder (which would try to download a model) is never used.

Earlier releases kept every project in one collection named exactly ``CHROMA_COLLECTION``.
``migrate_legacy`` moves its vectors (embeddings included, nothing is re-embedded) into the
projects' collections: ``copy`` during a deploy (the old release, still serving on the other
hosts, keeps reading it), ``move`` from reconcile once the new release runs (it also picks
up what old workers wrote meanwhile, then drops the shared collection).
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from app.config import Settings

UPSERT_BATCH = 256
_PAGE = 1000
_HANDLES = 512  # collection handles kept per process (least recently used dropped)
# After a failed connect, the calls that waited for it (and those of the next seconds) fail
# at once instead of each trying again: a powered-off host costs one connect timeout per
# CONNECT_REST_SECONDS per process, not one per waiting request, one after the other.
CONNECT_REST_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 5.0


class VectorStoreUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class Hit:
    id: str
    document_id: str
    chunk_index: int
    text: str
    score: float  # cosine similarity, 1 = identical
    page: int | None


@dataclass
class LegacyMigration:
    found: bool = False  # a shared collection of an earlier release exists
    vectors: int = 0  # vectors it held when read
    copied: int = 0  # upserted into a project's collection (absent there before)
    dropped: int = 0  # without a usable project_id, or of another embedding model
    projects: int = 0
    deleted: bool = False  # the shared collection was dropped afterwards


def _is_not_found(exc: Exception) -> bool:
    return type(exc).__name__ == "NotFoundError" or "does not exist" in str(exc)


class VectorStore:
    """One ChromaDB server: the first of CHROMA_URL unless ``url`` says which
    (app.vectorset keeps several in step)."""

    def __init__(self, settings: Settings, timeout: float = 30.0, url: str | None = None) -> None:
        self.settings = settings
        self.timeout = timeout
        self.url = url or settings.chroma_urls[0]
        self.prefix = settings.chroma_collection
        self._name_re = re.compile(re.escape(self.prefix) + r"_([0-9a-f]{32})")
        self._client: Any = None
        self._handles: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._connect_failed_at = float("-inf")

    # Names -----------------------------------------------------------------
    def collection_name(self, project_id: str) -> str:
        return f"{self.prefix}_{uuid.UUID(str(project_id)).hex}"

    def project_of(self, name: str) -> str | None:
        """The project id of one of our collection names, else None."""
        m = self._name_re.fullmatch(name)
        return str(uuid.UUID(m.group(1))) if m else None

    # Connection ------------------------------------------------------------
    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    if time.monotonic() - self._connect_failed_at < CONNECT_REST_SECONDS:
                        raise VectorStoreUnavailable(
                            f"ChromaDB {self.url} did not answer moments ago")
                    try:
                        self._client = self._connect()
                    except VectorStoreUnavailable:
                        self._connect_failed_at = time.monotonic()
                        raise
        return self._client

    def _connect(self) -> Any:
        import chromadb
        import httpx
        from chromadb.config import Settings as ChromaSettings

        host, port, ssl = host_port_ssl(self.url)
        # The client asks the server for its tenant and database while it is built, on a
        # session without any timeout: a host that is down would hold this call (and every
        # request waiting for the lock) for the kernel's connect timeout. Ask first, bounded.
        self.heartbeat(min(self.timeout, CONNECT_TIMEOUT_SECONDS))
        try:
            client = chromadb.HttpClient(
                host=host, port=port, ssl=ssl, headers=self.settings.chroma_headers,
                settings=ChromaSettings(anonymized_telemetry=False),
            )
        except Exception as exc:
            raise VectorStoreUnavailable(
                f"ChromaDB unavailable: {type(exc).__name__}: {str(exc)[:200]}"
            ) from exc
        session = getattr(getattr(client, "_server", None), "_session", None)
        if isinstance(session, httpx.Client):  # the client ships with no timeout at all
            session.timeout = httpx.Timeout(self.timeout, connect=CONNECT_TIMEOUT_SECONDS)
        return client

    def _unavailable(self, what: str, exc: Exception) -> VectorStoreUnavailable:
        return VectorStoreUnavailable(
            f"ChromaDB {what} failed on {self.url}: {type(exc).__name__}: {str(exc)[:200]}")

    def _client_call(self, fn: str, *, missing_ok: bool = False, **kwargs: Any) -> Any:
        """``fn`` of the client; None when the collection it names does not exist and
        ``missing_ok``. Every other failure is VectorStoreUnavailable."""
        try:
            return getattr(self.client(), fn)(**kwargs)
        except VectorStoreUnavailable:
            raise
        except Exception as exc:
            if _is_not_found(exc):
                if missing_ok:
                    return None
            else:
                self._client = None  # a dead connection: reconnect next time
            raise self._unavailable(fn, exc) from exc

    def _handle(self, name: str, create: bool, metadata: dict[str, Any] | None = None) -> Any:
        """The collection handle, cached; None when it does not exist and not ``create``."""
        with self._lock:
            col = self._handles.get(name)
            if col is not None:
                self._handles.move_to_end(name)
                return col
        from app.embeddings import DIMENSION, MODEL_ID

        if create:
            col = self._client_call(
                "get_or_create_collection", name=name,
                configuration={"hnsw": {"space": "cosine"}},
                metadata={"embedding_model": MODEL_ID, "dimension": DIMENSION} | (metadata or {}),
                embedding_function=None,
            )
        else:
            col = self._client_call("get_collection", missing_ok=True, name=name,
                                    embedding_function=None)
            if col is None:
                return None
        with self._lock:
            self._handles[name] = col
            while len(self._handles) > _HANDLES:
                self._handles.popitem(last=False)
        return col

    def _forget(self, name: str) -> None:
        with self._lock:
            self._handles.pop(name, None)

    def _on(self, project_id: str, fn: str, create: bool, **kwargs: Any) -> Any:
        """``fn`` on the project's collection. A cached handle can be stale (the collection
        was dropped and made again, e.g. Chroma restored from a backup): on failure the
        handle is forgotten and the call tried once more with a fresh one. Returns None
        when the collection does not exist and ``create`` is false."""
        name = self.collection_name(project_id)
        meta = {"project_id": str(project_id)}
        for attempt in (1, 2):
            col = self._handle(name, create, meta)
            if col is None:
                return None
            try:
                return getattr(col, fn)(**kwargs)
            except Exception as exc:
                self._forget(name)
                if _is_not_found(exc) and attempt == 1:
                    continue  # a stale handle: once more with a fresh one
                if _is_not_found(exc) and not create:
                    return None
                raise self._unavailable(fn, exc) from exc
        return None

    # Writes ----------------------------------------------------------------
    def replace_document(
        self, project_id: str, document_id: str, texts: Sequence[str],
        embeddings: np.ndarray, extra: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        """Make the document's vectors exactly these chunks (ids are deterministic)."""
        self.delete_document(project_id, document_id)
        for start in range(0, len(texts), UPSERT_BATCH):
            stop = min(start + UPSERT_BATCH, len(texts))
            metas = []
            for i in range(start, stop):
                meta: dict[str, Any] = {"project_id": project_id, "document_id": document_id,
                                        "chunk_index": i}
                if extra:
                    meta.update({k: v for k, v in extra[i].items() if v is not None})
                metas.append(meta)
            self._on(
                project_id, "upsert", create=True,
                ids=[f"{document_id}:{i}" for i in range(start, stop)],
                embeddings=embeddings[start:stop].tolist(),
                documents=list(texts[start:stop]),
                metadatas=metas,
            )

    def delete_document(self, project_id: str, document_id: str) -> None:
        self._on(project_id, "delete", create=False, where={"document_id": document_id})

    def delete_project(self, project_id: str) -> None:
        name = self.collection_name(project_id)
        self._forget(name)
        self._client_call("delete_collection", missing_ok=True, name=name)

    def delete_ids(self, project_id: str, ids: Sequence[str]) -> None:
        for start in range(0, len(ids), _PAGE):
            self._on(project_id, "delete", create=False, ids=list(ids[start : start + _PAGE]))

    def document_vectors(self, project_id: str, document_id: str) -> dict[str, Any]:
        """A document's vectors with everything put_vectors needs to write them elsewhere."""
        res = self._on(project_id, "get", create=False, where={"document_id": document_id},
                       include=["embeddings", "documents", "metadatas"])
        return res or {"ids": [], "embeddings": [], "documents": [], "metadatas": []}

    def put_vectors(self, project_id: str, document_id: str, vectors: dict[str, Any]) -> None:
        """Make the document's vectors exactly ``vectors`` (from document_vectors)."""
        self.delete_document(project_id, document_id)
        ids = list(vectors["ids"])
        for start in range(0, len(ids), UPSERT_BATCH):
            stop = start + UPSERT_BATCH
            self._on(project_id, "upsert", create=True, ids=ids[start:stop],
                     embeddings=[list(map(float, e)) for e in vectors["embeddings"][start:stop]],
                     documents=list(vectors["documents"][start:stop]),
                     metadatas=list(vectors["metadatas"][start:stop]))

    # Reads -----------------------------------------------------------------
    def heartbeat(self, timeout: float) -> None:
        """Raises VectorStoreUnavailable unless the server answers within ``timeout``."""
        import httpx

        try:
            httpx.get(self.url.rstrip("/") + "/api/v2/heartbeat",
                      headers=self.settings.chroma_headers, timeout=timeout).raise_for_status()
        except httpx.HTTPError as exc:
            raise self._unavailable("heartbeat", exc) from exc

    def count_document(self, project_id: str, document_id: str) -> int:
        res = self._on(project_id, "get", create=False, where={"document_id": document_id},
                       include=[])
        return len(res["ids"]) if res else 0

    def projects(self) -> list[str]:
        """The project ids that have a collection of ours."""
        found: list[str] = []
        offset = 0
        while True:
            page = self._client_call("list_collections", limit=100, offset=offset)
            for col in page:
                project = self.project_of(getattr(col, "name", str(col)))
                if project:
                    found.append(project)
            if len(page) < 100:
                return found
            offset += len(page)

    def iter_ids_by_document(self, project_id: str) -> Iterator[tuple[str, str]]:
        """(vector id, document_id) for every vector of the project, page by page."""
        offset = 0
        while True:
            res = self._on(project_id, "get", create=False, include=["metadatas"],
                           limit=_PAGE, offset=offset)
            if not res:
                return
            ids = res["ids"]
            for vid, meta in zip(ids, res["metadatas"] or [], strict=False):
                yield vid, str((meta or {}).get("document_id", ""))
            if len(ids) < _PAGE:
                return
            offset += len(ids)

    def search(self, project_id: str, query: np.ndarray, top_k: int) -> list[Hit]:
        res = self._on(
            project_id, "query", create=False,
            query_embeddings=[query.tolist()],
            n_results=top_k,
            include=["documents", "metadatas", "distances"],
        )
        if not res:  # the project has no collection yet: nothing indexed
            return []
        hits = []
        for vid, text, meta, dist in zip(
            res["ids"][0], res["documents"][0], res["metadatas"][0], res["distances"][0],
            strict=True,
        ):
            meta = meta or {}
            hits.append(Hit(
                id=vid,
                document_id=str(meta.get("document_id", "")),
                chunk_index=int(meta.get("chunk_index", 0)),
                text=text or "",
                score=round(1.0 - float(dist), 6),
                page=int(meta["page"]) if "page" in meta else None,
            ))
        return hits

    # The shared collection of earlier releases --------------------------------
    def migrate_legacy(self, *, delete: bool) -> LegacyMigration:
        """Copy the vectors of the shared collection into the projects' collections.

        Only ids absent from the target are upserted, so a repeated run copies nothing and
        reports so. With ``delete`` the shared collection is dropped afterwards; a vector an
        old worker wrote between the read and the drop is lost, and reconcile (whose count
        check follows) re-indexes that document. Vectors of another embedding model are
        not copied: their documents get re-indexed the same way.
        """
        from app.embeddings import MODEL_ID

        out = LegacyMigration()
        legacy = self._client_call("get_collection", missing_ok=True, name=self.prefix,
                                   embedding_function=None)
        if legacy is None:
            return out
        out.found = True
        same_model = (legacy.metadata or {}).get("embedding_model") == MODEL_ID
        projects: set[str] = set()
        offset = 0
        try:
            while True:
                res = legacy.get(limit=_PAGE, offset=offset,
                                 include=["embeddings", "documents", "metadatas"])
                ids = res["ids"]
                out.vectors += len(ids)
                by_project: dict[str, list[int]] = {}
                for i, meta in enumerate(res["metadatas"] or []):
                    try:
                        project = str(uuid.UUID(str((meta or {}).get("project_id"))))
                    except ValueError:
                        project = ""
                    if not project or not same_model:
                        out.dropped += 1
                        continue
                    by_project.setdefault(project, []).append(i)
                for project, rows in by_project.items():
                    projects.add(project)
                    present = self._on(project, "get", create=True,
                                       ids=[ids[i] for i in rows], include=[])
                    have = set(present["ids"]) if present else set()
                    rows = [i for i in rows if ids[i] not in have]
                    if not rows:
                        continue
                    self._on(project, "upsert", create=True,
                             ids=[ids[i] for i in rows],
                             embeddings=[list(map(float, res["embeddings"][i])) for i in rows],
                             documents=[res["documents"][i] or "" for i in rows],
                             metadatas=[res["metadatas"][i] for i in rows])
                    out.copied += len(rows)
                if len(ids) < _PAGE:
                    break
                offset += len(ids)
            if delete:
                self._client_call("delete_collection", name=self.prefix)
                out.deleted = True
        except VectorStoreUnavailable:
            raise
        except Exception as exc:
            raise self._unavailable("legacy migration", exc) from exc
        out.projects = len(projects)
        return out


def host_port_ssl(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url)
    ssl = parts.scheme == "https"
    return parts.hostname or "127.0.0.1", parts.port or (443 if ssl else 8000), ssl
