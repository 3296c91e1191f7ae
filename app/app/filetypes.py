"""What an upload is, judged from its bytes. The file name only picks a label among
text kinds (markdown, html, code, plain) once the content is known to be text. ZIP
archives are accepted only as DOCX, PPTX or XLSX (judged from their parts)."""

from __future__ import annotations

import codecs
import zipfile
from dataclasses import dataclass
from pathlib import PurePath
from typing import IO

from app.officedocs import office_kind

_OFFICE_TYPES = {
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
_HTML = {".html", ".htm", ".xhtml"}

# Leading bytes of common binary formats we refuse outright.
_BINARY_MAGIC: tuple[bytes, ...] = (
    b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"PK\x03\x04", b"PK\x05\x06", b"\x7fELF",
    b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"7z\xbc\xaf", b"Rar!", b"MZ", b"\xca\xfe\xba\xbe",
    b"\xcf\xfa\xed\xfe", b"RIFF", b"OggS", b"ID3", b"\x00\x00\x01\x00", b"SQLite format 3",
    b"\xd0\xcf\x11\xe0", b"%!PS", b"\x28\xb5\x2f\xfd", b"wOFF", b"\x00asm",
)
_MARKDOWN = {".md", ".markdown", ".mdown", ".mkd", ".rst"}
_CODE = {
    ".py", ".pyi", ".js", ".mjs", ".ts", ".tsx", ".jsx", ".java", ".kt", ".go", ".rs", ".c",
    ".h", ".cc", ".cpp", ".hpp", ".cs", ".rb", ".php", ".swift", ".scala", ".sh", ".bash",
    ".sql", ".r", ".jl", ".lua", ".pl", ".m", ".yaml", ".yml", ".toml", ".json", ".xml",
    ".css", ".ipynb", ".tex", ".proto", ".dockerfile", ".ini", ".cfg",
}


class UnsupportedType(Exception):
    """The content is none of PDF, DOCX, PPTX, XLSX or UTF-8 text."""


@dataclass(frozen=True)
class Detected:
    kind: str  # pdf | docx | pptx | xlsx | html | markdown | code | text
    content_type: str


def _office(data: IO[bytes] | None) -> Detected | None:
    if data is None:
        return None
    try:
        data.seek(0)
        with zipfile.ZipFile(data) as archive:
            kind = office_kind(archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    return Detected(kind, _OFFICE_TYPES[kind]) if kind else None


def detect(head: bytes, data_is_utf8: bool, filename: str,
           data: IO[bytes] | None = None) -> Detected:
    """Classify an upload from its first bytes, whether all of it decodes as UTF-8, and
    (for ZIP archives) the names of its parts in ``data``."""
    if head.startswith(b"%PDF-"):
        return Detected("pdf", "application/pdf")
    if head.startswith(b"PK\x03\x04") and (office := _office(data)) is not None:
        return office
    if any(head.startswith(m) for m in _BINARY_MAGIC):
        raise UnsupportedType("binary file type is not supported")
    if not data_is_utf8:
        raise UnsupportedType("content is neither PDF nor UTF-8 text")
    suffix = PurePath(filename).suffix.lower()
    lead = head.lstrip()[:15].lower()
    if suffix in _HTML or lead.startswith((b"<!doctype html", b"<html")):
        return Detected("html", "text/html; charset=utf-8")
    if suffix in _MARKDOWN:
        return Detected("markdown", "text/markdown; charset=utf-8")
    if suffix in _CODE:
        return Detected("code", "text/plain; charset=utf-8")
    return Detected("text", "text/plain; charset=utf-8")


class Utf8Sniffer:
    """Incremental check that a byte stream is plausible UTF-8 text.

    Fails on invalid UTF-8, on NUL bytes, and on a high share of control characters
    (other than tab, newline, carriage return, form feed)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
        self.ok = True
        self._chars = 0
        self._controls = 0

    def feed(self, chunk: bytes, final: bool = False) -> None:
        if not self.ok:
            return
        try:
            text = self._decoder.decode(chunk, final)
        except UnicodeDecodeError:
            self.ok = False
            return
        if "\x00" in text:
            self.ok = False
            return
        self._chars += len(text)
        self._controls += sum(1 for ch in text if ch < " " and ch not in "\t\n\r\f")

    def finish(self) -> bool:
        self.feed(b"", final=True)
        if self.ok and self._chars and self._controls / self._chars > 0.01:
            self.ok = False
        return self.ok


def safe_filename(name: str | None) -> str:
    """The last path component, stripped of control characters, at most 255 chars."""
    base = PurePath((name or "").replace("\\", "/")).name
    base = "".join(ch for ch in base if ch >= " " and ch != "\x7f").strip()
    if not base:
        base = "upload"
    if len(base) > 255:
        stem, dot, ext = base.rpartition(".")
        base = (stem[: 255 - len(ext) - 1] + "." + ext) if dot and len(ext) < 20 else base[:255]
    return base
