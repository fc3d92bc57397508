"""The audit trail: who stored, queried, retrieved, viewed, exported, deleted or changed what, and when.

Append-only and hash-chained. Each entry has a sequence number without gaps and carries the SHA-256
of its own fields and of the previous entry's hash; ``audit_head`` (one row) holds the last number
and hash. :meth:`AuditTrail.verify` recomputes the chain and names the first entry that was edited,
inserted or deleted (a deleted tail disagrees with the head). Appending takes the head's row lock
(``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's write transactions are serialised anyway), so
several processes on one index extend one chain.

What is recorded synchronously, in its own transaction (or the caller's): changes - users, nodes,
decisions, deletions. Reads (queries, retrieves, views) and failed logins are queued and written by
a background thread in batches within a fraction of a second (:meth:`AuditTrail.record_later`), so
that a C-FIND does not wait for a commit; ``close()`` writes what is queued. A chain held only in
the database cannot stop someone who can rewrite the whole table and the head together; export it
(JSON lines, or DICOM audit messages for an audit record repository) to keep copies elsewhere.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import logging
import queue
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.exc import SQLAlchemyError

from pacs.context import CallerContext, host_of
from pacs.errors import ResourceUnavailable
from pacs.index.database import read_transaction, write_transaction
from pacs.index.schema import audit_entry, audit_head, component, inspection, instance, series

log = logging.getLogger(__name__)

GENESIS = "0" * 64
#: Queued entries written per transaction, and how long one may wait in the queue.
BATCH = 500
LINGER_SECONDS = 0.2
#: Entries kept in memory while the index is down; beyond, the oldest are dropped (and logged).
MAX_PENDING = 100_000


class Action(enum.StrEnum):
    STORE = "store"
    QUERY = "query"
    RETRIEVE = "retrieve"
    VIEW = "view"
    EXPORT = "export"
    DELETE = "delete"
    DECISION = "decision"
    USER_CHANGE = "user-change"
    NODE_CHANGE = "node-change"
    CONFIG_CHANGE = "config-change"
    LOGIN_FAILED = "login-failed"


class Outcome(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"  # the request was understood and failed (PS3.15: serious failure)
    REFUSED = "refused"  # not allowed, or not understood (PS3.15: minor failure)


@dataclass(frozen=True)
class AuditEvent:
    """Something to record: what, by whom, on what."""

    action: Action
    caller: CallerContext | None = None
    outcome: Outcome = Outcome.SUCCESS
    part_id: str | None = None
    #: The inspections (Study Instance UIDs) concerned; instance UIDs and the like go in ``detail``.
    uids: Sequence[str] = ()
    detail: Mapping[str, Any] = field(default_factory=dict)
    #: SOP Instance UIDs concerned. When ``part_id`` is not given, the trail finds the parts and
    #: inspections of these (or of ``uids``) in the index, one entry per part.
    instances: Sequence[str] = ()


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: dt.datetime
    action: str
    outcome: str
    via: str | None
    user: str | None
    ae_title: str | None
    address: str | None
    part_id: str | None
    uids: tuple[str, ...]
    detail: dict[str, Any]
    prev_hash: str
    hash: str

    def content(self) -> dict[str, Any]:
        """The fields the hash covers, as JSON values."""
        return {
            "seq": self.seq,
            "at": _timestamp(self.at),
            "action": self.action,
            "outcome": self.outcome,
            "via": self.via,
            "user": self.user,
            "ae_title": self.ae_title,
            "address": self.address,
            "part_id": self.part_id,
            "uids": list(self.uids),
            "detail": self.detail,
            "prev_hash": self.prev_hash,
        }

    def computed_hash(self) -> str:
        return entry_hash(self.content())

    def to_json(self) -> dict[str, Any]:
        return {**self.content(), "hash": self.hash}


def entry_hash(content: Mapping[str, Any]) -> str:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Verification:
    checked: int
    head_seq: int
    problem: str | None = None  # the first one found, naming the entry
    broken_seq: int | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


class AuditTrail:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._queue: queue.SimpleQueue[AuditEvent | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()
        self._written = threading.Condition()
        self._unwritten = 0
        self._closed = False

    # -- appending --------------------------------------------------------------------------------
    def record(self, event: AuditEvent) -> AuditEntry:
        """Append ``event`` now, in its own transaction."""
        try:
            with write_transaction(self.engine) as conn:
                return self.append(conn, [event])[0]
        except SQLAlchemyError as exc:
            raise ResourceUnavailable(
                f"audit trail unavailable: {getattr(exc, 'orig', None) or exc}"
            ) from exc

    def append(self, conn: Connection, events: Sequence[AuditEvent]) -> list[AuditEntry]:
        """Append ``events`` inside the caller's write transaction (they commit or vanish with it)."""
        locked = select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)
        if conn.dialect.name == "postgresql":
            locked = locked.with_for_update()
        events = _with_parts(conn, [_printable(event) for event in events])
        seq, previous = conn.execute(locked).one()
        now = dt.datetime.now(dt.UTC)
        entries: list[AuditEntry] = []
        for event in events:
            seq += 1
            caller = event.caller
            draft = AuditEntry(
                seq=seq,
                at=now,
                action=str(event.action),
                outcome=str(event.outcome),
                via=caller.via if caller else None,
                user=caller.user if caller else None,
                ae_title=caller.ae_title if caller else None,
                address=caller.address if caller else None,
                part_id=event.part_id,
                uids=tuple(event.uids),
                detail=dict(event.detail),
                prev_hash=previous,
                hash="",
            )
            previous = draft.computed_hash()
            entries.append(AuditEntry(**{**vars(draft), "hash": previous}))
        if entries:
            conn.execute(audit_entry.insert(), [_row(e) for e in entries])
            conn.execute(update(audit_head).where(audit_head.c.id == 1).values(seq=seq, hash=previous))
        return entries

    def record_later(self, event: AuditEvent) -> None:
        """Queue ``event``; a background thread appends it within about LINGER_SECONDS."""
        if self._closed:
            self.record(event)
            return
        with self._written:
            self._unwritten += 1
        self._queue.put(event)
        if self._writer is None:
            with self._lock:
                if self._writer is None:
                    self._writer = threading.Thread(
                        target=self._write_queued, name="audit-writer", daemon=True
                    )
                    self._writer.start()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event is written; False if that took longer than ``timeout``."""
        with self._written:
            return self._written.wait_for(lambda: self._unwritten == 0, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (for up to ``timeout`` seconds); later events are recorded at once."""
        self._closed = True
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join(timeout)
            if self._writer.is_alive() or self._unwritten:
                log.error("audit trail: %d queued entries not written at close", self._unwritten)

    def _write_queued(self) -> None:
        pending: list[AuditEvent] = []
        stopping = False
        while not stopping or pending:
            if not stopping:
                # Wait for a first event, then gather more for up to LINGER_SECONDS.
                item = self._queue.get() if not pending else None
                if item is None and not pending:
                    stopping = True
                elif item is not None:
                    pending.append(item)
                deadline = time.monotonic() + LINGER_SECONDS
                while not stopping and len(pending) < BATCH:
                    try:
                        more = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        break
                    if more is None:
                        stopping = True
                    else:
                        pending.append(more)
            if not pending:
                continue
            batch = pending[:BATCH]
            try:
                with write_transaction(self.engine) as conn:
                    self.append(conn, batch)
            except Exception as exc:  # the index is down: keep them and try again
                log.error("audit trail: cannot write %d entries yet: %s", len(pending), exc)
                if stopping:
                    return
                if len(pending) > MAX_PENDING:
                    dropped = len(pending) - MAX_PENDING
                    log.error("audit trail: dropping the %d oldest unwritten entries", dropped)
                    del pending[:dropped]
                    with self._written:
                        self._unwritten -= dropped
                        self._written.notify_all()
                time.sleep(1.0)
                continue
            del pending[: len(batch)]
            with self._written:
                self._unwritten -= len(batch)
                self._written.notify_all()

    # -- reading ----------------------------------------------------------------------------------
    def entries(self, **filters: Any) -> list[AuditEntry]:
        """Entries in order, filtered as :meth:`iterate` filters them."""
        return list(self.iterate(**filters))

    def iterate(
        self,
        *,
        part_id: str | None = None,
        user: str | None = None,
        action: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int | None = None,
        offset: int = 0,
        batch: int = 1000,
    ) -> Iterator[AuditEntry]:
        """Entries in order, read in batches; every filter given must hold (``since`` inclusive,
        ``until`` exclusive)."""
        conditions = []
        if part_id is not None:
            conditions.append(audit_entry.c.part_id == part_id)
        if user is not None:
            conditions.append(audit_entry.c.user_name == user)
        if action is not None:
            conditions.append(audit_entry.c.action == action)
        if since is not None:
            conditions.append(audit_entry.c.at >= since)
        if until is not None:
            conditions.append(audit_entry.c.at < until)
        after, skip, left = 0, offset, limit
        try:
            while left is None or left > 0:
                size = batch if left is None else min(batch, left + skip)
                with read_transaction(self.engine) as conn:
                    rows = conn.execute(
                        select(audit_entry)
                        .where(audit_entry.c.seq > after, *conditions)
                        .order_by(audit_entry.c.seq)
                        .limit(size)
                    ).all()
                for row in rows:
                    after = row.seq
                    if skip:
                        skip -= 1
                        continue
                    yield _entry(row)
                    if left is not None:
                        left -= 1
                        if left == 0:
                            return
                if len(rows) < size:
                    return
        except SQLAlchemyError as exc:
            raise ResourceUnavailable(
                f"audit trail unavailable: {getattr(exc, 'orig', None) or exc}"
            ) from exc

    def verify(self, progress: Callable[[int], None] | None = None) -> Verification:
        """Recompute the chain from the first entry; the first problem found, naming its entry."""
        with read_transaction(self.engine) as conn:
            head_seq, head_hash = conn.execute(select(audit_head.c.seq, audit_head.c.hash)).one()
        expected_seq, previous, checked = 1, GENESIS, 0
        for entry in self.iterate():
            checked += 1
            if progress:
                progress(checked)
            if entry.seq != expected_seq or entry.seq > head_seq:
                if entry.seq > head_seq:
                    return _broken(
                        checked,
                        head_seq,
                        entry.seq,
                        f"entry {entry.seq} lies beyond the head ({head_seq}): inserted",
                    )
                return _broken(
                    checked,
                    head_seq,
                    expected_seq,
                    f"entry {expected_seq} is missing (the next one is {entry.seq}): deleted",
                )
            if entry.computed_hash() != entry.hash:
                return _broken(
                    checked,
                    head_seq,
                    entry.seq,
                    f"entry {entry.seq}: its content does not match its hash: edited",
                )
            if entry.prev_hash != previous:
                return _broken(
                    checked,
                    head_seq,
                    entry.seq,
                    f"entry {entry.seq}: its previous hash is not entry {entry.seq - 1}'s: "
                    "the chain was rewritten here",
                )
            previous = entry.hash
            expected_seq += 1
        last = expected_seq - 1
        if last < head_seq:
            return _broken(
                checked, head_seq, last + 1, f"entries {last + 1} to {head_seq} are missing: deleted"
            )
        if last > head_seq:
            return _broken(
                checked,
                head_seq,
                head_seq + 1,
                f"entry {head_seq + 1} lies beyond the head ({head_seq}): inserted",
            )
        if previous != head_hash:
            return _broken(checked, head_seq, last, f"entry {last} does not match the head's hash: edited")
        return Verification(checked, head_seq)


#: Instance UIDs kept in an entry's detail; beyond, only their number.
MAX_LISTED_INSTANCES = 1000


def _printable(event: AuditEvent) -> AuditEvent:
    """``event`` with every NUL character shown as U+FFFD. What a peer sends (a UID in a C-STORE
    request, a part ID in a URL) may hold one; PostgreSQL cannot store it, and an entry it refuses
    would hold up every entry queued behind it. Not removed: "1.2.3<NUL>.4" must not read as the
    UID 1.2.3.4 of another instance."""

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("\x00", "\ufffd")
        if isinstance(value, Mapping):
            return {clean(k): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(clean(v) for v in value)
        return value

    caller = event.caller
    if caller is not None:
        caller = replace(caller, **{k: clean(v) for k, v in vars(caller).items() if isinstance(v, str)})
    return replace(
        event,
        caller=caller,
        part_id=clean(event.part_id),
        uids=tuple(clean(u) for u in event.uids),
        detail=clean(dict(event.detail)),
        instances=tuple(clean(i) for i in event.instances),
    )


def _with_parts(conn: Connection, events: Sequence[AuditEvent]) -> list[AuditEvent]:
    """Events whose part is not given get it (and their inspections) from the index: one event per
    part their instances or inspections belong to. The instances and inspections of all the events
    are looked up together (a batch of C-STORE entries costs a query or two, not one per entry)."""
    looked_up = [e for e in events if not _listed_as_given(e)]
    instances = _parts_of(conn, "instance", {u for e in looked_up for u in _first_listed(e.instances)})
    studies = _parts_of(conn, "inspection", {u for e in looked_up if not e.instances for u in e.uids})
    out: list[AuditEvent] = []
    for event in events:
        if _listed_as_given(event):
            out.append(_listing(event, event.instances))
            continue
        rows: list[tuple[str | None, str, str]]
        if event.instances:
            rows = [(uid, *instances[uid]) for uid in _first_listed(event.instances) if uid in instances]
        else:
            rows = [(None, *studies[uid]) for uid in dict.fromkeys(event.uids) if uid in studies]
        by_part: dict[str, tuple[set[str], list[str]]] = {}
        for uid, study, part in rows:
            studies_of_part, uids = by_part.setdefault(part, (set(), []))
            studies_of_part.add(study)
            if uid is not None:
                uids.append(uid)
        if not by_part:  # nothing of it in the index (a failed store, a refused request)
            out.append(_listing(event, event.instances))
            continue
        if event.part_id is not None:  # the part is known: only its inspections are looked up
            known = {study for _, study, part in rows if part == event.part_id}
            out.append(_listing(replace(event, uids=sorted(known)), event.instances))
            continue
        for part, (studies_of_part, uids) in sorted(by_part.items()):
            split = AuditEvent(
                event.action, event.caller, event.outcome, part, sorted(studies_of_part), event.detail
            )
            out.append(_listing(split, uids if event.instances else ()))
    return out


def _listed_as_given(event: AuditEvent) -> bool:
    """Whether ``event`` is recorded as it is, without looking anything up."""
    return not (event.instances or event.uids) or (
        event.part_id is not None and (bool(event.uids) or not event.instances)
    )


def _first_listed(instances: Sequence[str]) -> list[str]:
    """The instances of an event that are looked up (and listed), each once."""
    return list(dict.fromkeys(instances[:MAX_LISTED_INSTANCES]))


_LOOKUP_CHUNK = 500  # UIDs per IN list


def _parts_of(conn: Connection, level: str, uids: set[str]) -> dict[str, tuple[str, str]]:
    """For SOP Instance UIDs (``level`` "instance") or Study Instance UIDs ("inspection") in the
    index: UID -> (Study Instance UID, part ID)."""
    found: dict[str, tuple[str, str]] = {}
    ordered = sorted(uids)
    for i in range(0, len(ordered), _LOOKUP_CHUNK):
        chunk = ordered[i : i + _LOOKUP_CHUNK]
        if level == "instance":
            query = (
                select(instance.c.sop_instance_uid, inspection.c.study_instance_uid, component.c.part_id)
                .select_from(instance.join(series).join(inspection).join(component))
                .where(instance.c.sop_instance_uid.in_(chunk))
            )
        else:
            query = (
                select(inspection.c.study_instance_uid, inspection.c.study_instance_uid, component.c.part_id)
                .select_from(inspection.join(component))
                .where(inspection.c.study_instance_uid.in_(chunk))
            )
        found.update((uid, (study, part)) for uid, study, part in conn.execute(query))
    return found


def _listing(event: AuditEvent, instances: Sequence[str]) -> AuditEvent:
    if not instances:
        return event
    detail = dict(event.detail)
    detail["instance_count"] = len(instances)
    detail["instances"] = sorted(instances)[:MAX_LISTED_INSTANCES]
    return AuditEvent(event.action, event.caller, event.outcome, event.part_id, event.uids, detail)


def _broken(checked: int, head_seq: int, seq: int, problem: str) -> Verification:
    return Verification(checked, head_seq, problem, seq)


def _timestamp(at: dt.datetime) -> str:
    at = at if at.tzinfo else at.replace(tzinfo=dt.UTC)
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _row(entry: AuditEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "at": entry.at,
        "action": entry.action,
        "outcome": entry.outcome,
        "via": entry.via,
        "user_name": entry.user,
        "ae_title": entry.ae_title,
        "address": entry.address,
        "part_id": entry.part_id,
        "uids": json.dumps(list(entry.uids)),
        "detail": json.dumps(entry.detail, sort_keys=True, ensure_ascii=False),
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
    }


def _entry(row: Any) -> AuditEntry:
    return AuditEntry(
        seq=int(row.seq),
        at=row.at,
        action=row.action,
        outcome=row.outcome,
        via=row.via,
        user=row.user_name,
        ae_title=row.ae_title,
        address=row.address,
        part_id=row.part_id,
        uids=tuple(json.loads(row.uids)),
        detail=json.loads(row.detail),
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


# -- exports ---------------------------------------------------------------------------------------
def json_lines(entries: Iterable[AuditEntry]) -> Iterator[str]:
    """One JSON object per line, every field the hash covers and the hash: verifiable offline."""
    for entry in entries:
        yield json.dumps(entry.to_json(), sort_keys=True, ensure_ascii=False) + "\n"


# PS3.15 A.5.3 (DICOM audit messages, the RFC 3881 schema): event ID and action code per action.
_EVENTS: dict[str, tuple[str, str, str]] = {
    "store": ("110104", "DICOM Instances Transferred", "C"),
    "query": ("110112", "Query", "E"),
    "retrieve": ("110104", "DICOM Instances Transferred", "R"),
    "view": ("110103", "DICOM Instances Accessed", "R"),
    "export": ("110106", "Export", "R"),
    "delete": ("110105", "DICOM Study Deleted", "D"),
    "decision": ("110103", "DICOM Instances Accessed", "U"),
    "user-change": ("110136", "Security Alert", "E"),
    "node-change": ("110136", "Security Alert", "E"),
    "config-change": ("110136", "Security Alert", "E"),
    "login-failed": ("110114", "User Authentication", "E"),
}
_OUTCOMES = {"success": "0", "refused": "4", "failure": "8"}


def dicom_audit_message(entry: AuditEntry, source_id: str) -> str:
    """``entry`` as a DICOM audit message (PS3.15 A.5, XML), for an audit record repository."""
    event_id, name, action_code = _EVENTS.get(entry.action, ("110100", "Application Activity", "E"))
    message = ET.Element("AuditMessage")
    event = ET.SubElement(
        message,
        "EventIdentification",
        EventActionCode=action_code,
        EventDateTime=_timestamp(entry.at),
        EventOutcomeIndicator=_OUTCOMES.get(entry.outcome, "8"),
    )
    ET.SubElement(event, "EventID", {"csd-code": event_id, "codeSystemName": "DCM", "originalText": name})
    if entry.action in {"user-change", "node-change", "config-change", "decision"}:
        ET.SubElement(
            event,
            "EventTypeCode",
            {
                "csd-code": "pacs-" + entry.action,
                "codeSystemName": "NDT archive",
                "originalText": entry.action,
            },
        )
    requestor = {"UserID": entry.user or entry.ae_title or "unknown", "UserIsRequestor": "true"}
    if entry.ae_title:
        requestor["AlternativeUserID"] = f"AETITLES={entry.ae_title}"
    if entry.address:
        requestor["NetworkAccessPointID"] = host_of(entry.address)
        requestor["NetworkAccessPointTypeCode"] = "2"  # IP address
    ET.SubElement(message, "ActiveParticipant", requestor)
    ET.SubElement(message, "ActiveParticipant", {"UserID": source_id, "UserIsRequestor": "false"})
    ET.SubElement(message, "AuditSourceIdentification", {"AuditSourceID": source_id})
    if entry.part_id:
        part = ET.SubElement(
            message,
            "ParticipantObjectIdentification",
            ParticipantObjectID=entry.part_id,
            ParticipantObjectTypeCode="1",  # person (the DICOM patient: the component)
            ParticipantObjectTypeCodeRole="1",  # patient
        )
        ET.SubElement(
            part,
            "ParticipantObjectIDTypeCode",
            {"csd-code": "2", "codeSystemName": "RFC-3881", "originalText": "Patient Number"},
        )
    for uid in entry.uids:
        obj = ET.SubElement(
            message,
            "ParticipantObjectIdentification",
            ParticipantObjectID=uid,
            ParticipantObjectTypeCode="2",  # system object
            ParticipantObjectTypeCodeRole="3",  # report
        )
        ET.SubElement(
            obj,
            "ParticipantObjectIDTypeCode",
            {"csd-code": "110180", "codeSystemName": "DCM", "originalText": "Study Instance UID"},
        )
    detail = ET.SubElement(
        message,
        "ParticipantObjectIdentification",
        ParticipantObjectID=f"audit:{entry.seq}",
        ParticipantObjectTypeCode="4",
        ParticipantObjectTypeCodeRole="13",
    )
    ET.SubElement(
        detail,
        "ParticipantObjectIDTypeCode",
        {"csd-code": "pacs-audit-entry", "codeSystemName": "NDT archive", "originalText": "audit entry"},
    )
    ET.SubElement(detail, "ParticipantObjectDetail", type="hash", value=entry.hash)
    return ET.tostring(message, encoding="unicode")
