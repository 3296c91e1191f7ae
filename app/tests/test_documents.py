"""What users expect of documents: DOCX, PPTX, XLSX and HTML text (with ZIP-bomb
limits), de-duplication by SHA-256 within a project, re-indexing and retrying."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import pytest
from helpers import db_execute, upload, wait_for_status

W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
A = 'xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main"'
S = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'


def _zip(parts: dict[str, str | bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        for name, data in parts.items():
            z.writestr(name, data)
    return out.getvalue()


def docx(*paragraphs: str) -> bytes:
    body = "".join(f"<w:p><w:r><w:t>{p}</w:t></w:r></w:p>" for p in paragraphs)
    return _zip({"word/document.xml": f"<w:document {W}><w:body>{body}</w:body></w:document>"})


def pptx(*slides: str) -> bytes:
    parts: dict[str, str | bytes] = {"ppt/presentation.xml": "<p/>"}
    for i, text in enumerate(slides, start=1):
        parts[f"ppt/slides/slide{i}.xml"] = (
            f"<sld {A}><a:p><a:r><a:t>{text}</a:t></a:r></a:p></sld>")
    return _zip(parts)


def xlsx(rows: list[list[str]]) -> bytes:
    strings = [c for row in rows for c in row]
    sst = "".join(f"<si><t>{s}</t></si>" for s in strings)
    cells, i = [], 0
    for row in rows:
        cs = []
        for _ in row:
            cs.append(f'<c t="s"><v>{i}</v></c>')
            i += 1
        cells.append(f"<row>{''.join(cs)}</row>")
    return _zip({"xl/workbook.xml": "<workbook/>",
                 "xl/sharedStrings.xml": f"<sst {S}>{sst}</sst>",
                 "xl/worksheets/sheet1.xml": f"<worksheet {S}><sheetData>{''.join(cells)}"
                                             "</sheetData></worksheet>"})


HTML = (b"<!doctype html><html><head><title>Kiln</title><style>p{color:red}</style>"
        b"<script>alert('not text')</script></head><body><h1>Ceramics</h1>"
        b"<p>Stoneware is fired in a kiln at about 1200 degrees Celsius.</p></body></html>")


@pytest.mark.parametrize(("filename", "data", "kind", "query", "needle"), [
    ("report.docx", docx("Quarterly report.", "Basalt columns form as lava cools slowly."),
     "docx", "how do basalt columns form", "Basalt columns"),
    ("deck.pptx", pptx("Intro", "Penguins huddle together to survive the Antarctic winter."),
     "pptx", "how do penguins survive winter", "Penguins huddle"),
    ("sheet.xlsx", xlsx([["element", "fact"], ["Mercury", "liquid metal at room temperature"]]),
     "xlsx", "which metal is liquid at room temperature", "liquid metal"),
    ("page.html", HTML, "html", "kiln firing temperature for stoneware", "Stoneware is fired"),
])
def test_office_and_html_documents_are_indexed(client: Any, worker: Any, user: dict[str, Any],
                                               project: dict[str, Any], filename: str,
                                               data: bytes, kind: str, query: str,
                                               needle: str) -> None:
    r = upload(client, user, project["id"], filename, data)
    assert r.status_code == 201, r.text
    assert r.json()["kind"] == kind
    done = wait_for_status(client, user, project["id"], r.json()["id"], {"ready", "failed"})
    assert done["status"] == "ready", done
    hits = client.post(f"/api/v1/projects/{project['id']}/search", json={"query": query},
                       headers=user["headers"]).json()["results"]
    assert hits and needle in hits[0]["snippet"], hits
    assert "alert" not in hits[0]["snippet"]


def test_zip_bombs_fail_with_a_reason(client: Any, worker: Any, user: dict[str, Any],
                                      project: dict[str, Any]) -> None:
    ratio_bomb = _zip({"word/document.xml": b"<w:document " + W.encode() + b">"
                       + b" " * 20_000_000 + b"</w:document>"})
    many = _zip({"word/document.xml": f"<w:document {W}/>",
                 **{f"junk/{i}.xml": "x" for i in range(2100)}})
    for name, data, reason in (("ratio.docx", ratio_bomb, "ratio"),
                               ("many.docx", many, "members"),
                               ("entity.docx", _zip({"word/document.xml": (
                                   f"<!DOCTYPE d [<!ENTITY a 'aaaa'>]><w:document {W}>"
                                   "<w:body><w:p><w:r><w:t>&a;</w:t></w:r></w:p></w:body>"
                                   "</w:document>")}), "XML")):
        r = upload(client, user, project["id"], name, data)
        assert r.status_code == 201, (name, r.text)
        done = wait_for_status(client, user, project["id"], r.json()["id"], {"ready", "failed"})
        assert done["status"] == "failed" and reason in done["error"], (name, done)


def test_random_zip_is_still_refused(client: Any, user: dict[str, Any],
                                     project: dict[str, Any]) -> None:
    r = upload(client, user, project["id"], "a.docx", _zip({"other.txt": "hello"}))
    assert r.status_code == 415


def test_extracted_text_is_bounded() -> None:
    from app.textproc import ExtractionError, extract

    with pytest.raises(ExtractionError, match="exceeds 1000 characters"):
        extract(b"word " * 1000, "text", 1000)
    with pytest.raises(ExtractionError, match="exceeds 1000 characters"):
        extract(docx(*["a paragraph of words"] * 100), "docx", 1000)


def test_duplicate_upload_returns_the_existing_document(client: Any, user: dict[str, Any],
                                                        project: dict[str, Any]) -> None:
    first = upload(client, user, project["id"], "a.txt", b"the very same bytes")
    again = upload(client, user, project["id"], "b.txt", b"the very same bytes")
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    listed = client.get(f"/api/v1/projects/{project['id']}/documents",
                        headers=user["headers"]).json()
    assert len(listed) == 1
    other = client.post("/api/v1/projects", json={"name": "other"}, headers=user["headers"]).json()
    assert upload(client, user, other["id"], "a.txt", b"the very same bytes").status_code == 201


def test_reindex_and_retry(client: Any, worker: Any, user: dict[str, Any],
                           project: dict[str, Any]) -> None:
    base = f"/api/v1/projects/{project['id']}/documents"
    doc = upload(client, user, project["id"], "r.txt", b"Auroras glow when solar wind hits "
                 b"the upper atmosphere.").json()
    doc = wait_for_status(client, user, project["id"], doc["id"], {"ready"})
    r = client.post(f"{base}/{doc['id']}/retry", headers=user["headers"])
    assert r.status_code == 409  # not failed
    r = client.post(f"{base}/{doc['id']}/reindex", headers=user["headers"])
    assert r.status_code == 202 and r.json()["status"] == "pending"
    again = wait_for_status(client, user, project["id"], doc["id"], {"ready"})
    assert again["indexed_at"] > doc["indexed_at"]
    db_execute("UPDATE documents SET status = 'failed', error = 'x' WHERE id = :i", i=doc["id"])
    r = client.post(f"{base}/{doc['id']}/retry", headers=user["headers"])
    assert r.status_code == 202 and r.json()["error"] is None
    assert wait_for_status(client, user, project["id"], doc["id"], {"ready"})["attempts"] == 1


def test_sentry_client_is_configured(settings: Any) -> None:
    """SENTRY_DSN set: the SDK (from requirements.lock) is initialised with it, without
    personal data. In a process of its own (the SDK is global); nothing is sent."""
    import subprocess
    import sys

    dsn = "https://0123456789abcdef@127.0.0.1:9/42"
    code = (
        "import json, sentry_sdk\n"
        "from app.config import Settings\n"
        "from app.log import init_sentry\n"
        "ok = init_sentry(Settings())\n"
        "c = sentry_sdk.get_client()\n"
        "print(json.dumps([ok, c.is_active(), c.options['dsn'], c.options['send_default_pii'],"
        " c.options['environment']]))\n"
    )
    import os

    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "SENTRY_DSN": dsn},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == [True, True, dsn, False, "test"]
