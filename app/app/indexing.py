"""Indexing and housekeeping logic, free of Celery so it can be called directly.

Status of a document: pending -> indexing -> ready | failed (with ``error``).
Indexing is idempotent: vector ids are ``<document_id>:<chunk_index>`` and a run first
removes the document's old vectors, so a repeated or redelivered run converges.
"""

from __future__ import annotations

import hashlib
import time
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
from app.vectorset import VectorStoreSet
from app.vectorstore import VectorStore, VectorStoreUnavailable

log = get_logger("app.indexing")


class PermanentIndexingError(Exception):
    """Retrying cannot help (bad or empty document)."""


def _lock_key(document_id: uuid.UUID) -> int:
    # Signed 64-bit advisory lock key derived from the document id.
    return int.from_bytes(hashlib.blake2b(document_id.bytes, digest_size=8).digest(), "big",
                          signed=True)


def index_document(
    document_id: uuid.UUID, db: Database, store: VectorStoreSet, embedder: Embedder,
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
    document_id: uuid.UUID, db: Database, store: VectorStoreSet, embedder: Embedder,
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


def wait_for_vector_store(db: Database, document_id: uuid.UUID, reason: str) -> None:
    """Pending again, attempts from zero: no vector store server answered any of its runs
    (requeue_stuck queues it again; the outage does not count against its attempts)."""
    with db.session() as s:
        s.execute(update(Document).where(Document.id == document_id).values(
            status=DocumentStatus.pending, attempts=0,
            error=f"waiting for the vector store (indexed when it is back): {reason}"[:2000]))


def set_status(db: Database, document_id: uuid.UUID, status: DocumentStatus,
               error: str | None) -> None:
    with db.session() as s:
        s.execute(update(Document).where(Document.id == document_id)
                  .values(status=status, error=error[:2000] if error else None))


@dataclass
class PurgeResult:
    deleted: list[str] = field(default_factory=list)


def purge_documents(db: Database, store: VectorStoreSet, settings: Settings) -> PurgeResult:
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
    copied: int = 0  # documents whose vectors were copied to a server that lacked them
    unreachable: list[str] = field(default_factory=list)  # servers not reconciled


@dataclass
class _Scan:
    """What one server holds: vectors per document, per project, and by (project, doc)."""
    counts: dict[str, int] = field(default_factory=dict)
    per_project: dict[str, int] = field(default_factory=dict)
    candidates: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    projects: list[str] = field(default_factory=list)


def _scan(server: VectorStore) -> _Scan:
    scan = _Scan(projects=server.projects())
    for project in scan.projects:
        for vid, doc_id in server.iter_ids_by_document(project):
            scan.counts[doc_id] = scan.counts.get(doc_id, 0) + 1
            scan.per_project[project] = scan.per_project.get(project, 0) + 1
            scan.candidates.setdefault((project, doc_id), []).append(vid)
    return scan


def reconcile(db: Database, store: VectorStoreSet, settings: Settings) -> ReconcileResult:
    """Bring every ChromaDB server that answers in line with PostgreSQL.

    * the shared collection of an earlier release, if any, is moved into the projects'
      collections first (``VectorStore.migrate_legacy``);
    * a ready document whose vector count is right on some server but not on another is
      copied from the first to the others (a server back from an outage catches up);
      one whose count is right nowhere goes back to pending, to be indexed again;
    * vectors of documents that no longer exist are deleted, and so are the collections
      of projects that no longer exist;
    * a server marked behind (app.vectorset) that was reconciled is in step again, unless
      it missed a write after this run began.
    The caller enqueues ``reindexed``. Lost indexing runs are requeue_stuck's job.
    """
    result = ReconcileResult()
    began = time.time()
    scans: dict[str, tuple[VectorStore, _Scan]] = {}
    for server in store.servers:
        try:
            moved = server.migrate_legacy(delete=True)
            result.legacy_vectors_moved += moved.copied
            if moved.found:
                log.info("legacy_vectors_moved", server=server.url, vectors=moved.vectors,
                         copied=moved.copied, dropped=moved.dropped, projects=moved.projects)
            # Vectors first, documents second: a vector is only written after its row
            # committed (and a collection after its project's row), so a vector whose
            # document is absent from the later read is a true orphan.
            scans[server.url] = (server, _scan(server))
        except VectorStoreUnavailable as exc:
            log.warning("reconcile_server_unavailable", server=server.url, error=str(exc)[:300])
            result.unreachable.append(server.url)
    if not scans:
        raise VectorStoreUnavailable("no ChromaDB server answered: "
                                     + ", ".join(result.unreachable))

    copies: list[tuple[str, str, VectorStore, list[VectorStore]]] = []
    with db.session() as s:
        known_projects = {str(p) for p in s.scalars(select(Project.id))}
        rows = s.execute(select(Document.id, Document.project_id, Document.status,
                                Document.chunk_count)).all()
        known = {str(r.id) for r in rows}
        for r in rows:
            doc_id = str(r.id)
            if r.status != DocumentStatus.ready:
                continue
            have = [(sv, scan.counts.get(doc_id, 0) == r.chunk_count)
                    for sv, scan in scans.values()]
            good = [sv for sv, complete in have if complete]
            bad = [sv for sv, complete in have if not complete]
            if not good:
                s.execute(update(Document).where(Document.id == r.id)
                          .values(status=DocumentStatus.pending,
                                  error="vectors missing; re-indexing"))
                result.reindexed.append(doc_id)
            elif bad:
                copies.append((str(r.project_id), doc_id, good[0], bad))

    for project, doc_id, source, targets in copies:
        vectors = source.document_vectors(project, doc_id)
        for target in targets:
            target.put_vectors(project, doc_id, vectors)
        result.copied += 1
    for server, scan in scans.values():
        for project in scan.projects:
            if project not in known_projects:
                server.delete_project(project)
                result.orphan_collections_deleted += 1
                result.orphan_vectors_deleted += scan.per_project.get(project, 0)
        orphans: dict[str, list[str]] = {}
        for (project, doc_id), vids in scan.candidates.items():
            if doc_id not in known and project in known_projects:
                orphans.setdefault(project, []).extend(vids)
        for project, vids in orphans.items():
            server.delete_ids(project, vids)
            result.orphan_vectors_deleted += len(vids)
    behind = store.behind.get(fresh=True) if len(store.servers) > 1 else {}
    for url in scans:
        if url in behind and store.behind.clear(url, began):
            log.info("vector_server_in_step", server=url)
    log.info("reconciled", reindexed=len(result.reindexed), copied=result.copied,
             orphan_vectors_deleted=result.orphan_vectors_deleted,
             orphan_collections_deleted=result.orphan_collections_deleted,
             unreachable=result.unreachable)
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
