"""Documents of a project: streaming upload, listing, streamed download, deletion,
re-indexing and retry.

The upload route is ``POST /api/v1/projects/{project_id}/documents`` (Nginx rate-limits it).
At most UPLOAD_CONCURRENCY uploads are received at once per process (each may hold up to
MAX_FILE_SIZE in memory while it is stored); more are answered 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.api.deps import (
    CurrentUser,
    DatabaseDep,
    SessionDep,
    SettingsDep,
    project_access,
)
from app.config import Settings
from app.db import Database
from app.errors import ApiError, not_found
from app.filetypes import UnsupportedType, detect
from app.log import get_logger
from app.models import Document, DocumentContent, DocumentStatus, Project, ProjectRole, User
from app.quotas import check_documents
from app.schemas import MAX_OFFSET, DocumentOut
from app.uploads import ReceivedFile, UploadInvalid, UploadTooLarge, receive_upload
from app.vectorset import get_vector_store
from app.vectorstore import VectorStoreUnavailable

router = APIRouter(prefix="/projects/{project_id}/documents", tags=["documents"])
log = get_logger("app.api.documents")
DOWNLOAD_CHUNK = 1024 * 1024
_upload_slots: dict[int, asyncio.Semaphore] = {}

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


def _check_upload(db: Database, user: User, project_id: uuid.UUID) -> None:
    """Write access, checked with a short-lived session (no connection is held while
    the body streams in)."""
    with db.session() as s:
        project_access(s, user, project_id, ProjectRole.write)


def _store(db: Database, user: User, project_id: uuid.UUID, received: ReceivedFile,
           kind: str, content_type: str, settings: Settings) -> tuple[Document, bool]:
    """Row and bytes in one transaction: both or neither. A file already in the project
    (same SHA-256) is not stored twice: (the existing document, False)."""
    with db.session() as s:
        # The project row's lock serialises uploads into one project (de-duplication).
        s.get(Project, project_id, with_for_update=True)
        project = project_access(s, user, project_id, ProjectRole.write)  # deleted meanwhile?
        same = s.scalar(select(Document).where(Document.project_id == project_id,
                                               Document.sha256 == received.sha256)
                        .order_by(Document.created_at).limit(1))
        if same is not None:
            return same, False
        check_documents(s, project.owner_id, received.size, settings)
        doc = Document(
            project_id=project_id, filename=received.filename, content_type=content_type,
            kind=kind, size_bytes=received.size, sha256=received.sha256,
            status=DocumentStatus.pending,
        )
        s.add(doc)
        s.flush()
        s.add(DocumentContent(document_id=doc.id, data=received.read_all()))
        s.flush()
        s.refresh(doc)
        return doc, True


def _slots(limit: int) -> asyncio.Semaphore:
    return _upload_slots.setdefault(limit, asyncio.Semaphore(limit))


@router.post(
    "",
    response_model=DocumentOut,
    status_code=status.HTTP_201_CREATED,
    openapi_extra=UPLOAD_BODY,
    responses={200: {"model": DocumentOut,
                     "description": "the same file is already in the project: that document"}},
)
async def upload_document(project_id: uuid.UUID, request: Request, settings: SettingsDep,
                          db: DatabaseDep, user: CurrentUser) -> Response:
    """Upload one file (form field ``file``). Its type is judged from its content: PDF,
    DOCX, PPTX, XLSX, HTML, or UTF-8 text (plain, Markdown, source code). Indexing starts
    in the background; poll the document until ``status`` is ``ready`` or ``failed``.
    A file already in the project (same SHA-256) is answered 200 with that document."""
    await run_in_threadpool(_check_upload, db, user, project_id)
    slots = _slots(settings.upload_concurrency)
    if slots.locked():
        raise ApiError(503, "uploads_busy", "too many uploads in progress, retry shortly",
                       {"Retry-After": "5"})
    async with slots:
        try:
            received = await receive_upload(
                request.headers.get("content-type"), request.headers.get("content-length"),
                request.stream(), settings.max_file_size,
            )
        except UploadTooLarge:
            raise ApiError(413, "file_too_large",
                           f"file exceeds the limit of {settings.max_file_size} bytes") from None
        except UploadInvalid as exc:
            raise ApiError(422, "invalid_upload", str(exc)) from None
        try:
            detected = detect(received.head, received.utf8, received.filename, received.spool)
            doc, created = await run_in_threadpool(_store, db, user, project_id, received,
                                                   detected.kind, detected.content_type,
                                                   settings)
        except UnsupportedType as exc:
            raise ApiError(415, "unsupported_type", str(exc)) from None
        finally:
            received.close()

    queued = False
    if created:
        from app.tasks import enqueue_index

        queued = await run_in_threadpool(enqueue_index, doc.id)
    log.info("document_uploaded", document_id=str(doc.id), project_id=str(project_id),
             size=doc.size_bytes, kind=doc.kind, queued=queued, duplicate=not created)
    body = DocumentOut.model_validate(doc).model_dump(mode="json")
    return JSONResponse(body, status_code=201 if created else 200)


def _document(session: Session, user: User, project_id: uuid.UUID, document_id: uuid.UUID,
              need: str = ProjectRole.read) -> Document:
    project_access(session, user, project_id, need)
    doc = session.get(Document, document_id)
    if doc is None or doc.project_id != project_id:
        raise not_found("document")
    return doc


@router.get("", response_model=list[DocumentOut])
def list_documents(
    project_id: uuid.UUID, user: CurrentUser, session: SessionDep,
    status_filter: Annotated[DocumentStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[Document]:
    project_access(session, user, project_id)
    query = select(Document).where(Document.project_id == project_id)
    if status_filter is not None:
        query = query.where(Document.status == status_filter)
    query = query.order_by(Document.created_at, Document.id).limit(limit).offset(offset)
    return list(session.scalars(query))


@router.get("/{document_id}", response_model=DocumentOut)
def get_document(project_id: uuid.UUID, document_id: uuid.UUID, user: CurrentUser,
                 session: SessionDep) -> Document:
    return _document(session, user, project_id, document_id)


def _chunks(db: Database, document_id: uuid.UUID, size: int) -> Iterator[bytes]:
    """The stored bytes in DOWNLOAD_CHUNK pieces, each read in its own short session:
    neither the whole file nor a pooled connection is held while a slow client reads."""
    for offset in range(0, size, DOWNLOAD_CHUNK):
        with db.session() as s:
            piece = s.scalar(select(func.substring(DocumentContent.data, offset + 1,
                                                   DOWNLOAD_CHUNK))
                             .where(DocumentContent.document_id == document_id))
        if piece is None:  # deleted meanwhile: the client sees a short body
            return
        yield bytes(piece)


@router.get("/{document_id}/download", response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {}}}})
def download_document(project_id: uuid.UUID, document_id: uuid.UUID, user: CurrentUser,
                      db: DatabaseDep) -> StreamingResponse:
    """The uploaded bytes, streamed from PostgreSQL in 1 MiB pieces."""
    with db.session() as s:
        doc = _document(s, user, project_id, document_id)
        size = s.scalar(select(func.octet_length(DocumentContent.data))
                        .where(DocumentContent.document_id == document_id))
    if size is None:
        raise not_found("document content")
    ascii_name = doc.filename.encode("ascii", "replace").decode().replace('"', "_")
    disposition = f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(doc.filename)}"
    return StreamingResponse(_chunks(db, document_id, int(size)), media_type=doc.content_type,
                             headers={"Content-Disposition": disposition,
                                      "Content-Length": str(size),
                                      "X-Content-Type-Options": "nosniff"})


@router.delete("/{document_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_document(project_id: uuid.UUID, document_id: uuid.UUID, user: CurrentUser,
                    session: SessionDep, settings: SettingsDep) -> Response:
    doc = _document(session, user, project_id, document_id, ProjectRole.write)
    session.delete(doc)
    session.commit()
    try:
        get_vector_store(settings).delete_document(str(project_id), str(document_id))
    except VectorStoreUnavailable:
        log.warning("vector_delete_deferred", document_id=str(document_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _requeue(session: Session, doc: Document) -> Document:
    doc.status = DocumentStatus.pending
    doc.attempts = 0  # the attempt cap counts runs since the user's last request
    doc.error = None
    session.flush()
    session.refresh(doc)
    return doc


def _queued(session: Session, doc: Document) -> Document:
    session.commit()
    from app.tasks import enqueue_index

    enqueue_index(doc.id)  # broker down: requeue_stuck queues the pending document later
    return doc


@router.post("/{document_id}/reindex", response_model=DocumentOut,
             status_code=status.HTTP_202_ACCEPTED)
def reindex_document(project_id: uuid.UUID, document_id: uuid.UUID, user: CurrentUser,
                     session: SessionDep) -> Document:
    """Index the document again (e.g. after a model or chunking change); 409 while it is
    being indexed."""
    doc = _document(session, user, project_id, document_id, ProjectRole.write)
    if doc.status == DocumentStatus.indexing:
        raise ApiError(409, "indexing_in_progress", "the document is being indexed")
    return _queued(session, _requeue(session, doc))


@router.post("/{document_id}/retry", response_model=DocumentOut,
             status_code=status.HTTP_202_ACCEPTED)
def retry_document(project_id: uuid.UUID, document_id: uuid.UUID, user: CurrentUser,
                   session: SessionDep) -> Document:
    """Try a failed document again (409 for any other status)."""
    doc = _document(session, user, project_id, document_id, ProjectRole.write)
    if doc.status != DocumentStatus.failed:
        raise ApiError(409, "not_failed", "only a failed document can be retried")
    return _queued(session, _requeue(session, doc))
