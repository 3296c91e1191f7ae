"""Registration, login (JWT access tokens) and the current user's profile."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.security import OAuth2PasswordRequestForm
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.api.deps import CurrentUser, SessionDep, SettingsDep
from app.models import User
from app.schemas import LoginIn, RegisterIn, TokenOut, UserOut
from app.security import (
    create_access_token,
    dummy_hash,
    hash_password,
    password_needs_rehash,
    verify_password,
)

router = APIRouter(prefix="/auth", tags=["auth"])
users_router = APIRouter(prefix="/users", tags=["users"])

BAD_CREDENTIALS = HTTPException(
    status.HTTP_401_UNAUTHORIZED, "incorrect email or password",
    headers={"WWW-Authenticate": "Bearer"},
)


def normalise_email(email: str) -> str:
    return email.strip().lower()


@router.post("/register", response_model=UserOut, status_code=status.HTTP_201_CREATED,
             responses={409: {"description": "email already registered"}})
def register(body: RegisterIn, session: SessionDep, settings: SettingsDep) -> User:
    email = normalise_email(body.email)
    if session.scalar(select(func.count()).select_from(User).where(User.email == email)):
        raise HTTPException(status.HTTP_409_CONFLICT, "email already registered")
    user = User(email=email, password_hash=hash_password(body.password, settings))
    session.add(user)
    try:
        session.flush()
    except IntegrityError:  # a concurrent registration won the race
        session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, "email already registered") from None
    session.refresh(user)
    return user


def _login(email: str, password: str, session: SessionDep, settings: SettingsDep) -> TokenOut:
    user = session.scalar(select(User).where(User.email == normalise_email(email)))
    if user is None:
        verify_password(dummy_hash(settings), password)  # same cost whether or not the user exists
        raise BAD_CREDENTIALS
    if not verify_password(user.password_hash, password) or not user.is_active:
        raise BAD_CREDENTIALS
    if password_needs_rehash(user.password_hash, settings):
        user.password_hash = hash_password(password, settings)
    token, lifetime = create_access_token(user.id, settings)
    return TokenOut(access_token=token, expires_in=lifetime)


@router.post("/login", response_model=TokenOut,
             responses={401: {"description": "incorrect email or password"}})
def login(body: LoginIn, session: SessionDep, settings: SettingsDep) -> TokenOut:
    """JSON login: ``{"email": ..., "password": ...}``."""
    return _login(body.email, body.password, session, settings)


@router.post("/token", response_model=TokenOut, include_in_schema=True,
             responses={401: {"description": "incorrect email or password"}})
def token(form: Annotated[OAuth2PasswordRequestForm, Depends()], session: SessionDep,
          settings: SettingsDep) -> TokenOut:
    """OAuth2 password form (``username`` = email); used by the Authorize button of /docs."""
    return _login(form.username, form.password, session, settings)


@router.get("/me", response_model=UserOut)
def auth_me(user: CurrentUser) -> User:
    return user


@users_router.get("/me", response_model=UserOut)
def users_me(user: CurrentUser) -> User:
    return user
