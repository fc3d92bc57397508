"""Parallel first arrivals of one new part.

A CT or a multi-detector radiography cell opens several associations at once, so the first instances
of a component nobody has seen arrive together. Each association must get Success and the index must
end with one component, one inspection and one series per Series Instance UID: the upserts of the
write path must be race-safe on both index backends.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from pydicom.dataset import Dataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from sqlalchemy import func, select

from pacs.archive import Archive
from pacs.index.schema import component, inspection, instance, instance_version, series
from tests.conftest import RunningNode
from tests.support.factories import diconde_dx

ASSOCIATIONS = 8
PER_ASSOCIATION = 4
PART_ID = "RACE-PART-1"


def _send_all(node: RunningNode, datasets: list[Dataset], start: threading.Barrier) -> list[int]:
    ae = AE(ae_title="PARALLEL_SCU")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, [ExplicitVRLittleEndian])
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title)
    try:
        assert assoc.is_established
        start.wait(30)  # every association is up before the first C-STORE goes out
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def test_parallel_first_instances_of_a_new_part(archive: Archive, dicom_node: RunningNode) -> None:
    study = generate_uid()
    series_uids = [generate_uid(), generate_uid()]
    batches = [
        [
            diconde_dx(
                part_id=PART_ID,
                study_uid=study,
                series_uid=series_uids[(a + i) % 2],  # every association feeds both series
                rows=32,
                columns=32,
                seed=a * PER_ASSOCIATION + i,
                InstanceNumber=a * PER_ASSOCIATION + i + 1,
            )
            for i in range(PER_ASSOCIATION)
        ]
        for a in range(ASSOCIATIONS)
    ]
    start = threading.Barrier(ASSOCIATIONS)
    with ThreadPoolExecutor(ASSOCIATIONS) as pool:
        statuses = list(pool.map(lambda batch: _send_all(dicom_node, batch, start), batches))

    assert statuses == [[0x0000] * PER_ASSOCIATION] * ASSOCIATIONS

    sent = {ds.SOPInstanceUID for batch in batches for ds in batch}
    with archive.engine.connect() as conn:
        parts = conn.execute(select(component.c.part_id)).scalars().all()
        studies = conn.execute(select(inspection.c.study_instance_uid)).scalars().all()
        stored_series = conn.execute(select(series.c.series_instance_uid)).scalars().all()
        stored = conn.execute(select(instance.c.sop_instance_uid)).scalars().all()
        versions = conn.execute(select(func.count()).select_from(instance_version)).scalar_one()
        # Every instance hangs under the one component, through its own series.
        linked = conn.execute(
            select(func.count())
            .select_from(instance)
            .join(series, series.c.id == instance.c.series_id)
            .join(inspection, inspection.c.id == series.c.inspection_id)
            .join(component, component.c.id == inspection.c.component_id)
            .where(component.c.part_id == PART_ID, inspection.c.study_instance_uid == study)
        ).scalar_one()
    assert parts == [PART_ID]
    assert studies == [study]
    assert sorted(stored_series) == sorted(series_uids)
    assert sorted(stored) == sorted(sent)
    assert versions == len(sent) == ASSOCIATIONS * PER_ASSOCIATION
    assert linked == len(sent)
