"""The suite's guard on its own pynetdicom clients (``tests/conftest.py``): an association a test
opens gets ``keep_reactor_off_responses``; one opened from any other module, as the archive opens
its C-MOVE sub-associations and reports, is left as that module makes it."""

from __future__ import annotations

from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.conftest import RunningNode


def _guarded(assoc: Association) -> bool:
    return bool(getattr(assoc.dimse, "_reactor_guard", False))


def _release(assoc: Association) -> None:
    if assoc.is_established:
        assoc.release()


@pytest.mark.parametrize("backend", ["sqlite+file"], indirect=True)
def test_only_the_tests_own_associations_get_the_guard(dicom_node: RunningNode) -> None:
    ae = AE("GUARD_SCU")
    ae.add_requested_context(Verification)
    host, port = dicom_node.address

    mine = ae.associate(host, port, ae_title=dicom_node.ae_title)
    try:
        assert mine.is_established
        assert _guarded(mine)
        assert mine.send_c_echo().Status == 0x0000
    finally:
        _release(mine)

    # The same call made from a module that is not the tests' (as the archive's own code calls it).
    elsewhere: dict[str, Any] = {"__name__": "dicom_nodes.elsewhere", "ae": ae, "where": (host, port)}
    exec("theirs = ae.associate(*where, ae_title='" + dicom_node.ae_title + "')", elsewhere)
    theirs: Association = elsewhere["theirs"]
    try:
        assert theirs.is_established
        assert not _guarded(theirs)
    finally:
        _release(theirs)
