"""Find components, inspections, series and instances: one query model for C-FIND and QIDO-RS.

The index answers every query (:mod:`pacs.query.sql`); no stored object is opened. Results are
produced lazily, a batch of rows at a time, so a caller that stops reading (C-CANCEL, a closed HTTP
response) stops the query: closing the iterator ends its read transaction.

Most queries match a few entities, and their cost is database round trips, not rows. So rows are
read in batches of ``batch_size``, each one plain ``LIMIT`` query outside a transaction (one round
trip for most queries, no BEGIN or COMMIT), the next batch starting after the last entity read
(ids are unique and the statement's order). A batch sees what was committed when it ran: an entity
stored while a long answer streams comes at its end, and none is given twice or skipped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator, Iterator, Mapping
from typing import Any

from sqlalchemy import Connection, Engine, Row
from sqlalchemy.exc import SQLAlchemyError

from pacs import metrics
from pacs.errors import ResourceUnavailable
from pacs.index.database import read_batches, read_transaction
from pacs.query import match, sql
from pacs.query.attributes import json_element, tag_hex
from pacs.query.model import Match, Query, SequenceMatch

log = logging.getLogger(__name__)


class SearchService:
    def __init__(self, engine: Engine, *, batch_size: int = 200) -> None:
        self.engine = engine
        self.batch_size = batch_size

    @metrics.instrument_search
    def find(self, query: Query) -> Generator[Match, None, None]:
        """The entities matching ``query``, in arrival order. Raises :class:`ResourceUnavailable`
        (while iterating) when the index fails. Close the iterator to stop early."""
        plan = sql.plan(query, self.engine.dialect.name)
        return self._run(query, plan)

    def count(self, query: Query) -> int:
        """How many entities match (``limit``/``offset`` ignored)."""
        unpaged = Query(query.model, query.level, query.keys, query.character_set)
        plan = sql.plan(unpaged, self.engine.dialect.name)
        if plan.python_keys:
            return sum(1 for _ in self._run(unpaged, plan))
        try:
            with read_transaction(self.engine) as conn:
                return int(conn.execute(sql.count_statement(plan)).scalar_one())
        except SQLAlchemyError as exc:
            raise ResourceUnavailable(f"index unavailable: {getattr(exc, 'orig', None) or exc}") from exc

    def _run(self, query: Query, plan: sql.SqlPlan) -> Generator[Match, None, None]:
        skip = 0 if plan.paged_in_sql else query.offset
        left = None if plan.paged_in_sql else query.limit
        if left == 0:
            return
        try:
            with read_batches(self.engine) as conn:
                for row in self._rows(conn, plan, query.limit if plan.paged_in_sql else None):
                    values = _values(plan, row._mapping)
                    if not all(match.matches(key, values.get(tag_hex(key.tag))) for key in plan.python_keys):
                        continue
                    if skip:
                        skip -= 1
                        continue
                    yield Match(query.level, int(row._mapping[sql.ENTITY_ID]), _for_response(query, values))
                    if left is not None:
                        left -= 1
                        if left == 0:
                            return
        except SQLAlchemyError as exc:
            raise ResourceUnavailable(f"index unavailable: {getattr(exc, 'orig', None) or exc}") from exc

    def _rows(self, conn: Connection, plan: sql.SqlPlan, limit: int | None) -> Iterator[Row[Any]]:
        """The statement's rows in order, ``batch_size`` at a time. ``limit``: the one the
        statement has (the query's, when it is paged in SQL; its offset applies to the first batch)."""
        statement = plan.statement
        while True:
            size = self.batch_size if limit is None else min(self.batch_size, limit)
            rows = conn.execute(statement.limit(size)).all()
            yield from rows
            if limit is not None:
                limit -= len(rows)
            if len(rows) < size or limit == 0:
                return
            statement = plan.statement.where(plan.order > rows[-1]._mapping[sql.ENTITY_ID]).offset(None)


def _values(plan: sql.SqlPlan, row: Mapping[Any, Any]) -> dict[str, dict[str, Any]]:
    """The DICOM JSON elements of the keys, as the row has them."""
    first = row.get(sql.FIRST_JSON)
    if isinstance(first, str | bytes):  # a driver that does not decode JSON
        first = json.loads(first)
    values: dict[str, dict[str, Any]] = {}
    for tag, source in plan.sources_by_tag:
        element: dict[str, Any] | None
        if source.kind == "column":
            element = json_element(source.key.vr, row[source.label])
        elif source.kind == "list":
            text = row[source.label]
            element = {"vr": source.key.vr, "Value": sorted(set(text.split(",")))} if text else None
        else:
            element = first.get(tag) if isinstance(first, dict) else None
            if element is not None and "BulkDataURI" in element:
                element = None  # bulk data stays in the stored object: unknown here
        if element is not None:
            values[tag] = element
    return values


def _for_response(query: Query, values: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Sequences keep only the items that matched, with the requested item keys (PS3.4 C.2.2.2.6)."""
    for key in query.keys:
        if isinstance(key.matcher, SequenceMatch):
            tag = tag_hex(key.tag)
            if tag in values:
                values[tag] = {"vr": "SQ", "Value": match.response_items(key.matcher, values[tag])}
    return values
