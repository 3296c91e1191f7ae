"""Per-user quotas on what a user owns (QUOTA_*; 0 = no limit), answered 403.

Documents and stored bytes count against the project's owner, also when a member
uploads. Asks per day are counted in Redis (app.limits) and answered 429."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import ApiError
from app.models import Document, Project


def _exceeded(what: str, limit: int) -> ApiError:
    return ApiError(403, "quota_exceeded", f"quota exceeded: at most {limit} {what}")


def check_projects(session: Session, owner_id: uuid.UUID, settings: Settings) -> None:
    limit = settings.quota_projects
    if limit and (session.scalar(select(func.count()).select_from(Project)
                                 .where(Project.owner_id == owner_id)) or 0) >= limit:
        raise _exceeded("projects", limit)


def check_documents(session: Session, owner_id: uuid.UUID, new_bytes: int,
                    settings: Settings) -> None:
    count, size = session.execute(
        select(func.count(Document.id), func.coalesce(func.sum(Document.size_bytes), 0))
        .join(Project, Project.id == Document.project_id)
        .where(Project.owner_id == owner_id)).one()
    if settings.quota_documents and count >= settings.quota_documents:
        raise _exceeded("documents", settings.quota_documents)
    if settings.quota_storage_bytes and size + new_bytes > settings.quota_storage_bytes:
        raise _exceeded("bytes of stored documents", settings.quota_storage_bytes)
