"""Two ChromaDB servers kept in step through the indexing path (app.vectorset).

The suite's ChromaDB server plus a second real `chroma run` server that this module
starts (and stops and starts again, on the same data folder, as a host would reboot).
Documents are indexed by app.indexing with the real embedder; Redis holds the marks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import free_port, insert_document, upload

pytestmark = pytest.mark.e2e


class Chroma:
    """A second `chroma run` server on loopback; its data survive stop/start."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.folder / "chroma.log").open("ab")
        self.proc = subprocess.Popen(
            [os.environ["AI_TEST_CHROMA_BIN"], "run", "--path", str(self.folder / "data"),
             "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/api/v2/heartbeat", timeout=1)
                return
            except OSError:
                assert self.proc.poll() is None, (self.folder / "chroma.log").read_text()[-2000:]
                time.sleep(0.2)
        raise AssertionError("second chroma did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)  # a host that dies, not a clean stop
            self.proc.wait(timeout=20)


@pytest.fixture(scope="module")
def second(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chroma]:
    if not os.environ.get("AI_TEST_CHROMA_BIN"):
        pytest.skip("AI_TEST_CHROMA_BIN not set (tests/run-app-tests.sh sets it)")
    c = Chroma(tmp_path_factory.mktemp("chroma2"))
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture()
def both(settings: Any, second: Chroma) -> Iterator[Any]:
    """Settings with both servers, and their VectorStoreSet (marks cleared before/after)."""
    from app.vectorset import BEHIND_KEY, VectorStoreSet

    two = settings.model_copy(update={"chroma_url": f"{settings.chroma_url},{second.url}"})
    store = VectorStoreSet(two)
    store.behind._client().delete(BEHIND_KEY)
    yield two, store
    store.behind._client().delete(BEHIND_KEY)


def _index(store: Any, settings: Any, project: dict[str, Any], text: str) -> str:
    """A document row (as an upload makes it), indexed by app.indexing into ``store``."""
    from app import indexing
    from app.db import get_database
    from app.embeddings import get_embedder

    doc_id = insert_document(settings, project["id"], text.encode())
    outcome = indexing.index_document(uuid.UUID(doc_id), get_database(), store,
                                      get_embedder(), settings)
    assert outcome == "ready"
    return doc_id


def _search(store: Any, project: dict[str, Any], query: str) -> list[str]:
    from app.embeddings import get_embedder

    return [h.document_id for h in store.search(project["id"], get_embedder().embed([query])[0], 5)]


def test_a_server_that_missed_writes_catches_up_and_is_read_last_meanwhile(
    both: Any, second: Chroma, project: dict[str, Any],
) -> None:
    from app import indexing
    from app.db import get_database

    settings, store = both
    first, other = store.servers
    doc_a = _index(store, settings, project, "Basalt columns form when thick lava cools slowly.")
    for server in store.servers:  # written to both
        assert server.count_document(project["id"], doc_a) >= 1
    assert store.behind.get(fresh=True) == {}

    second.stop()  # the second server's host dies
    doc_b = _index(store, settings, project, "Obsidian is volcanic glass that cools too fast "
                                             "for crystals to grow.")
    assert set(store.behind.get(fresh=True)) == {second.url}
    assert first.count_document(project["id"], doc_b) >= 1

    second.start()  # back, without doc_b
    assert other.count_document(project["id"], doc_b) == 0
    # Reads avoid it while it is behind, even though it is listed... and answering.
    assert [s.url for s in store.ordered()] == [first.url, second.url]
    assert _search(store, project, "volcanic glass")[0] == doc_b

    result = indexing.reconcile(get_database(), store, settings)
    assert result.copied >= 1 and result.reindexed == [] and result.unreachable == []
    assert other.count_document(project["id"], doc_b) == first.count_document(project["id"], doc_b)
    assert store.behind.get(fresh=True) == {}  # in step again

    # With the first server gone, the second answers everything.
    dead = settings.model_copy(update={"chroma_url": f"http://127.0.0.1:{free_port()},{second.url}"})
    from app.vectorset import VectorStoreSet

    assert _search(VectorStoreSet(dead), project, "volcanic glass")[0] == doc_b


def test_a_mark_newer_than_the_reconcile_stays(both: Any, second: Chroma) -> None:
    """A server that misses a write while reconcile runs stays behind."""
    _, store = both
    store.behind.mark([second.url])
    assert not store.behind.clear(second.url, time.time() - 60)
    assert second.url in store.behind.get(fresh=True)
    assert store.behind.clear(second.url, time.time() + 1)
    assert store.behind.get(fresh=True) == {}


def test_no_server_search_answers_503_and_uploads_are_still_taken(
    settings: Any, user: dict[str, Any], project: dict[str, Any], dead_port: int,
) -> None:
    from fastapi.testclient import TestClient

    from app.api.search import SEARCH_UNAVAILABLE
    from app.main import create_app

    gone = settings.model_copy(update={
        "chroma_url": f"http://127.0.0.1:{dead_port},http://127.0.0.1:{free_port()}"})
    with TestClient(create_app(gone)) as c:
        r = c.post(f"/api/v1/projects/{project['id']}/search", json={"query": "lava"},
                   headers=user["headers"])
        assert r.status_code == 503, r.text
        assert r.json()["error"]["message"] == SEARCH_UNAVAILABLE
        assert r.json()["error"]["code"] == "vector_store_unavailable"
        assert r.headers["Retry-After"] == "30"
        r = upload(c, user, project["id"], "later.txt", b"Indexed when a vector store is back.")
        assert r.status_code == 201, r.text
        assert r.json()["status"] == "pending"


def test_an_empty_server_in_place_of_a_lost_one_is_read_last_and_filled(
    both: Any, second: Chroma, project: dict[str, Any], tmp_path: Path,
) -> None:
    """A vector host replaced by a new, empty one: beat's catch-up sees it holds fewer
    collections, marks it behind (reads avoid it), and reconcile fills it by copy."""
    from app import indexing
    from app.db import get_database
    from app.vectorset import VectorStoreSet

    settings, store = both
    doc = _index(store, settings, project, "Pumice floats because gas bubbles fill it.")
    fresh = Chroma(tmp_path)
    fresh.start()
    try:
        three = settings.model_copy(update={"chroma_url": f"{settings.chroma_url},{fresh.url}"})
        trio = VectorStoreSet(three)
        assert fresh.url in trio.mark_short_servers()
        assert trio.ordered()[-1].url == fresh.url
        result = indexing.reconcile(get_database(), trio, three)
        assert result.copied >= 1 and result.unreachable == []
        assert trio.servers[-1].count_document(project["id"], doc) >= 1
        assert trio.behind.get(fresh=True) == {}  # reconcile put it in step
        assert trio.mark_short_servers() == {}
    finally:
        fresh.stop()
