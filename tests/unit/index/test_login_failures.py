"""LoginFailureRepository on SQLite and PostgreSQL: the failed-login count every process shares.

What matters: a failure recorded by one process counts in every other one (the limit holds across
workers and nodes), the wait it reports ends when fewer than the limit are left in the window, and
the table keeps only the last window, even under a flood of addresses and concurrent failures.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from pacs.index import migrate
from pacs.index.database import create_index_engine
from pacs.index.login_failures import ADDRESS_LENGTH, CLEANUP_BATCH, LoginFailureRepository
from pacs.index.schema import login_failure
from pacs.security import FailedLogins

DATABASES = ["sqlite", "postgresql"]
T0 = dt.datetime(2026, 11, 26, 12, 0, 0, tzinfo=dt.UTC)
WINDOW = 60.0


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated index, empty, on the backend under test."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'index.sqlite'}"
        engine = create_index_engine(url)
        migrate.upgrade(engine)
        engine.dispose()
        return url
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def engines(database_url: str) -> Iterator[tuple[Engine, Engine]]:
    """Two engines on one index: what two worker processes (or two nodes) each have."""
    first, second = create_index_engine(database_url), create_index_engine(database_url)
    yield first, second
    first.dispose()
    second.dispose()


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def rows(engine: Engine, address: str | None = None) -> int:
    query = select(func.count()).select_from(login_failure)
    if address is not None:
        query = query.where(login_failure.c.address == address)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def test_failures_recorded_by_two_processes_add_up_to_the_limit(engines: tuple[Engine, Engine]) -> None:
    one, two = (LoginFailureRepository(e) for e in engines)
    for n in range(4):  # 0, 2, 4, 6 s in one process; 1, 3, 5, 7 s in the other
        assert one.record("10.0.0.9", WINDOW, 10, now=at(2 * n)) == 0
        assert two.record("10.0.0.9", WINDOW, 10, now=at(2 * n + 1)) == 0
    assert one.record("10.0.0.9", WINDOW, 10, now=at(8)) == 0
    # The tenth failure, in the other process: the address waits until the first (t=0) is 60 s old.
    assert two.record("10.0.0.9", WINDOW, 10, now=at(9)) == pytest.approx(51)
    assert one.record("10.0.0.10", WINDOW, 10, now=at(9)) == 0  # other addresses are not affected


def test_the_wait_ends_when_fewer_than_the_limit_are_left_in_the_window(
    engines: tuple[Engine, Engine],
) -> None:
    repo = LoginFailureRepository(engines[0])
    for n in range(3):
        repo.record("10.0.0.9", WINDOW, 3, now=at(n))  # t = 0, 1, 2: the limit
    # Two more from processes that had not heard yet (the bound's "+ processes - 1"): now five
    # in the window, and the address may try again once only two are left, when t=2 leaves it.
    repo.record("10.0.0.9", WINDOW, 3, now=at(3))
    assert repo.record("10.0.0.9", WINDOW, 3, now=at(4)) == pytest.approx(58)
    # After the window, the old failures no longer count.
    assert repo.record("10.0.0.9", WINDOW, 3, now=at(70)) == 0


def test_expired_rows_are_deleted_as_failures_arrive(engines: tuple[Engine, Engine]) -> None:
    engine = engines[0]
    repo = LoginFailureRepository(engine)
    flood = CLEANUP_BATCH * 2 + 10
    for n in range(flood):  # a flood of addresses, one failure each
        repo.record(f"10.1.{n // 256}.{n % 256}", WINDOW, 10, now=at(n / 1000))
    for n in range(5):
        repo.record("10.0.0.9", WINDOW, 10, now=at(n))
    assert rows(engine) == flood + 5

    later = 100.0  # everything above has left the window
    repo.record("10.0.0.9", WINDOW, 10, now=at(later))
    assert rows(engine, "10.0.0.9") == 1  # the address's own old rows, all of them
    assert rows(engine) == flood - CLEANUP_BATCH + 1  # and a bounded batch of the others
    repo.record("10.0.0.10", WINDOW, 10, now=at(later))
    repo.record("10.0.0.11", WINDOW, 10, now=at(later))
    assert rows(engine) == 3  # every failure takes away more expired rows than it adds


def test_concurrent_failures_neither_fail_nor_get_lost(engines: tuple[Engine, Engine]) -> None:
    """Failures arriving together from processes on both engines, while expired rows are cleaned up."""
    old = LoginFailureRepository(engines[0])
    for n in range(300):
        old.record(f"10.2.{n // 256}.{n % 256}", WINDOW, 10, now=at(n / 1000))
    now = at(100)
    jobs = 16
    barrier = threading.Barrier(jobs)

    def fail(n: int) -> float:
        barrier.wait(timeout=30)
        repo = LoginFailureRepository(engines[n % 2])
        return repo.record(f"10.0.0.{n % 2}", WINDOW, 100, now=now + dt.timedelta(milliseconds=n))

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        waits = list(pool.map(fail, range(jobs)))
    assert waits == [0] * jobs
    assert rows(engines[0], "10.0.0.0") == rows(engines[0], "10.0.0.1") == jobs // 2
    assert rows(engines[0]) < 300  # the expired rows are going


def test_long_addresses_are_cut_to_the_column(engines: tuple[Engine, Engine]) -> None:
    repo = LoginFailureRepository(engines[0])
    address = "x" * 200  # a proxy's X-Forwarded-For can hold anything
    assert repo.record(address, WINDOW, 2, now=at(0)) == 0
    assert repo.record(address, WINDOW, 2, now=at(1)) == pytest.approx(59)
    assert rows(engines[0], address[:ADDRESS_LENGTH]) == 2


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_limit_holds_across_processes_sharing_the_index(engines: tuple[Engine, Engine]) -> None:
    """Two processes' limiters, each with its share of the failures: together they reach the limit.

    Each process counted alone (the old per-process limit) would allow this address 2 x 4."""
    clock = Clock()
    one, two = (
        FailedLogins(limit=4, window=WINDOW, clock=clock, shared=LoginFailureRepository(e)) for e in engines
    )
    for limiter in (one, two, one):
        limiter.failed("10.0.0.9")
        assert one.retry_after("10.0.0.9") == two.retry_after("10.0.0.9") == 0
    two.failed("10.0.0.9")  # the fourth: the process that records it knows at once
    assert 58 <= two.retry_after("10.0.0.9") <= 60
    assert one.retry_after("10.0.0.9") == 0  # the other learns at its next failure ...
    one.failed("10.0.0.9")
    assert 58 <= one.retry_after("10.0.0.9") <= 60  # ... the one guess more the bound allows
    assert one.retry_after("10.0.0.10") == two.retry_after("10.0.0.10") == 0
    clock.now += 61  # the window has moved on
    assert one.retry_after("10.0.0.9") == two.retry_after("10.0.0.9") == 0


def test_retry_after_reads_no_index(engines: tuple[Engine, Engine]) -> None:
    """Every request is checked: the check must cost no query, blocked address or not."""
    from sqlalchemy import event

    engine = engines[0]
    limiter = FailedLogins(limit=2, window=WINDOW, shared=LoginFailureRepository(engine))
    limiter.failed("10.0.0.9")
    limiter.failed("10.0.0.9")
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", count)
    try:
        assert limiter.retry_after("10.0.0.9") > 0
        assert limiter.retry_after("10.0.0.10") == 0
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert statements == []
