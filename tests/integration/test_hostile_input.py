"""Hostile input on both faces: the archive answers each with an error and keeps serving.

What a broken or malicious peer sends: malformed PDUs and connections dropped mid-transfer on the
DICOM port; data sets with lying element lengths, items without delimiters, sequences nested ten
thousand deep; STOW-RS bodies with wrong boundaries, cut-off parts and Content-Lengths never sent;
path-like and SQL-like strings in every QIDO-RS key, in C-FIND identifiers and in every URL
segment; deflate bombs, against a ``pacs serve`` process whose memory is watched.

After each: a failure status or a 4xx (never a 5xx, never an internal-error status), nothing partial
in the store or the index, and proof that the archive still serves (C-ECHO, a valid C-STORE or
STOW, the same query answered as before). Query strings run on both backend pairs (their SQL
differs); the rest does not touch the index in a backend-specific way and runs on SQLite and the
filesystem store. The longer, randomised run of the same cases is ``bench/fuzz.py``.
"""

from __future__ import annotations

import http.client
import socket
import struct
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from pacs.archive import Archive
from pacs.config import Settings
from pacs.context import CallerContext
from pacs.query.attributes import query_attributes
from tests.conftest import RunningNode
from tests.support.factories import diconde_dx, part10_bytes, write
from tests.support.hostile import (
    ABORT,
    HOSTILE_STRINGS,
    VERIFICATION,
    RawPeer,
    associate_rq,
    body_of,
    broken_stow_bodies,
    dataset_of,
    deflate_bomb,
    encode,
    identifier,
    malformed_datasets,
    malformed_pdus,
    p_data,
    part10,
    pdu,
)
from tests.support.serve import PacsServer, proc_status_kib
from tests.support.stores import contents
from tests.support.web import RunningWeb

SQLITE = pytest.mark.parametrize("backend", ["sqlite+file"])
TIMEOUT = 2.0  # network and ACSE timeouts of the node under test, seconds
#: How much later than its timeout a loaded machine may take to act on it; waiting longer is a hang.
LATE = 12.0
SUCCESS, PENDING = 0x0000, 0xFF00
#: Statuses that mean "the archive failed", not "your request is wrong": never for bad input.
INTERNAL = {0x0110, 0xA700, 0xA701, 0xA702}
DX = DigitalXRayImageStorageForPresentation
STORE_CONTEXT = 1
BOUNDARY = "hostile-boundary-1f2e"
DICOM_RELATED = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Short timeouts: a peer that stalls is dropped within seconds, so the tests can show it."""
    return settings.model_copy(update={"network_timeout": TIMEOUT, "acse_timeout": TIMEOUT})


# -- what is kept ---------------------------------------------------------------------------------
def kept(archive: Archive) -> tuple[dict[str, int], list[str]]:
    """Index row counts, stored object keys and staged files (tests.support.stores)."""
    return archive.index.counts(), sorted(contents(archive.store))


def back_to(archive: Archive, before: tuple[dict[str, int], list[str]], what: str) -> None:
    """Wait until the index and the store hold what they held ``before``: an object being received
    is in the store's staging folder until it is committed or discarded."""
    wait_until(lambda: kept(archive) == before, what)


def wait_until(condition: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def small_dx(**kwargs: object) -> Dataset:
    return diconde_dx(rows=16, columns=16, **kwargs)  # type: ignore[arg-type]


def dataset_bytes(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    return encode(ds, syntax)


class Peers:
    """Raw DICOM connections of one test, all closed when it ends, failed or not, before the server
    stops: a server still waiting on one would otherwise hold the test run."""

    def __init__(self) -> None:
        self.open: list[RawPeer] = []

    def connect(self, node: RunningNode | PacsServer, timeout: float = TIMEOUT + LATE) -> RawPeer:
        if isinstance(node, RunningNode):
            host, port = node.host, node.port
        else:
            host, port = node.host, node.dicom_port
        peer = RawPeer(host, port, timeout=timeout)
        self.open.append(peer)
        return peer


@pytest.fixture
def peers() -> Iterator[Peers]:
    """Listed after the server fixture in a test's arguments, so it is torn down first."""
    opened = Peers()
    yield opened
    for peer in opened.open:
        peer.close()


def store_contexts() -> list[tuple[int, str, list[str]]]:
    return [
        (STORE_CONTEXT, DX, [ExplicitVRLittleEndian]),
        (3, DX, [ImplicitVRLittleEndian]),
        (5, DX, [DeflatedExplicitVRLittleEndian]),
        (7, VERIFICATION, [ImplicitVRLittleEndian]),
    ]


def still_serves(node: RunningNode, archive: Archive, peers: Peers) -> None:
    """C-ECHO answers and a valid C-STORE is stored, on a new association."""
    ds = small_dx()
    with peers.connect(node) as peer:
        accepted = peer.associate(node.ae_title, store_contexts())
        assert accepted.contexts[7][0] == 0 and accepted.contexts[STORE_CONTEXT][0] == 0, accepted
        assert peer.echo(7).Status == SUCCESS
        status = peer.store(STORE_CONTEXT, DX, ds.SOPInstanceUID, dataset_bytes(ds))
        assert status.Status == SUCCESS, status
        peer.release()
    assert archive.retrieve.current(ds.SOPInstanceUID)


# -- malformed PDUs -------------------------------------------------------------------------------
@SQLITE
def test_malformed_pdus_get_an_abort_or_a_rejection_and_the_node_keeps_serving(
    dicom_node: RunningNode, archive: Archive, peers: Peers
) -> None:
    """Each malformed PDU gets an answer (an A-ABORT, an A-ASSOCIATE-RJ, a close) within the node's
    timeouts, never a connection left hanging; then the node serves as before."""
    before = kept(archive)
    for case, data in malformed_pdus(dicom_node.ae_title).items():
        answers: list[int | str] = []
        with peers.connect(dicom_node) as peer:
            peer.send(data)
            started = time.monotonic()
            try:
                while True:
                    kind, _ = peer.receive()
                    answers.append(kind)
                    # A-ASSOCIATE-RJ or A-ABORT: the answer to garbage. pynetdicom accepts some
                    # requests that lack items (A-ASSOCIATE-AC, an association that can do nothing
                    # and ends at the network timeout): an answer too.
                    if kind in (0x02, 0x03, 0x07):
                        break
            except TimeoutError:
                answers.append("silence")
            except (ConnectionError, OSError):
                answers.append("closed")
        waited = time.monotonic() - started
        assert "silence" not in answers and waited < TIMEOUT + LATE, f"{case}: {answers} after {waited:.1f} s"
        assert kept(archive) == before, case
    still_serves(dicom_node, archive, peers)


@SQLITE
@pytest.mark.parametrize(
    "missing",
    [
        pytest.param("user", id="no-user-information"),
        pytest.param("contexts", id="no-presentation-context"),
    ],
)
def test_an_association_request_without_a_mandatory_item_is_rejected_at_once(
    dicom_node: RunningNode, archive: Archive, peers: Peers, missing: str
) -> None:
    """pynetdicom accepts such a request, and the association then idles until the network
    timeout; the archive answers A-ASSOCIATE-RJ (permanent, service user, no reason given)."""
    contexts = [] if missing == "contexts" else [(1, VERIFICATION, [ImplicitVRLittleEndian])]
    data = associate_rq(dicom_node.ae_title, contexts)
    if missing == "user":
        user = data.index(b"\x50\x00")
        data = pdu(0x01, data[6:user])
    with peers.connect(dicom_node) as peer:
        peer.send(data)
        kind, body = peer.receive()
        assert kind == 0x03, f"PDU type {kind:#04x}, not an A-ASSOCIATE-RJ"
        assert body[1:4] == bytes([0x01, 0x01, 0x01])  # result, source, reason
    still_serves(dicom_node, archive, peers)


@SQLITE
def test_a_pdu_longer_than_what_is_sent_then_silence_or_disconnect(
    dicom_node: RunningNode, archive: Archive, peers: Peers
) -> None:
    """A PDU header that claims more bytes than follow: the node waits at most its network timeout
    for them, or notices the disconnect at once; either way the node goes on."""
    for claimed, then_close in ((1000, True), (64 << 10, True), (1000, False)):
        with peers.connect(dicom_node) as peer:
            peer.send(pdu(0x01, b"\x00\x01\x00\x00" + b"A" * 16, length=claimed))
            started = time.monotonic()
            if then_close:
                continue
            assert peer.closed_by_peer(), "the node kept a silent connection open"
            assert time.monotonic() - started < TIMEOUT + LATE
    assert dicom_node.node.spooler.pending == 0  # type: ignore[attr-defined]
    still_serves(dicom_node, archive, peers)


@SQLITE
def test_a_connection_dropped_mid_c_store_leaves_nothing(
    dicom_node: RunningNode, archive: Archive, peers: Peers
) -> None:
    """Reset (RST), closed (FIN) and aborted (A-ABORT) in the middle of a data set: the partial
    object is discarded, nothing is indexed, the next C-STORE of the same instance succeeds."""
    ds = diconde_dx(rows=512, columns=512)  # 512 KiB of pixels: several PDUs
    data = dataset_bytes(ds)
    spooler = dicom_node.node.spooler  # type: ignore[attr-defined]
    empty = kept(archive)
    assert empty == ({k: 0 for k in empty[0]}, [])
    for ending in ("reset", "close", "abort"):
        with peers.connect(dicom_node) as peer:
            peer.associate(dicom_node.ae_title, store_contexts())
            peer.send(p_data(STORE_CONTEXT, _c_store(ds), command=True, last=True))
            peer.send_dataset(STORE_CONTEXT, data[: len(data) // 2], last=False)
            wait_until(lambda: spooler.pending == 1, "the partial data set to be received")
            if ending == "reset":
                peer.reset()
            elif ending == "abort":
                peer.send(ABORT)
        wait_until(lambda: spooler.pending == 0, f"the partial object to be discarded ({ending})")
        back_to(archive, empty, f"the partial object to be removed ({ending})")
    with peers.connect(dicom_node) as peer:
        peer.associate(dicom_node.ae_title, store_contexts())
        assert peer.store(STORE_CONTEXT, DX, ds.SOPInstanceUID, data).Status == SUCCESS
        peer.release()


def _c_store(ds: Dataset) -> bytes:
    from tests.support.hostile import c_store_rq

    return c_store_rq(DX, ds.SOPInstanceUID)


# -- malformed data sets over C-STORE ------------------------------------------------------------
@SQLITE
def test_malformed_data_sets_get_a_failure_status_and_leave_nothing(
    dicom_node: RunningNode, archive: Archive, peers: Peers
) -> None:
    peer = peers.connect(dicom_node)
    accepted = peer.associate(dicom_node.ae_title, store_contexts())
    syntax_context = {ts: cid for cid, (result, ts) in accepted.contexts.items() if result == 0 and cid != 7}
    before = kept(archive)
    for case, (data, syntax) in malformed_datasets(small_dx(part_id="MALFORMED")).items():
        ds_uid = _sop_instance(data, syntax)
        status = peer.store(syntax_context[syntax], DX, ds_uid, data)
        code = int(status.Status)
        assert code not in (SUCCESS, *INTERNAL), f"{case}: status 0x{code:04X}"
        assert code in (0xC000, 0xA900), f"{case}: status 0x{code:04X}"
        assert status.get("ErrorComment"), f"{case}: no Error Comment"
        assert kept(archive) == before, case
    assert peer.echo(7).Status == SUCCESS  # the same association goes on
    peer.release()
    still_serves(dicom_node, archive, peers)


def _sop_instance(data: bytes, syntax: str) -> str:
    marker = b"\x08\x00\x18\x00" + (b"" if syntax == ImplicitVRLittleEndian else b"UI")
    at = data.index(marker) + len(marker)
    length = struct.unpack_from("<L" if syntax == ImplicitVRLittleEndian else "<H", data, at)[0]
    start = at + (4 if syntax == ImplicitVRLittleEndian else 2)
    return data[start : start + length].rstrip(b"\0").decode()


# -- STOW-RS bodies -------------------------------------------------------------------------------
def stow(client: httpx.Client, content: bytes, content_type: str = DICOM_RELATED) -> httpx.Response:
    return client.post("/dicom-web/studies", content=content, headers={"Content-Type": content_type})


@SQLITE
def test_stow_bodies_with_broken_framing_are_4xx_and_leave_nothing(web: RunningWeb, archive: Archive) -> None:
    cases = broken_stow_bodies(part10_bytes(small_dx()), BOUNDARY)
    before = kept(archive)
    with web.client() as client:
        for case, (content, content_type) in cases.items():
            response = stow(client, content, content_type)
            assert 400 <= response.status_code < 500, f"{case}: {response.status_code} {response.text[:300]}"
            assert kept(archive) == before, case
        ds = small_dx()
        assert stow(client, body_of([part10_bytes(ds)], boundary=BOUNDARY)).status_code == 200
    assert archive.retrieve.current(ds.SOPInstanceUID)


@SQLITE
def test_stow_parts_with_malformed_data_sets_fail_alone(web: RunningWeb, archive: Archive) -> None:
    """Each malformed data set fails with a Failure Reason; the good part beside them is stored."""
    ds = small_dx(part_id="STOW-MALFORMED")
    bad = [part10(data, ds, syntax) for data, syntax in malformed_datasets(ds).values()]
    bad.append(deflate_bomb(ds, 4 << 30, where="header"))  # 4 MiB inflating to 4 GiB before the pixels
    good = small_dx()
    before = kept(archive)
    with web.client() as client:
        response = stow(client, body_of([*bad, part10_bytes(good)], boundary=BOUNDARY))
    assert response.status_code == 202, response.text[:500]
    failed = response.json()["00081198"]["Value"]
    assert len(failed) == len(bad)
    assert {item["00081197"]["Value"][0] for item in failed} <= {0xC000, 0xA900}
    assert archive.retrieve.current(good.SOPInstanceUID)
    counts, objects = kept(archive)
    assert counts["instances"] == before[0]["instances"] + 1 and len(objects) == len(before[1]) + 1


def _raw_http(web: RunningWeb, head: bytes) -> socket.socket:
    host, port = web.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=TIMEOUT + LATE)
    sock.sendall(head)
    return sock


def _post_head(web: RunningWeb, content_length: int) -> bytes:
    auth = "".join(f"{k}: {v}\r\n" for k, v in web.headers().items())
    return (
        f"POST /dicom-web/studies HTTP/1.1\r\nHost: archive\r\nContent-Type: {DICOM_RELATED}\r\n"
        f"Content-Length: {content_length}\r\n{auth}\r\n"
    ).encode()


@SQLITE
def test_a_stow_content_length_never_sent(web: RunningWeb, archive: Archive) -> None:
    """A terabyte declared, a part begun, then silence: after the network timeout the request ends
    (408), the open part is discarded and the connection closed; a disconnect ends it at once."""
    begun = (
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part10_bytes(small_dx())[:3000]
    )
    before = kept(archive)
    sock = _raw_http(web, _post_head(web, 10**12) + begun)
    started = time.monotonic()
    answer = b""
    while chunk := sock.recv(65536):  # until the server closes the connection
        answer += chunk
    waited = time.monotonic() - started
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert TIMEOUT - 0.5 < waited < TIMEOUT + LATE, waited
    back_to(archive, before, "the open part to be discarded")

    for declared in (10**12, 2**63 - 1):  # and the client goes away
        sock = _raw_http(web, _post_head(web, declared) + begun)
        time.sleep(0.2)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    time.sleep(0.5)  # for the server to read what came before each reset
    back_to(archive, before, "the parts of vanished clients to be discarded")
    with web.client() as client:
        assert stow(client, body_of([part10_bytes(small_dx())], boundary=BOUNDARY)).status_code == 200


# -- path-like and SQL-like strings --------------------------------------------------------------
UNIVERSAL = {"*", "\\"}  # values that are universal matching by the standard: every entity matches
#: One attribute per way a key is matched: a column, a person name, a UID list, a date range, a
#: multi-valued column, a number, a computed list, the DICOM JSON (matched in Python).
REPRESENTATIVE = (
    "PatientName",
    "StudyInstanceUID",
    "ModalitiesInStudy",
    "Rows",
    "SOPClassesInStudy",
    "InstitutionName",
)


@pytest.fixture
def stored(archive: Archive, tmp_path: Path) -> list[Dataset]:
    """Two instances the hostile queries must never find (nor lose)."""
    datasets = [small_dx(part_id="HOSTILE-1", seed=1), small_dx(part_id="HOSTILE-2", seed=2)]
    for i, ds in enumerate(datasets):
        archive.ingest.ingest_file(write(ds, tmp_path / f"{i}.dcm"), CallerContext(via="import"))
    return datasets


def _every_key_with_some_strings() -> list[tuple[str, str]]:
    """Every QIDO-RS key (the matchable attributes but sequences) with a hostile string each, in
    turn; every hostile string with the representative keys, as a parameter's name, and (every
    other one) as the control parameters."""
    keys = [a.keyword for a in query_attributes().values() if a.keyword and a.vr != "SQ"]
    strings = HOSTILE_STRINGS
    pairs = [(key, strings[i % len(strings)]) for i, key in enumerate(keys)]
    pairs += [(key, value) for key in REPRESENTATIVE for value in strings]
    pairs += [(value, "1") for value in strings]  # as the parameter's name
    pairs += [(control, value) for control in CONTROLS for value in strings[::2]]
    return pairs


CONTROLS = ("limit", "offset", "includefield", "fuzzymatching")


def _matches(response: httpx.Response) -> set[str]:
    return {item["00100020"]["Value"][0] for item in response.json() if item.get("00100020", {}).get("Value")}


def test_hostile_strings_in_every_qido_key(web: RunningWeb, archive: Archive, stored: list[Dataset]) -> None:
    """400 or the matches the standard gives (none, or every instance for universal matching);
    never a 5xx, never an instance a value should not match, and the index as it was."""
    everything = {"HOSTILE-1", "HOSTILE-2"}
    before = kept(archive)
    failures = []
    requests = 0
    with web.client() as client:
        assert _matches(client.get("/dicom-web/instances", params={"PatientID": "HOSTILE-1"})) == {
            "HOSTILE-1"
        }
        for key, value in _every_key_with_some_strings():
            params = {key: value} if key == "includefield" else {key: value, "includefield": "PatientID"}
            response = client.get("/dicom-web/instances", params=params)
            requests += 1
            if response.status_code == 200 and key not in CONTROLS:
                found = _matches(response)
                if found - (everything if value in UNIVERSAL else set()):
                    failures.append(f"{key}={value[:40]!r} matched {sorted(found)}")
            elif response.status_code not in (200, 400):
                failures.append(f"{key}={value[:40]!r}: {response.status_code} {response.text[:200]}")
        assert failures == [], f"{len(failures)} of {requests} requests:\n" + "\n".join(failures)
        assert kept(archive) == before
        assert _matches(client.get("/dicom-web/instances", params={"PatientID": "HOSTILE-*"})) == everything


FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
LEVEL, PATIENT_ID = 0x00080052, 0x00100020
#: C-FIND keys per level: (tag, VR); the values are written verbatim, whatever pydicom would allow.
FIND_KEYS = {
    "STUDY": [
        (0x00100020, "LO"),  # PatientID
        (0x00100010, "PN"),  # PatientName
        (0x0020000D, "UI"),  # StudyInstanceUID
        (0x00080050, "SH"),  # AccessionNumber
        (0x00080020, "DA"),  # StudyDate
        (0x00080030, "TM"),  # StudyTime
        (0x00080061, "CS"),  # ModalitiesInStudy
    ],
    "SERIES": [(0x00080060, "CS"), (0x0020000E, "UI"), (0x00200011, "IS")],
    "IMAGE": [(0x00080018, "UI"), (0x00280010, "US"), (0x00080016, "UI")],
}
EVERY_STRING = {0x00100020, 0x00100010, 0x0020000D, 0x00080020, 0x00280010}
#: Padding only (NUL pads UIDs, PS3.5 6.2): a zero-length value once read, universal matching.
PADDING = {"\x00"}


def test_hostile_strings_in_c_find_identifiers(
    dicom_node: RunningNode, archive: Archive, stored: list[Dataset], peers: Peers
) -> None:
    """Each key of each level, each hostile string written as is: a failure status (0xC000,
    0xA900) or Success with no match, never an internal failure nor a match that should not be."""
    peer = peers.connect(dicom_node)
    accepted = peer.associate(dicom_node.ae_title, [(1, FIND, [ExplicitVRLittleEndian])])
    assert accepted.contexts[1][0] == 0
    above = {
        "STUDY": {},
        "SERIES": {0x0020000D: ("UI", stored[0].StudyInstanceUID)},
        "IMAGE": {
            0x0020000D: ("UI", stored[0].StudyInstanceUID),
            0x0020000E: ("UI", stored[0].SeriesInstanceUID),
        },
    }
    failures = []
    before = kept(archive)
    queries = 0
    for level, keys in FIND_KEYS.items():
        for tag, vr in keys:
            # Every string for a key of each kind of matching, every third for the others.
            strings = HOSTILE_STRINGS if tag in EVERY_STRING else HOSTILE_STRINGS[::3]
            for value in strings:
                elements = {
                    0x00080052: ("CS", level),
                    0x00100020: ("LO", ""),
                    **above[level],
                    tag: (vr, value),
                }
                statuses = peer.find(1, FIND, identifier(elements))
                queries += 1
                final, matches = statuses[-1], len(statuses) - 1
                if final in INTERNAL or final not in (SUCCESS, 0xC000, 0xA900):
                    failures.append(f"{level} ({tag:08X})={value[:40]!r}: statuses {statuses}")
                elif matches and value not in UNIVERSAL | PADDING:
                    failures.append(f"{level} ({tag:08X})={value[:40]!r}: {matches} match(es)")
    for value in HOSTILE_STRINGS:  # as the Query/Retrieve Level itself
        statuses = peer.find(1, FIND, identifier({LEVEL: ("CS", value), PATIENT_ID: ("LO", "")}))
        queries += 1
        if statuses != [0xA900]:
            failures.append(f"QueryRetrieveLevel={value[:40]!r}: statuses {statuses}")
    everything = peer.find(
        1, FIND, identifier({0x00080052: ("CS", "STUDY"), 0x00100020: ("LO", "HOSTILE-*")})
    )
    peer.release()
    assert failures == [], f"{len(failures)} of {queries} queries:\n" + "\n".join(failures)
    assert everything == [PENDING, PENDING, SUCCESS]  # the same association answered to the end
    assert kept(archive) == before


def _get_routes(web: RunningWeb) -> list[str]:
    document = httpx.get(f"{web.base_url}/openapi.json", headers=web.headers()).json()
    return sorted(
        path for path, operations in document["paths"].items() if "get" in operations and "{" in path
    )


#: Segments sent in every position of every route; the others only with every parameter hostile.
EVERY_POSITION = ("%00", "*", "%27%20OR%201%3D1%20--")
ALL_POSITIONS = (
    "..",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "1.2.3%00",
    "%25%27%3B%20DROP%20TABLE%20instance%3B%20--",
    "x" * 3000,
)


def test_hostile_strings_in_every_url_segment(
    web: RunningWeb, archive: Archive, stored: list[Dataset]
) -> None:
    """Every GET route with path parameters: each parameter in turn hostile with the others real,
    and all of them hostile at once. 4xx or an empty answer, never a 5xx, never the data of a
    stored instance (``/studies/*/series`` names no study)."""
    ds = stored[0]
    real = {
        "study": ds.StudyInstanceUID,
        "series": ds.SeriesInstanceUID,
        "instance": ds.SOPInstanceUID,
        "part_id": ds.PatientID,
        "frame_list": "1",
        "path": "7FE00010",
    }
    secrets = {ds.SOPInstanceUID.encode(), stored[1].SOPInstanceUID.encode()}
    routes = _get_routes(web)
    assert any("{study}" in r for r in routes) and any("{part_id" in r for r in routes), routes
    host, port = web.base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    failures = []
    before = kept(archive)
    requests = 0

    def get(path: str) -> None:
        nonlocal requests, conn
        conn.request("GET", path, headers=web.headers())
        response = conn.getresponse()
        body = response.read()
        requests += 1
        if response.status >= 500:
            failures.append(f"GET {path[:160]}: {response.status} {body[:200]!r}")
        elif response.status < 300 and any(secret in body for secret in secrets):
            failures.append(f"GET {path[:160]}: {response.status} with a stored instance's data")
        if response.getheader("connection") == "close":
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=30)

    for route in routes:
        names = [segment[1:-1].split(":")[0] for segment in route.split("/") if segment.startswith("{")]

        def path_of(values: dict[str, str], route: str = route, names: list[str] = names) -> str:
            path = route
            for name in names:
                value = values.get(name) or urllib.parse.quote(real.get(name, "x"), safe="")
                path = path.replace("{" + name + "}", value).replace("{" + name + ":path}", value)
            return path

        for hostile in names:
            for segment in EVERY_POSITION:
                get(path_of({hostile: segment}))
        for segment in ALL_POSITIONS:
            get(path_of(dict.fromkeys(names, segment)))
    conn.close()
    with web.client() as client:
        for field, values in (("studyUID", HOSTILE_STRINGS[::2]), ("objectUID", HOSTILE_STRINGS[1::2])):
            for value in values:
                params = {
                    "requestType": "WADO",
                    "studyUID": ds.StudyInstanceUID,
                    "seriesUID": ds.SeriesInstanceUID,
                    "objectUID": ds.SOPInstanceUID,
                    field: value,
                }
                response = client.get("/dicom-web/wado", params=params)
                requests += 1
                if response.status_code >= 500 or (
                    response.status_code < 300 and any(s in response.content for s in secrets)
                ):
                    failures.append(f"WADO-URI {field}={value[:40]!r}: {response.status_code}")
    assert failures == [], f"{len(failures)} of {requests} requests:\n" + "\n".join(failures[:40])
    assert kept(archive) == before
    with web.client() as client:
        for d in stored:
            series = f"/dicom-web/studies/{d.StudyInstanceUID}/series/{d.SeriesInstanceUID}"
            assert client.get(f"{series}/instances/{d.SOPInstanceUID}").status_code == 200


def test_hostile_strings_in_what_the_audit_trail_records(
    dicom_node: RunningNode, web: RunningWeb, archive: Archive, peers: Peers
) -> None:
    """The audit trail records what peers send: a NUL in a C-STORE's Affected SOP Instance UID, in
    a URL's part ID or query. PostgreSQL cannot store a NUL; an entry it refuses must not hold up
    the entries behind it (every entry is written, the chain verifies)."""
    ds = small_dx(part_id="AUDITED")
    with peers.connect(dicom_node) as peer:
        peer.associate(dicom_node.ae_title, store_contexts())
        status = peer.store(STORE_CONTEXT, DX, "1.2.3\x00.4", dataset_bytes(ds))
        assert int(status.Status) in (0xC000, 0xA900), status
        assert peer.store(STORE_CONTEXT, DX, ds.SOPInstanceUID, dataset_bytes(ds)).Status == SUCCESS
        peer.release()
    with web.client() as client:
        for path in ("/api/parts/A%00B", "/dicom-web/studies?PatientID=A%00B", "/dicom-web/studies/1.2%003"):
            assert client.get(path).status_code in (400, 404), path
    assert archive.audit.flush(timeout=20), "audit entries held up behind one PostgreSQL refuses"
    stores = archive.audit.entries(action="store")
    assert [e.outcome for e in stores] == ["refused", "success"], stores
    assert stores[1].part_id == "AUDITED"
    verification = archive.audit.verify()
    assert verification.ok and verification.checked >= 2, verification


# -- bombs and huge PDUs against `pacs serve`: the worker's memory ---------------------------------
#: Growth of the worker's peak resident memory allowed for the whole series of bombs below.
MAX_GROWTH_MB = 100


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PacsServer]:
    # A connection dropped before its association request keeps pynetdicom's association thread
    # waiting for that request for the ACSE timeout; a short one lets the server stop at once.
    env = {"PACS_SHUTDOWN_GRACE": "2", "PACS_ACSE_TIMEOUT": "2"}
    data, log = tmp_path / "data", tmp_path / "serve.log"
    with PacsServer(["--data-dir", data], workers=1, env=env, log_path=log) as running:
        yield running


def test_bombs_and_huge_pdus_leave_the_servers_memory_bounded(server: PacsServer, peers: Peers) -> None:
    """Deflate bombs over C-STORE and STOW-RS (2 MiB inflating to 2 GiB of pixel data, 4 MiB to
    4 GiB before it) and a PDU header claiming 4 GiB: refused, and the worker's peak resident
    memory grows by a few tens of MB."""
    (worker,) = server.worker_pids()
    rss_before = proc_status_kib(worker, "VmRSS")

    # A PDU header claiming 4 GiB, a megabyte of it, then a reset.
    peer = peers.connect(server)
    peer.send(pdu(0x04, b"", length=0xFFFFFFF0) + bytes(1 << 20))
    peer.reset()

    ds = small_dx(part_id="BOMB")
    pixels = deflate_bomb(ds, 2 << 30)  # refused at the 1 GiB inflation limit
    header = deflate_bomb(ds, 4 << 30, where="header")  # refused after 64 MiB
    for bomb in (pixels, header):
        assert len(bomb) < 5 << 20
        peer = peers.connect(server, timeout=120)
        accepted = peer.associate(server.ae_title, store_contexts())
        assert accepted.contexts[5] == (0, DeflatedExplicitVRLittleEndian), accepted
        status = peer.store(5, DX, ds.SOPInstanceUID, dataset_of(bomb))
        assert int(status.Status) == 0xC000 and "inflates beyond" in str(status.ErrorComment), status
        peer.release()

    auth = {"Authorization": f"Bearer {_token(server)}"}
    with httpx.Client(base_url=server.http_url, headers=auth, timeout=120) as client:
        good = small_dx(part_id="AFTER-BOMBS")
        response = stow(client, body_of([header, part10_bytes(good)], boundary=BOUNDARY))
        assert response.status_code == 202, response.text[:300]
        assert "inflates beyond" in response.headers["warning"]

    peer = peers.connect(server)
    peer.associate(server.ae_title, store_contexts())
    assert peer.echo(7).Status == SUCCESS
    peer.release()

    assert server.worker_pids() == [worker], "the worker was replaced\n" + server.log()[-3000:]
    growth = (proc_status_kib(worker, "VmHWM") - rss_before) / 1024
    print(f"\nworker RSS before {rss_before / 1024:.0f} MB, peak growth {growth:.0f} MB")
    assert growth < MAX_GROWTH_MB, f"peak resident memory grew by {growth:.0f} MB"


def _token(server: PacsServer) -> str:
    """The first admin's token, printed once by ``pacs serve`` on an archive without users."""
    lines = server.stdout_lines
    notice = next(i for i, line in enumerate(lines) if line.startswith("no users yet"))
    return lines[notice + 1].strip()
