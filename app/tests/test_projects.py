"""Projects: CRUD, name conflicts, and strict per-user isolation (404, never 403)."""

from __future__ import annotations

import os
from typing import Any

import psycopg
from fastapi.testclient import TestClient
from helpers import upload


def test_project_crud(client: Any, user: dict[str, Any]) -> None:
    h = user["headers"]
    r = client.post("/api/v1/projects", json={"name": "  Papers  ", "description": "ml"},
                    headers=h)
    assert r.status_code == 201
    p = r.json()
    assert p["name"] == "Papers"
    assert [x["id"] for x in client.get("/api/v1/projects", headers=h).json()] == [p["id"]]
    r = client.patch(f"/api/v1/projects/{p['id']}", json={"name": "Renamed"}, headers=h)
    assert r.status_code == 200 and r.json()["name"] == "Renamed"
    assert r.json()["description"] == "ml"
    r = client.patch(f"/api/v1/projects/{p['id']}", json={"description": None}, headers=h)
    assert r.json()["description"] is None and r.json()["name"] == "Renamed"
    assert client.delete(f"/api/v1/projects/{p['id']}", headers=h).status_code == 204
    assert client.get(f"/api/v1/projects/{p['id']}", headers=h).status_code == 404
    assert client.get("/api/v1/projects", headers=h).json() == []


def test_duplicate_name_is_409(client: Any, user: dict[str, Any]) -> None:
    h = user["headers"]
    a = client.post("/api/v1/projects", json={"name": "A"}, headers=h).json()
    client.post("/api/v1/projects", json={"name": "B"}, headers=h)
    assert client.post("/api/v1/projects", json={"name": "A"}, headers=h).status_code == 409
    r = client.patch(f"/api/v1/projects/{a['id']}", json={"name": "B"}, headers=h)
    assert r.status_code == 409


def test_same_name_for_different_users(client: Any, make_user: Any) -> None:
    for u in (make_user(), make_user()):
        r = client.post("/api/v1/projects", json={"name": "Shared name"}, headers=u["headers"])
        assert r.status_code == 201


def test_malformed_project_bodies_are_422(client: Any, user: dict[str, Any]) -> None:
    h = user["headers"]
    for body in ({}, {"name": ""}, {"name": "   "}, {"name": "x" * 201}, {"name": 5},
                 {"name": "ok", "owner_id": "x"}):
        assert client.post("/api/v1/projects", json=body, headers=h).status_code == 422, body
    assert client.get("/api/v1/projects/not-a-uuid", headers=h).status_code == 422
    assert client.get("/api/v1/projects?limit=0", headers=h).status_code == 422


def test_inputs_postgresql_cannot_take_are_422_not_500(client: Any, user: dict[str, Any],
                                                        project: dict[str, Any]) -> None:
    """Found by fuzzing the API (bench/drills/test_fuzz.py): both were 500s."""
    h = user["headers"]
    for body in ({"name": "a\u0000b"}, {"name": "ok-nul", "description": "x\u0000"}):
        assert client.post("/api/v1/projects", json=body, headers=h).status_code == 422, body
    url = f"/api/v1/projects/{project['id']}"
    assert client.patch(url, json={"description": "\u0000"}, headers=h).status_code == 422
    provider = {"name": "p\u0000", "base_url": "http://127.0.0.1:9/v1", "model": "m",
                "api_key": "k"}
    assert client.post("/api/v1/providers", json=provider, headers=h).status_code == 422
    for key in ("k\u00d7y", "two words"):  # an HTTP header cannot carry them
        provider = {"name": "p", "base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key": key}
        assert client.post("/api/v1/providers", json=provider, headers=h).status_code == 422
    for listing in ("/api/v1/projects", f"{url}/documents"):
        assert client.get(f"{listing}?offset={2**63}", headers=h).status_code == 422
        assert client.get(f"{listing}?offset=1000000", headers=h).json() == []


def test_other_users_cannot_see_or_touch(client: Any, make_user: Any) -> None:
    alice, bob = make_user(), make_user()
    p = client.post("/api/v1/projects", json={"name": "private"},
                    headers=alice["headers"]).json()
    doc = upload(client, alice, p["id"], "notes.txt", b"alice's private notes").json()
    base = f"/api/v1/projects/{p['id']}"
    bh = bob["headers"]
    assert client.get("/api/v1/projects", headers=bh).json() == []
    calls = [
        ("GET", base, None), ("PATCH", base, {"name": "stolen"}), ("DELETE", base, None),
        ("GET", f"{base}/documents", None),
        ("GET", f"{base}/documents/{doc['id']}", None),
        ("GET", f"{base}/documents/{doc['id']}/download", None),
        ("DELETE", f"{base}/documents/{doc['id']}", None),
        ("POST", f"{base}/search", {"query": "notes"}),
        ("POST", f"{base}/ask", {"question": "what notes?"}),
    ]
    for method, url, body in calls:
        r = client.request(method, url, json=body, headers=bh)
        assert r.status_code == 404, (method, url, r.status_code)
    r = upload(client, bob, p["id"], "x.txt", b"intruder")
    assert r.status_code == 404
    # Bob's own project does not expose Alice's document either.
    bp = client.post("/api/v1/projects", json={"name": "bob"}, headers=bh).json()
    r = client.get(f"/api/v1/projects/{bp['id']}/documents/{doc['id']}", headers=bh)
    assert r.status_code == 404
    # Alice still has everything.
    assert client.get(base, headers=alice["headers"]).json()["name"] == "private"
    assert len(client.get(f"{base}/documents", headers=alice["headers"]).json()) == 1


def test_unauthenticated_is_401(client: Any, project: dict[str, Any]) -> None:
    assert client.get("/api/v1/projects").status_code == 401
    r = client.post(f"/api/v1/projects/{project['id']}/documents",
                    files={"file": ("a.txt", b"hello", "text/plain")})
    assert r.status_code == 401


def test_a_failed_commit_is_never_answered_201(app: Any, client: Any, user: dict[str, Any]) -> None:
    """The commit runs before the response is sent: when it fails, the client hears it.

    A deferred constraint trigger makes PostgreSQL refuse one name at COMMIT only
    (the INSERT itself succeeds), as a primary shutting down mid-request would."""
    h = user["headers"]
    url = os.environ["DATABASE_URL"].replace("+psycopg", "")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("""
            CREATE FUNCTION test_refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.name = 'refused-at-commit' THEN RAISE EXCEPTION 'refused at commit'; END IF;
              RETURN NULL;
            END $$;
            CREATE CONSTRAINT TRIGGER test_refuse_at_commit AFTER INSERT ON projects
              DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_refuse_at_commit();
        """)
        try:
            # The app's own 500, not the test's exception:
            quiet = TestClient(app, raise_server_exceptions=False)
            r = quiet.post("/api/v1/projects", json={"name": "refused-at-commit"}, headers=h)
            assert r.status_code == 500, (r.status_code, r.text)
            ok = client.post("/api/v1/projects", json={"name": "accepted"}, headers=h)
            assert ok.status_code == 201
        finally:
            conn.execute("DROP TRIGGER test_refuse_at_commit ON projects;"
                         " DROP FUNCTION test_refuse_at_commit()")
    names = [p["name"] for p in client.get("/api/v1/projects", headers=h).json()]
    assert names == ["accepted"]
