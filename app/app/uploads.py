"""Streaming multipart reception with the size limit enforced while reading.

The body is parsed as it arrives; file bytes go to a spooled temporary file (memory up
to 1 MiB, then disk) while their size, SHA-256 and UTF-8 plausibility are tracked. The
moment the file exceeds the limit, reading stops and ``UploadTooLarge`` is raised: at
most ``limit`` bytes are ever held, and nothing has been written to the database yet.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import IO

from python_multipart.multipart import MultipartParser, parse_options_header

from app.filetypes import Utf8Sniffer, safe_filename

FILE_FIELD = "file"
_MAX_FORM_FIELD_BYTES = 64 * 1024
_MULTIPART_SLACK = 64 * 1024  # headers and boundaries around the file
SPOOL_MEMORY = 1024 * 1024


class UploadTooLarge(Exception):
    pass


class UploadInvalid(Exception):
    pass


@dataclass
class ReceivedFile:
    filename: str
    size: int
    sha256: str
    head: bytes
    utf8: bool
    spool: IO[bytes]

    def read_all(self) -> bytes:
        self.spool.seek(0)
        return self.spool.read()

    def close(self) -> None:
        self.spool.close()


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    is_target: bool = False


class _Receiver:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.part = _Part()
        self.header_name = b""
        self.header_value = b""
        self.field_bytes = 0
        self.files_seen = 0
        self.file: ReceivedFile | None = None
        self.hash = hashlib.sha256()
        self.sniffer = Utf8Sniffer()
        self.head = bytearray()
        self.size = 0

    # python-multipart callbacks ------------------------------------------
    def on_part_begin(self) -> None:
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.part.headers.append((self.header_name.lower(), self.header_value))
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        disposition = next((v for k, v in self.part.headers if k == b"content-disposition"), b"")
        _, options = parse_options_header(disposition)
        self.part.name = options.get(b"name", b"").decode("utf-8", "replace")
        raw = options.get(b"filename")
        self.part.filename = raw.decode("utf-8", "replace") if raw is not None else None
        if self.part.filename is not None:
            self.files_seen += 1
            if self.files_seen > 1:
                raise UploadInvalid("exactly one file per upload")
            if self.part.name != FILE_FIELD:
                raise UploadInvalid(f"the file must be sent in the form field {FILE_FIELD!r}")
            self.part.is_target = True
            self.file = ReceivedFile(
                filename=safe_filename(self.part.filename), size=0, sha256="", head=b"",
                utf8=False, spool=tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY),  # noqa: SIM115
            )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if not self.part.is_target:
            self.field_bytes += len(chunk)
            if self.field_bytes > _MAX_FORM_FIELD_BYTES:
                raise UploadInvalid("form fields too large")
            return
        assert self.file is not None
        self.size += len(chunk)
        if self.size > self.limit:
            raise UploadTooLarge()
        if len(self.head) < 512:
            self.head += chunk[: 512 - len(self.head)]
        self.hash.update(chunk)
        self.sniffer.feed(chunk)
        self.file.spool.write(chunk)

    def on_part_end(self) -> None:
        pass


async def receive_upload(
    content_type: str | None, content_length: str | None, stream: AsyncIterator[bytes],
    limit: int,
) -> ReceivedFile:
    """Read one ``multipart/form-data`` body holding the file in field ``file``."""
    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise UploadInvalid("expected a multipart/form-data body with a 'file' field")
    if content_length:
        try:
            declared = int(content_length)
        except ValueError:
            raise UploadInvalid("invalid Content-Length") from None
        if declared > limit + _MULTIPART_SLACK:
            raise UploadTooLarge()  # refuse before reading anything

    receiver = _Receiver(limit)
    callbacks = {
        name: getattr(receiver, name)
        for name in ("on_part_begin", "on_part_data", "on_part_end", "on_header_field",
                     "on_header_value", "on_header_end", "on_headers_finished")
    }
    parser = MultipartParser(params[b"boundary"], callbacks)  # type: ignore[arg-type]
    total = 0
    try:
        async for chunk in stream:
            total += len(chunk)
            if total > limit + _MULTIPART_SLACK:
                raise UploadTooLarge()
            parser.write(chunk)
        parser.finalize()
    except (UploadTooLarge, UploadInvalid):
        _close(receiver)
        raise
    except Exception as exc:  # malformed multipart, client went away ...
        _close(receiver)
        raise UploadInvalid(f"malformed multipart body: {type(exc).__name__}") from exc

    if receiver.file is None:
        raise UploadInvalid(f"no file in form field {FILE_FIELD!r}")
    if receiver.size == 0:
        _close(receiver)
        raise UploadInvalid("the file is empty")
    received = receiver.file
    received.size = receiver.size
    received.sha256 = receiver.hash.hexdigest()
    received.head = bytes(receiver.head)
    received.utf8 = receiver.sniffer.finish()
    return received


def _close(receiver: _Receiver) -> None:
    if receiver.file is not None:
        receiver.file.close()
