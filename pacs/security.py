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
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable

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


class FailedLogins:
    """Failed logins per client address in a sliding window; addresses over the limit must wait.

    Kept in the process: with several server processes each counts its own share, so an address
    gets at most ``limit`` failures per window in each process. That still turns guessing a
    256-bit token from hopeless into more hopeless; the point is to keep a misconfigured client or
    a scanner from flooding the log and the index.
    """

    def __init__(
        self,
        limit: int = FAILED_LOGIN_LIMIT,
        window: float = FAILED_LOGIN_WINDOW,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = 10_000,
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._max_addresses = max_addresses
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> int:
        """Seconds ``address`` must wait before trying again; 0 when it may try now."""
        now = self._clock()
        with self._lock:
            failures = self._failures.get(address)
            if failures is None:
                return 0
            self._expire(failures, now)
            if not failures:
                del self._failures[address]
                return 0
            if len(failures) < self.limit:
                return 0
            return max(1, int(failures[0] + self.window - now + 0.999))

    def failed(self, address: str) -> None:
        now = self._clock()
        with self._lock:
            if address not in self._failures and len(self._failures) >= self._max_addresses:
                self._forget_expired(now)
            failures = self._failures.setdefault(address, deque())
            self._expire(failures, now)
            failures.append(now)
            while len(failures) > self.limit:
                failures.popleft()

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
