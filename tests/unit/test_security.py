"""Roles, tokens, the failed-login limit and the ``allowed_peers`` role suffix, without a server."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing

import pytest

from dicom_nodes.policy import AssociationLimiter, AssociationPolicy
from pacs.config import ConfigError, load_settings, peer_role, split_peer
from pacs.errors import ResourceUnavailable
from pacs.security import (
    TOKEN_BYTES,
    FailedLogins,
    Permission,
    Role,
    allows,
    new_token,
    parse_role,
    token_hash,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("role", "granted"),
    [
        (Role.DEVICE, {Permission.STORE}),
        (Role.INSPECTOR, {Permission.QUERY, Permission.RETRIEVE, Permission.DECIDE}),
        (Role.AUDITOR, {Permission.QUERY, Permission.RETRIEVE, Permission.AUDIT}),
        (Role.ADMIN, set(Permission)),
    ],
)
def test_each_role_grants_exactly_its_permissions(role: Role, granted: set[Permission]) -> None:
    assert {p for p in Permission if allows(role, p)} == granted


def test_roles_parse_case_insensitively_and_unknown_ones_name_the_valid_ones() -> None:
    assert parse_role(" Inspector ") is Role.INSPECTOR
    with pytest.raises(ValueError, match="unknown role 'root': one of device, inspector, auditor, admin"):
        parse_role("root")


def test_tokens_are_random_url_safe_and_kept_as_their_sha256() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    for token in tokens:
        assert len(token) >= TOKEN_BYTES * 4 // 3
        assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        assert token_hash(token) == hashlib.sha256(token.encode()).hexdigest()


def test_failed_logins_block_an_address_after_the_limit_until_the_window_moves_on() -> None:
    clock = Clock()
    limiter = FailedLogins(limit=3, window=60, clock=clock)
    for _ in range(2):
        limiter.failed("10.0.0.9")
        clock.now += 1
    assert limiter.retry_after("10.0.0.9") == 0
    limiter.failed("10.0.0.9")  # the third, at t=1002; the first was at t=1000
    assert limiter.retry_after("10.0.0.9") == 58
    assert limiter.retry_after("10.0.0.10") == 0  # other addresses are not affected
    clock.now += 57.5
    assert limiter.retry_after("10.0.0.9") == 1
    clock.now += 0.5  # the first failure leaves the window
    assert limiter.retry_after("10.0.0.9") == 0


def test_failed_logins_keep_bounded_memory_under_a_flood_of_addresses() -> None:
    clock = Clock()
    limiter = FailedLogins(limit=2, window=60, clock=clock, max_addresses=100)
    for n in range(1000):
        limiter.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(limiter._failures) <= 100


class SharedCount:
    """What the index does for :class:`FailedLogins` (``pacs.index.login_failures``), in memory:
    the failures of every process, on a clock of its own. ``down``: the index cannot be reached."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.failures: dict[str, list[float]] = {}
        self.down = False

    def record(self, address: str, window: float, limit: int) -> float:
        if self.down:
            raise ResourceUnavailable("index unavailable: connection refused")
        now = self.clock()
        recent = [t for t in self.failures.get(address, []) if t > now - window] + [now]
        self.failures[address] = recent
        return recent[-limit] + window - now if len(recent) >= limit else 0.0


def test_failed_logins_of_other_processes_block_an_address_at_its_next_failure_here() -> None:
    clock = Clock()
    shared = SharedCount(clock)
    here = FailedLogins(limit=3, window=60, clock=clock, shared=shared)
    elsewhere = FailedLogins(limit=3, window=60, clock=clock, shared=shared)
    elsewhere.failed("10.0.0.9")
    clock.now += 1
    elsewhere.failed("10.0.0.9")
    clock.now += 1
    assert here.retry_after("10.0.0.9") == 0  # asking costs nothing and knows nothing yet
    here.failed("10.0.0.9")  # the third in the whole archive, the first here
    assert here.retry_after("10.0.0.9") == 58  # until the first, in the other process, is 60 s old
    clock.now += 58
    assert here.retry_after("10.0.0.9") == 0


def test_an_address_blocked_by_the_shared_count_stays_blocked_until_it_falls_below_the_limit() -> None:
    clock = Clock()
    shared = SharedCount(clock)
    limiters = [FailedLogins(limit=2, window=60, clock=clock, shared=shared) for _ in range(3)]
    for limiter in limiters:  # t = 1000, 1010, 1020: one more than the limit
        limiter.failed("10.0.0.9")
        clock.now += 10
    # Each process knows what it saw: the second reached the limit at t=1010, free when t=1000 is
    # 60 s old; the third saw three failures, which stay at the limit until t=1010 is 60 s old.
    assert [limiter.retry_after("10.0.0.9") for limiter in limiters] == [0, 30, 40]


def test_failed_logins_count_in_the_process_while_the_index_is_unavailable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    shared = SharedCount(clock)
    shared.down = True
    limiter = FailedLogins(limit=3, window=60, clock=clock, shared=shared)
    with caplog.at_level(logging.ERROR, logger="pacs.security"):
        for _ in range(3):
            limiter.failed("10.0.0.9")  # no exception: the caller still gets its 401
    assert limiter.retry_after("10.0.0.9") == 60
    assert len(caplog.records) == 3
    assert "cannot record a failed login from 10.0.0.9 in the index" in caplog.records[0].getMessage()
    assert "limited per process" in caplog.records[0].getMessage()


def test_blocked_addresses_keep_bounded_memory_under_a_flood_of_addresses() -> None:
    clock = Clock()
    limiter = FailedLogins(limit=1, window=60, clock=clock, max_addresses=100, shared=SharedCount(clock))
    for n in range(1000):
        limiter.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(limiter._blocked) <= 100 and len(limiter._failures) <= 100
    assert limiter.retry_after("10.0.3.231") == 60  # the latest are kept


@pytest.mark.parametrize(
    ("entry", "title", "host", "role"),
    [
        ("CT_SCANNER", "CT_SCANNER", None, Role.ADMIN),
        ("DR_PANEL=device", "DR_PANEL", None, Role.DEVICE),
        ("WS1@10.0.0.5=inspector", "WS1", "10.0.0.5", Role.INSPECTOR),
        ("WS1@10.0.0.5", "WS1", "10.0.0.5", Role.ADMIN),
        ("SIXTEEN_CHARS_AE=Auditor", "SIXTEEN_CHARS_AE", None, Role.AUDITOR),
    ],
)
def test_allowed_peer_entries_carry_an_optional_role(
    entry: str, title: str, host: str | None, role: Role
) -> None:
    assert split_peer(entry) == (title, host)
    assert peer_role(entry) is role
    assert load_settings({"allowed_peers": entry}).allowed_peers == [entry]


def test_an_allowed_peer_with_an_unknown_role_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="allowed_peers.*'UT_RIG=operator'.*unknown role 'operator'"):
        load_settings({"allowed_peers": "CT_SCANNER,UT_RIG=operator"})


def policy(*entries: str) -> AssociationPolicy:
    slots = multiprocessing.get_context("fork").Array("i", 1)
    return AssociationPolicy(list(entries), AssociationLimiter(4, slots))


def test_association_roles_from_the_allowlist() -> None:
    allowlist = policy("DR_PANEL=device", "WS1=device", "WS1@127.0.0.1=inspector", "CT_SCANNER")
    assert allowlist.role_of("DR_PANEL", "10.1.1.1") is Role.DEVICE
    assert allowlist.role_of("CT_SCANNER", "10.1.1.1") is Role.ADMIN  # no suffix: everything, as before
    assert allowlist.role_of("WS1", "127.0.0.1") is Role.INSPECTOR  # the host entry wins
    assert allowlist.role_of("WS1", "10.1.1.1") is Role.DEVICE
    assert allowlist.role_of("STRANGER", "127.0.0.1") is None
    assert policy().role_of("ANYONE", "10.1.1.1") is Role.ADMIN  # an empty allowlist restricts nothing
