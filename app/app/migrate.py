"""Alembic driven from inside the installed package (no alembic.ini needed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        cfg.attributes["url"] = url
    return cfg


def _url(cfg: Config) -> str:
    url = cfg.attributes.get("url")
    if url:
        return str(url)
    from app.config import get_settings

    return get_settings().database_url


def current_revisions(cfg: Config) -> tuple[str, ...]:
    from app.config import get_settings
    from app.db import with_password_fallback

    engine = with_password_fallback(create_engine(_url(cfg), poolclass=pool.NullPool),
                                    get_settings())
    try:
        with engine.connect() as conn:
            return tuple(MigrationContext.configure(conn).get_current_heads())
    finally:
        engine.dispose()


def head_revision(cfg: Config) -> str:
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


@dataclass(frozen=True)
class Applied:
    revision: str
    message: str


def upgrade(cfg: Config, target: str = "head") -> list[Applied]:
    """Upgrade and return the revisions that were applied, oldest first."""
    script = ScriptDirectory.from_config(cfg)
    before = current_revisions(cfg)
    command.upgrade(cfg, target)
    after = current_revisions(cfg)
    if before == after:
        return []
    revs = list(script.iterate_revisions(after, before or "base"))
    revs.reverse()
    return [Applied(r.revision, (r.doc or "").strip().splitlines()[0]) for r in revs]


def downgrade(cfg: Config, target: str) -> None:
    command.downgrade(cfg, target)
