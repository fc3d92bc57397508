"""What the C-MOVE sub-association proposes, and the guard on its C-STORE responses."""

from __future__ import annotations

import datetime as dt
import queue
from types import SimpleNamespace

from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from dicom_nodes.move import FALLBACK_TRANSFER_SYNTAXES, MAX_CONTEXTS, ResponseGuard, propose_contexts
from pacs.index.repository import VersionRow
from pacs.services.retrieve import RetrieveItem


def item(sop_class: str, syntax: str, n: int = 0) -> RetrieveItem:
    version = VersionRow(
        id=n, instance_id=n, sop_instance_uid=f"1.2.3.{n}", object_key=f"key-{n}", dataset_sha256="",
        file_meta_sha256="", dataset_offset=0, size=0, transfer_syntax_uid=str(syntax),
        received_at=dt.datetime.now(dt.UTC), is_current=True,
    )  # fmt: skip
    return RetrieveItem(str(sop_class), version)


def proposed(items: list[RetrieveItem]) -> list[tuple[str, list[str]]]:
    return [
        (str(cx.abstract_syntax), [str(ts) for ts in cx.transfer_syntax]) for cx in propose_contexts(items)
    ]


def test_each_stored_syntax_alone_then_the_fallback_per_sop_class() -> None:
    dx, ct = str(DigitalXRayImageStorageForPresentation), str(CTImageStorage)
    items = [
        item(dx, JPEG2000Lossless, 1),
        item(dx, ExplicitVRLittleEndian, 2),
        item(ct, RLELossless, 3),
        item(dx, JPEG2000Lossless, 4),
    ]
    assert proposed(items) == [
        (dx, [str(JPEG2000Lossless)]),
        (dx, [str(ExplicitVRLittleEndian)]),
        (dx, list(FALLBACK_TRANSFER_SYNTAXES)),
        (ct, [str(RLELossless)]),
        (ct, list(FALLBACK_TRANSFER_SYNTAXES)),
    ]
    assert (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)) == FALLBACK_TRANSFER_SYNTAXES


def test_no_more_than_128_contexts_and_every_sop_class_keeps_its_fallback() -> None:
    classes = [f"1.2.840.10008.5.1.4.1.1.{n}" for n in range(100)]
    items = [item(c, s, i) for i, c in enumerate(classes) for s in (JPEG2000Lossless, ExplicitVRBigEndian)]
    items += [item(classes[7], ExplicitVRBigEndian, 1000 + i) for i in range(5)]  # the most used syntax
    contexts = proposed(items)
    assert len(contexts) == MAX_CONTEXTS
    fallbacks = {c for c, syntaxes in contexts if syntaxes == list(FALLBACK_TRANSFER_SYNTAXES)}
    assert fallbacks == set(classes)
    assert (classes[7], [str(ExplicitVRBigEndian)]) in contexts  # most instances: proposed first


def test_no_instances_no_contexts() -> None:
    assert propose_contexts([]) == []


def test_the_reactor_cannot_take_a_response_while_a_store_is_in_flight() -> None:
    messages: queue.Queue[tuple[int, str]] = queue.Queue()

    def get_msg(block: bool = False) -> tuple[int | None, str | None]:
        try:
            return messages.get(block=block, timeout=1)
        except queue.Empty:
            return None, None

    assoc = SimpleNamespace(dimse=SimpleNamespace(get_msg=get_msg))
    guard = ResponseGuard()
    guard.install(assoc)
    messages.put((1, "C-STORE-RSP"))
    guard.in_flight = True
    assert assoc.dimse.get_msg(block=False) == (None, None)  # the reactor's poll
    assert assoc.dimse.get_msg(block=True) == (1, "C-STORE-RSP")  # send_c_store's wait
    guard.in_flight = False
    messages.put((1, "N-EVENT-REPORT-RQ"))
    assert assoc.dimse.get_msg(block=False) == (1, "N-EVENT-REPORT-RQ")
