"""Project sharing: read and write members, checked on every path. Non-members get 404
for everything (as if the project did not exist); members get what their role allows
and 403 beyond it."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import db_execute, insert_document, upload


@pytest.fixture()
def shared(client: Any, make_user: Any, settings: Any) -> dict[str, Any]:
    owner, reader, writer, stranger = make_user(), make_user(), make_user(), make_user()
    p = client.post("/api/v1/projects", json={"name": "shared"},
                    headers=owner["headers"]).json()
    for member, role in ((reader, "read"), (writer, "write")):
        r = client.put(f"/api/v1/projects/{p['id']}/members",
                       json={"email": member["email"], "role": role}, headers=owner["headers"])
        assert r.status_code == 200, r.text
    members = client.get(f"/api/v1/projects/{p['id']}/members", headers=owner["headers"]).json()
    for member in (reader, writer):
        member["id"] = next(m["user_id"] for m in members if m["email"] == member["email"])
    # Put in place as an upload leaves them, without queueing them: an indexed document
    # (not an upload: a session's worker could be indexing it when the writer asks to
    # reindex it, a 409 by design), one whose indexing failed (to retry) and one to delete.
    doc = {"id": insert_document(settings, p["id"], b"the owner's notes", status="ready")}
    failed = insert_document(settings, p["id"], b"a failed document", status="failed")
    victim = insert_document(settings, p["id"], b"a document to delete", status="ready")
    return {"owner": owner, "reader": reader, "writer": writer, "stranger": stranger,
            "project": p, "doc": doc, "failed": failed, "victim": victim}


def _calls(pid: str, did: str, failed: str, victim: str,
           other_member: str) -> list[tuple[str, str, Any, str]]:
    """(method, path, body, the lowest role that may do it)"""
    base = f"/api/v1/projects/{pid}"
    return [
        ("GET", base, None, "read"),
        ("GET", f"{base}/documents", None, "read"),
        ("GET", f"{base}/documents/{did}", None, "read"),
        ("GET", f"{base}/documents/{did}/download", None, "read"),
        ("GET", f"{base}/members", None, "read"),
        ("POST", f"{base}/search", {"query": "notes"}, "read"),
        ("POST", f"{base}/ask", {"question": "what notes?"}, "read"),
        ("POST", f"{base}/documents/{did}/reindex", None, "write"),
        ("POST", f"{base}/documents/{failed}/retry", None, "write"),
        ("PATCH", base, {"name": "renamed"}, "owner"),
        ("PUT", f"{base}/members", {"email": "x@example.com", "role": "read"}, "owner"),
        ("DELETE", f"{base}/members/{other_member}", None, "owner"),
        ("DELETE", f"{base}/documents/{victim}", None, "write"),
    ]


RANK = {"stranger": 0, "read": 1, "write": 2, "owner": 3}


@pytest.mark.parametrize("who", ["stranger", "reader", "writer"])
def test_every_path_checks_the_role(client: Any, shared: dict[str, Any], who: str) -> None:
    """Every path, as a non-member (404), a reader and a writer (what the role allows, 403
    beyond it); then, as the owner sees it, only what was allowed happened: the failed
    document re-queued and the other document deleted (with its bytes) by the writer
    only, and no member removed by anyone but the owner."""
    u = shared[who]
    pid = shared["project"]["id"]
    role = {"stranger": "stranger", "reader": "read", "writer": "write"}[who]
    other = shared["writer" if who == "reader" else "reader"]
    for method, path, body, needs in _calls(pid, shared["doc"]["id"], shared["failed"],
                                            shared["victim"], other["id"]):
        r = client.request(method, path, json=body, headers=u["headers"])
        if role == "stranger":
            expected: tuple[int, ...] = (404,)
        elif RANK[role] >= RANK[needs]:
            expected = (200, 202, 204, 503)  # 503 only when the vector store is down
        else:
            expected = (403,)
        assert r.status_code in expected, (who, method, path, r.status_code, r.text)
    up = upload(client, u, pid, f"{who}.txt", f"by {who}".encode())
    assert up.status_code == {"stranger": 404, "read": 403, "write": 201}[role], up.text
    listed = [p["id"] for p in client.get("/api/v1/projects", headers=u["headers"]).json()]
    assert (pid in listed) == (role != "stranger")

    owner = shared["owner"]["headers"]
    docs = f"/api/v1/projects/{pid}/documents"
    writer = role == "write"
    retried = client.get(f"{docs}/{shared['failed']}", headers=owner).json()
    if writer:  # re-queued; a worker of the session may have indexed it since
        assert retried["status"] in ("pending", "indexing", "ready"), retried
    else:
        assert retried["status"] == "failed", retried
    victim = client.get(f"{docs}/{shared['victim']}", headers=owner)
    assert victim.status_code == (404 if writer else 200), victim.text
    assert db_execute("SELECT count(*) FROM document_contents WHERE document_id = :i",
                      i=shared["victim"]) == [(0 if writer else 1,)]
    members = client.get(f"/api/v1/projects/{pid}/members", headers=owner).json()
    assert sorted((m["email"], m["role"]) for m in members) == sorted(
        [(shared["reader"]["email"], "read"), (shared["writer"]["email"], "write")])


@pytest.mark.parametrize("who", ["reader", "writer"])
def test_a_member_may_leave_but_not_remove_others(client: Any, shared: dict[str, Any],
                                                  who: str) -> None:
    """DELETE .../members/{user_id} needs the owner, except for one's own membership: a
    member may leave (then sees 404), and may not remove another member (403, with the
    reason) nor the owner; a non-member gets 404 for any of it."""
    pid = shared["project"]["id"]
    u, other = shared[who], shared["writer" if who == "reader" else "reader"]
    owner_id = client.get("/api/v1/users/me", headers=shared["owner"]["headers"]).json()["id"]
    url = f"/api/v1/projects/{pid}/members"
    for target in (other["id"], owner_id):
        r = client.delete(f"{url}/{target}", headers=u["headers"])
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "insufficient_role"
    stranger = shared["stranger"]
    stranger_id = client.get("/api/v1/users/me", headers=stranger["headers"]).json()["id"]
    for target in (u["id"], stranger_id):
        assert client.delete(f"{url}/{target}", headers=stranger["headers"]).status_code == 404
    assert client.get(f"/api/v1/projects/{pid}", headers=u["headers"]).status_code == 200
    assert client.delete(f"{url}/{u['id']}", headers=u["headers"]).status_code == 204
    assert client.get(f"/api/v1/projects/{pid}", headers=u["headers"]).status_code == 404
    assert client.delete(f"{url}/{u['id']}", headers=u["headers"]).status_code == 404
    left = client.get(url, headers=shared["owner"]["headers"]).json()
    assert [m["email"] for m in left] == [other["email"]]


def test_roles_listed_and_revoked(client: Any, shared: dict[str, Any]) -> None:
    pid, owner, reader = shared["project"]["id"], shared["owner"], shared["reader"]
    mine = client.get("/api/v1/projects", headers=reader["headers"]).json()
    assert [p["role"] for p in mine if p["id"] == pid] == ["read"]
    members = client.get(f"/api/v1/projects/{pid}/members", headers=owner["headers"]).json()
    assert sorted(m["role"] for m in members) == ["read", "write"]
    reader_id = next(m["user_id"] for m in members if m["email"] == reader["email"])
    # A reader cannot delete documents or the project.
    doc = shared["doc"]["id"]
    assert client.delete(f"/api/v1/projects/{pid}/documents/{doc}",
                         headers=reader["headers"]).status_code == 403
    assert client.delete(f"/api/v1/projects/{pid}", headers=reader["headers"]).status_code == 403
    # A writer may delete a document, not the project.
    assert client.delete(f"/api/v1/projects/{pid}",
                         headers=shared["writer"]["headers"]).status_code == 403
    assert client.delete(f"/api/v1/projects/{pid}/members/{reader_id}",
                         headers=owner["headers"]).status_code == 204
    assert client.get(f"/api/v1/projects/{pid}", headers=reader["headers"]).status_code == 404


def test_members_cannot_be_unknown_or_the_owner(client: Any, shared: dict[str, Any]) -> None:
    pid, owner = shared["project"]["id"], shared["owner"]
    url = f"/api/v1/projects/{pid}/members"
    r = client.put(url, json={"email": "nobody-here@example.com", "role": "read"},
                   headers=owner["headers"])
    assert r.status_code == 404 and r.json()["error"]["code"] == "user_not_found"
    r = client.put(url, json={"email": owner["email"], "role": "read"}, headers=owner["headers"])
    assert r.status_code == 409
