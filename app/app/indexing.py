"""Indexing and housekeeping logic, free of Celery so it can be called directly.

Status of a document: pending -> indexing -> ready | failed (with ``error``).
Indexing is idempotent: vector ids are ``<document_id>:<chunk_index>`` and a run first
removes the document's old vectors, so a repeated or redelivered run converges.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, text, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import Database
from app.embeddings import Embedder
from app.log import get_logger
from app.models import Document, DocumentContent, DocumentStatus, Project
from app.officedocs import ZipLimits
from app.textproc import ExtractionError, chunk_text, extract
from app.vectorstore import VectorStore, VectorStoreUnavailable

log = get_logger("app.indexing")


class PermanentIndexingError(Exception):
    """Retrying cannot help (bad or empty document)."""


def _lock_key(document_id: uuid.UUID) -> int:
    # Signed 64-bit advisory lock key derived from the document id.
    return int.from_bytes(hashlib.blake2b(document_id.bytes, digest_size=8).digest(), "big",
                          signed=True)


def index_document(
    document_id: uuid.UUID, db: Database, store: VectorStore, embedder: Embedder,
    settings: Settings,
) -> str:
    """Index one document. Returns an outcome word; raises on transient failures."""
    with db.engine.connect() as lock_conn:
        got = lock_conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                {"k": _lock_key(document_id)}).scalar()
        lock_conn.commit()
        if not got:
            log.info("index_skipped_busy", document_id=str(document_id))
            return "busy"
        try:
            return _index_locked(document_id, db, store, embedder, settings)
        finally:
            try:
                lock_conn.execute(text("SELECT pg_advisory_unlock(:k)"),
                                  {"k": _lock_key(document_id)})
                lock_conn.commit()
            except Exception:  # connection lost: the lock went with it
                lock_conn.invalidate()


def _index_locked(
    document_id: uuid.UUID, db: Database, store: VectorStore, embedder: Embedder,
    settings: Settings,
) -> str:
    with db.session() as s:
        doc = s.get(Document, document_id, with_for_update=True)
        if doc is None:  # deleted: its vectors went with it (or go at the next reconcile)
            return "missing"
        if doc.status == DocumentStatus.ready:
            return "already-ready"
        if doc.status == DocumentStatus.failed:
            return "already-failed"  # a duplicate message; retry/reindex sets it pending
        if doc.attempts >= max_attempts(settings):
            # Each earlier run ended without a verdict: its worker was killed (out of
            # memory, a crash in native code) and the message came back. A poison document
            # would come back forever; stop here, before touching its bytes again.
            doc.status = DocumentStatus.failed
            doc.error = (f"gave up after {doc.attempts} indexing attempts: the worker "
                         "stopped while indexing it (out of memory or a crash?)")
            log.error("index_poison_document", document_id=str(document_id),
                      attempts=doc.attempts)
            return "failed"
        doc.status = DocumentStatus.indexing
        doc.attempts += 1
        doc.error = None
        project_id, kind = str(doc.project_id), doc.kind
        data = s.scalar(select(DocumentContent.data).where(
            DocumentContent.document_id == document_id))
    if data is None:
        raise PermanentIndexingError("stored content is missing")

    limits = ZipLimits(settings.max_archive_members, settings.max_archive_uncompressed_bytes,
                       settings.max_archive_ratio)
    try:
        extracted = extract(bytes(data), kind, settings.max_extracted_chars, limits)
    except ExtractionError as exc:
        raise PermanentIndexingError(str(exc)) from exc
    chunks = chunk_text(extracted.text, settings.chunk_size, settings.chunk_overlap)
    if not chunks:
        raise PermanentIndexingError("document contains no text")
    texts = [c.text for c in chunks]
    vectors = embedder.embed(texts)
    extra = [{"page": extracted.page_of(c.start), "start": c.start} for c in chunks]
    store.replace_document(project_id, str(document_id), texts, vectors, extra)

    with db.session() as s:
        doc = s.get(Document, document_id, with_for_update=True)
        if doc is None:  # deleted while we worked: leave no vectors behind
            store.delete_document(project_id, str(document_id))
            return "deleted-meanwhile"
        doc.status = DocumentStatus.ready
        doc.chunk_count = len(chunks)
        doc.indexed_at = datetime.now(UTC)
        doc.error = None
    log.info("document_indexed", document_id=str(document_id), chunks=len(chunks))
    return "ready"


def max_attempts(settings: Settings) -> int:
    """Runs a document gets in all: the first one and INDEX_MAX_RETRIES more."""
    return settings.index_max_retries + 1


def set_status(db: Database, document_id: uuid.UUID, status: DocumentStatus,
               error: str | None) -> None:
    with db.session() as s:
        s.execute(update(Document).where(Document.id == document_id)
                  .values(status=status, error=error[:2000] if error else None))


@dataclass
class PurgeResult:
    deleted: list[str] = field(default_factory=list)


def purge_documents(db: Database, store: VectorStore, settings: Settings) -> PurgeResult:
    """Delete failed uploads older than FAILED_UPLOAD_RETENTION_HOURS, with their vectors.

    Pending or indexing documents are never purged, however old: a worker or broker
    outage is what keeps them waiting, and requeue_stuck queues them again (a document
    that keeps failing ends ``failed`` after its attempts, and is purged from there)."""
    failed_before = datetime.now(UTC) - timedelta(hours=settings.failed_upload_retention_hours)
    with db.session() as s:
        rows = list(s.execute(
            delete(Document)
            .where(Document.status == DocumentStatus.failed,
                   Document.updated_at < failed_before)
            .returning(Document.id, Document.project_id)
        ))
    result = PurgeResult([str(r.id) for r in rows])
    for r in rows:
        try:
            store.delete_document(str(r.project_id), str(r.id))
        except VectorStoreUnavailable:
            break  # the next reconcile run removes the orphans
    if rows:
        log.info("documents_purged", count=len(rows))
    return result


@dataclass
class ReconcileResult:
    reindexed: list[str] = field(default_factory=list)
    orphan_vectors_deleted: int = 0
    orphan_collections_deleted: int = 0
    legacy_vectors_moved: int = 0


def reconcile(db: Database, store: VectorStore, settings: Settings) -> ReconcileResult:
    """Bring ChromaDB in line with PostgreSQL.

    * the shared collection of an earlier release, if any, is moved into the projects'
      collections first (``VectorStore.migrate_legacy``);
    * ready documents whose vectors are missing (count differs) go back to pending;
    * vectors of documents that no longer exist are deleted, and so are the collections
      of projects that no longer exist.
    The caller enqueues ``reindexed``. Lost indexing runs are requeue_stuck's job.
    """
    result = ReconcileResult()
    moved = store.migrate_legacy(delete=True)
    result.legacy_vectors_moved = moved.copied
    if moved.found:
        log.info("legacy_vectors_moved", vectors=moved.vectors, copied=moved.copied,
                 dropped=moved.dropped, projects=moved.projects)
    # Vectors first, documents second: a vector is only written after its row committed
    # (and a collection after its project's row), so a vector whose document is absent
    # from the later read is a true orphan.
    counts: dict[str, int] = {}
    orphan_candidates: dict[tuple[str, str], list[str]] = {}
    per_project: dict[str, int] = {}
    projects = store.projects()
    for project in projects:
        for vid, doc_id in store.iter_ids_by_document(project):
            counts[doc_id] = counts.get(doc_id, 0) + 1
            per_project[project] = per_project.get(project, 0) + 1
            orphan_candidates.setdefault((project, doc_id), []).append(vid)

    with db.session() as s:
        known_projects = {str(p) for p in s.scalars(select(Project.id))}
        rows = s.execute(select(Document.id, Document.status, Document.chunk_count)).all()
        known = {str(r.id) for r in rows}
        for r in rows:
            doc_id = str(r.id)
            if r.status == DocumentStatus.ready and counts.get(doc_id, 0) != r.chunk_count:
                s.execute(update(Document).where(Document.id == r.id)
                          .values(status=DocumentStatus.pending,
                                  error="vectors missing; re-indexing"))
                result.reindexed.append(doc_id)

    for project in projects:
        if project not in known_projects:
            store.delete_project(project)
            result.orphan_collections_deleted += 1
            result.orphan_vectors_deleted += per_project.get(project, 0)
    orphans: dict[str, list[str]] = {}
    for (project, doc_id), vids in orphan_candidates.items():
        if doc_id not in known and project in known_projects:
            orphans.setdefault(project, []).extend(vids)
    for project, vids in orphans.items():
        store.delete_ids(project, vids)
        result.orphan_vectors_deleted += len(vids)
    log.info("reconciled", reindexed=len(result.reindexed),
             orphan_vectors_deleted=result.orphan_vectors_deleted,
             orphan_collections_deleted=result.orphan_collections_deleted)
    return result


@dataclass
class StuckResult:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _held_advisory_locks(s: Session) -> set[int]:
    """Keys of the advisory locks held in this database, as _lock_key returns them."""
    rows = s.execute(text(
        "SELECT classid::bigint AS hi, objid::bigint AS lo FROM pg_locks"
        " WHERE locktype = 'advisory' AND objsubid = 1 AND granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"))
    held = set()
    for hi, lo in rows:
        unsigned = (int(hi) << 32) | int(lo)
        held.add(unsigned - (1 << 64) if unsigned >= 1 << 63 else unsigned)
    return held


def requeue_stuck(db: Database, settings: Settings, *, queue_idle: bool) -> StuckResult:
    """Find documents whose indexing was lost, so that the caller queues them again.

    A run holds the document's advisory lock, so a document ``indexing`` for longer than
    ``stuck_requeue_after_minutes`` whose lock is free lost its worker (killed, timed out,
    host gone): it is queued again, or failed once it has used up its attempts. A document
    ``pending`` that long is queued again only while the queue is idle (``queue_idle``):
    with messages waiting it may simply not have had its turn. A duplicate message is
    harmless (the lock and the ``ready`` check make it a no-op), and each document is
    handed out at most once per threshold because its ``updated_at`` is touched. A
    ``pending`` document with an error waits for its retry: it counts as lost only when the
    longest retry countdown has passed on top of the threshold.
    """
    result = StuckResult()
    now = datetime.now(UTC)
    stale_before = now - timedelta(minutes=settings.stuck_requeue_after_minutes)
    with db.session() as s:
        rows = s.execute(
            select(Document.id, Document.status, Document.attempts, Document.error,
                   Document.updated_at)
            .where(Document.status.in_([DocumentStatus.pending, DocumentStatus.indexing]),
                   Document.updated_at < stale_before)
            .with_for_update(skip_locked=True)).all()
        if not rows:
            return result
        held = _held_advisory_locks(s)
        retry_due_before = stale_before - timedelta(
            seconds=settings.longest_retry_countdown_seconds)
        for r in rows:
            if _lock_key(r.id) in held:
                continue  # a worker is on it right now
            if r.status == DocumentStatus.pending and (
                    not queue_idle or (r.error and r.updated_at >= retry_due_before)):
                continue
            if r.status == DocumentStatus.indexing and r.attempts > settings.index_max_retries:
                s.execute(update(Document).where(Document.id == r.id).values(
                    status=DocumentStatus.failed, updated_at=now,
                    error=f"indexing was lost {r.attempts} times (worker killed or "
                          f"over INDEX_TIME_LIMIT_SECONDS); giving up"))
                result.failed.append(str(r.id))
                continue
            s.execute(update(Document).where(Document.id == r.id).values(updated_at=now))
            result.requeued.append(str(r.id))
    if result.requeued or result.failed:
        log.warning("stuck_documents", requeued=len(result.requeued), failed=len(result.failed))
    return result
