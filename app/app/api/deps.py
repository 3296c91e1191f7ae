"""Shared FastAPI dependencies: settings, sessions, the authenticated user, project access.

One way in: every route that needs a user takes ``CurrentUser`` (or ``SessionUser``),
which reads the one bearer scheme (``oauth2``) and calls ``user_from_token``, the only
code that turns a token (a JWT access token or a personal API key) into a user. It runs
in a short session of its own on the primary, so a request holds no pooled connection
for longer than its own queries, and a user who just registered is found even when
reads go to a lagging replica.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import Database
from app.errors import ApiError, not_found
from app.models import ApiKey, Project, ProjectMember, ProjectRole, User
from app.security import API_KEY_PREFIX, InvalidTokenError, api_key_hash, decode_access_token

# The one bearer scheme: "Authorization: Bearer <access token or API key>".
oauth2 = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)

UNAUTHORIZED = HTTPException(
    status.HTTP_401_UNAUTHORIZED, "invalid or expired token",
    headers={"WWW-Authenticate": "Bearer"},
)
_KEY_USE_RECORD_INTERVAL = timedelta(minutes=5)


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_db(request: Request) -> Database:
    return request.app.state.db  # type: ignore[no-any-return]


def get_session(db: Annotated[Database, Depends(get_db)]) -> Iterator[Session]:
    with db.session() as s:
        yield s


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
DatabaseDep = Annotated[Database, Depends(get_db)]
# scope="function": the session commits (and closes) when the endpoint has
# returned and its response is built, but before the response is sent. With the
# default scope FastAPI sends the response first, so a commit that failed (the
# primary shutting down in a switchover) had already been answered 201.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


@dataclass(frozen=True)
class Principal:
    user: User
    via_api_key: bool


def user_from_token(session: Session, token: str | None, settings: Settings) -> Principal:
    """The one token -> user function: a JWT whose version matches the user's, or an
    unrevoked personal API key of an active user. Anything else is 401."""
    if not token:
        raise UNAUTHORIZED
    if token.startswith(API_KEY_PREFIX):
        key = session.scalar(select(ApiKey).where(ApiKey.key_hash == api_key_hash(token)))
        if key is None or key.revoked_at is not None:
            raise UNAUTHORIZED
        user = session.get(User, key.user_id)
        now = datetime.now(UTC)
        if key.last_used_at is None or now - key.last_used_at > _KEY_USE_RECORD_INTERVAL:
            session.execute(update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=now))
        version_ok = True
    else:
        try:
            user_id, version = decode_access_token(token, settings)
        except InvalidTokenError:
            raise UNAUTHORIZED from None
        user = session.get(User, user_id)
        version_ok = user is not None and user.token_version == version
    if user is None or not user.is_active or not version_ok:
        raise UNAUTHORIZED
    return Principal(user, token.startswith(API_KEY_PREFIX))


def principal(token: Annotated[str | None, Depends(oauth2)], db: DatabaseDep,
              settings: SettingsDep) -> Principal:
    with db.session() as s:
        return user_from_token(s, token, settings)


def current_user(p: Annotated[Principal, Depends(principal)]) -> User:
    return p.user


def session_user(p: Annotated[Principal, Depends(principal)]) -> User:
    """A user signed in with a password (an access token), not with an API key: for
    account changes (password, API keys), so a leaked key cannot make itself a new one."""
    if p.via_api_key:
        raise ApiError(403, "password_session_required",
                       "this action needs a signed-in session, not an API key")
    return p.user


CurrentUser = Annotated[User, Depends(current_user)]
SessionUser = Annotated[User, Depends(session_user)]

# What each access level allows: read (see, download, search, ask), write (+ upload,
# delete and re-index documents), owner (+ rename, delete, manage members).
_RANK = {ProjectRole.read: 1, ProjectRole.write: 2, "owner": 3}


def project_role(session: Session, user: User, project: Project) -> str | None:
    if project.owner_id == user.id:
        return "owner"
    return session.scalar(select(ProjectMember.role).where(
        ProjectMember.project_id == project.id, ProjectMember.user_id == user.id))


def project_access(session: Session, user: User, project_id: uuid.UUID,
                   need: str = ProjectRole.read) -> Project:
    """The project if the user's role allows ``need``. No role at all: 404 (no existence
    leak); a member whose role is too low: 403."""
    project = session.get(Project, project_id)
    role = project_role(session, user, project) if project is not None else None
    if project is None or role is None:
        raise not_found("project")
    if _RANK[role] < _RANK[need]:
        raise ApiError(403, "insufficient_role",
                       f"your role on this project ({role}) does not allow this")
    return project
