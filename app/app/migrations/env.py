"""Alembic environment. The URL comes from the settings (DATABASE_URL) unless the
caller put one on the Config (``config.attributes["url"]``), e.g. tests."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

from app.models import Base

# Any constant shared by every host: serialises concurrent `ai-platform migrate` runs.
ADVISORY_LOCK_ID = 7_301_946_210

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("url")
    if url:
        return str(url)
    from app.config import get_settings

    return get_settings().database_url


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    from app.config import get_settings
    from app.db import with_password_fallback

    engine = with_password_fallback(create_engine(_url(), poolclass=pool.NullPool), get_settings())
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_LOCK_ID})
        connection.commit()
        try:
            context.configure(connection=connection, target_metadata=target_metadata,
                              compare_type=True, transaction_per_migration=True)
            with context.begin_transaction():
                context.run_migrations()
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_ID})
            connection.commit()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
