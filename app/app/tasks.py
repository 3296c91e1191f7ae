"""Celery application and tasks (``celery -A app.tasks.celery_app worker|beat``).

Reliability: tasks are acknowledged only after they finish (acks_late) and a task whose
worker process dies is put back on the queue (reject_on_worker_lost); if the whole worker
host dies, Redis hands the unacknowledged message out again after the visibility timeout,
and sooner than that beat's requeue_stuck task queues again every document whose indexing
run is gone (its advisory lock is free) or whose message was lost (Redis restarted, or
the broker was down when the API queued it). Indexing has a hard time limit, so the
visibility timeout can stay in minutes.
Transient failures retry with exponential backoff; documents that cannot be read fail at
once with a reason.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

from celery import Celery, Task, signals
from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import ChannelError
from sqlalchemy.exc import SQLAlchemyError

from app.config import RETRY_JITTER, get_settings
from app.db import get_database
from app.log import configure_logging, get_logger, init_sentry
from app.metrics import connect_celery_signals
from app.models import DocumentStatus
from app.redisconn import celery_conf

settings = get_settings()
log = get_logger("app.tasks")

celery_app = Celery("ai_platform", broker=settings.broker_url, backend=settings.result_backend)
celery_app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_track_started=True,
    worker_prefetch_multiplier=1,
    # A pool process that a task left above this resident size (KiB) is replaced after
    # that task (big documents fragment the heap); None = never.
    worker_max_memory_per_child=settings.worker_max_memory_per_child_kib or None,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=86_400,
    timezone="UTC",
    enable_utc=True,
    broker_connection_retry_on_startup=True,
    broker_connection_timeout=3,
    task_publish_retry_policy={
        "max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1,
    },
    worker_hijack_root_logger=False,
    worker_cancel_long_running_tasks_on_connection_loss=True,
    **celery_conf(settings),  # transport options (Sentinel), RedBeat
    beat_schedule={
        "purge-stale-uploads": {
            "task": "app.tasks.purge_documents",
            "schedule": float(settings.purge_interval_seconds),
        },
        "requeue-stuck": {
            "task": "app.tasks.requeue_stuck",
            "schedule": float(settings.requeue_interval_seconds),
        },
        "reconcile-vectors": {
            "task": "app.tasks.reconcile_vectors",
            "schedule": float(settings.reconcile_interval_seconds),
        },
        "catch-up-vectors": {
            "task": "app.tasks.catch_up_vectors",
            "schedule": float(settings.vector_catchup_interval_seconds),
        },
    },
)


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:  # replaces Celery's own logging setup
    configure_logging(settings.log_level)
    init_sentry(settings)


connect_celery_signals()  # task counts, durations, failures (app.metrics)


def _backoff(retries: int) -> float:
    base = settings.index_retry_backoff_seconds * (2**retries)
    return float(min(base, settings.index_retry_backoff_max_seconds)
                 * random.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER))


def _store() -> Any:
    from app.vectorset import get_vector_store

    return get_vector_store(settings)


@celery_app.task(name="app.tasks.index_document", bind=True,
                 max_retries=settings.index_max_retries,
                 soft_time_limit=max(settings.index_time_limit_seconds - 30,
                                     settings.index_time_limit_seconds * 0.9),
                 time_limit=settings.index_time_limit_seconds)
def index_document(self: Task, document_id: str) -> str:
    from app import indexing
    from app.embeddings import ModelNotFound, get_embedder
    from app.vectorstore import VectorStoreUnavailable

    doc_id = uuid.UUID(document_id)
    db = get_database()
    try:
        return indexing.index_document(doc_id, db, _store(), get_embedder(), settings)
    except indexing.PermanentIndexingError as exc:
        log.warning("index_failed", document_id=document_id, reason=str(exc))
        indexing.set_status(db, doc_id, DocumentStatus.failed, str(exc))
        return "failed"
    except SoftTimeLimitExceeded:
        # The same document would take as long again: fail it with the reason.
        reason = f"indexing took longer than {settings.index_time_limit_seconds} s"
        log.error("index_time_limit", document_id=document_id)
        _try_set_status(doc_id, DocumentStatus.failed, reason)
        return "failed"
    except (VectorStoreUnavailable, SQLAlchemyError, ModelNotFound, OSError) as exc:
        reason = f"{type(exc).__name__}: {exc}"[:500]
        if self.request.retries >= (self.max_retries or 0) and isinstance(
                exc, VectorStoreUnavailable):
            # No vector store server answers: the upload is kept and stays pending;
            # requeue_stuck queues it again until a server is back.
            # Its attempts start again: an outage is not the document's fault, and the
            # poison check (indexing.max_attempts) must not fail it once a server is back.
            log.error("index_waits_for_vector_store", document_id=document_id, reason=reason)
            try:
                indexing.wait_for_vector_store(db, doc_id, reason)
            except SQLAlchemyError:
                log.warning("status_update_failed", document_id=document_id)
            return "pending"
        if self.request.retries >= (self.max_retries or 0):
            log.error("index_gave_up", document_id=document_id, reason=reason)
            _try_set_status(doc_id, DocumentStatus.failed,
                            f"indexing failed after {self.request.retries + 1} attempts: "
                            f"{reason}")
            return "failed"
        countdown = _backoff(self.request.retries)
        log.warning("index_retry", document_id=document_id, reason=reason,
                    retry_in_s=round(countdown, 1), attempt=self.request.retries + 1)
        _try_set_status(doc_id, DocumentStatus.pending, f"retrying after error: {reason}")
        raise self.retry(exc=exc, countdown=countdown) from exc


def _try_set_status(doc_id: uuid.UUID, status: DocumentStatus, error: str) -> None:
    from app import indexing

    try:
        indexing.set_status(get_database(), doc_id, status, error)
    except SQLAlchemyError:
        log.warning("status_update_failed", document_id=str(doc_id))


@celery_app.task(name="app.tasks.purge_documents")
def purge_documents() -> dict[str, int]:
    from app import indexing

    result = indexing.purge_documents(get_database(), _store(), settings)
    return {"deleted": len(result.deleted)}


@celery_app.task(name="app.tasks.reconcile_vectors")
def reconcile_vectors() -> dict[str, int]:
    from app import indexing

    result = indexing.reconcile(get_database(), _store(), settings)
    for doc_id in result.reindexed:
        index_document.delay(doc_id)
    return {
        "reindexed": len(result.reindexed),
        "copied": result.copied,
        "orphan_vectors_deleted": result.orphan_vectors_deleted,
        "orphan_collections_deleted": result.orphan_collections_deleted,
        "legacy_vectors_moved": result.legacy_vectors_moved,
        "unreachable": len(result.unreachable),
    }


@celery_app.task(name="app.tasks.catch_up_vectors")
def catch_up_vectors() -> dict[str, int]:
    """Reconcile now when a vector store server that missed writes answers again
    (app.vectorset), or when one holds fewer collections than the others (a host
    replaced by an empty one); with every server in step, a few cheap reads."""
    store = _store()
    behind = store.mark_short_servers() if len(store.servers) > 1 else {}
    back = []
    for server in store.servers:
        if server.url in behind:
            try:
                server.heartbeat(settings.health_timeout_seconds)
                back.append(server.url)
            except Exception:  # still down: the next run looks again
                continue
    if not back:
        return {"behind": len(behind), "reconciled": 0}
    log.info("vector_servers_back", servers=back)
    return {"behind": len(behind), "reconciled": 1} | reconcile_vectors()


def _queue_length() -> int | None:
    """Messages waiting in the indexing queue; None when the broker cannot say."""
    try:
        with celery_app.connection_for_read() as conn:
            declared = conn.default_channel.queue_declare(
                queue=celery_app.conf.task_default_queue, passive=True)
            return int(declared.message_count)
    except ChannelError:  # Redis keeps no empty list: "no queue" means an empty one
        return 0
    except Exception as exc:  # broker down: treat the queue as busy
        log.warning("queue_length_unknown", error=type(exc).__name__)
        return None


@celery_app.task(name="app.tasks.requeue_stuck")
def requeue_stuck() -> dict[str, int]:
    """Queue again the documents whose indexing was lost (indexing.requeue_stuck)."""
    from app import indexing

    result = indexing.requeue_stuck(get_database(), settings, queue_idle=_queue_length() == 0)
    for doc_id in result.requeued:
        index_document.delay(doc_id)
    return {"requeued": len(result.requeued), "failed": len(result.failed)}


def enqueue_index(document_id: uuid.UUID) -> bool:
    """Queue indexing; False when the broker is unreachable (reconcile retries later)."""
    try:
        index_document.apply_async(args=[str(document_id)])
        return True
    except Exception as exc:  # broker down: the document stays pending
        log.warning("enqueue_failed", document_id=str(document_id), error=type(exc).__name__)
        return False
