"""C-FIND SCP (PS3.4 C.4.1): Patient Root and Study Root Query/Retrieve Information Models.

The handler only translates: the identifier becomes a :class:`pacs.query.model.Query`
(:mod:`pacs.query.identifier`, where the matching and hierarchy rules live), the search service
finds the matches in the index, each becomes a pending response; archive errors become statuses.

Pending responses take the fast path where they can: each identifier is encoded straight from the
index's DICOM JSON (:func:`pacs.query.response.encode_identifier`) and written with others in one
socket send (:mod:`dicom_nodes.pending`). Where it cannot (a big endian context, a sequence key,
ISO 2022 character sets), that response and every later one go through pynetdicom as pydicom
datasets; the two never interleave, so the order on the wire is kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import closing
from typing import TYPE_CHECKING, Any, cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from dicom_nodes.pending import PendingResponses
from dicom_nodes.policy import caller

if TYPE_CHECKING:
    from dicom_nodes.server import Registry
from pacs.audit import Action, AuditEvent, AuditTrail, Outcome
from pacs.errors import InvalidQuery, QueryModelMismatch, ResourceUnavailable
from pacs.query.identifier import query_from_identifier
from pacs.query.model import InformationModel, Query, SingleValue
from pacs.query.response import encode_identifier, response_identifier
from pacs.services.search import SearchService

log = logging.getLogger(__name__)

UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2")

MODELS: dict[str, InformationModel] = {
    str(PatientRootQueryRetrieveInformationModelFind): InformationModel.PATIENT_ROOT,
    str(StudyRootQueryRetrieveInformationModelFind): InformationModel.STUDY_ROOT,
}

# C-FIND statuses, PS3.4 Table C.4-1 and PS3.7 C.4.
PENDING = 0xFF00
CANCEL = 0xFE00
OUT_OF_RESOURCES = 0xA700
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000
SOP_CLASS_NOT_SUPPORTED = 0x0122
PROCESSING_FAILURE = 0x0110
PATIENT_ID = 0x00100020
REFUSALS = {IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, UNABLE_TO_PROCESS, SOP_CLASS_NOT_SUPPORTED}


def register(registry: Registry) -> None:
    """FIND SCP for both information models, in the uncompressed transfer syntaxes."""
    for uid in MODELS:
        registry.add_context(uid, UNCOMPRESSED)
    registry.bind(
        evt.EVT_C_FIND,
        handle_find,
        [registry.archive.search, registry.settings.ae_title, registry.archive.audit],
    )


def handle_find(
    event: Event, search: SearchService, ae_title: str, audit: AuditTrail | None = None
) -> Iterator[tuple[Any, Dataset | None]]:
    failed = False
    for answer in _answer(event, search, ae_title):
        yield answer
        if audit is not None and not isinstance(answer[0], int):  # a final failure status
            failed = True
            outcome = Outcome.REFUSED if int(answer[0].Status) in REFUSALS else Outcome.FAILURE
            _audit(
                audit, event, getattr(event, "_pacs_query", None), outcome, {"status": int(answer[0].Status)}
            )
    if audit is not None and not failed:
        _audit(
            audit,
            event,
            getattr(event, "_pacs_query", None),
            Outcome.SUCCESS,
            {"matches": getattr(event, "_pacs_matches", 0)},
        )


def _audit(
    audit: AuditTrail, event: Event, query: Query | None, outcome: Outcome, detail: dict[str, Any]
) -> None:
    """Queue the audit entry of one C-FIND: who asked, for which part, the level, the outcome."""
    asking = caller(event, "c-find")
    part_id = None
    if query is not None:
        detail = {**detail, "level": str(query.level), "model": str(query.model)}
        for key in query.keys:
            if key.tag == PATIENT_ID and isinstance(key.matcher, SingleValue):
                part_id = key.matcher.value
    audit.record_later(AuditEvent(Action.QUERY, asking, outcome, part_id=part_id, detail=detail))


def _answer(event: Event, search: SearchService, ae_title: str) -> Iterator[tuple[Any, Dataset | None]]:
    began = time.perf_counter()
    request = cast(C_FIND, event.request)
    assoc = event.assoc
    peer = f"{(assoc.requestor.ae_title or '').strip()}@{assoc.requestor.address}"
    model = MODELS.get(str(request.AffectedSOPClassUID))
    if model is None:  # another C-FIND SOP class on a context some other module accepted
        yield _status(
            SOP_CLASS_NOT_SUPPORTED, f"not a supported C-FIND SOP class: {request.AffectedSOPClassUID}"
        )
        return
    try:
        identifier = event.identifier
        query = query_from_identifier(identifier, model)
    except QueryModelMismatch as exc:
        yield _refused(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, exc, peer)
        return
    except InvalidQuery as exc:
        yield _refused(UNABLE_TO_PROCESS, exc, peer)
        return
    except Exception as exc:  # an identifier pydicom cannot decode
        log.warning("C-FIND from %s: cannot decode the identifier: %s", peer, exc)
        yield _status(UNABLE_TO_PROCESS, f"cannot decode the identifier: {exc}")
        return
    log.info("C-FIND from %s: %s level, %s model", peer, query.level, model)
    event._pacs_query = query  # type: ignore[attr-defined]  # for the audit entry
    sent = 0
    fast = PendingResponses.open(event)  # None: every response through pynetdicom
    try:
        with closing(search.find(query)) as matches:
            for found in matches:
                # A C-CANCEL may have come since the last response (PS3.4 C.4.1.2.3): stop here.
                if event.is_cancelled:
                    if fast is not None:
                        fast.flush()
                    log.info("C-FIND from %s cancelled after %d match(es)", peer, sent)
                    yield CANCEL, None
                    return
                encoded = None
                if fast is not None:
                    encoded = encode_identifier(query, found, ae_title, implicit_vr=fast.implicit_vr)
                if fast is not None and encoded is not None:
                    fast.add(encoded)
                else:
                    if fast is not None:  # from here on through pynetdicom, after what is batched
                        fast.flush()
                        if fast.failed:
                            break
                        fast = None
                    yield PENDING, response_identifier(query, found, ae_title)
                if fast is not None and fast.failed:
                    break
                sent += 1
        if fast is not None:
            fast.flush()
        if fast is not None and fast.failed:
            log.warning("C-FIND from %s: the association closed after %d match(es)", peer, sent)
            return
    except ResourceUnavailable as exc:
        if fast is not None:
            fast.flush()
        yield _refused(OUT_OF_RESOURCES, exc, peer)
        return
    except Exception as exc:  # a bug of ours: fail this query, keep serving
        if fast is not None:
            fast.flush()
        log.exception("C-FIND from %s failed unexpectedly", peer)
        yield _status(PROCESSING_FAILURE, f"internal error: {type(exc).__name__}")
        return
    event._pacs_matches = sent  # type: ignore[attr-defined]
    # From the request handed over by pynetdicom to the last pending response sent (the final one
    # follows through pynetdicom): the archive's own time for the query.
    log.info("C-FIND from %s: %d match(es) in %.1f ms", peer, sent, (time.perf_counter() - began) * 1000)


def _refused(status: int, exc: Exception, peer: str) -> tuple[Dataset, None]:
    log.warning("C-FIND from %s refused (0x%04X): %s", peer, status, exc)
    tag = getattr(exc, "tag", None)
    return _status(status, str(exc), tag)


def _status(status: int, comment: str, tag: int | None = None) -> tuple[Dataset, None]:
    ds = Dataset()
    ds.Status = status
    # Error Comment (0000,0902) is LO: at most 64 characters, no backslash.
    ds.ErrorComment = comment.replace("\\", "/")[:64]
    if tag is not None:
        ds.OffendingElement = [tag]
    return ds, None
