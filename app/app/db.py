"""Engines and sessions: one primary engine, and an optional read-only one for search
(only for data that may lag: never for authentication or access checks)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings, get_settings


def make_engine(url: str, settings: Settings) -> Engine:
    return create_engine(
        url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout=settings.database_pool_timeout,  # then 503 + Retry-After (app.errors)
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={"connect_timeout": settings.database_connect_timeout},
    )


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
