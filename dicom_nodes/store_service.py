"""The C-STORE service of the archive's associations, without pynetdicom's per-message objects.

pynetdicom serves a C-STORE request (``Association._serve_request`` then
``StorageServiceClass.SCP``) by building a response primitive, whose UID setters validate the
request's UIDs again with three regular expressions each, and then a DIMSE message from it,
encoded twice (once to learn the command group length). On the archive's association thread that
was about 0.8 ms of every stored instance, a fifth of the thread's work for a 2 MB image.

:func:`install` serves C-STORE requests the same way, with the response command set (PS3.7 9.3.1.2,
Implicit VR Little Endian, PS3.7 6.3.1) encoded here in one pass. Everything else about the
request is pynetdicom's: its :class:`~pynetdicom.events.Event`, the handler bound to
``EVT_C_STORE`` and its arguments, the abort the handler may call, the status 0xC211 when the
handler raises, the unlink of a chunked receive's file. A request this module does not cover goes
to pynetdicom unchanged: one that arrives while the association is being released, names a context
not accepted, or a SOP class that extended negotiation maps to another service; an answer other
than a Status with an optional Error Comment; a peer whose largest PDU cannot hold the response
in one; or a watcher bound to ``EVT_DIMSE_SENT`` (pynetdicom's debug log), which is given
pynetdicom's own message.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from pydicom.dataset import Dataset
from pynetdicom import _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

if TYPE_CHECKING:
    from pynetdicom.association import Association

log = logging.getLogger(__name__)

#: Status when the handler raises (PS3.4 Table B.2-1, "Cannot understand"), as pynetdicom answers.
HANDLER_ERROR = 0xC211
_STATUS, _ERROR_COMMENT = 0x00000900, 0x00000902
_STATUS_TAGS = frozenset([_STATUS, _ERROR_COMMENT])
_C_STORE_RSP = 0x8001
_NO_DATA_SET = 0x0101
_COMMAND_LAST = b"\x03"  # message control header: a command fragment, the last one (PS3.8 E.2)
_ENDED = object()  # the handler's association ended (released or aborted): nothing to answer


def install(assoc: Association) -> None:
    """Serve ``assoc``'s C-STORE requests here (before :func:`dicom_nodes.transport.tune`, which
    wraps what it finds)."""
    serve = assoc._serve_request

    def serve_request(msg: Any, context_id: int) -> None:
        if not (isinstance(msg, C_STORE) and _serve_store(assoc, msg, context_id)):
            serve(msg, context_id)

    assoc._serve_request = serve_request  # type: ignore[method-assign]


def _serve_store(assoc: Association, req: C_STORE, context_id: int) -> bool:
    """Serve ``req``; False, having done nothing, for a request left to pynetdicom."""
    context = assoc._accepted_cx.get(context_id)
    if (
        assoc._sent_release
        or context is None
        or not req.is_valid_request
        or req.AffectedSOPClassUID in assoc.acceptor.accepted_common_extended
        or not _storage(req.AffectedSOPClassUID)
        or assoc.get_handlers(evt.EVT_DIMSE_SENT)
    ):
        return False
    # As pynetdicom's _serve_request: no C-CANCEL applies across requests; "paused" lets the
    # handler call send_* on the association.
    assoc.dimse.cancel_req = {}
    assoc._is_paused = True
    try:
        status = _call_handler(assoc, req, context.as_tuple)
        if status is not _ENDED and assoc.is_established:
            _respond(assoc, req, context_id, status)
    except Exception as exc:  # as pynetdicom: a failure of the service itself ends the association
        log.exception("C-STORE service failed: %s", exc)
        assoc.abort()
        return True
    assoc._is_paused = False
    assoc.dimse.cancel_req = {}
    return True


def _storage(sop_class_uid: Any) -> bool:
    """Whether pynetdicom serves the SOP class with its Storage service class."""
    return bool(_config.UNRESTRICTED_STORAGE_SERVICE) or (
        uid_to_service_class(sop_class_uid) is StorageServiceClass
    )


def _call_handler(assoc: Association, req: C_STORE, context: Any) -> Any:
    """The handler's answer (whatever it returned, for the response to judge); ``HANDLER_ERROR``
    when it raises; ``_ENDED`` when the association ended meanwhile."""
    assoc.abort = assoc._abort_nonblocking  # type: ignore[method-assign]
    try:
        status = evt.trigger(assoc, evt.EVT_C_STORE, {"request": req, "context": context})
    except Exception:
        log.exception("the handler bound to EVT_C_STORE raised; answering 0x%04X", HANDLER_ERROR)
        status = HANDLER_ERROR
    finally:
        assoc.abort = assoc._abort_blocking  # type: ignore[method-assign]
        if req._dataset_file:  # pynetdicom's chunked receive: its file is done with
            req._dataset_file.close()
            try:
                os.unlink(req._dataset_file.name)
            except OSError:
                pass
    return status if assoc.is_established else _ENDED


def _respond(assoc: Association, req: C_STORE, context_id: int, status: Any) -> None:
    command = _response_command(req, status)
    limit = assoc.dimse.maximum_pdu_size
    if command is None or (limit and len(command) > limit - 6):  # one PDV, as pynetdicom sizes it
        _respond_by_pynetdicom(assoc, req, context_id, status)
        return
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((context_id, _COMMAND_LAST + command))
    assoc.dul.send_pdu(pdata)


def _response_command(req: C_STORE, status: Any) -> bytes | None:
    """The C-STORE-RSP command set for ``status`` (an int, or a Dataset with Status and optionally
    Error Comment); None for anything else."""
    comment: str | None = None
    if isinstance(status, Dataset):
        if _STATUS not in status or not all(tag in _STATUS_TAGS for tag in status.keys()):  # noqa: SIM118
            return None
        code = status.Status
        comment = status.get("ErrorComment")
        if comment is not None and not _plain_lo(comment):
            return None
    else:
        code = status
    if not isinstance(code, int) or not 0 <= code <= 0xFFFF:
        return None
    if not (str(req.AffectedSOPClassUID).isascii() and str(req.AffectedSOPInstanceUID).isascii()):
        return None
    body = b"".join(
        [
            _element(0x0002, _uid(req.AffectedSOPClassUID)),
            _element(0x0100, _US(_C_STORE_RSP)),
            _element(0x0120, _US(cast(int, req.MessageID))),  # a valid request has one
            _element(0x0800, _US(_NO_DATA_SET)),
            _element(0x0900, _US(code)),
            _element(0x0902, _text(comment)) if comment is not None else b"",
            _element(0x1000, _uid(req.AffectedSOPInstanceUID)),
        ]
    )
    return _element(0x0000, struct.pack("<I", len(body))) + body


def _respond_by_pynetdicom(assoc: Association, req: C_STORE, context_id: int, status: Any) -> None:
    """The response as pynetdicom's StorageServiceClass makes it (validation and warnings included)."""
    rsp = C_STORE()
    rsp.MessageID = req.MessageID
    rsp.MessageIDBeingRespondedTo = req.MessageID
    rsp.AffectedSOPInstanceUID = req.AffectedSOPInstanceUID
    rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
    rsp = StorageServiceClass(assoc).validate_status(status, rsp)
    assoc.dimse.send_msg(rsp, context_id)


_US: Callable[[int], bytes] = struct.Struct("<H").pack
_ELEMENT = struct.Struct("<HHI")


def _element(element: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0x0000, element, len(value)) + value


def _uid(value: Any) -> bytes:
    data = str(value).encode("ascii")
    return data + b"\x00" if len(data) % 2 else data


def _plain_lo(value: Any) -> bool:
    """An LO value this module encodes: at most 64 characters of the default repertoire, no
    backslash or control character (anything else is pynetdicom's to validate and encode)."""
    return isinstance(value, str) and len(value) <= 64 and all(" " <= c <= "~" and c != "\\" for c in value)


def _text(value: str) -> bytes:
    """An LO value (Error Comment), padded with a space to an even length."""
    data = value.encode("ascii")
    return data + b" " if len(data) % 2 else data
