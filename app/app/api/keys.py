"""Personal API keys for scripts: ``Authorization: Bearer aip_...``.

A key is shown once, when it is made; only its SHA-256 is stored. Keys act as their
user on every route except account changes (password, keys), which need a signed-in
session. Revoking a key stops it at the next request."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from fastapi import APIRouter, Response, status
from sqlalchemy import select

from app.api.deps import SessionDep, SessionUser
from app.errors import not_found
from app.models import ApiKey
from app.schemas import ApiKeyCreated, ApiKeyIn, ApiKeyOut
from app.security import new_api_key

router = APIRouter(prefix="/api-keys", tags=["api keys"])


@router.post("", response_model=ApiKeyCreated, status_code=status.HTTP_201_CREATED)
def create_key(body: ApiKeyIn, user: SessionUser, session: SessionDep) -> ApiKeyCreated:
    key, digest = new_api_key()
    row = ApiKey(user_id=user.id, name=body.name, prefix=key[:12], key_hash=digest)
    session.add(row)
    session.flush()
    session.refresh(row)
    return ApiKeyCreated.model_validate({**ApiKeyOut.model_validate(row).model_dump(),
                                         "key": key})


@router.get("", response_model=list[ApiKeyOut])
def list_keys(user: SessionUser, session: SessionDep) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).where(ApiKey.user_id == user.id)
                                .order_by(ApiKey.created_at)))


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_key(key_id: uuid.UUID, user: SessionUser, session: SessionDep) -> Response:
    row = session.get(ApiKey, key_id)
    if row is None or row.user_id != user.id:
        raise not_found("API key")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
