"""Celery configuration that the reliability story depends on."""

from __future__ import annotations

from app.tasks import celery_app, index_document


def test_reliability_settings() -> None:
    conf = celery_app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.task_track_started is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] >= 60
    assert index_document.max_retries >= 1
    # A hard limit, so that Redis never redelivers a run that is still going.
    assert index_document.time_limit is not None
    assert index_document.soft_time_limit < index_document.time_limit
    assert index_document.time_limit < conf.broker_transport_options["visibility_timeout"]


def test_beat_schedule() -> None:
    tasks = {entry["task"] for entry in celery_app.conf.beat_schedule.values()}
    assert tasks == {"app.tasks.purge_documents", "app.tasks.reconcile_vectors",
                     "app.tasks.requeue_stuck", "app.tasks.catch_up_vectors"}
    # Beat on several hosts: RedBeat's lock in Redis lets one of them send.
    assert celery_app.conf.beat_scheduler == "redbeat.RedBeatScheduler"
    assert celery_app.conf.redbeat_lock_timeout >= 3 * celery_app.conf.beat_max_loop_interval
    assert set(celery_app.tasks) >= tasks | {"app.tasks.index_document"}
