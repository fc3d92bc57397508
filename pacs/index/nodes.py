"""The DICOM nodes the archive talks to: C-MOVE destinations, storage commitment report targets,
and peers for ``pacs send`` / ``pacs query`` / ``pacs retrieve``."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Engine, delete, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from pacs.context import host_port
from pacs.errors import NotFound, PacsError, ResourceUnavailable
from pacs.index.database import read_transaction, write_transaction
from pacs.index.schema import node


class NodeExists(PacsError):
    """A node with this AE title is already registered."""


@dataclass(frozen=True)
class Node:
    ae_title: str
    host: str
    port: int
    tls: bool = False
    description: str | None = None

    def describe(self) -> str:
        return f"{self.ae_title}@{host_port(self.host, self.port)}" + (" (TLS)" if self.tls else "")


class NodeRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, new: Node, *, replace: bool = False) -> None:
        try:
            with write_transaction(self.engine) as conn:
                if replace:
                    conn.execute(delete(node).where(node.c.ae_title == new.ae_title))
                conn.execute(
                    node.insert().values(
                        ae_title=new.ae_title,
                        host=new.host,
                        port=new.port,
                        tls=new.tls,
                        description=new.description,
                        created_at=dt.datetime.now(dt.UTC),
                    )
                )
        except IntegrityError:
            raise NodeExists(f"a node with AE title {new.ae_title!r} is already registered") from None
        except SQLAlchemyError as exc:
            raise ResourceUnavailable(f"index unavailable: {exc}") from exc

    def remove(self, ae_title: str) -> None:
        with write_transaction(self.engine) as conn:
            removed = conn.execute(delete(node).where(node.c.ae_title == ae_title)).rowcount
        if not removed:
            raise NotFound(f"no node with AE title {ae_title!r}")

    def get(self, ae_title: str) -> Node | None:
        with read_transaction(self.engine) as conn:
            row = conn.execute(select(node).where(node.c.ae_title == ae_title)).first()
        return None if row is None else _node(row)

    def all(self) -> list[Node]:
        with read_transaction(self.engine) as conn:
            rows = conn.execute(select(node).order_by(node.c.ae_title)).all()
        return [_node(row) for row in rows]


def _node(row: object) -> Node:
    return Node(
        ae_title=row.ae_title,  # type: ignore[attr-defined]
        host=row.host,  # type: ignore[attr-defined]
        port=int(row.port),  # type: ignore[attr-defined]
        tls=bool(row.tls),  # type: ignore[attr-defined]
        description=row.description,  # type: ignore[attr-defined]
    )
