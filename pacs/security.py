"""Who may do what over HTTP and DICOM: roles, the permissions each grants, API tokens, and the
limit on failed logins.

Roles (issue: "Authentication and roles"): ``device`` stores only; ``inspector`` queries, retrieves
and views; ``auditor`` reads everything, evidence and the audit trail included, and changes
nothing; ``admin`` does everything, users and nodes included.

API tokens are random (256 bits from :mod:`secrets`) and only their SHA-256 is kept in the index
(:mod:`pacs.index.users`). A salted, deliberately slow hash (bcrypt, scrypt, argon2) protects
*passwords*, whose few bits of entropy can be guessed offline from a stolen hash; nobody can guess a
256-bit random value from its SHA-256, so a fast unsalted hash is as safe here and lets a request
find its user by an indexed lookup of the hash, without comparing against every stored one.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

#: Bytes of randomness in a token (``secrets.token_urlsafe``: 43 URL-safe characters).
TOKEN_BYTES = 32

#: Failed logins (unknown or revoked tokens) one client address may make within the window ...
FAILED_LOGIN_LIMIT = 10
#: ... of this many seconds before it is answered 429 until the oldest failure leaves the window.
FAILED_LOGIN_WINDOW = 60.0


class Permission(enum.StrEnum):
    STORE = "store"  # C-STORE, storage commitment, STOW-RS
    QUERY = "query"  # C-FIND, QIDO-RS, /api/parts
    RETRIEVE = "retrieve"  # C-MOVE, C-GET, WADO-RS / WADO-URI, rendered images
    DECIDE = "decide"  # record an inspection decision (disposition)
    AUDIT = "audit"  # evidence and audit trail
    ADMIN = "admin"  # users, nodes, sending to nodes, system operations


class Role(enum.StrEnum):
    DEVICE = "device"
    INSPECTOR = "inspector"
    AUDITOR = "auditor"
    ADMIN = "admin"


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.DEVICE: frozenset({Permission.STORE}),
    Role.INSPECTOR: frozenset({Permission.QUERY, Permission.RETRIEVE, Permission.DECIDE}),
    Role.AUDITOR: frozenset({Permission.QUERY, Permission.RETRIEVE, Permission.AUDIT}),
    Role.ADMIN: frozenset(Permission),
}


def allows(role: Role, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS[role]


def parse_role(value: str) -> Role:
    """A role by name, case-insensitive; ``ValueError`` naming the valid ones otherwise."""
    try:
        return Role(value.strip().lower())
    except ValueError:
        names = ", ".join(r.value for r in Role)
        raise ValueError(f"unknown role {value!r}: one of {names}") from None


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    """What the index keeps of a token (see the module docstring for why SHA-256 suffices)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class SharedFailures(Protocol):
    """Where every process of the archive records failed logins (:mod:`pacs.index.login_failures`)."""

    def record(self, address: str, window: float, limit: int) -> float:
        """Record one failed login of ``address`` now; the seconds until ``address`` has fewer than
        ``limit`` failures within the last ``window`` seconds, counted over every process (0: it
        has fewer already)."""
        ...


class FailedLogins:
    """Failed logins per client address in a sliding window; addresses over the limit must wait.

    With ``shared`` (the index), the limit holds across the worker processes of ``pacs serve`` and
    across nodes on one database. Checking an address costs no index query, because every request
    is checked and most carry a valid token: each process keeps the addresses it knows to be
    blocked, and until when. A failed login is recorded in the index, and the same transaction
    counts the address's failures within the window over all processes; at the limit the address
    is blocked here until enough of them leave the window. Another process learns of the block at
    its own next failure from that address, so across the cluster at most ``limit + processes - 1``
    guesses per window are checked (plus any requests of the address already past the check when
    the limit was reached): still no help to somebody guessing a 256-bit token, and the log and
    the index are not flooded.

    The process also counts its own failures, as it did before the count was shared. That count
    is what applies when the index cannot be reached: the failure is logged, the caller still gets
    401, and the limit holds per process until the index is back.
    """

    def __init__(
        self,
        limit: int = FAILED_LOGIN_LIMIT,
        window: float = FAILED_LOGIN_WINDOW,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = 10_000,
        shared: SharedFailures | None = None,
    ) -> None:
        self.limit = limit
        self.window = window
        self.shared = shared
        self._clock = clock
        self._max_addresses = max_addresses
        self._failures: dict[str, deque[float]] = {}
        #: Addresses the shared count blocked, and until when (on ``clock``).
        self._blocked: dict[str, float] = {}
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> int:
        """Seconds ``address`` must wait before trying again; 0 when it may try now."""
        now = self._clock()
        with self._lock:
            return max(self._blocked_for(address, now), self._counted_for(address, now))

    def failed(self, address: str) -> None:
        """Count a failed login of ``address``: here, and in ``shared`` when there is one."""
        now = self._clock()
        with self._lock:
            if address not in self._failures and len(self._failures) >= self._max_addresses:
                self._forget_expired(now)
            failures = self._failures.setdefault(address, deque())
            self._expire(failures, now)
            failures.append(now)
            while len(failures) > self.limit:
                failures.popleft()
        if self.shared is None:
            return
        try:
            wait = self.shared.record(address, self.window, self.limit)
        except Exception as exc:  # the index is unavailable: this process's own count applies
            log.error(
                "cannot record a failed login from %s in the index (%s); until it is back, "
                "failed logins are limited per process",
                address,
                exc,
            )
            return
        if wait > 0:
            with self._lock:
                if address not in self._blocked and len(self._blocked) >= self._max_addresses:
                    self._forget_unblocked(now)
                self._blocked[address] = max(self._blocked.get(address, now), now + wait)

    def _blocked_for(self, address: str, now: float) -> int:
        until = self._blocked.get(address)
        if until is None:
            return 0
        if until <= now:
            del self._blocked[address]
            return 0
        return _seconds(until - now)

    def _counted_for(self, address: str, now: float) -> int:
        failures = self._failures.get(address)
        if failures is None:
            return 0
        self._expire(failures, now)
        if not failures:
            del self._failures[address]
            return 0
        if len(failures) < self.limit:
            return 0
        return _seconds(failures[0] + self.window - now)

    def _expire(self, failures: deque[float], now: float) -> None:
        while failures and failures[0] <= now - self.window:
            failures.popleft()

    def _forget_expired(self, now: float) -> None:
        """Bound the memory a flood of addresses can take: drop those with nothing in the window,
        and if that is not enough, the oldest."""
        for address in list(self._failures):
            self._expire(self._failures[address], now)
            if not self._failures[address]:
                del self._failures[address]
        while len(self._failures) >= self._max_addresses:
            del self._failures[next(iter(self._failures))]

    def _forget_unblocked(self, now: float) -> None:
        """The same bound for the blocked addresses: the index still counts any dropped here."""
        for address, until in list(self._blocked.items()):
            if until <= now:
                del self._blocked[address]
        while len(self._blocked) >= self._max_addresses:
            del self._blocked[next(iter(self._blocked))]


def _seconds(wait: float) -> int:
    """A wait as the whole seconds of ``Retry-After``: rounded up, at least 1."""
    return max(1, int(wait + 0.999))
