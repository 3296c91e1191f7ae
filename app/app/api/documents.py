"""Documents of a project: streaming upload, listing, download, deletion.

The upload route is ``POST /api/v1/projects/{project_id}/documents`` (Nginx rate-limits it).
"""

from __future__ import annotations

import uuid
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select

from app.api.deps import (
    UNAUTHORIZED,
    CurrentUser,
    SessionDep,
    SettingsDep,
    get_db,
    owned_project,
)
from app.config import Settings
from app.db import Database
from app.filetypes import UnsupportedType, detect
from app.log import get_logger
from app.models import Document, DocumentContent, DocumentStatus, Project, User
from app.schemas import MAX_OFFSET, DocumentOut
from app.security import InvalidTokenError, decode_access_token
from app.uploads import ReceivedFile, UploadInvalid, UploadTooLarge, receive_upload
from app.vectorset import get_vector_store
from app.vectorstore import VectorStoreUnavailable

router = APIRouter(prefix="/projects/{project_id}/documents", tags=["documents"])
log = get_logger("app.api.documents")
bearer = HTTPBearer(auto_error=False)

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


def _authorize_upload(db: Database, settings: Settings, token: str | None,
                      project_id: uuid.UUID) -> uuid.UUID:
    """Check token and ownership with a short-lived session (no connection is held
    while the body streams in). Returns the user id."""
    if not token:
        raise UNAUTHORIZED
    try:
        user_id = decode_access_token(token, settings)
    except InvalidTokenError:
        raise UNAUTHORIZED from None
    with db.session() as s:
        user = s.get(User, user_id)
        if user is None or not user.is_active:
            raise UNAUTHORIZED
        owned_project(s, user, project_id)
    return user_id


def _store(db: Database, user_id: uuid.UUID, project_id: uuid.UUID, received: ReceivedFile,
           kind: str, content_type: str) -> Document:
    """Row and bytes in one transaction: both or neither."""
    data = received.read_all()
    with db.session() as s:
        project = s.get(Project, project_id, with_for_update=True)
        if project is None or project.owner_id != user_id:  # deleted meanwhile
            raise HTTPException(status.HTTP_404_NOT_FOUND, "project not found")
        doc = Document(
            project_id=project_id, filename=received.filename, content_type=content_type,
            kind=kind, size_bytes=received.size, sha256=received.sha256,
            status=DocumentStatus.pending,
        )
        s.add(doc)
        s.flush()
        s.add(DocumentContent(document_id=doc.id, data=data))
        s.flush()
        s.refresh(doc)
        return doc


@router.post(
    "",
    response_model=DocumentOut,
    status_code=status.HTTP_201_CREATED,
    openapi_extra=UPLOAD_BODY,
    responses={
        413: {"description": "file larger than MAX_FILE_SIZE"},
        415: {"description": "content is neither PDF nor UTF-8 text"},
        422: {"description": "malformed multipart body, no file, or empty file"},
    },
)
async def upload_document(
    project_id: uuid.UUID,
    request: Request,
    settings: SettingsDep,
    db: Annotated[Database, Depends(get_db)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Document:
    """Upload one file (form field ``file``). Its type is judged from its content: PDF, or
    UTF-8 text (plain, Markdown, source code). Indexing starts in the background; poll the
    document until ``status`` is ``ready`` or ``failed``."""
    token = credentials.credentials if credentials else None
    user_id = await run_in_threadpool(_authorize_upload, db, settings, token, project_id)
    try:
        received = await receive_upload(
            request.headers.get("content-type"), request.headers.get("content-length"),
            request.stream(), settings.max_file_size,
        )
    except UploadTooLarge:
        raise HTTPException(
            413,
            f"file exceeds the limit of {settings.max_file_size} bytes",
        ) from None
    except UploadInvalid as exc:
        raise HTTPException(422, str(exc)) from None
    try:
        detected = detect(received.head, received.utf8, received.filename)
        doc = await run_in_threadpool(_store, db, user_id, project_id, received,
                                      detected.kind, detected.content_type)
    except UnsupportedType as exc:
        raise HTTPException(415, str(exc)) from None
    finally:
        received.close()

    from app.tasks import enqueue_index

    queued = await run_in_threadpool(enqueue_index, doc.id)
    log.info("document_uploaded", document_id=str(doc.id), project_id=str(project_id),
             size=doc.size_bytes, kind=doc.kind, queued=queued)
    return doc


def _owned_document(session: SessionDep, user: User, project_id: uuid.UUID,
                    document_id: uuid.UUID) -> Document:
    owned_project(session, user, project_id)
    doc = session.get(Document, document_id)
    if doc is None or doc.project_id != project_id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "document not found")
    return doc


@router.get("", response_model=list[DocumentOut])
def list_documents(
    project_id: uuid.UUID, user: CurrentUser, session: SessionDep,
    status_filter: Annotated[DocumentStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[Document]:
    owned_project(session, user, project_id)
    query = select(Document).where(Document.project_id == project_id)
    if status_filter is not None:
        query = query.where(Document.status == status_filter)
    query = query.order_by(Document.created_at, Document.id).limit(limit).offset(offset)
    return list(session.scalars(query))


@router.get("/{document_id}", response_model=DocumentOut)
def get_document(project_id: uuid.UUID, document_id: uuid.UUID, user: CurrentUser,
                 session: SessionDep) -> Document:
    return _owned_document(session, user, project_id, document_id)


@router.get("/{document_id}/download", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}})
def download_document(project_id: uuid.UUID, document_id: uuid.UUID, user: CurrentUser,
                      session: SessionDep) -> Response:
    doc = _owned_document(session, user, project_id, document_id)
    data = session.scalar(select(DocumentContent.data)
                          .where(DocumentContent.document_id == document_id))
    if data is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "document content not found")
    ascii_name = doc.filename.encode("ascii", "replace").decode().replace('"', "_")
    disposition = f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(doc.filename)}"
    return Response(content=bytes(data), media_type=doc.content_type,
                    headers={"Content-Disposition": disposition,
                             "X-Content-Type-Options": "nosniff"})


@router.delete("/{document_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_document(project_id: uuid.UUID, document_id: uuid.UUID, user: CurrentUser,
                    session: SessionDep, settings: SettingsDep) -> Response:
    doc = _owned_document(session, user, project_id, document_id)
    session.delete(doc)
    session.commit()
    try:
        get_vector_store(settings).delete_document(str(project_id), str(document_id))
    except VectorStoreUnavailable:
        log.warning("vector_delete_deferred", document_id=str(document_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
