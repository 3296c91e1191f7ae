"""Upgrade drill: a rolling deploy from the last release that kept every project's vectors in
one shared Chroma collection to this one (one collection per project) loses no vector and
re-embeds nothing."""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from conftest import REPO, on

from bench.lab import INVENTORY, app_run, run_playbook

# The last commit whose app used the shared collection (where={"project_id": ...}).
SHARED_COLLECTION_APP = "65385b4"
DOCS = {
    "tides.md": "Tides are raised by the gravity of the Moon pulling on the oceans of the Earth. " * 12,
    "bread.md": "Sourdough bread rises because wild yeast and lactic bacteria ferment the dough. " * 12,
    "comets.md": "The tail of gas and dust of a comet always points away from the Sun. " * 12,
}
QUERIES = {"why do oceans have tides": "tides.md", "how does sourdough rise": "bread.md",
           "which way does a comet tail point": "comets.md"}


def _manage(host: str, *argv: str) -> str:
    return on(host, "/usr/local/sbin/ai-platform-manage " + " ".join(argv))


def _reconcile(host: str) -> dict:
    """beat's reconcile_vectors task, queued now, and its result."""
    script = ("import json\nfrom app.tasks import reconcile_vectors\n"
              "print('BENCH-RESULT ' + json.dumps(reconcile_vectors.delay().get(timeout=600)))\n")
    return app_run(host, script, {"name": "reconcile"}, "/tmp/drill-upgrade", timeout=900)


def _top_hits(the_lab, token: str, project: str) -> dict[str, str]:
    """query -> filename of the first hit, through Nginx (so from either app host)."""
    got = {}
    for query in QUERIES:
        status, body = the_lab.curl("POST", f"/api/v1/projects/{project}/search", token,
                                    body={"query": query, "top_k": 3})
        assert status == 200, (status, body)
        got[query] = body["results"][0]["filename"] if body["results"] else None
        time.sleep(0.3)
    return got


def test_upgrade_from_shared_collection(the_lab, record):
    """Rolling deploy from the shared-collection release: migrate-vectors copies, reconcile drops it, search unchanged."""
    app = the_lab.apps[0]
    tmp = Path(tempfile.mkdtemp(prefix="drill-upgrade-"))
    try:
        old = tmp / "old"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", SHARED_COLLECTION_APP, "app"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        old_s, _ = run_playbook(INVENTORY, "playbooks/deploy.yml", "-e", f"app_source_dir={old / 'app'}")

        # Documents indexed by the old release land in its shared collection.
        token, project = the_lab.account()
        ids = []
        for name, text in DOCS.items():
            on(the_lab.client, f"cat > /tmp/{name} <<'EOF'\n{text}\nEOF")
            for _ in range(5):
                status, doc = the_lab.curl("POST", f"/api/v1/projects/{project}/documents", token, form_file=f"/tmp/{name}")
                if status != 429:
                    break
                time.sleep(1.2)
            assert status == 201, (status, doc)
            ids.append(doc["id"])
            time.sleep(1.1)

        def ready() -> dict[str, dict]:
            docs = {}
            for d in ids:
                _, docs[d] = the_lab.curl("GET", f"/api/v1/projects/{project}/documents/{d}", token)
            return docs
        deadline = time.monotonic() + 300
        while {d["status"] for d in ready().values()} != {"ready"}:
            assert time.monotonic() < deadline, ready()
            time.sleep(3)
        before = _top_hits(the_lab, token, project)
        assert before == QUERIES, before
        chunks = sum(d["chunk_count"] for d in ready().values())

        # The new release: the deploy's migrate-vectors step copies; the shared collection stays.
        new_s, out = run_playbook(INVENTORY, "playbooks/deploy.yml")
        assert re.search(r"Copy the vectors of the shared Chroma collection[^\n]*\n[^\n]*\nchanged: \[", out), \
            "the first batch's migrate-vectors copied nothing"
        again = _manage(app, "migrate-vectors")
        assert "migrate-vectors: no change (every vector is in its project's collection)" in again, again
        after_deploy = _top_hits(the_lab, token, project)
        assert after_deploy == QUERIES, after_deploy

        # beat's reconcile: nothing left to copy, the shared collection is dropped, nothing re-indexed.
        result = _reconcile(app)
        assert result["legacy_vectors_moved"] == 0 and result["reindexed"] == 0, result
        gone = _manage(app, "migrate-vectors")
        assert "migrate-vectors: no change (no shared collection" in gone, gone
        after = ready()
        assert {d["status"] for d in after.values()} == {"ready"}
        assert sum(d["chunk_count"] for d in after.values()) == chunks
        assert _top_hits(the_lab, token, project) == QUERIES
        record(old_release_deploy_s=old_s, new_release_deploy_s=new_s, chunks=chunks,
               reconcile=result)
        the_lab.curl("DELETE", f"/api/v1/projects/{project}", token)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
