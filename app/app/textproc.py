"""Text extraction (plain text, PDF via pypdf) and overlapping chunking."""

from __future__ import annotations

import io
from bisect import bisect_right
from dataclasses import dataclass


class ExtractionError(Exception):
    """The document cannot yield text; indexing fails for good (no retry)."""


@dataclass(frozen=True)
class Extracted:
    text: str
    page_starts: list[int] | None = None  # char offset where each PDF page begins

    def page_of(self, offset: int) -> int | None:
        if not self.page_starts:
            return None
        return bisect_right(self.page_starts, offset)  # 1-based page number


def _clean(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")


def extract(data: bytes, kind: str) -> Extracted:
    if kind == "pdf":
        return _extract_pdf(data)
    text = data.decode("utf-8-sig", errors="replace")
    text = _clean(text)
    if not text.strip():
        raise ExtractionError("document contains no text")
    return Extracted(text)


def _extract_pdf(data: bytes) -> Extracted:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ExtractionError("PDF is encrypted")
        parts: list[str] = []
        starts: list[int] = []
        offset = 0
        for page in reader.pages:
            starts.append(offset)
            page_text = _clean(page.extract_text() or "").strip()
            parts.append(page_text)
            offset += len(page_text) + 2
    except ExtractionError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, OSError,
            RecursionError, IndexError) as exc:
        raise ExtractionError(f"unreadable PDF: {type(exc).__name__}: {exc}"[:500]) from exc
    text = "\n\n".join(parts)
    if not text.strip():
        raise ExtractionError("PDF contains no extractable text (scanned images need OCR)")
    return Extracted(text, starts)


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    start: int
    end: int


_BREAKS = ("\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ")


def chunk_text(text: str, size: int, overlap: int) -> list[Chunk]:
    """Windows of at most ``size`` chars, cut at the best natural break in the second half
    of the window, each starting ``overlap`` chars before the previous one ended."""
    if overlap >= size:
        raise ValueError("overlap must be smaller than size")
    chunks: list[Chunk] = []
    n = len(text)
    start = 0
    while start < n:
        # Skip leading whitespace so chunks do not start with blank lines.
        while start < n and text[start].isspace():
            start += 1
        if start >= n:
            break
        end = min(start + size, n)
        if end < n:
            window = text[start:end]
            for brk in _BREAKS:
                cut = window.rfind(brk, size // 2)
                if cut != -1:
                    end = start + cut + len(brk)
                    break
        piece = text[start:end].strip()
        if piece:
            chunks.append(Chunk(len(chunks), piece, start, end))
        if end >= n:
            break
        nxt = max(end - overlap, start + 1)
        # Begin the overlap at a word boundary when one is near.
        space = text.find(" ", nxt, end)
        if overlap and space != -1:
            nxt = space + 1
        start = nxt
    return chunks
