"""Several ChromaDB servers kept in step through the indexing path.

ChromaDB has no replication of its own. CHROMA_URL may list several servers (commas);
every write (a document's vectors, deletes of documents and projects) goes to each. A
server that misses a write while others take it is marked *behind* in Redis (the broker
instance: never evicts, persisted, replicated), with the time of the miss. Reads go to
the servers that are not behind first, in CHROMA_URL's order, and only then to the
others: a server back from an outage is not asked until it is in step again.

Bringing it back in step is reconcile's job (app.indexing.reconcile, also run by beat's
catch_up_vectors every VECTOR_CATCHUP_INTERVAL_SECONDS while a server is behind): it
copies a document's vectors from a server that has them all to one that does not
(nothing is re-embedded), deletes what the behind server kept of deleted documents and
projects, and then clears the mark, unless the server missed another write meanwhile.

With no server answering, a write fails (indexing retries; the document stays pending
and is indexed when a server is back) and so does a search (503).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import redis

from app import redisconn
from app.config import Settings
from app.log import get_logger
from app.vectorstore import Hit, LegacyMigration, VectorStore, VectorStoreUnavailable

log = get_logger("app.vectorset")
SERVER_REST_SECONDS = 10.0
BEHIND_KEY = "aiplatform:chroma:behind"  # hash: server URL -> time of its last missed write
# Clears a server's mark only if it missed no write after the given time.
_CLEAR_IF_NOT_NEWER = """
local at = redis.call('HGET', KEYS[1], ARGV[1])
if at and tonumber(at) <= tonumber(ARGV[2]) then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""


class Behind:
    """Which servers missed a write, kept in Redis so that every process agrees."""

    def __init__(self, settings: Settings, cache_seconds: float = 2.0) -> None:
        self.settings = settings
        self.cache_seconds = cache_seconds
        self._cached: tuple[float, dict[str, float]] = (float("-inf"), {})
        self._redis: redis.Redis | None = None

    def _client(self) -> redis.Redis:
        if self._redis is None:
            s = self.settings
            self._redis = redisconn.client(s.broker_url, s.redis_sentinel_broker_master, s,
                                           s.health_timeout_seconds)
        return self._redis

    def get(self, fresh: bool = False) -> dict[str, float]:
        """Server URL -> time of its last missed write. If Redis cannot say, the last
        known answer (reads then may go to a server that is behind)."""
        at, value = self._cached
        if fresh or time.monotonic() - at >= self.cache_seconds:
            try:
                raw = self._client().hgetall(BEHIND_KEY)
                value = {k.decode(): float(v) for k, v in raw.items()}
                self._cached = (time.monotonic(), value)
            except redis.RedisError as exc:
                log.warning("vector_behind_unknown", error=type(exc).__name__)
        return value

    def mark(self, urls: list[str]) -> None:
        """Raises VectorStoreUnavailable when the miss cannot be recorded: the caller's
        write must then count as failed, or the server would never catch up."""
        now = time.time()
        try:
            self._client().hset(BEHIND_KEY, mapping=dict.fromkeys(urls, now))
        except redis.RedisError as exc:
            raise VectorStoreUnavailable(
                f"ChromaDB {', '.join(urls)} missed a write that cannot be recorded "
                f"(Redis: {type(exc).__name__})") from exc
        self._cached = (float("-inf"), {})

    def clear(self, url: str, if_not_after: float) -> bool:
        """Forget the mark unless the server missed a write after ``if_not_after``."""
        try:
            done = self._client().eval(_CLEAR_IF_NOT_NEWER, 1, BEHIND_KEY, url, if_not_after)
        except redis.RedisError as exc:
            log.warning("vector_behind_not_cleared", server=url, error=type(exc).__name__)
            return False
        self._cached = (float("-inf"), {})
        return bool(done)


class VectorStoreSet:
    """The servers of CHROMA_URL behind the interface of one VectorStore."""

    def __init__(self, settings: Settings, timeout: float = 30.0,
                 behind: Behind | None = None) -> None:
        self.settings = settings
        self.servers = [VectorStore(settings, timeout, url) for url in settings.chroma_urls]
        self.behind = behind or Behind(settings)
        # A server that just failed is left alone for a while (by this process): a host
        # that is powered off costs a connect timeout per request otherwise.
        self._failed_until: dict[str, float] = {}

    def _resting(self, server: VectorStore) -> bool:
        return self._failed_until.get(server.url, 0.0) > time.monotonic()

    def _failed(self, server: VectorStore) -> None:
        self._failed_until[server.url] = time.monotonic() + SERVER_REST_SECONDS

    def ordered(self) -> list[VectorStore]:
        """The servers in the order reads try them: in step first, behind next, and
        those that failed in the last SERVER_REST_SECONDS last."""
        if len(self.servers) == 1:
            return self.servers
        behind = self.behind.get()
        return sorted(self.servers, key=lambda s: (self._resting(s), s.url in behind))

    def _read(self, call: Callable[[VectorStore], Any]) -> Any:
        errors = []
        for server in self.ordered():
            try:
                return call(server)
            except VectorStoreUnavailable as exc:
                self._failed(server)
                errors.append(str(exc))
        raise VectorStoreUnavailable("; ".join(errors) if len(errors) == 1 else
                                     f"no ChromaDB server answered: {'; '.join(errors)}")

    def _write(self, call: Callable[[VectorStore], Any]) -> None:
        if len(self.servers) == 1:
            call(self.servers[0])
            return
        missed = []
        for server in sorted(self.servers, key=self._resting):
            if self._resting(server) and len(missed) < len(self.servers) - 1:
                missed.append((server.url, "failed moments ago"))  # marked behind below
                continue
            try:
                call(server)
            except VectorStoreUnavailable as exc:
                self._failed(server)
                missed.append((server.url, str(exc)))
        if len(missed) == len(self.servers):
            raise VectorStoreUnavailable(
                "no ChromaDB server took the write: " + "; ".join(e for _, e in missed))
        if missed:
            log.warning("vector_server_missed_write", servers=[u for u, _ in missed],
                        error=missed[0][1][:300])
            self.behind.mark([u for u, _ in missed])

    # The interface of VectorStore -------------------------------------------------
    def replace_document(self, project_id: str, document_id: str, texts: Any,
                         embeddings: np.ndarray, extra: Any = None) -> None:
        self._write(lambda s: s.replace_document(project_id, document_id, texts, embeddings,
                                                 extra))

    def delete_document(self, project_id: str, document_id: str) -> None:
        self._write(lambda s: s.delete_document(project_id, document_id))

    def delete_project(self, project_id: str) -> None:
        self._write(lambda s: s.delete_project(project_id))

    def delete_ids(self, project_id: str, ids: list[str]) -> None:
        self._write(lambda s: s.delete_ids(project_id, ids))

    def count_document(self, project_id: str, document_id: str) -> int:
        return int(self._read(lambda s: s.count_document(project_id, document_id)))

    def search(self, project_id: str, query: np.ndarray, top_k: int) -> list[Hit]:
        return list(self._read(lambda s: s.search(project_id, query, top_k)))

    def mark_short_servers(self) -> dict[str, float]:
        """Mark behind a server that answers but holds no project collection at all while
        another holds some: a host replaced by an empty one, which nothing marked (it
        missed no write, it did not exist). A server restored from an older backup is
        found by reconcile's counts instead. The servers behind now, by URL."""
        counts = {}
        for server in self.servers:
            try:
                server.heartbeat(self.settings.health_timeout_seconds)
                counts[server.url] = len(server.projects())
            except VectorStoreUnavailable:
                continue
        behind = self.behind.get(fresh=True) if len(self.servers) > 1 else {}
        if len(counts) > 1:
            most = max(counts.values())
            short = [u for u, n in counts.items() if n == 0 < most and u not in behind]
            if short:
                log.warning("vector_server_short", servers=short, collections=counts)
                self.behind.mark(short)
                behind = self.behind.get(fresh=True)
        return behind

    def migrate_legacy(self, *, delete: bool) -> LegacyMigration:
        """The shared collection of an earlier release moved on every server that answers
        (one that does not is marked behind: reconcile moves it there later)."""
        out = LegacyMigration()
        missed = []
        for server in self.servers:
            try:
                one = server.migrate_legacy(delete=delete)
            except VectorStoreUnavailable as exc:
                missed.append(server.url)
                log.warning("vector_server_migration_deferred", server=server.url,
                            error=str(exc)[:300])
                continue
            out.found |= one.found
            out.vectors += one.vectors
            out.copied += one.copied
            out.dropped += one.dropped
            out.projects = max(out.projects, one.projects)
            out.deleted |= one.deleted
        if len(missed) == len(self.servers):
            raise VectorStoreUnavailable(f"no ChromaDB server answered: {', '.join(missed)}")
        if missed:
            self.behind.mark(missed)
        return out


_sets: dict[int, VectorStoreSet] = {}


def get_vector_store(settings: Settings) -> VectorStoreSet:
    """One VectorStoreSet per Settings object (per process)."""
    store = _sets.get(id(settings))
    if store is None or store.settings is not settings:
        store = _sets[id(settings)] = VectorStoreSet(settings)
    return store
