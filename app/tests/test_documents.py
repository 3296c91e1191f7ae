"""What users expect of documents: DOCX, PPTX, XLSX and HTML text (with ZIP-bomb
limits), de-duplication by SHA-256 within a project, re-indexing and retrying."""

from __future__ import annotations

import io
import json
import os
import struct
import uuid
import zipfile
from functools import lru_cache
from typing import Any

import pytest
from helpers import db_execute, insert_document, upload, wait_for_status

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


def _over_the_total() -> bytes:
    """A DOCX with 21 media members of 10.25 MiB each, every one at about 33:1 (1 KiB of
    random bytes per 41 KiB): each member is sane, together they unpack to 215 MiB."""
    block = os.urandom(1024) + bytes(40 * 1024)
    member = block * 256
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("word/document.xml", f"<w:document {W}><w:body><w:p><w:r><w:t>Glaciers "
                   "carve valleys.</w:t></w:r></w:p></w:body></w:document>")
        for i in range(21):
            z.writestr(f"word/media/image{i}.bin", member)
    return out.getvalue()


def test_archive_over_the_total_size_fails_with_a_reason(client: Any, worker: Any,
                                                         settings: Any, user: dict[str, Any],
                                                         project: dict[str, Any]) -> None:
    """Members whose sizes add up to more than MAX_ARCHIVE_UNCOMPRESSED_BYTES, none
    of them above the ratio limit (nor the archive as a whole): the document fails on the
    total, from the directory, before anything is unpacked."""
    data = _over_the_total()
    infos = zipfile.ZipFile(io.BytesIO(data)).infolist()
    total = sum(i.file_size for i in infos)
    assert total > settings.max_archive_uncompressed_bytes
    assert total / sum(i.compress_size for i in infos) < settings.max_archive_ratio
    assert all(i.file_size < settings.max_archive_uncompressed_bytes / 10 and
               i.file_size / i.compress_size < settings.max_archive_ratio for i in infos)
    r = upload(client, user, project["id"], "total.docx", data)
    assert r.status_code == 201, r.text
    done = wait_for_status(client, user, project["id"], r.json()["id"], {"ready", "failed"})
    assert done["status"] == "failed", done
    assert done["error"] == ("unreadable DOCX: archive unpacks to more than "
                             f"{settings.max_archive_uncompressed_bytes} bytes"), done


def _declare_size(data: bytearray, name: str, size: int) -> None:
    """Patch the uncompressed size ZIP declares for ``name``, in its local header and in
    the central directory (the data and its CRC stay as they are)."""
    raw = name.encode()
    for sig, name_len_at, name_at, size_at in ((b"PK\x03\x04", 26, 30, 22),
                                               (b"PK\x01\x02", 28, 46, 24)):
        at = data.find(sig)
        while at >= 0:
            (length,) = struct.unpack_from("<H", data, at + name_len_at)
            if data[at + name_at:at + name_at + length] == raw:
                struct.pack_into("<I", data, at + size_at, size)
            at = data.find(sig, at + 4)


INFLATES_TO = 64 * 1024 * 1024


@lru_cache(maxsize=1)
def _lying_docx() -> bytes:
    """A DOCX whose word/document.xml says it unpacks to 2000 bytes, and inflates to
    64 MiB of well-formed XML (blanks): under every limit the directory is checked for."""
    xml = (f"<w:document {W}><w:body>".encode() + b" " * INFLATES_TO
           + b"<w:p><w:r><w:t>hidden</w:t></w:r></w:p></w:body></w:document>")
    data = bytearray(_zip({"word/document.xml": xml}))
    _declare_size(data, "word/document.xml", 2000)
    assert zipfile.ZipFile(io.BytesIO(data)).getinfo("word/document.xml").file_size == 2000
    return bytes(data)


def test_lying_zip_directory_fails_with_a_reason(client: Any, worker: Any,
                                                 user: dict[str, Any],
                                                 project: dict[str, Any]) -> None:
    """A member that inflates to far more than the directory declares: the document fails
    with a reason (the member's read stops at its declared size, which then does not
    match its checksum), instead of being read and indexed."""
    r = upload(client, user, project["id"], "liar.docx", _lying_docx())
    assert r.status_code == 201, r.text
    done = wait_for_status(client, user, project["id"], r.json()["id"], {"ready", "failed"})
    assert done["status"] == "failed", done
    assert done["error"].startswith("unreadable DOCX: unreadable archive"), done


def test_lying_zip_directory_is_read_only_as_far_as_it_declares() -> None:
    """Bounded reading, in process where memory can be measured: the lying member is read
    no further than the 2000 bytes it declares (the peak stays far below the 64 MiB it
    inflates to). And a directory that lists one slide twice, a tiny entry and a large one
    (together within the total limit), has the large one read twice: the reading budget
    stops the second read where the total limit is reached."""
    import tracemalloc
    import warnings

    from app.officedocs import ZipLimits
    from app.textproc import DEFAULT_ZIP_LIMITS, ExtractionError, extract

    data = _lying_docx()
    assert not tracemalloc.is_tracing()
    tracemalloc.start()
    try:
        with pytest.raises(ExtractionError, match="unreadable archive"):
            extract(data, "docx", zip_limits=DEFAULT_ZIP_LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < INFLATES_TO // 16, peak

    slide = f"<sld {A}><a:p><a:r><a:t>{'word ' * 12_000}</a:t></a:r></a:p></sld>"
    out = io.BytesIO(_zip({"ppt/presentation.xml": "<p/>", "ppt/slides/slide1.xml": "<s/>"}))
    with warnings.catch_warnings(), zipfile.ZipFile(out, "a", zipfile.ZIP_DEFLATED) as z:
        warnings.simplefilter("ignore", UserWarning)  # zipfile: "Duplicate name"
        z.writestr("ppt/slides/slide1.xml", slide)
    twice = out.getvalue()
    limits = ZipLimits(members=10, uncompressed_bytes=100_000, ratio=1000)
    infos = zipfile.ZipFile(io.BytesIO(twice)).infolist()
    assert [i.filename for i in infos].count("ppt/slides/slide1.xml") == 2
    assert sum(i.file_size for i in infos) <= limits.uncompressed_bytes < 2 * len(slide)
    with pytest.raises(ExtractionError, match="larger than their directory says"):
        extract(twice, "pptx", zip_limits=limits)
    once = _zip({"ppt/presentation.xml": "<p/>", "ppt/slides/slide1.xml": slide})
    assert extract(once, "pptx", zip_limits=limits).text.startswith("Slide 1\nword word")


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


def test_concurrent_duplicate_uploads_make_one_document(client: Any, user: dict[str, Any],
                                                        project: dict[str, Any]) -> None:
    """Four uploads of the same bytes at once into one project (UPLOAD_CONCURRENCY's
    default, so none is turned away as busy): one is created (201), the others answer that
    same document (200), none fails on the (project, sha256) index."""
    from concurrent.futures import ThreadPoolExecutor

    data = b"raced bytes " + uuid.uuid4().hex.encode()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: upload(client, user, project["id"], f"r{i}.txt", data),
                                range(4)))
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] * 3 + [201], [(r.status_code, r.text[:200]) for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    listed = client.get(f"/api/v1/projects/{project['id']}/documents",
                        headers=user["headers"]).json()
    assert len(listed) == 1, listed


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


def test_reindex_refused_while_indexing(client: Any, settings: Any, user: dict[str, Any],
                                        project: dict[str, Any]) -> None:
    """A document a worker is indexing is not queued a second time: 409, and it stays as it
    was (a retry of it is refused too: it has not failed)."""
    doc = insert_document(settings, project["id"], b"being indexed", status="indexing")
    base = f"/api/v1/projects/{project['id']}/documents/{doc}"
    r = client.post(f"{base}/reindex", headers=user["headers"])
    assert r.status_code == 409 and r.json()["error"]["code"] == "indexing_in_progress", r.text
    r = client.post(f"{base}/retry", headers=user["headers"])
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_failed", r.text
    assert client.get(base, headers=user["headers"]).json()["status"] == "indexing"


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
