"""Registration (open, invite-only or closed), login with per-account throttling,
logout, password change, invitations, and the current user's profile."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Response, status
from fastapi.security import OAuth2PasswordRequestForm
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.api.deps import CurrentUser, SessionDep, SessionUser, SettingsDep
from app.config import Settings
from app.errors import ApiError
from app.limits import clear_login_failures, login_retry_after, record_login_failure
from app.models import Invite, User
from app.schemas import (
    InviteIn,
    InviteOut,
    LoginIn,
    PasswordChangeIn,
    RegisterIn,
    TokenOut,
    UserOut,
)
from app.security import (
    api_key_hash,
    create_access_token,
    dummy_hash,
    hash_password,
    password_needs_rehash,
    verify_password,
)

router = APIRouter(prefix="/auth", tags=["auth"])
users_router = APIRouter(prefix="/users", tags=["users"])
admin_router = APIRouter(prefix="/admin", tags=["admin"])

BAD_CREDENTIALS = HTTPException(
    status.HTTP_401_UNAUTHORIZED, "incorrect email or password",
    headers={"WWW-Authenticate": "Bearer"},
)


def normalise_email(email: str) -> str:
    return email.strip().lower()


def _take_invite(session: Session, code: str | None, email: str) -> None:
    """Use up a valid invitation for this email, or 403."""
    invite = session.scalar(select(Invite).where(Invite.code_hash == api_key_hash(code or ""))
                            .with_for_update()) if code else None
    now = datetime.now(UTC)
    if (invite is None or invite.used_at is not None or invite.expires_at < now
            or (invite.email and invite.email != email)):
        raise ApiError(403, "invitation_required", "a valid invitation code is required")
    invite.used_at = now


@router.post("/register", response_model=UserOut, status_code=status.HTTP_201_CREATED)
def register(body: RegisterIn, session: SessionDep, settings: SettingsDep) -> User:
    """Create an account. REGISTRATION_MODE: ``open``; ``invite`` (``invite_code`` from an
    admin's ``POST /admin/invites`` needed); ``closed`` (403, accounts come from the CLI)."""
    if settings.registration_mode == "closed":
        raise ApiError(403, "registration_closed", "registration is closed")
    email = normalise_email(body.email)
    password_hash = hash_password(body.password, settings)  # before any connection is taken
    if settings.registration_mode == "invite":
        _take_invite(session, body.invite_code, email)
    if session.scalar(select(func.count()).select_from(User).where(User.email == email)):
        raise ApiError(409, "email_taken", "email already registered")
    user = User(email=email, password_hash=password_hash)
    session.add(user)
    try:
        session.flush()
    except IntegrityError:  # a concurrent registration won the race
        session.rollback()
        raise ApiError(409, "email_taken", "email already registered") from None
    session.refresh(user)
    return user


def _login(email: str, password: str, session: Session, settings: Settings) -> TokenOut:
    email = normalise_email(email)
    wait = login_retry_after(settings, email)
    if wait is not None:
        raise ApiError(429, "login_throttled",
                       "too many failed logins for this account, try again later",
                       {"Retry-After": str(wait)})
    user = session.scalar(select(User).where(User.email == email))
    session.commit()  # no pooled connection held while argon2 runs (or waits for a slot)
    if user is None:
        # Same cost whether or not the user exists.
        verify_password(dummy_hash(settings), password, settings)
        record_login_failure(settings, email)
        raise BAD_CREDENTIALS
    if not verify_password(user.password_hash, password, settings) or not user.is_active:
        record_login_failure(settings, email)
        raise BAD_CREDENTIALS
    clear_login_failures(settings, email)
    if password_needs_rehash(user.password_hash, settings):
        user.password_hash = hash_password(password, settings)
    token, lifetime = create_access_token(user.id, user.token_version, settings)
    return TokenOut(access_token=token, expires_in=lifetime)


@router.post("/login", response_model=TokenOut)
def login(body: LoginIn, session: SessionDep, settings: SettingsDep) -> TokenOut:
    """JSON login: ``{"email": ..., "password": ...}``. After LOGIN_MAX_FAILURES failed
    attempts on one account within the window: 429 with Retry-After."""
    return _login(body.email, body.password, session, settings)


@router.post("/token", response_model=TokenOut)
def token(form: Annotated[OAuth2PasswordRequestForm, Depends()], session: SessionDep,
          settings: SettingsDep) -> TokenOut:
    """OAuth2 password form (``username`` = email); used by the Authorize button of /docs."""
    return _login(form.username, form.password, session, settings)


def _bump_token_version(session: Session, user_id: uuid.UUID) -> int:
    return int(session.execute(update(User).where(User.id == user_id)
                               .values(token_version=User.token_version + 1)
                               .returning(User.token_version)).scalar_one())


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(user: SessionUser, session: SessionDep) -> Response:
    """Sign out everywhere: every access token issued so far stops working."""
    _bump_token_version(session, user.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/password", response_model=TokenOut)
def change_password(body: PasswordChangeIn, user: SessionUser, session: SessionDep,
                    settings: SettingsDep) -> TokenOut:
    """Change the password; every earlier token stops working, a new one is returned."""
    row = session.get(User, user.id, with_for_update=True)
    if row is None or not verify_password(row.password_hash, body.current_password, settings):
        raise ApiError(403, "wrong_password", "the current password is wrong")
    row.password_hash = hash_password(body.new_password, settings)
    version = _bump_token_version(session, row.id)
    access, lifetime = create_access_token(row.id, version, settings)
    return TokenOut(access_token=access, expires_in=lifetime)


@router.get("/me", response_model=UserOut)
def auth_me(user: CurrentUser) -> User:
    return user


@users_router.get("/me", response_model=UserOut)
def users_me(user: CurrentUser) -> User:
    return user


@admin_router.post("/invites", response_model=InviteOut, status_code=status.HTTP_201_CREATED)
def create_invite(body: InviteIn, user: SessionUser, session: SessionDep) -> InviteOut:
    """An invitation code for REGISTRATION_MODE=invite (admins only; shown once)."""
    if not user.is_admin:
        raise ApiError(403, "admin_required", "only admins may invite")
    code = "inv_" + secrets.token_urlsafe(24)
    expires = datetime.now(UTC) + timedelta(days=body.valid_days)
    email = normalise_email(body.email) if body.email else None
    session.add(Invite(code_hash=api_key_hash(code), email=email, created_by=user.id,
                       expires_at=expires))
    return InviteOut(code=code, email=email, expires_at=expires)
