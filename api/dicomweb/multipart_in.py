"""Reading a ``multipart/related`` request body as it streams in (RFC 2046 5.1, RFC 2387).

STOW-RS bodies can be gigabytes: each part's bytes go straight to a sink (an object being received
into the store) as the chunks arrive, so memory holds one chunk at a time, never a part. The
boundary scanning is python-multipart's ``MultipartParser`` (a push parser that works for any
``multipart/*`` body, not only form data); this module adds the part bookkeeping STOW needs:
which parts ended with their closing delimiter, and which one the body cut off.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

#: A part's header lines may be at most this long (bytes), and at most this many per part.
MAX_HEADER_SIZE = 8192
MAX_HEADER_COUNT = 32
#: At most this much preamble (RFC 2046 5.1.1: text before the first delimiter, to be ignored).
MAX_PREAMBLE = 65536


class MultipartError(ValueError):
    """The request's multipart framing or media type is wrong; the message says what."""


class UnsupportedMediaType(MultipartError):
    """The request is not the multipart type the resource takes (HTTP 415)."""


class PartSink(Protocol):
    def write(self, data: bytes | bytearray | memoryview) -> int: ...


@dataclass
class Part:
    """One body part: its headers (names lower-cased), where its bytes went, and how it ended."""

    number: int  # 1-based, in body order
    headers: dict[str, str] = field(default_factory=dict)
    sink: PartSink | None = None  # None: the part's bytes were dropped (see ``refused``)
    size: int = 0
    error: str | None = None  # the part did not end with its delimiter (cut off, malformed body)
    refused: str | None = None  # set by the caller's ``open_part`` to drop the part's bytes

    @property
    def content_type(self) -> str | None:
        """The part's media type without parameters, lower-cased; None when the part names none."""
        value = self.headers.get("content-type")
        if value is None:
            return None
        media, _ = parse_options_header(value)
        return media.decode("latin-1").lower()


def related_boundary(content_type: str | None, root_type: str) -> bytes:
    """The boundary of a ``multipart/related`` request whose ``type`` is ``root_type`` (or absent).

    Raises :class:`UnsupportedMediaType` for another media type or root type and
    :class:`MultipartError` for a missing or malformed boundary (RFC 2046 5.1.1: 1 to 70
    characters).
    """
    if not content_type:
        raise UnsupportedMediaType(f'Content-Type is missing; expected multipart/related; type="{root_type}"')
    media, params = parse_options_header(content_type)
    if media.lower() != b"multipart/related":
        raise UnsupportedMediaType(
            f'Content-Type {content_type!r} is not multipart/related; type="{root_type}"'
        )
    kind = params.get(b"type")
    if kind is not None and kind.decode("latin-1").strip().lower() != root_type:
        raise UnsupportedMediaType(
            f"multipart/related type {kind.decode('latin-1')!r} is not supported; only {root_type!r}"
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise MultipartError("the multipart/related Content-Type has no boundary parameter")
    if len(boundary) > 70 or boundary.endswith(b" "):
        raise MultipartError(f"invalid multipart boundary {boundary.decode('latin-1')!r}")
    return boundary


class MultipartReader:
    """A push parser: :meth:`feed` the body's chunks, get back the parts they completed.

    ``open_part(part)`` is called once a part's headers are read and returns the sink for its
    bytes, or None (after setting ``part.refused``) to drop them. After the last chunk call
    :meth:`close`: it returns the part the body cut off, if any, with ``error`` set. A framing
    error (a header line too long, a broken delimiter) ends the reading: the part it happened in
    is returned by :meth:`feed` with ``error`` set, and later chunks are ignored.
    """

    def __init__(self, boundary: bytes, open_part: Callable[[Part], PartSink | None]) -> None:
        self._open_part = open_part
        self._done: list[Part] = []
        self._current: Part | None = None
        self._count = 0
        self._field = bytearray()
        self._value = bytearray()
        self.ended = False  # the closing delimiter was read
        self.error: str | None = None
        self._delimiter = b"--" + boundary
        self._preamble: bytearray | None = bytearray()  # None once the first delimiter is found
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
            max_header_count=MAX_HEADER_COUNT,
            max_header_size=MAX_HEADER_SIZE,
        )

    @property
    def parts_seen(self) -> int:
        return self._count

    def feed(self, chunk: bytes) -> list[Part]:
        """Parse one chunk of the body; returns the parts that ended in it, in order."""
        if self._preamble is not None and chunk:
            chunk = self._skip_preamble(chunk)
        if self.error is None and not self.ended and chunk:
            try:
                self._parser.write(chunk)
            except FormParserError as exc:
                self.error = f"malformed multipart body: {exc}"
                if self._current is None:  # between parts, or before the first delimiter
                    self._count += 1
                    self._current = Part(self._count)
                self._current.error = self.error
                self._done.append(self._current)
                self._current = None
        done, self._done = self._done, []
        return done

    def close(self) -> Part | None:
        """The body has ended: the part still open (cut off before its delimiter), if any."""
        part, self._current = self._current, None
        if part is not None:
            part.error = f"the body ended inside part {part.number}, before its closing boundary"
            self.error = self.error or part.error
        elif not self.ended and self.error is None and self._count:
            self.error = "the body ended before the closing boundary"
        return part

    def _skip_preamble(self, chunk: bytes) -> bytes:
        """What follows the preamble (python-multipart wants the body to start with a delimiter)."""
        assert self._preamble is not None
        self._preamble += chunk
        buffered = bytes(self._preamble)
        if buffered.startswith(self._delimiter):
            at = 0
        else:
            found = buffered.find(b"\r\n" + self._delimiter)
            at = found + 2 if found >= 0 else -1
        if at >= 0:
            self._preamble = None
            return buffered[at:]
        if len(buffered) > MAX_PREAMBLE:
            self._preamble = None
            return buffered  # let the parser report that the delimiter is missing
        return b""

    # -- python-multipart callbacks ------------------------------------------------------------
    def _on_part_begin(self) -> None:
        self._count += 1
        self._current = Part(self._count)

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        assert self._current is not None
        name = self._field.decode("latin-1").strip().lower()
        self._current.headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _on_headers_finished(self) -> None:
        assert self._current is not None
        self._current.sink = self._open_part(self._current)

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current
        assert part is not None
        part.size += end - start
        if part.sink is not None:
            part.sink.write(memoryview(data)[start:end])

    def _on_part_end(self) -> None:
        assert self._current is not None
        self._done.append(self._current)
        self._current = None

    def _on_end(self) -> None:
        self.ended = True
