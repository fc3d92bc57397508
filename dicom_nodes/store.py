"""C-STORE SCP (PS3.4 B.2): receive an instance and answer only once it is durable."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from dicom_nodes.policy import caller
from dicom_nodes.spool import Spooler

if TYPE_CHECKING:
    from dicom_nodes.server import Registry
from pacs.context import CallerContext
from pacs.diconde import encodings
from pacs.diconde.encodings import STORED_TRANSFER_SYNTAXES
from pacs.errors import InvalidObject, ObjectMismatch, ResourceUnavailable
from pacs.services.ingest import Expected, IngestService

log = logging.getLogger(__name__)

# C-STORE statuses, PS3.4 Table B.2-1.
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110  # PS3.7 C.4: a general failure for errors of our own


def register(registry: Registry) -> None:
    """Storage SCP for every storage SOP class, in every transfer syntax the archive keeps."""
    for uid in storage_sop_classes():
        registry.add_context(uid, STORED_TRANSFER_SYNTAXES)
    registry.bind(evt.EVT_C_STORE, handle_store, [registry.archive.ingest, registry.spooler])


def storage_sop_classes() -> list[str]:
    """Every storage SOP class the archive stores (``pacs.diconde.encodings``)."""
    return list(encodings.storage_sop_classes())


def handle_store(event: Event, ingest: IngestService, spooler: Spooler) -> Dataset:
    request = cast(C_STORE, event.request)
    ctx = caller(event, "c-store")
    uid = str(request.AffectedSOPInstanceUID)
    expected = Expected(
        sop_class_uid=str(request.AffectedSOPClassUID),
        sop_instance_uid=uid,
        transfer_syntax_uid=str(event.context.transfer_syntax),
    )
    spool = spooler.claim(event.dataset_path)
    if spool is None or spool.incoming is None:
        reason = spool.error if spool is not None else "the dataset was not received into the store"
        return _failure(OUT_OF_RESOURCES, ResourceUnavailable(f"cannot store: {reason}"), ctx, uid)
    try:
        ingest.ingest_incoming(spool.incoming, ctx, expected)
    except ObjectMismatch as exc:
        return _failure(DATA_SET_DOES_NOT_MATCH_SOP_CLASS, exc, ctx, uid)
    except InvalidObject as exc:
        return _failure(CANNOT_UNDERSTAND, exc, ctx, uid)
    except ResourceUnavailable as exc:
        return _failure(OUT_OF_RESOURCES, exc, ctx, uid)
    except Exception as exc:  # a bug of ours: fail this store, keep serving
        log.exception("C-STORE of %s from %s failed unexpectedly", uid, ctx.describe())
        return _status(PROCESSING_FAILURE, f"internal error: {type(exc).__name__}")
    return _status(SUCCESS)


def _failure(status: int, exc: Exception, ctx: CallerContext, uid: str) -> Dataset:
    """Log and answer a refusal, the reason without the UID it often starts with: the log line
    names the instance first, and the response carries it as Affected SOP Instance UID."""
    reason = str(exc).removeprefix(f"{uid}: ")
    log.warning("C-STORE of %s from %s refused (0x%04X): %s", uid, ctx.describe(), status, reason)
    return _status(status, reason)


def _status(status: int, comment: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = status
    if comment:
        # Error Comment (0000,0902) is LO: at most 64 characters, no backslash.
        ds.ErrorComment = comment.replace("\\", "/")[:64]
    return ds
