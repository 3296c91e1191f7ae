"""Semantic search and retrieval-augmented answers within one project.

Both read through DATABASE_READ_URL when it is set (a replica is enough)."""

from __future__ import annotations

import uuid

import numpy as np
from fastapi import APIRouter, HTTPException, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.answer import (
    Passage,
    ProviderError,
    ProviderNotFound,
    extractive_answer,
    generate,
    resolve_provider,
)
from app.api.deps import CurrentUserRead, ReadSessionDep, SettingsDep, owned_project
from app.config import Settings
from app.embeddings import ModelNotFound, get_embedder
from app.log import get_logger
from app.models import Document, DocumentStatus
from app.schemas import AskIn, AskOut, SearchHit, SearchIn, SearchOut
from app.vectorset import get_vector_store
from app.vectorstore import Hit, VectorStoreUnavailable

router = APIRouter(prefix="/projects/{project_id}", tags=["search"])
log = get_logger("app.api.search")
SNIPPET_CHARS = 300
# The 503 answer while no vector store server answers (uploads go on: app.tasks).
SEARCH_UNAVAILABLE = ("search is temporarily unavailable: the vector store cannot be reached. "
                      "Uploads are still accepted and are indexed when it is back.")


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= SNIPPET_CHARS else flat[: SNIPPET_CHARS - 1].rstrip() + "…"


def _retrieve(session: Session, settings: Settings, project_id: uuid.UUID, query: str,
              top_k: int) -> tuple[list[tuple[Hit, str]], np.ndarray]:
    try:
        vec = get_embedder().embed([query])[0]
        hits = get_vector_store(settings).search(str(project_id), vec, top_k)
    except VectorStoreUnavailable as exc:
        log.warning("search_unavailable", error=str(exc))
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, SEARCH_UNAVAILABLE,
                            headers={"Retry-After": "30"}) from None
    except ModelNotFound as exc:
        log.error("embedding_model_missing", error=str(exc))
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            "embedding model unavailable") from None
    ids = {uuid.UUID(h.document_id) for h in hits if h.document_id}
    names: dict[uuid.UUID, str] = {}
    if ids:
        rows = session.execute(select(Document.id, Document.filename).where(
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
def search(project_id: uuid.UUID, body: SearchIn, user: CurrentUserRead,
           session: ReadSessionDep, settings: SettingsDep) -> SearchOut:
    """Top-k chunks of the project's ready documents by cosine similarity (score 1 = same)."""
    owned_project(session, user, project_id)
    hits, _ = _retrieve(session, settings, project_id, body.query, body.top_k)
    return SearchOut(query=body.query, results=[_hit_out(h, f) for h, f in hits])


@router.post("/ask", response_model=AskOut)
def ask(project_id: uuid.UUID, body: AskIn, user: CurrentUserRead, session: ReadSessionDep,
        settings: SettingsDep) -> AskOut:
    """Answer from the project's documents. ``mode`` is ``generative`` when a configured
    provider answered, else ``extractive`` (sentences quoted from the passages)."""
    owned_project(session, user, project_id)
    try:
        provider = resolve_provider(session, user, settings, body.provider_id)
    except ProviderNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "provider not found") from None
    hits, qvec = _retrieve(session, settings, project_id, body.question, body.top_k)
    passages = [Passage(i + 1, f, h.text) for i, (h, f) in enumerate(hits)]
    sources = [_hit_out(h, f) for h, f in hits]
    provider_error = None
    if provider is not None and passages:
        try:
            answer = generate(provider, body.question, passages, settings.llm_timeout_seconds)
            return AskOut(answer=answer, mode="generative", provider=provider.name,
                          sources=sources)
        except ProviderError as exc:
            provider_error = str(exc)
            log.warning("provider_failed", provider=provider.name, error=provider_error)
    answer = extractive_answer(qvec, passages, get_embedder())
    return AskOut(answer=answer, mode="extractive",
                  provider=provider.name if provider else None,
                  provider_error=provider_error, sources=sources)
