"""Uploads: type from content, size limit while streaming, nothing half-written."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import make_pdf, upload
from sqlalchemy import create_engine, text

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(200)
ZIP = b"PK\x03\x04" + os.urandom(200)
ELF = b"\x7fELF\x02\x01\x01" + os.urandom(200)


def _counts(settings: Any, project_id: str) -> tuple[int, int]:
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        docs = conn.execute(text("SELECT count(*) FROM documents WHERE project_id = :p"),
                            {"p": project_id}).scalar_one()
        blobs = conn.execute(text(
            "SELECT count(*) FROM document_contents c JOIN documents d ON d.id = c.document_id "
            "WHERE d.project_id = :p"), {"p": project_id}).scalar_one()
        orphans = conn.execute(text(
            "SELECT count(*) FROM document_contents c LEFT JOIN documents d "
            "ON d.id = c.document_id WHERE d.id IS NULL")).scalar_one()
    engine.dispose()
    assert orphans == 0
    return docs, blobs


@pytest.mark.parametrize(
    ("filename", "data", "kind"),
    [
        ("notes.txt", b"Plain notes about tokamaks.\n", "text"),
        ("README.md", b"# Title\n\nSome *markdown* text.\n", "markdown"),
        ("main.py", b"def f(x):\n    return x * 2\n", "code"),
        ("paper.pdf", make_pdf([["A PDF about superconductors."]]), "pdf"),
        ("misnamed.png", "Really text, with unicode: \u00e9\u00e8 \u4e2d\u6587\n".encode(), "text"),
        ("paper.txt", make_pdf([["PDF named as text"]]), "pdf"),
        ("bom.txt", b"\xef\xbb\xbfText with a byte order mark", "text"),
    ],
)
def test_accepted_types_detected_from_content(client: Any, user: dict[str, Any],
                                              project: dict[str, Any], filename: str,
                                              data: bytes, kind: str) -> None:
    r = upload(client, user, project["id"], filename, data, "image/png")
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["kind"] == kind
    assert doc["status"] in ("pending", "indexing", "ready")
    assert doc["size_bytes"] == len(data)
    assert doc["sha256"] == hashlib.sha256(data).hexdigest()
    d = client.get(f"/api/v1/projects/{project['id']}/documents/{doc['id']}/download",
                   headers=user["headers"])
    assert d.status_code == 200 and d.content == data
    assert filename in d.headers["content-disposition"]


@pytest.mark.parametrize(
    ("filename", "data"),
    [
        ("image.txt", PNG), ("archive.md", ZIP), ("binary.py", ELF),
        ("latin1.txt", "caf\u00e9 na\u00efve".encode("latin-1")),
        ("nul.txt", b"text with a \x00 nul byte"),
        ("random.bin", os.urandom(4096)),
        ("controls.txt", bytes(range(1, 9)) * 50),
    ],
)
def test_unsupported_content_is_415_and_not_stored(client: Any, user: dict[str, Any],
                                                   project: dict[str, Any], settings: Any,
                                                   filename: str, data: bytes) -> None:
    r = upload(client, user, project["id"], filename, data, "text/plain")
    assert r.status_code == 415, r.text
    assert _counts(settings, project["id"]) == (0, 0)


def test_malformed_uploads_are_422(client: Any, user: dict[str, Any],
                                   project: dict[str, Any], settings: Any) -> None:
    url = f"/api/v1/projects/{project['id']}/documents"
    h = user["headers"]
    assert client.post(url, json={"file": "x"}, headers=h).status_code == 422
    assert client.post(url, files={"other": ("a.txt", b"hi")}, headers=h).status_code == 422
    assert client.post(url, data={"note": "no file"}, files={}, headers=h).status_code == 422
    assert upload(client, user, project["id"], "empty.txt", b"").status_code == 422
    two = [("file", ("a.txt", b"one")), ("file", ("b.txt", b"two"))]
    assert client.post(url, files=two, headers=h).status_code == 422
    r = client.post(url, content=b"--xyz\r\ngarbage", headers={
        **h, "Content-Type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 422
    assert _counts(settings, project["id"]) == (0, 0)


def test_oversized_by_content_length_is_413(client: Any, user: dict[str, Any],
                                            project: dict[str, Any], settings: Any) -> None:
    data = b"a" * (settings.max_file_size + 1)
    r = upload(client, user, project["id"], "big.txt", data)
    assert r.status_code == 413
    assert _counts(settings, project["id"]) == (0, 0)


@pytest.fixture()
def small_limit_client(settings: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from app.main import create_app

    small = settings.model_copy(update={"max_file_size": 100_000})
    with TestClient(create_app(small)) as c:
        yield c


def _chunked_multipart(payload_size: int, boundary: str = "bnd123") -> Iterator[bytes]:
    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
           f"filename=\"stream.txt\"\r\nContent-Type: text/plain\r\n\r\n").encode()
    sent = 0
    while sent < payload_size:
        n = min(16_384, payload_size - sent)
        yield b"b" * n
        sent += n
    yield f"\r\n--{boundary}--\r\n".encode()


def test_oversized_stream_without_length_is_413(small_limit_client: Any, user: dict[str, Any],
                                                project: dict[str, Any], settings: Any) -> None:
    """No Content-Length: the limit is enforced while the body is being read."""
    url = f"/api/v1/projects/{project['id']}/documents"
    headers = {**user["headers"], "Content-Type": "multipart/form-data; boundary=bnd123"}
    r = small_limit_client.post(url, content=_chunked_multipart(300_000), headers=headers)
    assert r.status_code == 413
    assert _counts(settings, project["id"]) == (0, 0)
    # Exactly at the limit is fine.
    r = small_limit_client.post(url, content=_chunked_multipart(100_000), headers=headers)
    assert r.status_code == 201, r.text
    assert r.json()["size_bytes"] == 100_000
    assert _counts(settings, project["id"]) == (1, 1)


def test_receiver_never_holds_more_than_the_limit() -> None:
    import asyncio

    from app.uploads import UploadTooLarge, receive_upload

    consumed = 0

    async def body() -> Any:
        nonlocal consumed
        for chunk in _chunked_multipart(10_000_000):
            consumed += len(chunk)
            yield chunk

    with pytest.raises(UploadTooLarge):
        asyncio.run(receive_upload("multipart/form-data; boundary=bnd123", None, body(),
                                   limit=200_000))
    assert consumed < 200_000 + 2 * 16_384 + 1000  # stopped reading right after the limit


def test_filename_is_sanitised(client: Any, user: dict[str, Any],
                               project: dict[str, Any]) -> None:
    r = upload(client, user, project["id"], "../../etc/passwd.txt", b"harmless text")
    assert r.status_code == 201
    assert r.json()["filename"] == "passwd.txt"


def test_document_list_and_status_filter(client: Any, user: dict[str, Any],
                                         project: dict[str, Any]) -> None:
    ids = {upload(client, user, project["id"], f"n{i}.txt", f"note {i}".encode()).json()["id"]
           for i in range(3)}
    url = f"/api/v1/projects/{project['id']}/documents"
    listed = client.get(url, headers=user["headers"]).json()
    assert {d["id"] for d in listed} == ids
    assert client.get(url + "?status=bogus", headers=user["headers"]).status_code == 422
    failed = client.get(url + "?status=failed", headers=user["headers"]).json()
    assert failed == []


def test_delete_document_removes_bytes(client: Any, user: dict[str, Any],
                                       project: dict[str, Any], settings: Any) -> None:
    doc = upload(client, user, project["id"], "gone.txt", b"to be deleted").json()
    url = f"/api/v1/projects/{project['id']}/documents/{doc['id']}"
    assert client.delete(url, headers=user["headers"]).status_code == 204
    assert client.get(url, headers=user["headers"]).status_code == 404
    assert client.delete(url, headers=user["headers"]).status_code == 404
    assert _counts(settings, project["id"]) == (0, 0)


def test_unknown_project_upload_is_404(client: Any, user: dict[str, Any]) -> None:
    r = upload(client, user, str(uuid.uuid4()), "a.txt", b"text")
    assert r.status_code == 404
