"""Alembic: upgrade from a clean database and from every earlier revision, downgrade,
and the models agree with the migrations."""

from __future__ import annotations

import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from app import migrate
from app.models import Base


def _revisions() -> list[str]:
    script = ScriptDirectory.from_config(migrate.alembic_config())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def test_at_least_two_revisions_in_a_line() -> None:
    revs = _revisions()
    assert len(revs) >= 2
    assert revs[0] == "0001"


def test_migrations_ship_inside_the_package() -> None:
    assert (migrate.MIGRATIONS_DIR / "env.py").is_file()
    assert list((migrate.MIGRATIONS_DIR / "versions").glob("0001_*.py"))


def test_upgrade_from_clean(fresh_db: str) -> None:
    cfg = migrate.alembic_config(fresh_db)
    applied = migrate.upgrade(cfg)
    assert [a.revision for a in applied] == _revisions()
    assert migrate.current_revisions(cfg) == (migrate.head_revision(cfg),)
    assert migrate.upgrade(cfg) == []  # idempotent
    tables = set(inspect(create_engine(fresh_db)).get_table_names())
    assert {"users", "projects", "documents", "document_contents", "providers",
            "project_members", "api_keys", "invites"} <= tables


@pytest.mark.parametrize("start", _revisions()[:-1])
def test_upgrade_from_each_earlier_revision_keeps_data(fresh_db: str, start: str) -> None:
    cfg = migrate.alembic_config(fresh_db)
    migrate.upgrade(cfg, start)
    assert migrate.current_revisions(cfg) == (start,)
    engine = create_engine(fresh_db)
    uid, pid, did = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, email, password_hash) VALUES (:i, :e, 'x')"),
                     {"i": uid, "e": f"{uid.hex}@example.com"})
        conn.execute(text("INSERT INTO projects (id, owner_id, name) VALUES (:p, :u, 'kb')"),
                     {"p": pid, "u": uid})
        conn.execute(text(
            "INSERT INTO documents (id, project_id, filename, content_type, kind, size_bytes,"
            " sha256, status) VALUES (:d, :p, 'a.txt', 'text/plain', 'text', 3, 'x', 'ready')"),
            {"d": did, "p": pid})
        conn.execute(text("INSERT INTO document_contents (document_id, data) VALUES (:d, 'abc')"),
                     {"d": did})
    applied = migrate.upgrade(cfg)
    revs = _revisions()
    assert [a.revision for a in applied] == revs[revs.index(start) + 1:]
    with engine.connect() as conn:
        row = conn.execute(text("SELECT status, attempts, indexed_at IS NOT NULL AS has_ts "
                                "FROM documents WHERE id = :d"), {"d": did}).one()
        version = conn.execute(text("SELECT token_version FROM users WHERE id = :u"),
                               {"u": uid}).scalar_one()
        data = conn.execute(text("SELECT data FROM document_contents WHERE document_id = :d"),
                            {"d": did}).scalar_one()
    assert row.status == "ready" and row.attempts == 0
    assert row.has_ts == (start == "0001")  # 0002 stamps documents that were ready before it
    assert version == 0  # existing accounts keep their tokens valid until they sign out
    assert bytes(data) == b"abc"
    engine.dispose()


def test_downgrade_to_base_and_back(fresh_db: str) -> None:
    cfg = migrate.alembic_config(fresh_db)
    migrate.upgrade(cfg)
    for rev in reversed(_revisions()[:-1]):
        migrate.downgrade(cfg, rev)
        assert migrate.current_revisions(cfg) == (rev,)
    migrate.downgrade(cfg, "base")
    engine = create_engine(fresh_db)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    assert len(migrate.upgrade(cfg)) == len(_revisions())


def test_models_match_migrations(fresh_db: str) -> None:
    migrate.upgrade(migrate.alembic_config(fresh_db))
    engine = create_engine(fresh_db)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                Base.metadata)
    engine.dispose()
    assert diff == []
