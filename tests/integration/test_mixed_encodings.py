"""A sender that offers one SOP class in several contexts gets, in each, its first proposed syntax.

dcmsend (default options) proposes an uncompressed file as [explicit LE, explicit BE, implicit LE] and
a lossless-compressed file of the same SOP class as [RLE, explicit LE, explicit BE, implicit LE].
The two contexts agree on every syntax they share, so the archive must accept RLE for the second one;
anything else makes the sender decompress the original in flight, and the archive keeps a copy that
is not what the device produced.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)
from pynetdicom import AE

from pacs.archive import Archive
from tests.conftest import RunningNode
from tests.support.factories import diconde_dx, write

UNCOMPRESSED = [ExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian]


def test_second_context_of_a_sop_class_gets_its_own_first_choice(dicom_node: RunningNode) -> None:
    ae = AE(ae_title="MIXED_SCU")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, UNCOMPRESSED)
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, [RLELossless, *UNCOMPRESSED])
    assoc = ae.associate(dicom_node.host, dicom_node.port, ae_title=dicom_node.ae_title)
    try:
        assert assoc.is_established
        accepted = {cx.context_id: str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
    finally:
        assoc.release()
    assert accepted == {1: ExplicitVRLittleEndian, 3: RLELossless}


def test_dcmsend_folder_with_mixed_encodings_keeps_the_compressed_original(
    archive: Archive, dicom_node: RunningNode, tmp_path: Path
) -> None:
    plain = diconde_dx(part_id="MIXED-PLAIN", rows=32, columns=32, seed=1)
    packed = diconde_dx(part_id="MIXED-RLE", rows=32, columns=32, seed=2)
    files = [write(plain, tmp_path / "a_plain.dcm"), write(packed, tmp_path / "b_rle.dcm", RLELossless)]
    result = subprocess.run(
        ["/usr/bin/dcmsend", "-aec", dicom_node.ae_title, dicom_node.host, str(dicom_node.port)]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert archive.retrieve.current(plain.SOPInstanceUID).transfer_syntax_uid == ExplicitVRLittleEndian
    assert archive.retrieve.current(packed.SOPInstanceUID).transfer_syntax_uid == RLELossless
