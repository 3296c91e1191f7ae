"""Text from Office Open XML files (DOCX, PPTX, XLSX): ZIP archives of XML parts.

Read as an attacker would send them: the member count, the total uncompressed size and
the compression ratio are checked from the archive's directory before anything is
unpacked, and again while reading (a directory can lie); XML is parsed with defusedxml
(no DTDs, no entity expansion, no external references)."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

from defusedxml import ElementTree as SafeET
from defusedxml.common import DefusedXmlException


class OfficeError(Exception):
    """The file cannot yield text (the message says why)."""


@dataclass(frozen=True)
class ZipLimits:
    members: int
    uncompressed_bytes: int
    ratio: int


KINDS = {"word/document.xml": "docx", "ppt/presentation.xml": "pptx",
         "xl/workbook.xml": "xlsx"}
_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_A = "{http://schemas.openxmlformats.org/drawingml/2006/main}"
_S = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"


def office_kind(names: list[str]) -> str | None:
    for part, kind in KINDS.items():
        if part in names:
            return kind
    return None


def _open(data: bytes, limits: ZipLimits) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise OfficeError(f"not a readable ZIP archive: {exc}") from exc
    if len(infos) > limits.members:
        raise OfficeError(f"archive has more than {limits.members} members")
    total = sum(i.file_size for i in infos)
    if total > limits.uncompressed_bytes:
        raise OfficeError(f"archive unpacks to more than {limits.uncompressed_bytes} bytes")
    packed = max(sum(i.compress_size for i in infos), 1)
    if total / packed > limits.ratio:
        raise OfficeError(f"archive compression ratio above {limits.ratio}:1")
    return archive


class _Budget:
    def __init__(self, limits: ZipLimits) -> None:
        self.left = limits.uncompressed_bytes

    def read(self, archive: zipfile.ZipFile, name: str) -> bytes:
        info = archive.getinfo(name)
        with archive.open(info) as fh:
            data = fh.read(min(info.file_size, self.left) + 1)
        self.left -= len(data)
        if self.left < 0 or len(data) > info.file_size:
            raise OfficeError("archive members are larger than their directory says")
        return data


def _xml(data: bytes):  # type: ignore[no-untyped-def]
    try:
        return SafeET.fromstring(data, forbid_dtd=True)
    except (DefusedXmlException, SafeET.ParseError) as exc:
        raise OfficeError(f"malformed XML: {type(exc).__name__}") from exc


def _docx(archive: zipfile.ZipFile, budget: _Budget) -> Iterator[str]:
    root = _xml(budget.read(archive, "word/document.xml"))
    for para in root.iter(f"{_W}p"):
        text = "".join(node.text or "" if node.tag == f"{_W}t" else "\t"
                       for node in para.iter() if node.tag in (f"{_W}t", f"{_W}tab"))
        yield text


def _numbered(names: list[str], pattern: str) -> list[str]:
    rx = re.compile(pattern)
    found = [(int(m.group(1)), n) for n in names if (m := rx.fullmatch(n))]
    return [n for _, n in sorted(found)]


def _pptx(archive: zipfile.ZipFile, budget: _Budget) -> Iterator[str]:
    for number, name in enumerate(_numbered(archive.namelist(),
                                            r"ppt/slides/slide(\d+)\.xml"), start=1):
        root = _xml(budget.read(archive, name))
        yield f"Slide {number}"
        for para in root.iter(f"{_A}p"):
            yield "".join(t.text or "" for t in para.iter(f"{_A}t"))


def _xlsx(archive: zipfile.ZipFile, budget: _Budget) -> Iterator[str]:
    names = archive.namelist()
    shared: list[str] = []
    if "xl/sharedStrings.xml" in names:
        root = _xml(budget.read(archive, "xl/sharedStrings.xml"))
        shared = ["".join(t.text or "" for t in si.iter(f"{_S}t")) for si in root.iter(f"{_S}si")]
    for number, name in enumerate(_numbered(names, r"xl/worksheets/sheet(\d+)\.xml"), start=1):
        root = _xml(budget.read(archive, name))
        yield f"Sheet {number}"
        for row in root.iter(f"{_S}row"):
            cells = []
            for c in row.iter(f"{_S}c"):
                v = c.find(f"{_S}v")
                if c.get("t") == "s" and v is not None and (v.text or "").isdigit():
                    idx = int(v.text or 0)
                    cells.append(shared[idx] if idx < len(shared) else "")
                elif c.get("t") == "inlineStr":
                    cells.append("".join(t.text or "" for t in c.iter(f"{_S}t")))
                elif v is not None and v.text:
                    cells.append(v.text)
            if any(cells):
                yield "\t".join(cells)


def office_text(data: bytes, kind: str, limits: ZipLimits, max_chars: int) -> str:
    archive = _open(data, limits)
    budget = _Budget(limits)
    reader = {"docx": _docx, "pptx": _pptx, "xlsx": _xlsx}[kind]
    lines: list[str] = []
    size = 0
    try:
        for line in reader(archive, budget):
            size += len(line) + 1
            if size > max_chars:
                raise OfficeError(f"extracted text exceeds {max_chars} characters")
            lines.append(line)
    except KeyError as exc:
        raise OfficeError(f"missing part {exc}") from exc
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:
        raise OfficeError(f"unreadable archive: {type(exc).__name__}") from exc
    return "\n".join(lines)
