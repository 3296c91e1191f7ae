"""Chunking, extraction and content sniffing (pure functions)."""

from __future__ import annotations

import itertools

import pytest
from helpers import make_pdf

from app.filetypes import UnsupportedType, Utf8Sniffer, detect, safe_filename
from app.textproc import ExtractionError, chunk_text, extract


def test_chunks_respect_size_and_overlap() -> None:
    text = " ".join(f"Sentence number {i} says something about topic {i % 7}." for i in range(400))
    chunks = chunk_text(text, size=500, overlap=100)
    assert len(chunks) > 10
    assert all(len(c.text) <= 500 for c in chunks)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for a, b in itertools.pairwise(chunks):
        assert b.start < a.end, "consecutive chunks overlap"
        assert a.end - b.start <= 100 + 1
    covered = set()
    for c in chunks:
        covered.update(range(c.start, c.end))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())


def test_chunks_prefer_paragraph_breaks() -> None:
    paragraphs = [f"Paragraph {i}. " + "word " * 60 for i in range(6)]
    chunks = chunk_text("\n\n".join(paragraphs), size=800, overlap=0)
    assert all(c.text.startswith("Paragraph") for c in chunks)


def test_short_and_blank_text() -> None:
    assert [c.text for c in chunk_text("tiny", 100, 10)] == ["tiny"]
    assert chunk_text("   \n\n  ", 100, 10) == []
    with pytest.raises(ValueError):
        chunk_text("x", 100, 100)


def test_pdf_extraction_with_pages() -> None:
    pdf = make_pdf([["First page talks about lasers."], ["Second page about neutrinos."]])
    ex = extract(pdf, "pdf")
    assert "lasers" in ex.text and "neutrinos" in ex.text
    assert ex.page_of(ex.text.index("lasers")) == 1
    assert ex.page_of(ex.text.index("neutrinos")) == 2


@pytest.mark.parametrize("data", [b"%PDF-1.4\n garbage garbage", make_pdf([[]])])
def test_bad_or_empty_pdf_raises(data: bytes) -> None:
    with pytest.raises(ExtractionError):
        extract(data, "pdf")


def test_sniffer_incremental_multibyte_split() -> None:
    s = Utf8Sniffer()
    data = "na\u00efve \u4e2d\u6587".encode()
    for i in range(len(data)):
        s.feed(data[i : i + 1])
    assert s.finish()
    bad = Utf8Sniffer()
    bad.feed(b"\xff\xfe")
    assert not bad.finish()
    truncated = Utf8Sniffer()
    truncated.feed("\u4e2d".encode()[:2])
    assert not truncated.finish()


def test_detect_ignores_names_for_binaries() -> None:
    with pytest.raises(UnsupportedType):
        detect(b"\x89PNG\r\n", True, "fine.txt")
    assert detect(b"%PDF-1.7", False, "x.png").kind == "pdf"
    assert detect(b"# hi", True, "a.md").kind == "markdown"
    assert detect(b"x=1", True, "a.py").kind == "code"


def test_safe_filename() -> None:
    assert safe_filename("..\\..\\windows\\evil.txt") == "evil.txt"
    assert safe_filename("") == "upload"
    assert len(safe_filename("a" * 400 + ".pdf")) == 255
    assert safe_filename("a" * 400 + ".pdf").endswith(".pdf")
