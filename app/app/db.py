"""Engines and sessions: one primary engine, and an optional read-only one for search
(only for data that may lag: never for authentication or access checks)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings, get_settings


def make_engine(url: str, settings: Settings) -> Engine:
    return with_password_fallback(create_engine(
        url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout=settings.database_pool_timeout,  # then 503 + Retry-After (app.errors)
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args=connect_args(settings),
    ), settings)


def connect_args(settings: Settings) -> dict[str, int]:
    """libpq's connection options: connect timeout, TCP keepalives and the user timeout
    that end a connection to a host that no longer answers (app.config)."""
    return {"connect_timeout": settings.database_connect_timeout,
            "keepalives": 1, "keepalives_idle": settings.database_keepalives_idle,
            "keepalives_interval": 3, "keepalives_count": 3,
            "tcp_user_timeout": settings.database_tcp_user_timeout_ms}


def with_password_fallback(engine: Engine, settings: Settings) -> Engine:
    """New connections that the server refuses with the URL's password try
    DATABASE_PREVIOUS_PASSWORD (when set) once more: while a rotation rolls out,
    the app runs with the new password before the database has it."""
    if settings.database_previous_password is None:
        return engine
    previous = settings.database_previous_password.get_secret_value()
    if not previous:
        return engine

    @event.listens_for(engine, "do_connect")
    def _connect(dialect, _conn_rec, cargs, cparams):
        try:
            return dialect.connect(*cargs, **cparams)
        except dialect.loaded_dbapi.OperationalError as exc:
            if "password authentication failed" not in str(exc):
                raise
            return dialect.connect(*cargs, **{**cparams, "password": previous})
    return engine


class Database:
    """The engines and session factories built from one Settings object."""

    def __init__(self, settings: Settings) -> None:
        self.engine = make_engine(settings.database_url, settings)
        self.read_engine = (
            make_engine(settings.database_read_url, settings)
            if settings.database_read_url
            else self.engine
        )
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.read_sessions = sessionmaker(self.read_engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on any error."""
        with self.sessions() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()


@lru_cache(maxsize=1)
def get_database() -> Database:
    """The process-wide Database for code outside a request (Celery tasks, CLI)."""
    return Database(get_settings())
