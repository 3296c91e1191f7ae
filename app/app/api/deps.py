"""Shared FastAPI dependencies: settings, sessions, the authenticated user."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import Database
from app.models import Project, User
from app.security import InvalidTokenError, decode_access_token

oauth2 = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)

UNAUTHORIZED = HTTPException(
    status.HTTP_401_UNAUTHORIZED, "invalid or expired token",
    headers={"WWW-Authenticate": "Bearer"},
)


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_db(request: Request) -> Database:
    return request.app.state.db  # type: ignore[no-any-return]


def get_session(db: Annotated[Database, Depends(get_db)]) -> Iterator[Session]:
    with db.session() as s:
        yield s


def get_read_session(db: Annotated[Database, Depends(get_db)]) -> Iterator[Session]:
    """A session on DATABASE_READ_URL when set (searches), else on the primary."""
    with db.read_sessions() as s:
        yield s


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
# scope="function": the session commits (and closes) when the endpoint has
# returned and its response is built, but before the response is sent. With the
# default scope FastAPI sends the response first, so a commit that failed (the
# primary shutting down in a switchover) had already been answered 201.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
ReadSessionDep = Annotated[Session, Depends(get_read_session, scope="function")]


def _user_from_token(token: str | None, session: Session, settings: Settings) -> User:
    if not token:
        raise UNAUTHORIZED
    try:
        user_id = decode_access_token(token, settings)
    except InvalidTokenError:
        raise UNAUTHORIZED from None
    user = session.get(User, user_id)
    if user is None or not user.is_active:
        raise UNAUTHORIZED
    return user


def current_user(
    token: Annotated[str | None, Depends(oauth2)], session: SessionDep, settings: SettingsDep,
) -> User:
    return _user_from_token(token, session, settings)


def current_user_read(
    token: Annotated[str | None, Depends(oauth2)], session: ReadSessionDep,
    settings: SettingsDep,
) -> User:
    return _user_from_token(token, session, settings)


CurrentUser = Annotated[User, Depends(current_user)]
CurrentUserRead = Annotated[User, Depends(current_user_read)]


def owned_project(session: Session, user: User, project_id: uuid.UUID) -> Project:
    """The user's project, or 404 (also for other users' projects: no existence leak)."""
    project = session.get(Project, project_id)
    if project is None or project.owner_id != user.id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "project not found")
    return project
