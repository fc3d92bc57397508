"""The pending C-FIND responses the archive writes itself are the bytes pynetdicom would send."""

from __future__ import annotations

from io import BytesIO

import pytest
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.pdu import P_DATA_TF

from dicom_nodes.pending import PENDING, command_set, p_data_tf

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # odd length: padded with a NUL
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"


def pynetdicoms(
    sop_class: str, message_id: int, identifier: bytes, context_id: int, max_pdu: int
) -> list[bytes]:
    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.Status = PENDING
    rsp.Identifier = BytesIO(identifier)
    message = C_FIND_RSP()
    message.primitive_to_message(rsp)
    pdus = []
    for pdata in message.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(pdata)
        pdus.append(pdu.encode())
    return pdus


@pytest.mark.parametrize("sop_class", [STUDY_ROOT_FIND, PATIENT_ROOT_FIND, "1.2.3.44"])
@pytest.mark.parametrize("message_id", [1, 7, 65535])
@pytest.mark.parametrize("max_pdu", [0, 16382, 64, 17])  # 17: fragments of 11 bytes
@pytest.mark.parametrize("identifier_size", [8, 200, 5000])
def test_a_pending_response_as_pynetdicom_encodes_it(
    sop_class: str, message_id: int, max_pdu: int, identifier_size: int
) -> None:
    identifier = bytes(range(256)) * (identifier_size // 256) + bytes(identifier_size % 256)
    context_id = 3
    ours = p_data_tf(command_set(sop_class, message_id), context_id, max_pdu, control=0x01)
    ours += p_data_tf(identifier, context_id, max_pdu, control=0x00)
    assert ours == pynetdicoms(sop_class, message_id, identifier, context_id, max_pdu)
