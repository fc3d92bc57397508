"""C-GET SCP (PS3.4 C.4.3) for the Patient Root and Study Root models: send the instances a retrieve
names back over the requester's own association.

C-GET turns the roles around for storage (PS3.4 C.4.3.1, PS3.7 D.3.3.4): the requester proposes
the storage SOP classes it wants to receive with an SCP/SCU Role Selection item asking for the SCP
role, and the archive must accept that role to send C-STOREs on those contexts. The storage
contexts the C-STORE SCP (``dicom_nodes.store``) registers are therefore re-registered here with
both roles acceptable (pynetdicom keeps one context per SOP class and its last roles, so this
module's ``register`` must run after ``store.register``). A sender that proposes no role item
keeps the default roles (it stores to us), so C-STORE is unaffected.

Each instance goes in its stored transfer syntax when the requester accepted it for the instance's
SOP class, otherwise transcoded losslessly to one it accepted (:mod:`pacs.dicom.transcode`); one
that cannot be sent fails its sub-operation and is listed in the Failed SOP Instance UID List.
Statuses, pending responses and C-CANCEL as for C-MOVE (:mod:`dicom_nodes.move`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
)

from dicom_nodes import move
from dicom_nodes.policy import caller
from dicom_nodes.store import storage_sop_classes

if TYPE_CHECKING:
    from dicom_nodes.server import Registry
from pacs.archive import Archive
from pacs.dicom.retrieve_keys import InformationModel, parse_retrieve_identifier
from pacs.diconde.encodings import STORED_TRANSFER_SYNTAXES

log = logging.getLogger(__name__)

GET_MODELS: dict[str, InformationModel] = {
    str(PatientRootQueryRetrieveInformationModelGet): InformationModel.PATIENT_ROOT,
    str(StudyRootQueryRetrieveInformationModelGet): InformationModel.STUDY_ROOT,
}


def register(registry: Registry) -> None:
    """Get SCP for the Patient Root and Study Root models, and the storage SCU role C-GET needs."""
    for uid in GET_MODELS:
        registry.add_context(uid, move.QR_TRANSFER_SYNTAXES)
    for uid in storage_sop_classes():
        # Accept a requester's SCP role (and keep accepting the SCU role of a plain storage SCU).
        registry.add_context(uid, STORED_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    move.install_precheck(registry.ae, {uid: _check_identifier for uid in GET_MODELS})
    registry.bind(evt.EVT_C_GET, handle_get, [registry.archive, registry.settings.incoming_dir])


def handle_get(event: Event, archive: Archive, scratch_dir: Path) -> Iterator[Any]:
    ctx = caller(event, "c-get")
    keys = move.parse_identifier(event, GET_MODELS)  # checked already: raising here is a bug (0xC413)
    items = archive.retrieve.resolve(keys)
    log.info("C-GET from %s: %s -> %d instance(s)", ctx.describe(), keys.describe(), len(items))
    yield len(items)
    assoc = event.assoc

    def accepted(sop_class_uid: str) -> list[str]:
        return move.accepted_transfer_syntaxes(assoc, sop_class_uid)

    yield from move.send_instances(event, archive, items, accepted, scratch_dir, ctx, ctx.describe())


def _check_identifier(request: Any, identifier: Dataset, model: InformationModel) -> move.Failure | None:
    parse_retrieve_identifier(identifier, model)  # InvalidIdentifier: 0xA900
    return None
