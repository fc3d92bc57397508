"""A :class:`~pacs.query.model.Query` → one SQLAlchemy Core ``SELECT``: the only place queries become SQL.

The statement selects the entities of the query level joined with their parents (a series row comes
with its inspection and component), the columns that answer the keys, and, when a key is read from
the DICOM JSON, the metadata of the entity's first instance (current version). It matches every key
it can in SQL; :attr:`SqlPlan.python_keys` are left to :mod:`pacs.query.match`, on the candidates.

Matching rules in SQL, identical on SQLite and PostgreSQL:

* Case: values match case-sensitively (PS3.4 C.2.2.2.1). PostgreSQL's ``=`` and ``LIKE`` are; on
  SQLite, whose ``LIKE`` ignores ASCII case, wildcards become ``GLOB`` (case-sensitive, ``*`` and
  ``?`` like DICOM's, and able to use an index for a literal prefix like PostgreSQL's ``LIKE`` with
  a pattern index, see migration 0003). No connection-wide pragma is needed.
* Person names (PN) match case-insensitively, on ``component_name_key`` (the case-folded name kept by
  ingest, :func:`pacs.diconde.person_name_key`), with the query value case-folded the same way.
* A multi-valued attribute kept backslash-joined in one column (serial numbers, Modalities in
  Study) matches if any value does: ``'\\' || col || '\\'`` contains ``\\value\\``; a wildcard there is
  re-checked per value in Python, since ``*`` could span two values.
* Dates (DA) compare as ``YYYYMMDD`` strings, so a range uses the column's index; times and
  date-times, whose stored forms vary in length, are matched in Python.
* An entity without a value (``NULL``) matches nothing but universal matching.

Results come in the order of the entities' ids (arrival order): deterministic and index-friendly.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    FromClause,
    Integer,
    Select,
    String,
    Table,
    and_,
    exists,
    false,
    func,
    literal,
    or_,
    select,
)

from pacs.index.schema import component, inspection, instance, instance_version, series
from pacs.query.attributes import Column, Computed, FromJson, FromResponse, attribute_for, tag_hex
from pacs.query.model import (
    AnyOf,
    Key,
    Level,
    Matcher,
    Query,
    Range,
    SingleValue,
    UidList,
    Universal,
    Wildcard,
)

ENTITY_ID = "entity_id"
FIRST_JSON = "first_json"

# Function arguments per call of json_object / jsonb_build_object (PostgreSQL allows 100).
_JSON_KEYS_PER_CALL = 40

# The aliases the statements use, made once: an alias builds a proxy of every column of its table,
# which took most of the time of planning a query when each plan made its own.
_ALIASES: dict[str, FromClause] = {
    "current_version": instance_version.alias("current_version"),
    "first_instance": instance.alias("first_instance"),
    "first_version": instance_version.alias("first_version"),
    "first_series": series.alias("first_series"),
    "first_inspection": inspection.alias("first_inspection"),
    "study_instance": instance.alias("study_instance"),
    "study_series": series.alias("study_series"),
    "matching_instance": instance.alias("matching_instance"),
    "matching_series": series.alias("matching_series"),
}

_LEVEL_TABLES: dict[Level, Table] = {
    Level.PATIENT: component,
    Level.STUDY: inspection,
    Level.SERIES: series,
    Level.IMAGE: instance,
}


@dataclass(frozen=True)
class KeySource:
    """Where the value of ``key`` is in a result row: ``label`` names a selected column (``kind``
    "column", or "list" for a comma-separated computed list), or the key is read from the first
    instance's DICOM JSON (``kind`` "json", in :data:`FIRST_JSON`). Keys of levels below the query
    level and keys the response fills have no source."""

    key: Key
    kind: str
    label: str | None = None

    @property
    def tag(self) -> str:
        """The key's tag as in DICOM JSON."""
        return tag_hex(self.key.tag)


@dataclass(frozen=True)
class SqlPlan:
    statement: Select[Any]
    sources: tuple[KeySource, ...]
    python_keys: tuple[Key, ...]  # keys SQL could not decide (or only narrowed)
    paged_in_sql: bool  # limit/offset are in the statement
    order: ColumnElement[Any]  # the entity's id: the statement's order, unique, for reading on after a row

    @cached_property
    def sources_by_tag(self) -> tuple[tuple[str, KeySource], ...]:
        return tuple((source.tag, source) for source in self.sources)


def count_statement(plan: SqlPlan) -> Select[Any]:
    """How many rows ``plan`` selects (exact when it has no Python-side keys)."""
    return select(func.count()).select_from(plan.statement.order_by(None).subquery())


def plan(query: Query, dialect: str) -> SqlPlan:
    """The statement for ``query`` on the ``dialect`` ("sqlite" or "postgresql")."""
    builder = _Builder(query, dialect)
    return builder.build()


class _Builder:
    def __init__(self, query: Query, dialect: str) -> None:
        self.query = query
        self.dialect = dialect
        self.level = query.level
        self.entity = _LEVEL_TABLES[self.level]
        # The current version of an image, joined only when a key needs it.
        self.current = _ALIASES["current_version"]
        self.tables: dict[str, FromClause] = {
            "component": component,
            "inspection": inspection,
            "series": series,
            "instance": instance,
            "instance_version": self.current,
        }
        self.columns: list[Any] = [self.entity.c.id.label(ENTITY_ID)]
        self.conditions: list[ColumnElement[bool]] = []
        self.sources: list[KeySource] = []
        self.python_keys: list[Key] = []
        self.needs_version = False
        self.json_tags: list[str] = []  # the keys read from the first instance's DICOM JSON

    def build(self) -> SqlPlan:
        for number, key in enumerate(self.query.keys):
            self._add_key(key, f"k{number}")
        if self.json_tags:
            self.columns.append(self._first_instance_json().label(FIRST_JSON))
        statement = (
            select(*self.columns).select_from(self._from()).where(*self.conditions).order_by(self.entity.c.id)
        )
        paged = not self.python_keys
        if paged and self.query.offset:
            statement = statement.offset(self.query.offset)
        if paged and self.query.limit is not None:
            statement = statement.limit(self.query.limit)
        return SqlPlan(statement, tuple(self.sources), tuple(self.python_keys), paged, self.entity.c.id)

    # -- FROM ---------------------------------------------------------------------------------
    def _from(self) -> FromClause:
        joined: FromClause = self.entity
        if self.level is Level.IMAGE:
            joined = joined.join(series, series.c.id == instance.c.series_id)
            if self.needs_version:
                joined = joined.outerjoin(self.current, self.current.c.id == instance.c.current_version_id)
        if self.level.depth >= Level.SERIES.depth:
            joined = joined.join(inspection, inspection.c.id == series.c.inspection_id)
        if self.level.depth >= Level.STUDY.depth:
            joined = joined.join(component, component.c.id == inspection.c.component_id)
        return joined

    def _first_instance_json(self) -> Any:
        """The DICOM JSON of the entity's first instance (lowest id), current version: a correlated
        subquery that follows the foreign key indexes down from the entity."""
        if self.level is Level.IMAGE:
            self.needs_version = True
            return self._json_keys(self.current.c.dicom_json)
        first = _ALIASES["first_instance"]
        version = _ALIASES["first_version"]
        joined: FromClause = first.join(version, version.c.id == first.c.current_version_id)
        if self.level is Level.SERIES:
            where = first.c.series_id == series.c.id
        else:
            first_series = _ALIASES["first_series"]
            joined = joined.join(first_series, first_series.c.id == first.c.series_id)
            if self.level is Level.STUDY:
                where = first_series.c.inspection_id == inspection.c.id
            else:
                first_inspection = _ALIASES["first_inspection"]
                joined = joined.join(first_inspection, first_inspection.c.id == first_series.c.inspection_id)
                where = first_inspection.c.component_id == component.c.id
        return (
            select(self._json_keys(version.c.dicom_json))
            .select_from(joined)
            .where(where)
            .order_by(first.c.id)
            .limit(1)
        )

    def _json_keys(self, dicom_json: Any) -> Any:
        """Only the keys' elements of the DICOM JSON (absent ones null), built in the database: a
        multi-frame instance's JSON can be megabytes, read whole for every candidate otherwise."""
        sqlite = self.dialect == "sqlite"
        parts = []
        for start in range(0, len(self.json_tags), _JSON_KEYS_PER_CALL):
            args: list[Any] = []
            for tag in self.json_tags[start : start + _JSON_KEYS_PER_CALL]:
                if sqlite:
                    value = func.json_extract(dicom_json, literal(f'$."{tag}"', String()))
                else:
                    value = dicom_json.op("->")(literal(tag, String()))
                args += [literal(tag, String()), value]
            parts.append(func.json_object(*args) if sqlite else func.jsonb_build_object(*args))
        combined: Any = parts[0]
        for part in parts[1:]:
            combined = func.json_patch(combined, part) if sqlite else combined.op("||")(part)
        return combined

    # -- keys ---------------------------------------------------------------------------------
    def _add_key(self, key: Key, label: str) -> None:
        attribute = attribute_for(key.tag, key.vr)
        home = attribute.home_level(self.query.model)
        source = attribute.source
        if isinstance(source, FromResponse):
            return  # answered by the response; its value in a request is not matched
        if home is not None and home.depth > self.level.depth:
            return  # below the query level: universal (pacs.query.identifier checked), returned empty
        if isinstance(source, Column):
            if source.table == "instance_version":
                self.needs_version = True
            table = self.tables[source.table]
            self.columns.append(table.c[source.column].label(label))
            self.sources.append(KeySource(key, "column", label))
            condition, recheck = self._column_condition(key.matcher, key.vr, source, table)
            if condition is not None:
                self.conditions.append(condition)
            if recheck:
                self.python_keys.append(key)
        elif isinstance(source, Computed):
            self.columns.append(self._sop_classes_in_study().label(label))
            self.sources.append(KeySource(key, "list", label))
            if not key.is_universal:
                self.conditions.append(self._sop_classes_condition(key.matcher))
        elif isinstance(source, FromJson):
            if tag_hex(key.tag) not in self.json_tags:
                self.json_tags.append(tag_hex(key.tag))
            self.sources.append(KeySource(key, "json"))
            if not key.is_universal:
                self.python_keys.append(key)

    def _column_condition(
        self, matcher: Matcher, vr: str, source: Column, table: FromClause
    ) -> tuple[ColumnElement[bool] | None, bool]:
        """The SQL condition for ``matcher`` on a column, and whether Python must re-check it."""
        if isinstance(matcher, Universal):
            return None, False
        if isinstance(matcher, AnyOf):
            parts = [self._column_condition(m, vr, source, table) for m in matcher.matchers]
            if any(condition is None for condition, _ in parts):  # one alternative is Python-only
                return None, True
            return or_(*(c for c, _ in parts if c is not None)), any(recheck for _, recheck in parts)
        person_name = source.match_column is not None
        column = table.c[source.match_column or source.column]
        if isinstance(column.type, Integer | Float):
            return _number_condition(matcher, column)
        if vr in ("TM", "DT"):
            return None, True
        if isinstance(matcher, SingleValue):
            value = matcher.value.casefold() if person_name else matcher.value
            if source.multi_valued:
                return self._like(_delimited(column), f"*\\{value}\\*"), False
            return column == value, False
        if isinstance(matcher, Wildcard):
            pattern = matcher.pattern.casefold() if person_name else matcher.pattern
            if source.multi_valued:
                return self._like(_delimited(column), f"*\\{pattern}\\*"), True
            return self._like(column, pattern), False
        if isinstance(matcher, Range):  # DA: YYYYMMDD compares as text
            bounds = []
            if matcher.start:
                bounds.append(column >= matcher.start)
            if matcher.end:
                bounds.append(column <= matcher.end)
            return and_(*bounds), False
        if isinstance(matcher, UidList):
            return column.in_(matcher.uids), False
        return None, True

    def _like(self, expression: Any, pattern: str) -> ColumnElement[bool]:
        """DICOM wildcards (``*``, ``?``) as a case-sensitive pattern match."""
        if self.dialect == "sqlite":
            return expression.op("GLOB")(pattern.replace("[", "[[]"))  # type: ignore[no-any-return]
        out = []
        for char in pattern:
            if char == "*":
                out.append("%")
            elif char == "?":
                out.append("_")
            elif char in "\\%_":
                out.append("\\" + char)  # PostgreSQL's default LIKE escape is the backslash
            else:
                out.append(char)
        return expression.like("".join(out))  # type: ignore[no-any-return]

    # -- SOP Classes in Study -----------------------------------------------------------------
    def _sop_classes_in_study(self) -> Any:
        """The study's distinct SOP Class UIDs, comma-separated (a UID never contains a comma)."""
        member = _ALIASES["study_instance"]
        member_series = _ALIASES["study_series"]
        uid = member.c.sop_class_uid.distinct()
        joined = member.join(member_series, member_series.c.id == member.c.series_id)
        aggregate = func.group_concat(uid) if self.dialect == "sqlite" else func.string_agg(uid, ",")
        return (
            select(aggregate)
            .select_from(joined)
            .where(member_series.c.inspection_id == inspection.c.id)
            .scalar_subquery()
        )

    def _sop_classes_condition(self, matcher: Matcher) -> ColumnElement[bool]:
        member = _ALIASES["matching_instance"]
        member_series = _ALIASES["matching_series"]
        uids = _uids(matcher)
        return exists(
            select(member.c.id)
            .select_from(member.join(member_series, member_series.c.id == member.c.series_id))
            .where(member_series.c.inspection_id == inspection.c.id, member.c.sop_class_uid.in_(uids))
        )


def _uids(matcher: Matcher) -> tuple[str, ...]:
    if isinstance(matcher, SingleValue):
        return (matcher.value,)
    if isinstance(matcher, UidList):
        return matcher.uids
    if isinstance(matcher, AnyOf):
        return tuple(uid for m in matcher.matchers for uid in _uids(m))
    return ()


def _number_condition(matcher: Matcher, column: Any) -> tuple[ColumnElement[bool] | None, bool]:
    if isinstance(matcher, SingleValue):
        number = float(matcher.value)
        if isinstance(column.type, Integer):
            return (column == int(number), False) if number.is_integer() else (false(), False)
        return column == number, False
    return None, True  # the identifier allows only single values for numbers


def _delimited(column: Any) -> Any:
    """``'\\' || column || '\\'``: each value of a multi-valued column between backslashes."""
    return literal("\\", String()) + column + literal("\\", String())
