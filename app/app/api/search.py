"""Semantic search and retrieval-augmented answers within one project.

Access is checked on the primary (read-your-writes: a project or member added a moment
ago is found even while a replica lags); only the chunks' document names are read through
DATABASE_READ_URL. No database connection is held while the query is embedded, while
ChromaDB answers or while a provider generates: each query runs in a short session.
``/ask`` with ``"stream": true`` answers with Server-Sent Events."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import numpy as np
from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from app.answer import (
    PROVIDER_FAILED,
    Passage,
    ProviderConfig,
    ProviderError,
    ProviderNotFound,
    extractive_answer,
    generate,
    generate_stream,
    resolve_provider,
    words,
)
from app.api.deps import CurrentUser, DatabaseDep, SettingsDep, project_access
from app.config import Settings
from app.db import Database
from app.embeddings import ModelNotFound, get_embedder
from app.errors import ApiError, not_found
from app.limits import take_ask
from app.log import get_logger
from app.models import Document, DocumentStatus, User
from app.schemas import AskIn, AskOut, SearchHit, SearchIn, SearchOut
from app.vectorset import get_vector_store
from app.vectorstore import Hit, VectorStoreUnavailable

router = APIRouter(prefix="/projects/{project_id}", tags=["search"])
log = get_logger("app.api.search")
SNIPPET_CHARS = 300
# The 503 answer while no vector store server answers (uploads go on: app.tasks).
SEARCH_UNAVAILABLE = ("search is temporarily unavailable: the vector store cannot be reached. "
                      "Uploads are still accepted and are indexed when it is back.")
SSE_RESPONSE = {200: {"content": {"application/json": {},
                                  "text/event-stream": {"schema": {"type": "string"}}},
                      "description": "the answer (JSON, or Server-Sent Events with stream)"}}


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= SNIPPET_CHARS else flat[: SNIPPET_CHARS - 1].rstrip() + "…"


def _check_access(db: Database, user: User, project_id: uuid.UUID) -> None:
    with db.session() as s:
        project_access(s, user, project_id)


def _retrieve(db: Database, settings: Settings, project_id: uuid.UUID, query: str,
              top_k: int) -> tuple[list[tuple[Hit, str]], np.ndarray]:
    try:
        vec = get_embedder().embed([query])[0]
        hits = get_vector_store(settings).search(str(project_id), vec, top_k)
    except VectorStoreUnavailable as exc:
        log.warning("search_unavailable", error=str(exc))
        raise ApiError(503, "vector_store_unavailable", SEARCH_UNAVAILABLE,
                       {"Retry-After": "30"}) from None
    except ModelNotFound as exc:
        log.error("embedding_model_missing", error=str(exc))
        raise ApiError(503, "embedding_model_unavailable",
                       "embedding model unavailable") from None
    ids = {uuid.UUID(h.document_id) for h in hits if h.document_id}
    names: dict[uuid.UUID, str] = {}
    if ids:
        with db.read_sessions() as s:
            rows = s.execute(select(Document.id, Document.filename).where(
                Document.id.in_(ids), Document.project_id == project_id,
                Document.status == DocumentStatus.ready,
            ))
            names = {row.id: row.filename for row in rows}
    kept = [(h, names[uuid.UUID(h.document_id)]) for h in hits
            if h.document_id and uuid.UUID(h.document_id) in names]
    return kept, vec


def _hit_out(hit: Hit, filename: str) -> SearchHit:
    return SearchHit(document_id=uuid.UUID(hit.document_id), filename=filename,
                     chunk_index=hit.chunk_index, page=hit.page, score=hit.score,
                     snippet=_snippet(hit.text))


@router.post("/search", response_model=SearchOut)
def search(project_id: uuid.UUID, body: SearchIn, user: CurrentUser, db: DatabaseDep,
           settings: SettingsDep) -> SearchOut:
    """Top-k chunks of the project's ready documents by cosine similarity (score 1 = same)."""
    _check_access(db, user, project_id)
    hits, _ = _retrieve(db, settings, project_id, body.query, body.top_k)
    return SearchOut(query=body.query, results=[_hit_out(h, f) for h, f in hits])


def _sse(event: str, data: object) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _stream(provider: ProviderConfig | None, question: str, passages: list[Passage],
            sources: list[SearchHit], qvec: np.ndarray, settings: Settings) -> Iterator[str]:
    yield _sse("sources", [s.model_dump(mode="json") for s in sources])
    provider_error = None
    if provider is not None and passages:
        sent = 0
        try:
            for piece in generate_stream(provider, question, passages, settings):
                sent += 1
                yield _sse("token", {"text": piece})
            yield _sse("done", {"mode": "generative", "provider": provider.name,
                                "provider_error": None})
            return
        except ProviderError as exc:
            log.warning("provider_failed", provider=provider.name, error=str(exc))
            provider_error = PROVIDER_FAILED
            if sent:  # part of an answer went out: say it broke off, do not mix in quotes
                yield _sse("done", {"mode": "generative", "provider": provider.name,
                                    "provider_error": provider_error, "incomplete": True})
                return
    for piece in words(extractive_answer(qvec, passages, get_embedder())):
        yield _sse("token", {"text": piece})
    yield _sse("done", {"mode": "extractive", "provider": provider.name if provider else None,
                        "provider_error": provider_error})


@router.post("/ask", response_model=AskOut, responses=SSE_RESPONSE)
def ask(project_id: uuid.UUID, body: AskIn, user: CurrentUser, db: DatabaseDep,
        settings: SettingsDep) -> AskOut | StreamingResponse:
    """Answer from the project's documents. ``mode`` is ``generative`` when a configured
    provider answered, else ``extractive`` (sentences quoted from the passages). With
    ``"stream": true`` the answer comes as Server-Sent Events: ``sources`` (the hits),
    ``token`` (``{"text"}``, repeated) and ``done`` (``{"mode", "provider",
    "provider_error"}``). QUOTA_ASKS_PER_DAY per user: then 429 with Retry-After."""
    with db.session() as s:
        project_access(s, user, project_id)
        try:
            provider = resolve_provider(s, user, settings, body.provider_id)
        except ProviderNotFound:
            raise not_found("provider") from None
    wait = take_ask(settings, user.id)
    if wait is not None:
        raise ApiError(429, "quota_exceeded",
                       f"quota exceeded: at most {settings.quota_asks_per_day} asks per day",
                       {"Retry-After": str(wait)})
    hits, qvec = _retrieve(db, settings, project_id, body.question, body.top_k)
    passages = [Passage(i + 1, f, h.text) for i, (h, f) in enumerate(hits)]
    sources = [_hit_out(h, f) for h, f in hits]
    if body.stream:
        return StreamingResponse(
            _stream(provider, body.question, passages, sources, qvec, settings),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    provider_error = None
    if provider is not None and passages:
        try:
            answer = generate(provider, body.question, passages, settings)
            return AskOut(answer=answer, mode="generative", provider=provider.name,
                          sources=sources)
        except ProviderError as exc:
            provider_error = PROVIDER_FAILED
            log.warning("provider_failed", provider=provider.name, error=str(exc))
    answer = extractive_answer(qvec, passages, get_embedder())
    return AskOut(answer=answer, mode="extractive",
                  provider=provider.name if provider else None,
                  provider_error=provider_error, sources=sources)
