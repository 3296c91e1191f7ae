"""End to end through a real Celery worker process, PostgreSQL, Redis and ChromaDB:
upload -> indexed -> searchable -> ask; failures, deletes, worker death, maintenance."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from celery import Celery
from helpers import FakeLLM, Worker, insert_document, make_pdf, run_cli, upload, wait_for_status
from sqlalchemy import create_engine, text

pytestmark = pytest.mark.e2e

FUSION = (
    "# Fusion notes\n\n"
    "Tokamaks confine hot plasma with strong magnetic fields shaped like a torus. "
    "The ITER project in France is building the largest tokamak in the world.\n\n"
    "Stellarators twist the magnetic field with complex external coils instead of a plasma "
    "current, which avoids disruptions.\n"
)
BAKING = (
    "Sourdough bread rises thanks to wild yeast and lactic acid bacteria in the starter. "
    "Bakers feed the starter with flour and water every day.\n\n"
    "A hot oven with steam gives the loaf a crisp crust.\n"
)
CODE = (
    "def quicksort(items):\n"
    "    \"\"\"Sort a list by partitioning around a pivot element.\"\"\"\n"
    "    if len(items) <= 1:\n        return items\n"
    "    pivot, rest = items[0], items[1:]\n"
    "    return quicksort([x for x in rest if x < pivot]) + [pivot] + "
    "quicksort([x for x in rest if x >= pivot])\n"
)
PDF_LINES = [["Photosynthesis happens in the chloroplasts of plant cells.",
              "Chlorophyll absorbs red and blue light."],
             ["Plants release oxygen as a by-product of splitting water."]]


def _vector_count(settings: Any, doc: dict[str, Any]) -> int:
    from app.vectorstore import VectorStore

    return VectorStore(settings).count_document(str(doc["project_id"]), doc["id"])


@pytest.fixture(scope="module")
def corpus(client: Any, worker: Any, make_user_module: Any) -> dict[str, Any]:
    u = make_user_module()
    p = client.post("/api/v1/projects", json={"name": "research"}, headers=u["headers"]).json()
    docs = {}
    for name, data in (("fusion.md", FUSION.encode()), ("baking.txt", BAKING.encode()),
                       ("sort.py", CODE.encode()), ("plants.pdf", make_pdf(PDF_LINES))):
        r = upload(client, u, p["id"], name, data)
        assert r.status_code == 201, r.text
        docs[name] = r.json()
    for name, d in docs.items():
        done = wait_for_status(client, u, p["id"], d["id"], {"ready", "failed"})
        assert done["status"] == "ready", (name, done)
        assert done["chunk_count"] >= 1 and done["indexed_at"]
        docs[name] = done
    return {"user": u, "project": p, "docs": docs}


@pytest.fixture(scope="module")
def make_user_module(client: Any) -> Any:
    def _make() -> dict[str, Any]:
        email = f"e2e-{uuid.uuid4().hex[:10]}@example.com"
        client.post("/api/v1/auth/register", json={"email": email, "password": "e2e-password"})
        tok = client.post("/api/v1/auth/login",
                          json={"email": email, "password": "e2e-password"}).json()
        return {"email": email, "headers": {"Authorization": f"Bearer {tok['access_token']}"}}
    return _make


def test_documents_are_indexed_into_chroma(corpus: dict[str, Any], settings: Any) -> None:
    for d in corpus["docs"].values():
        assert _vector_count(settings, d) == d["chunk_count"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("magnetic confinement of plasma in a torus", "fusion.md"),
        ("how does a sourdough starter work", "baking.txt"),
        ("sorting algorithm with a pivot", "sort.py"),
        ("which pigment absorbs light in leaves", "plants.pdf"),
    ],
)
def test_search_finds_the_right_document(client: Any, corpus: dict[str, Any], query: str,
                                         expected: str) -> None:
    p, u = corpus["project"], corpus["user"]
    r = client.post(f"/api/v1/projects/{p['id']}/search", json={"query": query, "top_k": 3},
                    headers=u["headers"])
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert results[0]["filename"] == expected, results
    assert results[0]["score"] > 0.3
    assert results[0]["snippet"]
    assert [x["score"] for x in results] == sorted((x["score"] for x in results), reverse=True)


def test_pdf_hits_carry_page_numbers(client: Any, corpus: dict[str, Any]) -> None:
    p, u = corpus["project"], corpus["user"]
    r = client.post(f"/api/v1/projects/{p['id']}/search",
                    json={"query": "chlorophyll pigment", "top_k": 1}, headers=u["headers"])
    assert r.json()["results"][0]["page"] == 1


def test_search_is_scoped_to_the_project(client: Any, corpus: dict[str, Any]) -> None:
    u = corpus["user"]
    other = client.post("/api/v1/projects", json={"name": "empty"}, headers=u["headers"]).json()
    r = client.post(f"/api/v1/projects/{other['id']}/search", json={"query": "tokamak"},
                    headers=u["headers"])
    assert r.status_code == 200 and r.json()["results"] == []


def test_ask_extractive_without_provider(client: Any, corpus: dict[str, Any]) -> None:
    p, u = corpus["project"], corpus["user"]
    r = client.post(f"/api/v1/projects/{p['id']}/ask",
                    json={"question": "Where is the largest tokamak being built?"},
                    headers=u["headers"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == "extractive" and body["provider"] is None
    assert "ITER" in body["answer"] and "[1]" in body["answer"]
    assert body["sources"][0]["filename"] == "fusion.md"


def test_ask_with_provider_and_fallback(client: Any, corpus: dict[str, Any], settings: Any,
                                        make_user_module: Any) -> None:
    p, u = corpus["project"], corpus["user"]
    question = {"question": "Where is the largest tokamak being built?"}
    with FakeLLM() as llm:
        r = client.post("/api/v1/providers", headers=u["headers"], json={
            "name": "local", "base_url": llm.url, "model": "tiny-model",
            "api_key": "sk-test-0123456789abcdef"})
        assert r.status_code == 201, r.text
        prov = r.json()
        assert prov["api_key_hint"] == "…cdef" and "0123456789" not in r.text
        ask = client.post(f"/api/v1/projects/{p['id']}/ask", json=question,
                          headers=u["headers"])
        assert ask.status_code == 200, ask.text
        body = ask.json()
        assert body["mode"] == "generative" and body["answer"].strip() == "ITER, in France [1]."
        assert body["provider"] == "local"
        sent = llm.requests[-1]
        assert sent["path"] == "/v1/chat/completions"
        assert sent["auth"] == "Bearer sk-test-0123456789abcdef"
        assert sent["body"]["model"] == "tiny-model"
        assert "ITER" in sent["body"]["messages"][-1]["content"]

    # Stored encrypted, not in clear.
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT api_key_encrypted FROM providers WHERE id = :i"),
                              {"i": prov["id"]}).scalar_one()
    engine.dispose()
    assert b"sk-test" not in bytes(stored)

    # The provider is gone now (server shut down): fall back to extractive.
    ask = client.post(f"/api/v1/projects/{p['id']}/ask", json=question, headers=u["headers"])
    assert ask.status_code == 200
    body = ask.json()
    assert body["mode"] == "extractive" and body["provider_error"]
    assert "ITER" in body["answer"]

    # Other users neither see nor use it.
    other = make_user_module()
    listed = client.get("/api/v1/providers", headers=other["headers"]).json()
    assert prov["id"] not in [x["id"] for x in listed]
    op = client.post("/api/v1/projects", json={"name": "o"}, headers=other["headers"]).json()
    r = client.post(f"/api/v1/projects/{op['id']}/ask",
                    json={**question, "provider_id": prov["id"]}, headers=other["headers"])
    assert r.status_code == 404
    r = client.delete(f"/api/v1/providers/{prov['id']}", headers=other["headers"])
    assert r.status_code == 404
    r = client.delete(f"/api/v1/providers/{prov['id']}", headers=u["headers"])
    assert r.status_code == 204


def test_shared_provider_needs_admin(client: Any, user: dict[str, Any]) -> None:
    r = client.post("/api/v1/providers", headers=user["headers"], json={
        "name": "x", "base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key": "k",
        "shared": True})
    assert r.status_code == 403


def test_unreadable_pdf_fails_with_reason(client: Any, worker: Any, user: dict[str, Any],
                                          project: dict[str, Any]) -> None:
    r = upload(client, user, project["id"], "broken.pdf", b"%PDF-1.7\nthis is not a pdf at all")
    assert r.status_code == 201
    done = wait_for_status(client, user, project["id"], r.json()["id"], {"ready", "failed"})
    assert done["status"] == "failed"
    assert "PDF" in done["error"]


def test_delete_document_removes_vectors(client: Any, worker: Any, user: dict[str, Any],
                                         project: dict[str, Any], settings: Any) -> None:
    doc = upload(client, user, project["id"], "volcano.txt",
                 b"Volcanoes erupt when magma reaches the surface of the Earth.").json()
    doc = wait_for_status(client, user, project["id"], doc["id"], {"ready", "failed"})
    assert doc["status"] == "ready" and _vector_count(settings, doc) >= 1
    url = f"/api/v1/projects/{project['id']}"
    assert client.delete(f"{url}/documents/{doc['id']}", headers=user["headers"]).status_code \
        == 204
    assert _vector_count(settings, doc) == 0
    r = client.post(f"{url}/search", json={"query": "volcano magma"}, headers=user["headers"])
    assert r.json()["results"] == []


def test_delete_project_removes_vectors(client: Any, worker: Any, user: dict[str, Any],
                                        settings: Any) -> None:
    p = client.post("/api/v1/projects", json={"name": "temp"}, headers=user["headers"]).json()
    doc = upload(client, user, p["id"], "a.txt", b"Glaciers carve valleys over millennia.").json()
    wait_for_status(client, user, p["id"], doc["id"], {"ready"})
    assert client.delete(f"/api/v1/projects/{p['id']}", headers=user["headers"]).status_code \
        == 204
    assert _vector_count(settings, doc) == 0


def _big_text(n_paragraphs: int) -> bytes:
    words = ("research assistant indexes documents into vectors while workers embed chunks "
             "of text with a small transformer model").split()
    paras = []
    for i in range(n_paragraphs):
        paras.append(f"Paragraph {i}: " + " ".join(words[(i + j) % len(words)]
                                                    for j in range(110)) + ".")
    return "\n\n".join(paras).encode()


def test_worker_killed_mid_task_does_not_lose_the_job(client: Any, worker: Any,
                                                      user: dict[str, Any],
                                                      project: dict[str, Any]) -> None:
    r = upload(client, user, project["id"], "big.txt", _big_text(60))
    assert r.status_code == 201
    doc_id = r.json()["id"]
    wait_for_status(client, user, project["id"], doc_id, {"indexing"}, timeout=60)
    time.sleep(0.5)  # well inside the embedding phase
    children = worker.children()
    assert children, "prefork child not found"
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    done = wait_for_status(client, user, project["id"], doc_id, {"ready", "failed"},
                           timeout=180)
    assert done["status"] == "ready", done
    assert done["attempts"] >= 2  # it really was interrupted and run again
    log = worker.log_path.read_text()
    assert "WorkerLostError" in log or "signal 9" in log


def test_retries_with_backoff_then_waits_for_the_vector_store(
        client: Any, settings: Any, user: dict[str, Any], project: dict[str, Any],
        dead_port: int, worker: Any) -> None:
    """A worker whose ChromaDB is unreachable retries, then leaves the document pending
    with its attempts back at zero (the upload is kept); once queued again to a worker
    that reaches ChromaDB (as requeue_stuck does), it is indexed."""
    broker1 = settings.broker_url.rsplit("/", 1)[0] + "/1"
    w = Worker("nochroma", {"CHROMA_URL": f"http://127.0.0.1:{dead_port}",
                            "CELERY_BROKER_URL": broker1, "CELERY_RESULT_BACKEND": broker1,
                            "INDEX_MAX_RETRIES": "2", "INDEX_RETRY_BACKOFF_SECONDS": "0.3"})
    try:
        w.wait_ready()
        doc_id = insert_document(settings, project["id"], b"Text that cannot be stored yet.")
        sender = Celery(set_as_current=False)
        with sender.connection_for_write(url=broker1) as conn:
            sender.send_task("app.tasks.index_document", args=[doc_id], connection=conn)

        def waiting() -> dict[str, Any] | None:
            d = client.get(f"/api/v1/projects/{project['id']}/documents/{doc_id}",
                           headers=user["headers"]).json()
            # Its attempts start again: the outage does not count against them.
            return d if d["status"] == "pending" and d["attempts"] == 0 and d["error"] \
                and d["error"].startswith("waiting for the vector store") else None
        deadline = time.monotonic() + 90
        while not (done := waiting()):
            assert time.monotonic() < deadline, "the document did not end waiting"
            time.sleep(0.5)
    finally:
        w.stop()
    assert "ChromaDB" in done["error"]
    log = w.log_path.read_text()
    assert log.count("index_retry") == 2 and "index_waits_for_vector_store" in log
    from app.tasks import index_document

    index_document.delay(doc_id)
    ready = wait_for_status(client, user, project["id"], doc_id, {"ready", "failed"}, timeout=90)
    assert ready["status"] == "ready", ready


def test_reconcile_restores_missing_and_drops_orphan_vectors(
    client: Any, worker: Any, user: dict[str, Any], project: dict[str, Any], settings: Any,
) -> None:
    from app.tasks import reconcile_vectors
    from app.vectorstore import VectorStore

    doc = upload(client, user, project["id"], "reef.txt",
                 b"Coral reefs bleach when the ocean gets too warm.").json()
    doc = wait_for_status(client, user, project["id"], doc["id"], {"ready"})
    store = VectorStore(settings)
    # Vectors lost (e.g. Chroma restored from an old backup):
    store.delete_document(project["id"], doc["id"])
    orphan_doc = str(uuid.uuid4())
    store.replace_document(project["id"], orphan_doc, ["orphan chunk"],
                           np.ones((1, 384), dtype=np.float32) / np.sqrt(384))
    assert store.count_document(project["id"], orphan_doc) == 1

    result = reconcile_vectors.delay().get(timeout=60)
    assert result["reindexed"] >= 1 and result["orphan_vectors_deleted"] >= 1
    assert store.count_document(project["id"], orphan_doc) == 0
    done = wait_for_status(client, user, project["id"], doc["id"], {"ready"}, timeout=60)
    assert store.count_document(project["id"], doc["id"]) == done["chunk_count"] >= 1


def test_each_project_has_its_own_collection(
    client: Any, worker: Any, user: dict[str, Any], settings: Any,
) -> None:
    """Searches need no metadata filter: a project's vectors are alone in its collection,
    created by its first indexed document and dropped with the project."""
    from app.vectorstore import VectorStore

    store = VectorStore(settings)
    made = []
    for name, body in (("a", b"Tidal forces raise bulges in the oceans of the Earth."),
                       ("b", b"Tidal forces raise bulges in the oceans, said project b.")):
        p = client.post("/api/v1/projects", json={"name": f"own-{name}"},
                        headers=user["headers"]).json()
        doc = upload(client, user, p["id"], f"{name}.txt", body).json()
        made.append((p, wait_for_status(client, user, p["id"], doc["id"], {"ready"})))
    names = {c.name for c in store.client().list_collections()}
    for p, doc in made:
        assert store.collection_name(p["id"]) in names
        assert store.project_of(store.collection_name(p["id"])) == p["id"]
        r = client.post(f"/api/v1/projects/{p['id']}/search",
                        json={"query": "tides", "top_k": 10}, headers=user["headers"])
        assert [x["document_id"] for x in r.json()["results"]] == [doc["id"]]
    assert client.delete(f"/api/v1/projects/{made[0][0]['id']}",
                         headers=user["headers"]).status_code == 204
    names = {c.name for c in store.client().list_collections()}
    assert store.collection_name(made[0][0]["id"]) not in names
    assert store.collection_name(made[1][0]["id"]) in names


def _indexed_then_shared(client: Any, user: dict[str, Any], project: dict[str, Any],
                         settings: Any, name: str, body: bytes, model: str,
                         ) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """A document indexed into the project's collection, then its vectors put into a shared
    collection of an earlier release's layout (one collection, project_id metadata) made
    with embedding model ``model``: (the document, the shared collection, its vectors)."""
    from app.embeddings import DIMENSION
    from app.vectorstore import VectorStore

    doc = upload(client, user, project["id"], name, body).json()
    doc = wait_for_status(client, user, project["id"], doc["id"], {"ready"})
    store = VectorStore(settings)
    chroma = store.client()
    own = chroma.get_collection(store.collection_name(project["id"]), embedding_function=None)
    before = own.get(include=["embeddings", "documents", "metadatas"])
    assert len(before["ids"]) == doc["chunk_count"] >= 1
    legacy = chroma.create_collection(
        settings.chroma_collection, configuration={"hnsw": {"space": "cosine"}},
        metadata={"embedding_model": model, "dimension": DIMENSION}, embedding_function=None)
    return doc, legacy, before


def test_shared_collection_of_earlier_release_is_migrated(
    client: Any, worker: Any, user: dict[str, Any], project: dict[str, Any], settings: Any,
) -> None:
    """The upgrade path: vectors in the one shared collection of earlier releases are
    copied (not re-embedded) by `migrate-vectors`, idempotently, and reconcile drops the
    shared collection, along with the vectors of projects that no longer exist."""
    from app.embeddings import MODEL_ID
    from app.tasks import reconcile_vectors
    from app.vectorstore import VectorStore

    doc, legacy, before = _indexed_then_shared(
        client, user, project, settings, "comet.txt",
        b"A comet's tail always points away from the Sun.", MODEL_ID)
    store = VectorStore(settings)
    chroma = store.client()
    gone_project = str(uuid.uuid4())
    legacy.add(ids=[*before["ids"], f"{uuid.uuid4()}:0"],
               embeddings=[*before["embeddings"], before["embeddings"][0]],
               documents=[*before["documents"], "a chunk of a deleted project"],
               metadatas=[*before["metadatas"],
                          {"project_id": gone_project, "document_id": str(uuid.uuid4()),
                           "chunk_index": 0}])
    store.delete_project(project["id"])
    url = f"/api/v1/projects/{project['id']}/search"
    r = client.post(url, json={"query": "comet tail"}, headers=user["headers"])
    assert r.status_code == 200 and r.json()["results"] == []

    r = run_cli(["migrate-vectors"])
    assert r.returncode == 0, r.stderr
    assert f"migrate-vectors: changed ({len(before['ids']) + 1} vectors" in r.stdout, r.stdout
    r = run_cli(["migrate-vectors"])
    assert r.returncode == 0 and "migrate-vectors: no change" in r.stdout, r.stdout + r.stderr
    assert settings.chroma_collection in {c.name for c in chroma.list_collections()}

    after = chroma.get_collection(store.collection_name(project["id"]),
                                  embedding_function=None).get(
        ids=before["ids"], include=["embeddings", "documents", "metadatas"])
    assert sorted(after["ids"]) == sorted(before["ids"])
    got = dict(zip(after["ids"], after["embeddings"], strict=True))
    for vid, emb in zip(before["ids"], before["embeddings"], strict=True):
        assert np.allclose(got[vid], emb)
    hits = client.post(url, json={"query": "comet tail"}, headers=user["headers"]).json()
    assert hits["results"][0]["document_id"] == doc["id"]

    result = reconcile_vectors.delay().get(timeout=60)
    assert result["legacy_vectors_moved"] == 0  # migrate-vectors copied them all
    assert result["orphan_collections_deleted"] >= 1  # the deleted project's
    names = {c.name for c in chroma.list_collections()}
    assert settings.chroma_collection not in names
    assert store.collection_name(gone_project) not in names
    assert store.count_document(project["id"], doc["id"]) == doc["chunk_count"]
    done = client.get(f"/api/v1/projects/{project['id']}/documents/{doc['id']}",
                      headers=user["headers"]).json()
    assert done["status"] == "ready"
    r = run_cli(["migrate-vectors"])
    assert "migrate-vectors: no change (no shared collection" in r.stdout, r.stdout + r.stderr


def test_shared_collection_of_another_model_is_reindexed(
    client: Any, worker: Any, user: dict[str, Any], project: dict[str, Any], settings: Any,
) -> None:
    """Vectors of another embedding model in the shared collection are not copied (they
    would not compare with this model's queries): reconcile drops them and re-indexes."""
    from app.tasks import reconcile_vectors
    from app.vectorstore import VectorStore

    doc, legacy, before = _indexed_then_shared(
        client, user, project, settings, "moon.txt",
        b"The Moon always shows the same face to the Earth.", "some-other-model")
    store = VectorStore(settings)
    chroma = store.client()
    legacy.add(ids=before["ids"], embeddings=before["embeddings"],
               documents=before["documents"], metadatas=before["metadatas"])
    store.delete_project(project["id"])

    r = run_cli(["migrate-vectors"])
    assert r.returncode == 0 and f"migrate-vectors: no change ({len(before['ids'])} vectors " \
        "not copied" in r.stdout, r.stdout + r.stderr
    assert store.count_document(project["id"], doc["id"]) == 0
    result = reconcile_vectors.delay().get(timeout=60)
    assert result["legacy_vectors_moved"] == 0 and result["reindexed"] >= 1, result
    assert settings.chroma_collection not in {c.name for c in chroma.list_collections()}
    done = wait_for_status(client, user, project["id"], doc["id"], {"ready"}, timeout=60)
    assert store.count_document(project["id"], doc["id"]) == done["chunk_count"] >= 1
    hits = client.post(f"/api/v1/projects/{project['id']}/search",
                       json={"query": "face of the Moon"}, headers=user["headers"]).json()
    assert hits["results"][0]["document_id"] == doc["id"]


def test_requeue_stuck_queues_a_lost_pending_upload(
    client: Any, worker: Any, user: dict[str, Any], project: dict[str, Any], settings: Any,
) -> None:
    """A pending document whose message is gone (broker down at upload) gets indexed."""
    from app.tasks import requeue_stuck

    doc_id = insert_document(settings, project["id"], b"Stuck upload about auroras.",
                              status="pending", age_hours=2)
    result = requeue_stuck.delay().get(timeout=60)
    assert result["requeued"] >= 1
    wait_for_status(client, user, project["id"], doc_id, {"ready"}, timeout=60)


def _set_attempts(settings: Any, doc_id: str, attempts: int) -> None:
    engine = create_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE documents SET attempts = :a, updated_at = now() - "
                          "interval '2 hours' WHERE id = :i"), {"a": attempts, "i": doc_id})
    engine.dispose()


def test_requeue_stuck_leaves_running_work_and_retries_lost_work(
    project: dict[str, Any], settings: Any,
) -> None:
    """The advisory lock tells a running indexing run from a lost one; pending waits."""
    from app import indexing
    from app.db import Database

    db = Database(settings)
    running = insert_document(settings, project["id"], b"a", "indexing", age_hours=2)
    lost = insert_document(settings, project["id"], b"b", "indexing", age_hours=2)
    hopeless = insert_document(settings, project["id"], b"c", "indexing", age_hours=2)
    _set_attempts(settings, hopeless, settings.index_max_retries + 1)
    waiting = insert_document(settings, project["id"], b"d", "pending", age_hours=2)
    fresh = insert_document(settings, project["id"], b"e", "indexing", age_hours=0)
    holder_engine = create_engine(settings.database_url)
    holder = holder_engine.connect()
    try:  # a worker on `running`: its session holds the document's lock
        holder.execute(text("SELECT pg_advisory_lock(:k)"),
                       {"k": indexing._lock_key(uuid.UUID(running))})
        busy = indexing.requeue_stuck(db, settings, queue_idle=False)
        assert lost in busy.requeued
        assert running not in busy.requeued and fresh not in busy.requeued
        assert waiting not in busy.requeued  # messages waiting: it may just be queued
        assert hopeless in busy.failed and lost not in busy.failed
        again = indexing.requeue_stuck(db, settings, queue_idle=True)
        assert lost not in again.requeued  # handed out once per threshold (updated_at)
        assert waiting in again.requeued and running not in again.requeued
    finally:  # the session ends: its advisory lock goes with it
        holder.close()
        holder_engine.dispose()
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT status, error FROM documents WHERE id = :i"),
                           {"i": hopeless}).one()
        conn.execute(text("UPDATE documents SET updated_at = now() - interval '2 hours'"
                          " WHERE id = :i"), {"i": running})
        conn.commit()
    engine.dispose()
    assert row.status == "failed" and "lost" in row.error
    freed = indexing.requeue_stuck(db, settings, queue_idle=False)
    assert running in freed.requeued  # lock released: its worker is gone
    db.engine.dispose()


def test_requeue_stuck_waits_out_a_scheduled_retry(project: dict[str, Any],
                                                   settings: Any) -> None:
    from app import indexing
    from app.db import Database

    db = Database(settings)
    doc = insert_document(settings, project["id"], b"f", "pending", age_hours=0)
    seconds = (settings.stuck_requeue_after_minutes + 1) * 60
    engine = create_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE documents SET error = 'retrying after error: x', updated_at ="
                          " now() - make_interval(secs => :m) WHERE id = :i"),
                     {"m": seconds, "i": doc})
    assert doc not in indexing.requeue_stuck(db, settings, queue_idle=True).requeued
    with engine.begin() as conn:
        conn.execute(text("UPDATE documents SET updated_at = now() - interval '2 hours'"
                          " WHERE id = :i"), {"i": doc})
    engine.dispose()
    assert doc in indexing.requeue_stuck(db, settings, queue_idle=True).requeued
    db.engine.dispose()


def test_purge_removes_stale_failed_and_keeps_waiting_uploads(
    client: Any, worker: Any, user: dict[str, Any], project: dict[str, Any], settings: Any,
) -> None:
    """Only failed uploads past their retention go: a document pending or indexing for
    days (a worker or broker outage) is kept for requeue_stuck, however old."""
    from app.tasks import purge_documents

    old_failed = insert_document(settings, project["id"], b"x", "failed", age_hours=24 * 30)
    old_pending = insert_document(settings, project["id"], b"y", "pending", age_hours=48)
    old_indexing = insert_document(settings, project["id"], b"w", "indexing", age_hours=48)
    fresh_failed = insert_document(settings, project["id"], b"z", "failed", age_hours=1)
    result = purge_documents.delay().get(timeout=60)
    assert result["deleted"] >= 1
    url = f"/api/v1/projects/{project['id']}/documents"
    assert client.get(f"{url}/{old_failed}", headers=user["headers"]).status_code == 404
    for kept in (old_pending, old_indexing, fresh_failed):
        assert client.get(f"{url}/{kept}", headers=user["headers"]).status_code == 200


def test_poison_document_fails_at_its_attempt_cap(
    client: Any, worker: Any, user: dict[str, Any], project: dict[str, Any], settings: Any,
) -> None:
    """A document whose earlier runs all died with their worker (acks_late redelivers it)
    is failed with the reason when the next run starts, not indexed a 7th time."""
    from app.indexing import max_attempts

    doc_id = insert_document(settings, project["id"], b"A document that kills workers.",
                              status="indexing")
    _set_attempts(settings, doc_id, max_attempts(settings))
    sender = Celery(set_as_current=False)
    with sender.connection_for_write(url=settings.broker_url) as conn:
        sender.send_task("app.tasks.index_document", args=[doc_id], connection=conn)
    done = wait_for_status(client, user, project["id"], doc_id, {"ready", "failed"}, timeout=60)
    assert done["status"] == "failed", done
    assert "gave up after" in done["error"] and done["attempts"] == max_attempts(settings)


def test_worker_recycles_big_processes(settings: Any) -> None:
    from app.tasks import celery_app

    assert celery_app.conf.worker_max_memory_per_child == \
        settings.worker_max_memory_per_child_kib > 0


@pytest.fixture()
def read_url_client(settings: Any, dead_port: int) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from app.main import create_app

    s = settings.model_copy(update={
        "database_read_url": f"postgresql+psycopg://ro@127.0.0.1:{dead_port}/nope"})
    with TestClient(create_app(s)) as c:
        yield c


def test_search_uses_the_read_url(read_url_client: Any, corpus: dict[str, Any]) -> None:
    """With DATABASE_READ_URL pointing nowhere, search fails (503) but writes still work."""
    p, u = corpus["project"], corpus["user"]
    r = read_url_client.post(f"/api/v1/projects/{p['id']}/search", json={"query": "tokamak"},
                             headers=u["headers"])
    assert r.status_code == 503
    r = read_url_client.get(f"/api/v1/projects/{p['id']}", headers=u["headers"])
    assert r.status_code == 200
