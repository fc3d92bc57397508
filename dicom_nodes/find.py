"""C-FIND SCP (PS3.4 C.4.1): Patient Root and Study Root Query/Retrieve Information Models.

The handler only translates: the identifier becomes a :class:`pacs.query.model.Query`
(:mod:`pacs.query.identifier`, where the matching and hierarchy rules live), the search service
finds the matches in the index, each becomes a pending response; archive errors become statuses.
"""

from __future__ import annotations

import logging
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

if TYPE_CHECKING:
    from dicom_nodes.server import Registry
from pacs.errors import InvalidQuery, QueryModelMismatch, ResourceUnavailable
from pacs.query.identifier import query_from_identifier
from pacs.query.model import InformationModel
from pacs.query.response import response_identifier
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


def register(registry: Registry) -> None:
    """FIND SCP for both information models, in the uncompressed transfer syntaxes."""
    for uid in MODELS:
        registry.add_context(uid, UNCOMPRESSED)
    registry.bind(evt.EVT_C_FIND, handle_find, [registry.archive.search, registry.settings.ae_title])


def handle_find(event: Event, search: SearchService, ae_title: str) -> Iterator[tuple[Any, Dataset | None]]:
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
    sent = 0
    try:
        with closing(search.find(query)) as matches:
            for found in matches:
                # A C-CANCEL may have come since the last response (PS3.4 C.4.1.2.3): stop here.
                if event.is_cancelled:
                    log.info("C-FIND from %s cancelled after %d match(es)", peer, sent)
                    yield CANCEL, None
                    return
                yield PENDING, response_identifier(query, found, ae_title)
                sent += 1
    except ResourceUnavailable as exc:
        yield _refused(OUT_OF_RESOURCES, exc, peer)
        return
    except Exception as exc:  # a bug of ours: fail this query, keep serving
        log.exception("C-FIND from %s failed unexpectedly", peer)
        yield _status(PROCESSING_FAILURE, f"internal error: {type(exc).__name__}")
        return
    log.info("C-FIND from %s: %d match(es)", peer, sent)


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
