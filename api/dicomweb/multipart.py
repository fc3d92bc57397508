"""``multipart/related`` bodies (RFC 2387) written as a stream, and the Accept header they answer.

DICOMweb sends instances, frames and bulk data as ``multipart/related`` parts (PS3.18 8.6.1.2). The
writer takes each part's body as an iterator of chunks, so a response never holds more than one
chunk of one part: a 2 GB instance goes out as it is read from the object store. Used by WADO-RS and
WADO-URI; generic enough for any other multipart response (STOW-RS answers, say).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

CRLF = b"\r\n"


@dataclass(frozen=True)
class Part:
    """One body part: its ``Content-Type`` and other headers, and its bytes as chunks."""

    content_type: str
    body: Iterable[bytes]
    headers: Mapping[str, str] = field(default_factory=dict)
    #: The body's length when known in advance (sent as the part's Content-Length).
    length: int | None = None


def new_boundary() -> str:
    """A boundary that no body will contain by chance (128 random bits)."""
    return f"pacs-{secrets.token_hex(16)}"


def content_type(boundary: str, part_type: str) -> str:
    """The response's ``Content-Type``: ``multipart/related; type="..."; boundary=...``."""
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


def _part_head(boundary: str, part: Part, first: bool) -> bytes:
    lines = [f"--{boundary}", f"Content-Type: {part.content_type}"]
    if part.length is not None:
        lines.append(f"Content-Length: {part.length}")
    lines += [f"{name}: {value}" for name, value in part.headers.items()]
    head = "\r\n".join(lines).encode("latin-1") + CRLF + CRLF
    return head if first else CRLF + head


def _closing(boundary: str) -> bytes:
    return CRLF + f"--{boundary}--".encode("latin-1") + CRLF


def stream(boundary: str, parts: Iterable[Part]) -> Iterator[bytes]:
    """The multipart body: each part's head, then its chunks as they come, then the close delimiter.

    ``parts`` is consumed lazily, so a part's body (an object opened in the store, a transcoding)
    starts only when the previous part has been sent.
    """
    first = True
    for part in parts:
        yield _part_head(boundary, part, first)
        first = False
        for chunk in part.body:
            if chunk:
                yield chunk
    if first:  # no part at all: an empty multipart still needs one delimiter to be well formed
        yield f"--{boundary}".encode("latin-1")
    yield _closing(boundary)


def length(boundary: str, parts: Iterable[Part]) -> int | None:
    """The body's total length when every part's length is known (for ``Content-Length``)."""
    total = 0
    first = True
    for part in parts:
        if part.length is None:
            return None
        total += len(_part_head(boundary, part, first)) + part.length
        first = False
    if first:
        total += len(f"--{boundary}")
    return total + len(_closing(boundary))


# -- Accept ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header: ``multipart/related; type="application/dicom";
    transfer-syntax=*`` gives ``media_type="multipart/related"``, ``type="application/dicom"``,
    ``transfer_syntax="*"``."""

    media_type: str
    params: Mapping[str, str]
    q: float = 1.0

    @property
    def type(self) -> str | None:
        """The ``type`` parameter of a multipart media range (the media type of its parts)."""
        value = self.params.get("type")
        return value.lower() if value else None

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")

    @property
    def multipart(self) -> bool:
        return self.media_type == "multipart/related"

    def __str__(self) -> str:
        params = "".join(f"; {k}={v}" for k, v in self.params.items())
        return f"{self.media_type}{params}"


def _split(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` outside double quotes."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return items


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header, most preferred first (by ``q``, then by order);
    ranges with ``q=0`` are dropped. An absent or empty header accepts everything (``*/*``).
    Raises ``ValueError`` for a range that is not ``type/subtype``."""
    if header is None or not header.strip():
        return [MediaRange("*/*", {})]
    ranges: list[tuple[float, int, MediaRange]] = []
    for position, item in enumerate(_split(header, ",")):
        if not item.strip():
            continue
        media_type, *raw_params = (p.strip() for p in _split(item, ";"))
        media_type = media_type.lower()
        if media_type.count("/") != 1 or not all(media_type.split("/")):
            raise ValueError(f"{media_type!r} in the Accept header is not a media type")
        params: dict[str, str] = {}
        q = 1.0
        for raw in raw_params:
            if not raw:
                continue
            name, _, value = raw.partition("=")
            name, value = name.strip().lower(), value.strip().strip('"')
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    raise ValueError(f"q={value!r} in the Accept header is not a number") from None
            else:
                params[name] = value
        if q > 0:
            ranges.append((q, position, MediaRange(media_type, params, q)))
    ranges.sort(key=lambda r: (-r[0], r[1]))
    return [r[2] for r in ranges]
