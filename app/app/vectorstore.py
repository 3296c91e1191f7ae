"""ChromaDB (client/server mode) holding one vector per chunk.

One collection for all projects; every vector carries ``project_id`` and ``document_id``
metadata so searches filter by project and deletes by document. Embeddings are always
passed in explicitly: the collection has no embedding function, so Chroma's default
embedder (which would try to download a model) is never used.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.config import Settings

UPSERT_BATCH = 256
_PAGE = 1000


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


class VectorStore:
    def __init__(self, settings: Settings, timeout: float = 30.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self._collection: Any = None
        self._lock = threading.Lock()

    # Connection ------------------------------------------------------------
    def collection(self) -> Any:
        if self._collection is None:
            with self._lock:
                if self._collection is None:
                    self._collection = self._connect()
        return self._collection

    def _connect(self) -> Any:
        import chromadb
        import httpx
        from chromadb.config import Settings as ChromaSettings

        from app.embeddings import DIMENSION, MODEL_ID

        host, port, ssl = self.settings.chroma_host_port_ssl
        try:
            client = chromadb.HttpClient(
                host=host, port=port, ssl=ssl, headers=self.settings.chroma_headers,
                settings=ChromaSettings(anonymized_telemetry=False),
            )
            session = getattr(getattr(client, "_server", None), "_session", None)
            if isinstance(session, httpx.Client):  # the client ships with no timeout at all
                session.timeout = httpx.Timeout(self.timeout, connect=5.0)
            return client.get_or_create_collection(
                name=self.settings.chroma_collection,
                configuration={"hnsw": {"space": "cosine"}},
                metadata={"embedding_model": MODEL_ID, "dimension": DIMENSION},
                embedding_function=None,
            )
        except Exception as exc:
            raise VectorStoreUnavailable(
                f"ChromaDB unavailable: {type(exc).__name__}: {str(exc)[:200]}"
            ) from exc

    def _call(self, fn: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.collection(), fn)(**kwargs)
        except VectorStoreUnavailable:
            raise
        except Exception as exc:
            # A dead connection or a recreated collection: reconnect next time.
            self._collection = None
            raise VectorStoreUnavailable(f"ChromaDB {fn} failed: {type(exc).__name__}: "
                                         f"{str(exc)[:200]}") from exc

    # Writes ----------------------------------------------------------------
    def replace_document(
        self, project_id: str, document_id: str, texts: Sequence[str],
        embeddings: np.ndarray, extra: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        """Make the document's vectors exactly these chunks (ids are deterministic)."""
        self.delete_document(document_id)
        for start in range(0, len(texts), UPSERT_BATCH):
            stop = min(start + UPSERT_BATCH, len(texts))
            metas = []
            for i in range(start, stop):
                meta: dict[str, Any] = {"project_id": project_id, "document_id": document_id,
                                        "chunk_index": i}
                if extra:
                    meta.update({k: v for k, v in extra[i].items() if v is not None})
                metas.append(meta)
            self._call(
                "upsert",
                ids=[f"{document_id}:{i}" for i in range(start, stop)],
                embeddings=embeddings[start:stop].tolist(),
                documents=list(texts[start:stop]),
                metadatas=metas,
            )

    def delete_document(self, document_id: str) -> None:
        self._call("delete", where={"document_id": document_id})

    def delete_project(self, project_id: str) -> None:
        self._call("delete", where={"project_id": project_id})

    def delete_ids(self, ids: Sequence[str]) -> None:
        for start in range(0, len(ids), _PAGE):
            self._call("delete", ids=list(ids[start : start + _PAGE]))

    # Reads -----------------------------------------------------------------
    def count_document(self, document_id: str) -> int:
        res = self._call("get", where={"document_id": document_id}, include=[])
        return len(res["ids"])

    def iter_ids_by_document(self) -> Iterator[tuple[str, str]]:
        """(vector id, document_id) for every vector, page by page."""
        offset = 0
        while True:
            res = self._call("get", include=["metadatas"], limit=_PAGE, offset=offset)
            ids = res["ids"]
            for vid, meta in zip(ids, res["metadatas"] or [], strict=False):
                yield vid, str((meta or {}).get("document_id", ""))
            if len(ids) < _PAGE:
                return
            offset += len(ids)

    def search(self, project_id: str, query: np.ndarray, top_k: int) -> list[Hit]:
        res = self._call(
            "query",
            query_embeddings=[query.tolist()],
            n_results=top_k,
            where={"project_id": project_id},
            include=["documents", "metadatas", "distances"],
        )
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


_stores: dict[int, VectorStore] = {}


def get_vector_store(settings: Settings) -> VectorStore:
    """One VectorStore per Settings object (per process)."""
    store = _stores.get(id(settings))
    if store is None or store.settings is not settings:
        store = _stores[id(settings)] = VectorStore(settings)
    return store
