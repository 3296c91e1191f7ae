"""Text extraction (plain text, HTML, PDF via pypdf, DOCX/PPTX/XLSX via app.officedocs),
bounded in length, and overlapping chunking."""

from __future__ import annotations

import io
from bisect import bisect_right
from dataclasses import dataclass

from app.htmltext import html_text
from app.officedocs import KINDS as OFFICE_KINDS
from app.officedocs import OfficeError, ZipLimits, office_text

DEFAULT_MAX_CHARS = 5_000_000
DEFAULT_ZIP_LIMITS = ZipLimits(members=2000, uncompressed_bytes=200 * 1024 * 1024, ratio=100)


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


def _too_long(max_chars: int) -> ExtractionError:
    return ExtractionError(f"extracted text exceeds {max_chars} characters (MAX_EXTRACTED_CHARS)")


def extract(data: bytes, kind: str, max_chars: int = DEFAULT_MAX_CHARS,
            zip_limits: ZipLimits = DEFAULT_ZIP_LIMITS) -> Extracted:
    """The document's text, at most ``max_chars`` characters (else ExtractionError)."""
    if kind == "pdf":
        return _extract_pdf(data, max_chars)
    if kind in OFFICE_KINDS.values():
        try:
            text = _clean(office_text(data, kind, zip_limits, max_chars))
        except OfficeError as exc:
            raise ExtractionError(f"unreadable {kind.upper()}: {exc}"[:500]) from exc
    elif kind == "html":
        text, too_long = html_text(data.decode("utf-8-sig", errors="replace"), max_chars)
        if too_long:
            raise _too_long(max_chars)
    else:
        text = _clean(data.decode("utf-8-sig", errors="replace"))
    if len(text) > max_chars:
        raise _too_long(max_chars)
    if not text.strip():
        raise ExtractionError("document contains no text")
    return Extracted(text)


def _extract_pdf(data: bytes, max_chars: int) -> Extracted:
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
            if offset > max_chars:  # stop reading pages: the rest would be refused too
                raise _too_long(max_chars)
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
