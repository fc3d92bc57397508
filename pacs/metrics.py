"""Prometheus metrics of the archive: stores, queries, retrieves, HTTP requests and errors.

The services record what they do through the decorators here (one line at each place), the HTTP
face adds request latencies by route template (``api/metrics.py``), and ``/metrics`` renders them.

``pacs serve`` runs several pre-forked workers, and a scrape reaches only one of them, so the
numbers must add up across processes: :func:`setup_multiprocess` (called by the supervisor before
it forks) switches prometheus_client to its multiprocess mode, where every process writes its
values to memory-mapped files in one folder per run, and :func:`render` sums those files. Without
it (tests, ``pacs import``) the values stay in this process.

Metrics are process-wide by nature (one set of files per process id), so the metric objects are
made once per process, on first use rather than at import: which value class prometheus_client
uses is decided when a value is made, and it must be the multiprocess one in a worker.

Which face a query or retrieve came through is not known to the services; the HTTP face marks its
requests with :func:`via_http` (a context variable, which FastAPI carries into the threads that run
endpoints and stream responses); everything else is counted as ``dimse``.
"""

from __future__ import annotations

import contextvars
import functools
import os
import shutil
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

#: The text exposition format 0.0.4.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

P = ParamSpec("P")
R = TypeVar("R")

#: Latency buckets (seconds): from a cached index lookup to a large multi-frame transfer.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_interface: contextvars.ContextVar[str] = contextvars.ContextVar("pacs_metrics_interface", default="dimse")


@dataclass(frozen=True)
class _Metrics:
    registry: CollectorRegistry
    stores: Counter
    stored_bytes: Counter
    store_seconds: Histogram
    queries: Counter
    query_seconds: Histogram
    retrieves: Counter
    retrieved_bytes: Counter
    http_requests: Counter
    http_seconds: Histogram
    errors: Counter


_lock = threading.Lock()
_metrics: _Metrics | None = None
_multiprocess_dir: Path | None = None


def _make() -> _Metrics:
    # In multiprocess mode the exposition reads the files, not this registry; it is still the one
    # place the objects are registered, so a single-process archive renders it directly.
    registry = CollectorRegistry(auto_describe=True)

    def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
        return Counter(name, doc, labels, registry=registry)

    def histogram(name: str, doc: str, labels: tuple[str, ...]) -> Histogram:
        return Histogram(name, doc, labels, registry=registry, buckets=_BUCKETS)

    return _Metrics(
        registry=registry,
        stores=counter(
            "pacs_stores",
            "Objects received for storage, by path in (c-store, stow, import, c-get) and outcome "
            "(stored, new version, already present, repaired; rejected: invalid data; failed: storage "
            "or index unavailable)",
            ("via", "outcome"),
        ),
        stored_bytes=counter(
            "pacs_stored_bytes", "Bytes of objects kept (outcomes stored, new version, repaired)", ("via",)
        ),
        store_seconds=histogram("pacs_store_seconds", "Check, store and index one received object", ("via",)),
        queries=counter(
            "pacs_queries",
            "Queries run on the index, by interface (dimse: C-FIND; dicomweb: QIDO-RS; rest: /api) and level",
            ("interface", "level"),
        ),
        query_seconds=histogram(
            "pacs_query_seconds",
            "From the start of a query to its last match handed out (or the reader stopping)",
            ("interface", "level"),
        ),
        retrieves=counter(
            "pacs_retrieves",
            "Instances and frames read back, by interface (dimse: C-MOVE, C-GET; dicomweb: WADO) and kind",
            ("interface", "kind"),
        ),
        retrieved_bytes=counter(
            "pacs_retrieved_bytes",
            "Stored bytes of the instances and frames read back",
            ("interface", "kind"),
        ),
        http_requests=counter(
            "pacs_http_requests",
            "HTTP requests by method, route template and status code",
            ("method", "route", "status"),
        ),
        http_seconds=histogram(
            "pacs_http_request_seconds",
            "HTTP request latency until the response is complete, by method and route template",
            ("method", "route"),
        ),
        errors=counter(
            "pacs_errors",
            "Operations that failed, by operation and exception (InvalidObject, ResourceUnavailable, ...)",
            ("operation", "error"),
        ),
    )


def _get() -> _Metrics:
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                _metrics = _make()
    return _metrics


# -- multiprocess mode --------------------------------------------------------------------------
def setup_multiprocess(directory: Path) -> Path:
    """Make metrics add up across the processes forked after this call: values go to files in
    ``directory``, emptied first (a new run starts from zero; files of a worker that died and was
    restarted stay, so counters never go back). Call it once, in the supervisor, before forking."""
    global _multiprocess_dir, _metrics
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    # prometheus_client picks its value class when it is imported; this process may have imported
    # it before the variable was set.
    values.ValueClass = values.MultiProcessValue()
    with _lock:
        _multiprocess_dir = directory
        _metrics = None  # made again, with the multiprocess value class, on first use
    return directory


def render() -> bytes:
    """The metrics in the text exposition format, summed over every process of this run."""
    metrics = _get()
    # A folder set up by the supervisor, or prometheus_client's own variable set by an operator.
    directory = _multiprocess_dir or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return bytes(generate_latest(metrics.registry))
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return bytes(generate_latest(registry))


# -- the face a request came through ------------------------------------------------------------
@contextmanager
def via_http(interface: str) -> Iterator[None]:
    """Count queries and retrieves of the block (and threads it starts with its context) under
    ``interface`` (``dicomweb``, ``rest``, ``http``) instead of ``dimse``."""
    token = _interface.set(interface)
    try:
        yield
    finally:
        _interface.reset(token)


def current_interface() -> str:
    """The face the current request came through: ``dimse`` unless marked by :func:`via_http`."""
    return _interface.get()


# -- recording ----------------------------------------------------------------------------------
def http_request(method: str, route: str, status: int, seconds: float) -> None:
    metrics = _get()
    metrics.http_requests.labels(method, route, str(status)).inc()
    metrics.http_seconds.labels(method, route).observe(seconds)


def error(operation: str, exc: BaseException | str) -> None:
    name = exc if isinstance(exc, str) else type(exc).__name__
    _get().errors.labels(operation, name).inc()


def _error_outcome(exc: BaseException) -> str:
    # pacs.errors: InvalidObject and its subclasses are the sender's fault; the rest are ours.
    names = {cls.__name__ for cls in type(exc).__mro__}
    return "rejected" if "InvalidObject" in names else "failed"


def _caller_via(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The ``via`` of the first :class:`pacs.context.CallerContext` among the arguments."""
    for value in (*args, *kwargs.values()):
        via = getattr(value, "via", None)
        if isinstance(via, str) and hasattr(value, "describe"):
            return via
    return "unknown"


_KEPT = {"stored", "new version", "repaired"}


def instrument_ingest(fn: Callable[P, R]) -> Callable[P, R]:
    """Count an ingest by outcome and path in, its bytes when kept, its duration and its failure.
    Wraps a function that takes a ``CallerContext`` and returns an ``IngestResult``."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        via = _caller_via(args, kwargs)
        started = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            metrics = _get()
            metrics.stores.labels(via, _error_outcome(exc)).inc()
            metrics.store_seconds.labels(via).observe(time.perf_counter() - started)
            error("store", exc)
            raise
        metrics = _get()
        outcome = str(getattr(result, "outcome", "stored"))
        metrics.stores.labels(via, outcome).inc()
        if outcome in _KEPT:
            metrics.stored_bytes.labels(via).inc(int(getattr(result, "size", 0)))
        metrics.store_seconds.labels(via).observe(time.perf_counter() - started)
        return result

    return wrapper


def _level_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    for value in (*args, *kwargs.values()):
        level = getattr(value, "level", None)
        if level is not None:
            return str(getattr(level, "value", level)).lower()
    return "unknown"


def instrument_search(fn: Callable[P, Generator[R, None, None]]) -> Callable[P, Generator[R, None, None]]:
    """Count a query (by interface and level) and time it until its matches are all handed out or
    the reader stops. Wraps a function returning a generator of matches."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Generator[R, None, None]:
        interface, level = _interface.get(), _level_of(args, kwargs)
        started = time.perf_counter()
        _get().queries.labels(interface, level).inc()
        try:
            matches = fn(*args, **kwargs)
        except Exception as exc:
            error("query", exc)
            raise
        return _timed(matches, interface, level, started)

    return wrapper


def _timed(
    matches: Generator[R, None, None], interface: str, level: str, started: float
) -> Generator[R, None, None]:
    try:
        yield from matches
    except GeneratorExit:
        raise
    except Exception as exc:
        error("query", exc)
        raise
    finally:
        _get().query_seconds.labels(interface, level).observe(time.perf_counter() - started)


def count_query(interface: str, level: str, seconds: float) -> None:
    """A query answered without :func:`instrument_search` (the REST component summaries)."""
    metrics = _get()
    metrics.queries.labels(interface, level).inc()
    metrics.query_seconds.labels(interface, level).observe(seconds)


def _size_of(value: Any) -> int:
    """The stored size of a ``VersionRow`` or of a ``RetrieveItem``'s version."""
    for candidate in (value, getattr(value, "version", None)):
        size = getattr(candidate, "size", None)
        if isinstance(size, int):
            return size
    return 0


def instrument_retrieve(kind: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Count a read of stored data (``kind``: ``instance`` or ``frame``) and its bytes: the length of
    a ``bytes`` result, else the stored size of the version or item passed first."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                error("retrieve", exc)
                raise
            interface = _interface.get()
            size = (
                len(result)
                if isinstance(result, bytes | bytearray)
                else _size_of(args[1] if len(args) > 1 else None)
            )
            metrics = _get()
            metrics.retrieves.labels(interface, kind).inc()
            metrics.retrieved_bytes.labels(interface, kind).inc(size)
            return result

        return wrapper

    return decorate
