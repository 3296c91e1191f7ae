"""A ChromaDB server that takes connections and never answers (a host that hangs, or one
powered off behind a network that drops packets).

chromadb's HttpClient asks the server for its tenant and database while it is built, on
a session with no timeout at all, and the app built it under a lock: every search of the
process waited behind a call that never ended, one after the other. The app now asks the
server's heartbeat first, bounded, and after a failed connect the calls of the next
seconds fail at once instead of each trying again.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from helpers import Listener


@pytest.fixture()
def silent() -> Any:
    s = Listener(hold=True)  # takes connections, never answers
    yield s
    s.close()


def test_a_silent_server_fails_the_waiting_calls_at_once(settings: Any, silent: Listener) -> None:
    """Eight searches at once against a server that never answers: each ends with
    VectorStoreUnavailable (none hangs), and the server saw one connect, not eight."""
    from app.vectorstore import VectorStore, VectorStoreUnavailable

    store = VectorStore(settings, timeout=1.0, url=f"http://127.0.0.1:{silent.port}")
    outcomes: list[str] = []

    def search() -> None:
        try:
            store.projects()
            outcomes.append("answered")
        except VectorStoreUnavailable:
            outcomes.append("unavailable")

    threads = [threading.Thread(target=search, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 90  # a guard against a hang, not a measure of speed
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a call still waits on the silent server"
    assert outcomes == ["unavailable"] * 8, outcomes
    assert silent.connects == 1, f"{silent.connects} connects for 8 calls"
