"""Reading a request body within the upload limit: counted while it streams in, refused (413) as soon as
it passes the limit, before anything is decoded. The image is either the whole body (``curl
--data-binary @img.png``) or the multipart field ``file`` (``curl -F file=@img.png``), parsed as it arrives
(python-multipart), kept in memory, never written to disk. Its file name, if any, is ignored: the format
comes from the content and no request names a path on the server."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request

from unetseg.serve.codecs import NAME, RequestError

DRAIN_BYTES = 16 * 2**20  # read (and drop) this much of an oversized body, so the client sees the 413


def _mib(n: float) -> str:
    return f"{n / 2**20:.3g} MiB"


def too_large(size: float, limit: int) -> RequestError:
    return RequestError(f"{NAME}: {_mib(size)} is over the {_mib(limit)} upload limit "
                        "(unetseg serve --max-upload-mib)", 413)


async def read_upload(request: Request, limit: int, seconds: float) -> bytes:
    """The uploaded image's bytes; 413 over ``limit`` bytes (declared or counted), 408 when the body takes
    longer than ``seconds``, 400 for a malformed multipart body or one without a ``file`` field."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + DRAIN_BYTES:
        raise too_large(int(declared), limit)  # far over: not worth reading
    ctype = request.headers.get("content-type", "")
    sink: _Raw | _Multipart = _Multipart(ctype) if ctype.lower().startswith("multipart/form-data") else _Raw()
    try:
        total = await asyncio.wait_for(_stream(request, sink, limit), seconds)
    except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11 on
        raise RequestError(f"{NAME}: the body did not arrive within {seconds:g} s", 408) from None
    if total > limit:
        raise too_large(total, limit)
    return sink.result()


async def _stream(request: Request, sink: _Raw | _Multipart, limit: int) -> int:
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit + DRAIN_BYTES:
            break
        if total <= limit:
            sink.write(chunk)
    return total


class _Raw:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, chunk: bytes) -> None:
        self.parts.append(chunk)

    def result(self) -> bytes:
        return b"".join(self.parts)


class _Multipart:
    """The ``file`` field of a ``multipart/form-data`` body, parsed as it streams in (kept in memory)."""

    def __init__(self, content_type: str) -> None:
        from python_multipart import FormParser
        from python_multipart.multipart import parse_options_header

        boundary = parse_options_header(content_type)[1].get(b"boundary")
        if not boundary:
            raise RequestError("multipart/form-data without a boundary")
        self.found: list[bytes] = []
        self.parser = FormParser("multipart/form-data", self._field, self._file, boundary=boundary,
                                 config={"MAX_MEMORY_FILE_SIZE": float("inf")})

    def _field(self, field: Any) -> None:  # curl -F "file=<img.png": a plain field
        if field.field_name == b"file" and field.value is not None:
            self.found.append(bytes(field.value))

    def _file(self, file: Any) -> None:
        if file.field_name == b"file":
            file.file_object.seek(0)
            self.found.append(file.file_object.read())

    def write(self, chunk: bytes) -> None:
        self._parse(self.parser.write, chunk)

    def result(self) -> bytes:
        self._parse(lambda _: self.parser.finalize(), b"")
        if len(self.found) != 1:
            raise RequestError(f"multipart upload with {len(self.found)} fields named `file`; send one "
                               "(curl -F file=@image.png)")
        return self.found[0]

    @staticmethod
    def _parse(step: Any, chunk: bytes) -> None:
        from python_multipart.exceptions import FormParserError

        try:
            step(chunk)
        except FormParserError as e:
            raise RequestError(f"malformed multipart body ({' '.join(str(e).split())[:120]})") from None
