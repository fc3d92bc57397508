"""Users of the HTTP API and their tokens (``pacs users``, ``Authorization: Bearer``).

Each user has one API token, shown once when the user is made and kept only as its SHA-256
(:func:`pacs.security.token_hash`). A token may carry an expiry (``expires_at``); ``renew`` gives
the user a new token (the old one stops working) with a new expiry. Revoking a user keeps the row
with ``revoked_at`` set: the token stops working at once and the name is never handed to somebody
else.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from pacs.errors import NotFound, PacsError, ResourceUnavailable
from pacs.index.database import read_transaction, write_transaction
from pacs.index.schema import users
from pacs.security import Role, new_token, parse_role, token_hash

#: The user ``pacs serve`` creates when it starts on an archive without users.
FIRST_ADMIN = "admin"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")


class UserExists(PacsError):
    """A user of this name exists (or existed: revoked names are not reused)."""


class InvalidUser(PacsError):
    """A user name or role that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def expired(self, now: dt.datetime | None = None) -> bool:
        """True once the token's expiry has passed (never for a token without one)."""
        return self.expires_at is not None and self.expires_at <= (now or dt.datetime.now(dt.UTC))


def validate_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidUser(
            f"user name {name!r}: 1 to 64 letters, digits and . _ @ + -, starting with a letter or digit"
        )
    return name


class UserRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, name: str, role: Role | str, expires_at: dt.datetime | None = None) -> str:
        """Create a user; returns its API token, which is not kept anywhere and cannot be shown again.
        ``expires_at``: when the token stops working (None: never)."""
        validate_name(name)
        try:
            role = role if isinstance(role, Role) else parse_role(role)
        except ValueError as exc:
            raise InvalidUser(str(exc)) from None
        token = new_token()
        try:
            with write_transaction(self.engine) as conn:
                conn.execute(
                    users.insert().values(
                        name=name,
                        role=role.value,
                        token_sha256=token_hash(token),
                        created_at=dt.datetime.now(dt.UTC),
                        expires_at=expires_at,
                    )
                )
        except IntegrityError:
            raise UserExists(f"a user named {name!r} exists already (revoked names are not reused)") from None
        except SQLAlchemyError as exc:
            raise ResourceUnavailable(f"index unavailable: {exc}") from exc
        return token

    def add_first_admin(self) -> str | None:
        """The ``admin`` user and its token when there are no users at all; None otherwise.

        Several ``pacs serve`` nodes may start at once on one database: the unique name lets one
        of them create it, the others find a user and create nothing.
        """
        if self.count():
            return None
        try:
            return self.add(FIRST_ADMIN, Role.ADMIN)
        except UserExists:
            return None

    def authenticate(self, token: str) -> User | None:
        """The active user holding ``token``; None for an unknown or revoked token. An expired
        token still finds its user (the caller says "expired", :meth:`User.expired`)."""
        with read_transaction(self.engine) as conn:
            row = conn.execute(
                select(users).where(users.c.token_sha256 == token_hash(token), users.c.revoked_at.is_(None))
            ).first()
        return None if row is None else _user(row)

    def revoke(self, name: str) -> User:
        with write_transaction(self.engine) as conn:
            changed = conn.execute(
                update(users)
                .where(users.c.name == name, users.c.revoked_at.is_(None))
                .values(revoked_at=dt.datetime.now(dt.UTC))
            ).rowcount
            row = conn.execute(select(users).where(users.c.name == name)).first()
        if row is None:
            raise NotFound(f"no user named {name!r}")
        if not changed:
            raise NotFound(f"user {name!r} is revoked already")
        return _user(row)

    def renew(self, name: str, expires_at: dt.datetime | None = None) -> str:
        """A new API token for an active user, replacing the old one (which stops working at once);
        returns the token, shown only this once. ``expires_at`` as for :meth:`add`."""
        token = new_token()
        try:
            with write_transaction(self.engine) as conn:
                changed = conn.execute(
                    update(users)
                    .where(users.c.name == name, users.c.revoked_at.is_(None))
                    .values(token_sha256=token_hash(token), expires_at=expires_at)
                ).rowcount
        except SQLAlchemyError as exc:
            raise ResourceUnavailable(f"index unavailable: {exc}") from exc
        if not changed:
            user = self.get(name)
            raise NotFound(
                f"user {name!r} is revoked: its token cannot be renewed"
                if user
                else f"no user named {name!r}"
            )
        return token

    def get(self, name: str) -> User | None:
        with read_transaction(self.engine) as conn:
            row = conn.execute(select(users).where(users.c.name == name)).first()
        return None if row is None else _user(row)

    def all(self) -> list[User]:
        with read_transaction(self.engine) as conn:
            rows = conn.execute(select(users).order_by(users.c.name)).all()
        return [_user(row) for row in rows]

    def count(self) -> int:
        with read_transaction(self.engine) as conn:
            return int(conn.execute(select(func.count()).select_from(users)).scalar_one())


def _user(row: object) -> User:
    return User(
        name=row.name,  # type: ignore[attr-defined]
        role=Role(row.role),  # type: ignore[attr-defined]
        created_at=row.created_at,  # type: ignore[attr-defined]
        revoked_at=row.revoked_at,  # type: ignore[attr-defined]
        expires_at=row.expires_at,  # type: ignore[attr-defined]
    )
