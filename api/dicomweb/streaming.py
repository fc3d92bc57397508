"""Response bodies read from the object store while they are sent.

Starlette sends a plain iterator by advancing it on a worker thread, one thread hop per chunk, and
reading and sending take turns: the socket idles while a chunk is read, the disk while it is sent.
:func:`prefetched` keeps one chunk read ahead on a reader thread instead, so that the next chunk is
read while the current one goes out. Memory stays bounded by a few chunks per response (the one
being sent, the one read ahead); a 2 GB instance is never held whole.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

_readers: ThreadPoolExecutor | None = None
_readers_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    """The reader threads (one per response being read at that moment, made on first use)."""
    global _readers
    if _readers is None:
        with _readers_lock:
            if _readers is None:
                _readers = ThreadPoolExecutor(
                    max_workers=max(8, 4 * (os.cpu_count() or 2)), thread_name_prefix="wado-read"
                )
    return _readers


async def prefetched(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """``chunks`` (each ``next`` a blocking read) as an async iterator, one chunk read ahead.

    An error raised by ``chunks`` comes out of the ``async for`` as it would from the iterator. When
    the response stops early (the client went away), ``chunks`` is closed (its object with it)
    once the read in flight has ended: a generator cannot be closed while another thread runs it.
    """

    def advance() -> bytes | None:
        return next(chunks, None)

    def close(_: object = None) -> None:
        close_chunks = getattr(chunks, "close", None)
        if close_chunks is not None:
            close_chunks()

    executor = _executor()
    pending: Future[bytes | None] = executor.submit(advance)
    try:
        while (chunk := await asyncio.wrap_future(pending)) is not None:
            pending = executor.submit(advance)
            yield chunk
    finally:
        if pending.done():
            close()
        else:
            pending.add_done_callback(close)
