"""Response bodies read one chunk ahead (api.dicomweb.streaming): every chunk in order, errors
where the iterator raised them, never more than one chunk read ahead, and the source closed when
the response stops early."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from api.dicomweb.streaming import prefetched


class Source:
    """A chunk source that records how far it was read and whether it was closed."""

    def __init__(self, count: int, fail_at: int | None = None, slow: threading.Event | None = None) -> None:
        self.count, self.fail_at, self.slow = count, fail_at, slow
        self.read = 0
        self.closed = threading.Event()

    def chunks(self) -> Iterator[bytes]:
        try:
            for index in range(self.count):
                if index == self.fail_at:
                    raise OSError("the disk went away")
                if self.slow is not None and index > 0:
                    self.slow.wait(5)
                self.read += 1
                yield bytes([index]) * 10
        finally:
            self.closed.set()


def _collect(source: Source, limit: int | None = None, sent: list[int] | None = None) -> list[bytes]:
    async def run() -> list[bytes]:
        got: list[bytes] = []
        body = prefetched(source.chunks())
        async for chunk in body:
            got.append(chunk)
            if sent is not None:
                sent.append(source.read)
            if limit is not None and len(got) == limit:
                await body.aclose()  # type: ignore[attr-defined]
                break
        return got

    return asyncio.run(run())


def test_every_chunk_arrives_in_order() -> None:
    source = Source(50)
    assert _collect(source) == [bytes([i]) * 10 for i in range(50)]
    assert source.closed.is_set()


def test_an_empty_source_gives_an_empty_body() -> None:
    assert _collect(Source(0)) == []


def test_at_most_one_chunk_is_read_ahead() -> None:
    sent: list[int] = []
    _collect(Source(20), sent=sent)
    # when chunk n (1-based) is handed on, at most chunk n + 1 has been read
    assert all(read <= number + 1 for number, read in enumerate(sent, start=1))


def test_an_error_of_the_source_ends_the_body_with_that_error() -> None:
    source = Source(10, fail_at=3)
    with pytest.raises(OSError, match="the disk went away"):
        _collect(source)
    assert source.read == 3


def test_a_body_stopped_early_closes_its_source_after_the_read_in_flight() -> None:
    release = threading.Event()
    source = Source(10, slow=release)
    assert _collect(source, limit=1) == [bytes([0]) * 10]
    # the read of chunk 2 is still waiting: the generator cannot be closed under it
    assert not source.closed.is_set()
    release.set()
    assert source.closed.wait(5)
    assert source.read <= 2
