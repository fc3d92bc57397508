"""The archive as a client of other DICOM nodes: C-STORE, C-FIND, C-GET and C-MOVE SCU.

``pacs send`` pushes stored instances to a node (PS3.4 B, Storage SCU); ``pacs query`` asks a node
what it holds (PS3.4 C.4.1, C-FIND SCU); ``pacs retrieve`` pulls instances from a node into this
archive (PS3.4 C.4.3 C-GET SCU on the same association, or C-MOVE SCU naming this archive's own AE
as the destination, C.4.2). What arrives goes through the same spool and ingest path as the C-STORE
SCP: straight into a new store object, hashed on the way, committed and indexed before Success.

Sending keeps the stored bytes untouched whenever the peer accepts the stored transfer syntax:
each SOP class is proposed once per stored syntax in a context of its own, plus one context with
the uncompressed syntaxes as the fallback, and the dataset goes out from a file in chunks
(``_config.STORE_SEND_CHUNKED_DATASET``), never loaded, with at most a few PDUs queued (see
:mod:`dicom_nodes.transport`). Only when the peer takes nothing but the uncompressed fallback is
the instance transcoded (:mod:`pacs.dicom.transcode`, lossless only) and sent from memory.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    JPEG2000,
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    EncapsulatedPDFStorage,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameSingleBitSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    RawDataStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
)
from pydicom.valuerep import PersonName
from pynetdicom import AE, _config, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicom_nodes import tls
from dicom_nodes.spool import Spooler
from dicom_nodes.store import CANNOT_UNDERSTAND, DATA_SET_DOES_NOT_MATCH_SOP_CLASS, OUT_OF_RESOURCES
from dicom_nodes.transport import tune
from pacs.archive import Archive
from pacs.config import ConfigError, Settings
from pacs.context import CallerContext, host_port
from pacs.dicom import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, retrieve_keys
from pacs.dicom.retrieve_keys import InformationModel
from pacs.dicom.transcode import TranscodeError, choose_transfer_syntax, prepare
from pacs.errors import InvalidObject, ObjectMismatch, PacsError, ResourceUnavailable
from pacs.index.nodes import Node
from pacs.services.ingest import Expected, IngestResult, IngestService
from pacs.services.retrieve import RetrieveItem

log = logging.getLogger(__name__)

UNCOMPRESSED_LE = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))
MAX_CONTEXTS = 128  # presentation context IDs are odd numbers 1..255 (PS3.8 9.3.2.2)
SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110

LEVELS = {"study": InformationModel.STUDY_ROOT.levels, "patient": InformationModel.PATIENT_ROOT.levels}
#: The unique key of each level (PS3.4 C.3); a hierarchical request names those of the levels above.
UNIQUE_KEYS = {level: keyword for level, (_, keyword) in retrieve_keys.UNIQUE_KEYS.items()}
_MODELS = {
    ("study", "find"): StudyRootQueryRetrieveInformationModelFind,
    ("study", "get"): StudyRootQueryRetrieveInformationModelGet,
    ("study", "move"): StudyRootQueryRetrieveInformationModelMove,
    ("patient", "find"): PatientRootQueryRetrieveInformationModelFind,
    ("patient", "get"): PatientRootQueryRetrieveInformationModelGet,
    ("patient", "move"): PatientRootQueryRetrieveInformationModelMove,
}

#: What C-GET offers to receive. The storage contexts of a C-GET association are fixed before the
#: request, so they are the SOP classes DICONDE devices produce (docs: DICONDE.md "What devices send");
#: C-MOVE has no such limit (the peer opens its own association to the archive).
GET_SOP_CLASSES: tuple[str, ...] = tuple(
    str(uid)
    for uid in (
        DigitalXRayImageStorageForPresentation,
        DigitalXRayImageStorageForProcessing,
        ComputedRadiographyImageStorage,
        CTImageStorage,
        EnhancedCTImageStorage,
        UltrasoundImageStorage,
        UltrasoundMultiFrameImageStorage,
        SecondaryCaptureImageStorage,
        MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
        MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
        MultiFrameTrueColorSecondaryCaptureImageStorage,
        MultiFrameSingleBitSecondaryCaptureImageStorage,
        RawDataStorage,
        EncapsulatedPDFStorage,
    )
)
#: Encoded syntaxes offered for C-GET after the two uncompressed ones, most useful first; as many as
#: the 128 contexts allow (the first seven with the 14 classes above), so a peer can send its
#: originals untouched.
GET_ENCODED_SYNTAXES: tuple[str, ...] = tuple(
    str(uid)
    for uid in (
        JPEG2000Lossless,
        JPEGLosslessSV1,
        RLELossless,
        JPEGLSLossless,
        JPEG2000,
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        HTJ2KLossless,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
    )
)


class PeerError(PacsError):
    """The node could not be reached, refused the association, or answered with a failure status."""


# -- the association ------------------------------------------------------------------------------
def _application_entity(settings: Settings) -> AE:
    ae = AE(settings.ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    return ae


@contextmanager
def associate(
    settings: Settings,
    node: Node,
    contexts: Sequence[PresentationContext],
    *,
    roles: Sequence[Any] = (),
    handlers: Sequence[Any] = (),
) -> Iterator[Association]:
    """An established association with ``node``, released on exit (aborted if the block failed).

    A node marked ``tls`` is associated over TLS (:mod:`dicom_nodes.tls`): the archive shows its
    ``tls_certificate`` and checks the node's against ``tls_ca_certificates``.
    """
    try:
        tls_args = tls.client_tls_args(settings, node)
    except ConfigError as exc:
        raise PeerError(f"{node.describe()}: no TLS association: {exc}") from None
    ae = _application_entity(settings)
    assoc = ae.associate(
        node.host,
        node.port,
        list(contexts),
        ae_title=node.ae_title,
        max_pdu=settings.max_pdu_size,
        ext_neg=list(roles) or None,
        evt_handlers=list(handlers) or None,
        tls_args=tls_args,
    )
    if not assoc.is_established:
        problem = None
        if tls_args is not None and not assoc.is_rejected:
            problem = tls.handshake_problem(settings, node, timeout=settings.acse_timeout)
        raise PeerError(f"{node.describe()}: {problem or _not_established(assoc)}")
    tune(assoc)  # TCP_NODELAY, bulk reads, bounded send queue (dicom_nodes.transport)
    ok = False
    try:
        yield assoc
        ok = True
    finally:
        if assoc.is_established:
            if ok:
                assoc.release()
            else:
                assoc.abort()


def _not_established(assoc: Association) -> str:
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        if primitive is not None and primitive.result is not None:
            return (
                f"association rejected ({primitive.result_str}, {primitive.source_str}: "
                f"{primitive.reason_str})"
            )
        return "association rejected"
    if assoc.is_aborted:
        return "association aborted by the peer, or the connection failed (is the node running?)"
    return "no association (connection refused or timed out)"


def _status_of(response: Dataset | None) -> tuple[int | None, str]:
    """The status of a DIMSE response and its error comment; ``None`` when none came back."""
    if response is None or "Status" not in response:
        return None, "no response from the peer (association lost or timed out)"
    comment = str(response.get("ErrorComment", "") or "")
    return int(response.Status), comment


def _is_success_or_warning(status: int | None) -> bool:
    # PS3.7 C: 0x0000 success; 0x0001 and 0xBxxx warnings (stored, perhaps with coercion)
    return status is not None and (status in (0x0000, 0x0001) or (status & 0xF000) == 0xB000)


# -- identifiers: findscu's -k syntax -------------------------------------------------------------
_PATH_PART = re.compile(r"^(?P<name>[^\[\]]+)(?:\[(?P<index>\d+)\])?$")
_TAG = re.compile(r"^\(?(?P<group>[0-9A-Fa-f]{4}),(?P<element>[0-9A-Fa-f]{4})\)?$")


def _tag(name: str) -> BaseTag:
    """A keyword or a ``gggg,eeee`` tag (PS3.6 dictionary), as findscu's ``-k`` takes them."""
    name = name.strip()
    match = _TAG.match(name)
    if match:
        tag = Tag(int(match["group"], 16), int(match["element"], 16))
    else:
        found = tag_for_keyword(name)
        if found is None:
            raise ValueError(f"unknown attribute {name!r}: use a DICOM keyword or gggg,eeee")
        tag = Tag(found)
    try:
        dictionary_VR(tag)
    except KeyError:
        raise ValueError(f"attribute {name} is not in the DICOM dictionary (its VR is unknown)") from None
    return tag


def _element_value(tag: BaseTag, vr: str, text: str) -> Any:
    if text == "":
        return DicomSequence() if vr == "SQ" else None
    if vr == "SQ":
        raise ValueError(
            f"{keyword_for_tag(tag) or tag}: a sequence takes items (Seq[0].Key=...), not a value"
        )
    if vr in ("US", "UL", "SS", "SL", "UV", "SV"):
        values = [int(v, 0) for v in text.split("\\")]
        return values[0] if len(values) == 1 else values
    if vr in ("FL", "FD"):
        floats = [float(v) for v in text.split("\\")]
        return floats[0] if len(floats) == 1 else floats
    if vr == "AT":
        raise ValueError(f"{keyword_for_tag(tag) or tag}: AT values are not supported in keys")
    return text


def add_key(identifier: Dataset, spec: str) -> None:
    """Add one ``-k`` key to ``identifier``: ``Key=value`` matches, ``Key=`` or ``Key`` asks for it.

    ``Key`` is a keyword or ``gggg,eeee``; ``Seq[0].Key=value`` sets an attribute of a sequence item
    (sequence matching, PS3.4 C.2.2.2.6). Numeric VRs take numbers, multiple values are ``\\``-separated.
    """
    path, has_value, text = spec.partition("=")
    if not path.strip():
        raise ValueError(f"empty key in {spec!r}")
    parts = path.split(".")
    ds = identifier
    for i, part in enumerate(parts):
        match = _PATH_PART.match(part.strip())
        if not match:
            raise ValueError(f"cannot read key {path!r}")
        tag = _tag(match["name"])
        vr = dictionary_VR(tag)
        last = i == len(parts) - 1
        if not last or match["index"] is not None:
            if vr != "SQ":
                raise ValueError(f"{match['name']} is not a sequence")
            index = int(match["index"] or 0)
            if tag not in ds or not isinstance(ds[tag].value, DicomSequence):
                ds.add_new(tag, "SQ", DicomSequence())
            items = ds[tag].value
            while len(items) <= index:
                items.append(Dataset())
            if last:
                if has_value and text:
                    raise ValueError(f"{path}: a sequence item takes attributes, not a value")
                return
            ds = items[index]
            continue
        ds.add_new(tag, vr, _element_value(tag, vr, text if has_value else ""))


def build_identifier(level: str, keys: Iterable[str], model: str = "study") -> Dataset:
    """A C-FIND / C-GET / C-MOVE identifier for ``level`` from ``-k`` keys.

    Non-ASCII values get Specific Character Set ISO_IR 192 (UTF-8) unless a key sets it.
    """
    level = level.upper()
    if model not in LEVELS:
        raise ValueError(f"unknown model {model!r}: study or patient")
    if level not in LEVELS[model]:
        raise ValueError(
            f"level {level} does not exist in the {model} root model (levels: {', '.join(LEVELS[model])})"
        )
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for spec in keys:
        add_key(identifier, spec)
    if "SpecificCharacterSet" not in identifier and not _ascii(identifier):
        identifier.SpecificCharacterSet = "ISO_IR 192"
    return identifier


def _ascii(ds: Dataset) -> bool:
    for element in ds:
        if element.VR == "SQ":
            if not all(_ascii(item) for item in element.value):
                return False
        else:
            value = element.value
            values = value if isinstance(value, list | MultiValue) else [value]
            if any(isinstance(v, str | PersonName) and not str(v).isascii() for v in values):
                return False
    return True


def describe_match(ds: Dataset) -> str:
    """One line for a C-FIND match: ``Keyword=value`` fields, tab-separated, in tag order."""
    fields: list[str] = []
    _describe(ds, "", fields)
    return "\t".join(fields)


def _describe(ds: Dataset, prefix: str, fields: list[str]) -> None:
    for element in ds:
        if element.tag in (0x00080005, 0x00080052) and not prefix:
            continue  # Specific Character Set and Query/Retrieve Level: how, not what
        name = prefix + (element.keyword or f"{element.tag.group:04X},{element.tag.element:04X}")
        if element.VR == "SQ":
            if not element.value:
                fields.append(f"{name}=")
            for i, item in enumerate(element.value):
                _describe(item, f"{name}[{i}].", fields)
            continue
        value = element.value
        if value is None:
            text = ""
        elif isinstance(value, list | tuple | MultiValue):
            text = "\\".join(str(v) for v in value)
        elif isinstance(value, bytes):
            text = value.hex()
        else:
            text = str(value)
        fields.append(f"{name}={text}")


# -- C-FIND SCU -----------------------------------------------------------------------------------
def find(settings: Settings, node: Node, identifier: Dataset, model: str = "study") -> list[Dataset]:
    """The identifiers ``node`` answers to a C-FIND (PS3.4 C.4.1); :class:`PeerError` on a failure."""
    sop_class = _MODELS[(model, "find")]
    with associate(settings, node, [build_context(sop_class, list(UNCOMPRESSED_LE))]) as assoc:
        matches: list[Dataset] = []
        for status_ds, found in assoc.send_c_find(identifier, sop_class):
            status, comment = _status_of(status_ds)
            if status in (0xFF00, 0xFF01):  # pending: one match each
                if found is not None:
                    matches.append(found)
                continue
            if status == SUCCESS:
                return matches
            raise PeerError(f"{node.ae_title} C-FIND failed: {_status_text(status, comment)}")
        raise PeerError(f"{node.ae_title} C-FIND: no final response")


def _status_text(status: int | None, comment: str) -> str:
    if status is None:
        return comment
    return f"status 0x{status:04X}" + (f" ({comment})" if comment else "")


def retrieve_identifiers(
    settings: Settings, node: Node, level: str, keys: Sequence[str], model: str = "study"
) -> list[Dataset]:
    """What to retrieve for ``keys`` at ``level``: the keys themselves when they are just the unique
    keys down to that level (a hierarchical retrieve, PS3.4 C.4.2.2.1); otherwise a C-FIND first,
    and one identifier per match with the unique keys it returned."""
    identifier = build_identifier(level, keys, model)
    path = _unique_path(level.upper(), model)
    keys_given = [e for e in identifier if e.tag not in (0x00080005, 0x00080052)]
    if (
        sorted(keyword_for_tag(e.tag) for e in keys_given) == sorted(path)
        and all(e.value not in (None, "") for e in keys_given)
        and not any("*" in str(e.value) or "?" in str(e.value) for e in keys_given)
    ):
        return [identifier]
    for keyword in path:
        if keyword not in identifier:
            setattr(identifier, keyword, "")
    retrieve: list[Dataset] = []
    for match in find(settings, node, identifier, model):
        target = Dataset()
        target.QueryRetrieveLevel = level.upper()
        for keyword in path:
            value = str(match.get(keyword, "") or "") or str(identifier.get(keyword, "") or "")
            if not value or "*" in value or "?" in value or "\\" in value:
                raise PeerError(f"{node.ae_title} returned a {level.upper()} match without its {keyword}")
            setattr(target, keyword, value)
        retrieve.append(target)
    return retrieve


def _unique_path(level: str, model: str) -> list[str]:
    """The unique keys a hierarchical request carries at ``level``: Study Root starts at STUDY."""
    levels = LEVELS[model]
    return [UNIQUE_KEYS[lv] for lv in levels[: levels.index(level) + 1]]


# -- C-STORE SCU ----------------------------------------------------------------------------------
@dataclass
class SendResult:
    sop_instance_uid: str
    status: int | None = None  # the peer's C-STORE status; None when it was never answered
    sent_as: str | None = None  # the transfer syntax it went in
    transcoded: bool = False
    reason: str = ""

    @property
    def ok(self) -> bool:
        return _is_success_or_warning(self.status)


def send(
    archive: Archive,
    node: Node,
    items: Sequence[RetrieveItem],
    on_result: Callable[[SendResult], None] | None = None,
) -> list[SendResult]:
    """C-STORE ``items`` to ``node``; one result per item, in order.

    One instance's failure is a failed result, not an exception; :class:`PeerError` only when the
    first association cannot be made (nothing was sent).
    """
    # Process-wide, and harmless: a path is only ever passed to send_c_store to send its bytes as
    # they are (datasets to re-encode are passed as Dataset objects).
    _config.STORE_SEND_CHUNKED_DATASET = True
    results: list[SendResult] = []
    staging = archive.settings.incoming_dir  # emptied when `pacs serve` starts

    def done(result: SendResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    for batch in _batches(items):
        try:
            _send_batch(archive, node, batch, staging, done)
        except PeerError as exc:
            if not results:
                raise
            for item in batch:
                done(SendResult(item.sop_instance_uid, reason=str(exc)))
    return results


def _contexts_for(items: Sequence[RetrieveItem]) -> list[PresentationContext]:
    """Per SOP class: a context per stored transfer syntax (accepted only if the peer takes that
    syntax, so the original goes untouched), and one with the uncompressed syntaxes as fallback."""
    pairs = dict.fromkeys((i.sop_class_uid, i.transfer_syntax_uid) for i in items)
    classes = dict.fromkeys(i.sop_class_uid for i in items)
    contexts = [build_context(sop, [ts]) for sop, ts in pairs]
    contexts += [build_context(sop, list(UNCOMPRESSED_LE)) for sop in classes]
    return contexts


def _batches(items: Sequence[RetrieveItem]) -> Iterator[list[RetrieveItem]]:
    """Groups whose contexts fit one association (at most 128), in the given order."""
    batch: list[RetrieveItem] = []
    for item in items:
        if batch and len(_contexts_for([*batch, item])) > MAX_CONTEXTS:
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def _send_batch(
    archive: Archive,
    node: Node,
    batch: Sequence[RetrieveItem],
    staging: Path,
    done: Callable[[SendResult], None],
) -> None:
    with associate(archive.settings, node, _contexts_for(batch)) as assoc:
        accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
        for item in batch:
            if assoc.is_established:
                done(_send_one(archive, assoc, item, accepted, staging))
            else:
                done(SendResult(item.sop_instance_uid, reason="association lost before it was sent"))


def _send_one(
    archive: Archive, assoc: Association, item: RetrieveItem, accepted: set[tuple[str, str]], staging: Path
) -> SendResult:
    uid = item.sop_instance_uid
    sop, stored = item.sop_class_uid, item.transfer_syntax_uid
    offered = {ts for cx_sop, ts in accepted if cx_sop == sop}
    if not offered:
        return SendResult(uid, reason=f"the peer accepted no presentation context for {UID(sop).name}")
    try:
        target = choose_transfer_syntax(stored, offered)
        with archive.retrieve.local_file(item, staging) as path:
            if target == stored:
                response = assoc.send_c_store(path)  # the stored bytes, in chunks
            else:
                response = assoc.send_c_store(prepare(path, target))
    except (PacsError, ValueError, AttributeError, OSError, RuntimeError) as exc:
        return SendResult(
            uid, reason=f"cannot send: {exc}" if not isinstance(exc, TranscodeError) else str(exc)
        )
    status, comment = _status_of(response)
    result = SendResult(uid, status, target, target != stored, "" if status == SUCCESS else comment)
    if not result.ok and not result.reason:
        result.reason = f"status 0x{status:04X}" if status is not None else "no response"
    return result


# -- C-GET SCU ------------------------------------------------------------------------------------
@dataclass
class RetrieveReport:
    """What a C-GET or C-MOVE achieved, per the peer's final response and (C-GET) our own ingest."""

    via: str
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)  # C-GET: stored / already present / new version
    refused: list[tuple[str, str]] = field(default_factory=list)  # C-GET: (UID, why) we did not keep
    errors: list[str] = field(default_factory=list)  # failure statuses of whole requests

    @property
    def ok(self) -> bool:
        return not (self.failed or self.refused or self.errors)


Progress = Callable[[int, int | None], None]  # (sub-operations done, total if known)


class _GetReceiver:
    """The C-STORE sub-operations of a C-GET: each dataset is spooled into a new store object as it
    arrives (the Spooler) and committed and indexed like any C-STORE, but with the peer's name."""

    def __init__(
        self, ingest: IngestService, spooler: Spooler, node: Node, report: RetrieveReport, progress: Progress
    ) -> None:
        self.ingest = ingest
        self.spooler = spooler
        self.ctx = CallerContext(via="c-get", ae_title=node.ae_title, address=host_port(node.host, node.port))
        self.report = report
        self.progress = progress
        self.received = 0
        self.total: int | None = None

    def on_store(self, event: Event) -> Dataset:
        request = cast(C_STORE, event.request)
        uid = str(request.AffectedSOPInstanceUID)
        status = self._ingest(event, uid)
        self.received += 1
        self.progress(self.received, self.total)
        return status

    def _ingest(self, event: Event, uid: str) -> Dataset:
        spool = self.spooler.claim(event.dataset_path)
        if spool is None or spool.incoming is None:
            reason = str(spool.error) if spool is not None and spool.error else "not received into the store"
            return self._refuse(uid, OUT_OF_RESOURCES, reason)
        expected = Expected(
            sop_class_uid=str(cast(C_STORE, event.request).AffectedSOPClassUID),
            sop_instance_uid=uid,
            transfer_syntax_uid=str(event.context.transfer_syntax),
        )
        try:
            result: IngestResult = self.ingest.ingest_incoming(spool.incoming, self.ctx, expected)
        except ObjectMismatch as exc:
            return self._refuse(uid, DATA_SET_DOES_NOT_MATCH_SOP_CLASS, str(exc))
        except InvalidObject as exc:
            return self._refuse(uid, CANNOT_UNDERSTAND, str(exc))
        except ResourceUnavailable as exc:
            return self._refuse(uid, OUT_OF_RESOURCES, str(exc))
        except Exception as exc:  # a bug of ours: refuse this one, keep receiving
            log.exception("C-GET sub-operation %s from %s failed unexpectedly", uid, self.ctx.describe())
            return self._refuse(uid, PROCESSING_FAILURE, f"internal error: {type(exc).__name__}")
        self.report.outcomes[result.outcome.value] += 1
        ds = Dataset()
        ds.Status = SUCCESS
        return ds

    def _refuse(self, uid: str, status: int, reason: str) -> Dataset:
        prefix = f"{uid}: "
        reason = reason[len(prefix) :] if reason.startswith(prefix) else reason
        log.warning("C-GET: %s from %s not kept (0x%04X): %s", uid, self.ctx.describe(), status, reason)
        self.report.refused.append((uid, reason))
        ds = Dataset()
        ds.Status = status
        ds.ErrorComment = reason.replace("\\", "/")[:64]
        return ds


def _get_contexts(model: str) -> tuple[list[PresentationContext], list[Any]]:
    """The C-GET context and, with the SCP role for us (PS3.4 C.4.3.1, PS3.7 D.3.3.4), storage
    contexts: each class in each uncompressed syntax, then encoded syntaxes while the 128 last."""
    contexts = [build_context(_MODELS[(model, "get")], list(UNCOMPRESSED_LE))]
    for ts in UNCOMPRESSED_LE:
        contexts += [build_context(sop, [ts]) for sop in GET_SOP_CLASSES]
    for ts in GET_ENCODED_SYNTAXES:  # a syntax for every class or for none: one rule to document
        if len(contexts) + len(GET_SOP_CLASSES) <= MAX_CONTEXTS:
            contexts += [build_context(sop, [ts]) for sop in GET_SOP_CLASSES]
    roles = [build_role(sop, scp_role=True) for sop in GET_SOP_CLASSES]
    return contexts, roles


def get(
    archive: Archive,
    node: Node,
    identifiers: Sequence[Dataset],
    model: str = "study",
    progress: Progress | None = None,
) -> RetrieveReport:
    """C-GET each identifier from ``node`` on one association; what arrives is ingested here."""
    report = RetrieveReport(via="C-GET")
    progress = progress or (lambda done, total: None)
    spooler = Spooler(archive.ingest.receive, archive.settings.incoming_dir)
    receiver = _GetReceiver(archive.ingest, spooler, node, report, progress)
    contexts, roles = _get_contexts(model)
    handlers = [(evt.EVT_C_STORE, receiver.on_store), (evt.EVT_CONN_CLOSE, spooler.on_connection_closed)]
    sop_class = _MODELS[(model, "get")]
    spooler.install()
    try:
        with associate(archive.settings, node, contexts, roles=roles, handlers=handlers) as assoc:
            for identifier in identifiers:
                base = receiver.received

                def pending(total: int, base: int = base) -> None:
                    receiver.total = base + total

                _run_retrieve(assoc.send_c_get(identifier, sop_class), node, report, pending)
    finally:
        spooler.abort_pending()
        spooler.uninstall()
    return report


def _run_retrieve(
    responses: Iterable[tuple[Dataset, Dataset | None]],
    node: Node,
    report: RetrieveReport,
    on_pending: Callable[[int], None],
) -> None:
    """Follow one C-GET/C-MOVE: pending responses carry the sub-operation counts (PS3.4 C.4.2.1.4),
    the final one the totals and, after failures, the Failed SOP Instance UID List."""
    final: Dataset | None = None
    identifier: Dataset | None = None
    for status_ds, found in responses:
        status, comment = _status_of(status_ds)
        counts = [int(status_ds.get(k, 0) or 0) for k in _COUNT_KEYS] if status_ds is not None else [0] * 4
        if status == 0xFF00:
            on_pending(sum(counts))
            continue
        final, identifier = status_ds, found
        if status is None or not (status == SUCCESS or (status & 0xF000) == 0xB000):
            report.errors.append(f"{node.ae_title} {report.via} failed: {_status_text(status, comment)}")
        break
    if final is None:
        report.errors.append(f"{node.ae_title} {report.via}: no final response")
        return
    remaining, completed, failed, warning = (int(final.get(k, 0) or 0) for k in _COUNT_KEYS)
    report.completed += completed
    report.failed += failed
    report.warning += warning
    if identifier is not None and "FailedSOPInstanceUIDList" in identifier:
        value = identifier.FailedSOPInstanceUIDList
        uids = [value] if isinstance(value, str) else list(value)
        report.failed_uids.extend(str(u) for u in uids if u)


_COUNT_KEYS = (
    "NumberOfRemainingSuboperations",
    "NumberOfCompletedSuboperations",
    "NumberOfFailedSuboperations",
    "NumberOfWarningSuboperations",
)


# -- C-MOVE SCU -----------------------------------------------------------------------------------
def move(
    settings: Settings,
    node: Node,
    identifiers: Sequence[Dataset],
    model: str = "study",
    destination: str | None = None,
    progress: Progress | None = None,
) -> RetrieveReport:
    """C-MOVE each identifier from ``node`` to ``destination`` (default: this archive's AE title,
    which ``node`` must know and which must be serving); reports the peer's sub-operation counts."""
    report = RetrieveReport(via="C-MOVE")
    progress = progress or (lambda done, total: None)
    sop_class = _MODELS[(model, "move")]
    move_to = destination or settings.ae_title
    done_before = 0
    with associate(settings, node, [build_context(sop_class, list(UNCOMPRESSED_LE))]) as assoc:
        for identifier in identifiers:
            responses = _with_progress(
                assoc.send_c_move(identifier, move_to, sop_class), progress, done_before
            )
            _run_retrieve(responses, node, report, lambda total: None)
            done_before = report.completed + report.failed + report.warning
    return report


def _with_progress(
    responses: Iterable[tuple[Dataset, Dataset | None]], progress: Progress, base: int
) -> Iterator[tuple[Dataset, Dataset | None]]:
    for status_ds, found in responses:
        if status_ds is not None and int(status_ds.get("Status", -1)) == 0xFF00:
            remaining, completed, failed, warning = (int(status_ds.get(k, 0) or 0) for k in _COUNT_KEYS)
            done = completed + failed + warning
            progress(base + done, base + done + remaining)
        yield status_ds, found


__all__ = [
    "GET_SOP_CLASSES",
    "PeerError",
    "RetrieveReport",
    "SendResult",
    "add_key",
    "associate",
    "build_identifier",
    "describe_match",
    "find",
    "get",
    "move",
    "retrieve_identifiers",
    "send",
]
