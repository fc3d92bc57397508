"""Hostile input for the archive's two faces: what a broken or malicious peer sends.

Builders of malformed DICOM (nested sequences, deflate bombs, lying element lengths), of raw upper
layer PDUs (PS3.8 9.3) sent over a plain socket, and of the path-like and SQL-like strings that go
into every query key and URL segment. Shared by ``tests/integration/test_hostile_input.py``,
``tests/unit/dicom/test_parse_fuzz.py`` and the longer run in ``bench/fuzz.py``.
"""

from __future__ import annotations

import functools
import io
import random
import socket
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

#: Path-like and SQL-like strings, each sent as a query value, a UID, a part ID.
HOSTILE_STRINGS: tuple[str, ...] = (
    "../../etc/passwd",
    "..\\..\\windows\\win.ini",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "..%2f..%2f..%2fetc%2fpasswd",
    "%252e%252e%252f",
    "/etc/passwd\x00.dcm",
    "a\x00b",
    "\x00",
    "' OR 1=1 --",
    "' OR '1'='1",
    '" OR ""="',
    "%'; DROP TABLE instance; --",
    "1; DROP TABLE component",
    "1.2.3' UNION SELECT object_key FROM instance_version --",
    "*' OR '1'='1",
    "%",
    "_",
    "[a-z]*",
    "\\",
    "$(id)",
    "{{7*7}}",
    "x" * 5000,
)

#: Segments for URL paths: the same strings, as a client would put them into a path.
HOSTILE_SEGMENTS: tuple[str, ...] = (
    "..",
    "%2e%2e",
    "..%2f..%2fetc%2fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%00",
    "1.2.3%00",
    "%27%20OR%201%3D1%20--",
    "%25%27%3B%20DROP%20TABLE%20instance%3B%20--",
    "1.2.3'%20UNION%20SELECT%201--",
    "*",
    "%2A",
    "x" * 3000,
)


# -- DICOM encodings ---------------------------------------------------------------------------
def encode(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """``ds`` (no file meta) encoded in an uncompressed transfer syntax, elements in tag order."""
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = transfer_syntax == ImplicitVRLittleEndian
    write_dataset(out, ds)
    return out.getvalue()


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.10.1081.99")
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_file_meta_info(out, meta)
    return out.getvalue()


def part10(dataset: bytes, ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """A Part 10 file of ``dataset`` (bytes, verbatim) whose meta names ``ds``'s SOP class and instance."""
    return bytes(128) + b"DICM" + file_meta(ds.SOPClassUID, ds.SOPInstanceUID, transfer_syntax) + dataset


def split_at(ds: Dataset, tag: int) -> tuple[Dataset, Dataset]:
    """``ds`` as the elements before ``tag`` and those from it on (pixel data included)."""
    head, tail = Dataset(), Dataset()
    for elem in ds:
        (head if elem.tag < tag else tail).add(elem)
    return head, tail


CONTENT_SEQUENCE = 0x0040A730  # a sequence the dictionary knows (implicit VR walks it too)


def nested_sequences(
    depth: int, *, defined: bool, implicit: bool = False, tag: int = CONTENT_SEQUENCE
) -> bytes:
    """``depth`` sequences of one item each, each inside the last, as one element. Built level by
    level, never by recursion, so any depth can be made."""
    group, elem = tag >> 16, tag & 0xFFFF

    def sq_header(length: int) -> bytes:
        if implicit:
            return struct.pack("<HHL", group, elem, length)
        return struct.pack("<HH2sHL", group, elem, b"SQ", 0, length)

    sq = 8 if implicit else 12
    if not defined:
        opening = (sq_header(0xFFFFFFFF) + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)) * depth
        closing = (struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)) * depth
        return opening + closing
    level = sq + 8  # one sequence holding one item: a level's bytes beyond what it holds
    parts = []
    for j in range(depth, 0, -1):  # j levels from here inwards, this one included
        parts.append(sq_header(level * j - sq))
        parts.append(struct.pack("<HHL", 0xFFFE, 0xE000, level * (j - 1)))
    return b"".join(parts)


def with_element(
    ds: Dataset, element: bytes, tag: int, transfer_syntax: str = ExplicitVRLittleEndian
) -> bytes:
    """The data set bytes of ``ds`` with ``element`` (encoded bytes of tag ``tag``) in its place."""
    head, tail = split_at(ds, tag)
    return encode(head, transfer_syntax) + element + encode(tail, transfer_syntax)


def _zeros_block(compressor: zlib._Compress, size: int) -> bytes:
    return compressor.compress(bytes(size)) + compressor.flush(zlib.Z_FULL_FLUSH)


def deflate_bomb(ds: Dataset, inflated: int, *, where: str = "pixels") -> bytes:
    """A Deflated Explicit VR Little Endian Part 10 file of ``ds`` (an image) that inflates to about
    ``inflated`` bytes of zeros, a thousand times its size.

    ``where="pixels"``: the zeros are the Pixel Data (7FE0,0010) and, beyond the 4 GiB one element
    can hold, Data Set Trailing Padding (FFFC,FFFC) elements after it. ``where="header"``: they are
    a private OB element before the pixel data, i.e. the part of the data set that is indexed.
    Made from one compressed 4 MiB block repeated (each ends with a full flush, so each copy
    stands alone): a bomb of many gigabytes takes a few milliseconds to make.
    """
    step = 4 << 20
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = _zeros_block(compressor, step)
    out = [compressor.compress(b"")]

    def zeros(n: int) -> None:
        out.extend([block] * (n // step))
        if n % step:
            out.append(_zeros_block(compressor, n % step))

    def header(data: bytes) -> None:
        out.append(compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH))

    image = split_at(ds, 0x7FE00010)[0]  # everything before the pixel data
    if where == "header":
        head, tail = split_at(image, 0x00091000)
        creator = struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 8) + b"HOSTILE "
        length = min(inflated, 0xFFFFFFFE) & ~1
        header(encode(head) + creator + struct.pack("<HH2sHL", 0x0009, 0x1000, b"OB", 0, length))
        zeros(length)
        header(encode(tail) + struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, 2) + b"\0\0")
    else:
        header(
            encode(image) + struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, min(inflated, 0xFFFFFFFE) & ~1)
        )
        left = inflated
        first = True
        while left > 0:
            length = min(left, 0xFFFFFFFE) & ~1
            if not first:
                header(struct.pack("<HH2sHL", 0xFFFC, 0xFFFC, b"OB", 0, length))
            zeros(length)
            left -= length
            first = False
            if length == 0:
                break
    out.append(compressor.flush())
    return part10(b"".join(out), ds, DeflatedExplicitVRLittleEndian)


def element(tag: int, vr: bytes, value: bytes, length: int | None = None) -> bytes:
    """One explicit VR little endian element; ``length`` lies about the value's length when given."""
    size = len(value) if length is None else length
    if vr in (b"OB", b"OW", b"OF", b"SQ", b"UN", b"UT", b"UC", b"UR"):
        return struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, vr, 0, size) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, size) + value


def malformed_datasets(ds: Dataset) -> dict[str, tuple[bytes, str]]:
    """Data sets of ``ds`` (an image) that the archive must refuse, each with the transfer syntax
    it is sent in: lying lengths, a missing delimiter, nesting ten thousand deep, a value pydicom
    cannot read, bytes after the end."""
    plain = encode(ds)
    implicit = ImplicitVRLittleEndian
    private = 0x00091010
    bits_allocated = 0x00280100
    return {
        "element length beyond the data set": (
            with_element(ds, element(private, b"OB", b"\0" * 8, length=0xFFFFFFF0), private),
            ExplicitVRLittleEndian,
        ),
        "short element length cutting the header": (
            with_element(ds, element(private, b"LO", b"ABCDEFGH", length=2), private),
            ExplicitVRLittleEndian,
        ),
        "pixel data cut short": (plain[:-100], ExplicitVRLittleEndian),
        "undefined-length item without delimiters": (
            with_element(ds, nested_sequences(3, defined=False)[:-48], CONTENT_SEQUENCE),
            ExplicitVRLittleEndian,
        ),
        "sequences 10,000 deep, undefined lengths": (
            with_element(ds, nested_sequences(10_000, defined=False), CONTENT_SEQUENCE),
            ExplicitVRLittleEndian,
        ),
        "sequences 10,000 deep, defined lengths": (
            with_element(ds, nested_sequences(10_000, defined=True), CONTENT_SEQUENCE),
            ExplicitVRLittleEndian,
        ),
        "sequences 10,000 deep, implicit VR": (
            with_element(
                ds, nested_sequences(10_000, defined=True, implicit=True), CONTENT_SEQUENCE, implicit
            ),
            implicit,
        ),
        "Bits Allocated of 3 bytes": (
            encode(split_at(ds, bits_allocated)[0])
            + element(bits_allocated, b"US", b"\x10\0\0")
            + encode(split_at(ds, bits_allocated + 1)[1]),
            ExplicitVRLittleEndian,
        ),
        "garbage after the last element": (plain + b"\x01\x02garbage", ExplicitVRLittleEndian),
    }


# -- fuzzing --------------------------------------------------------------------------------------
def fuzz_image() -> Dataset:
    """A small radiograph with a sequence of each length encoding (one item with values, one
    with two empty items), so mutations can break items and delimiters."""
    from tests.support.factories import diconde_dx

    ds = diconde_dx(rows=8, columns=8)
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "T-01", "99NDT", "Weld"
    ds.AnatomicRegionSequence = [item]
    ds.ReferencedSeriesSequence = [Dataset(), Dataset()]
    return ds


@functools.cache
def fuzz_seeds() -> tuple[bytes, ...]:
    """Valid Part 10 files to mutate: every encoding and structure the parser walks (explicit and
    implicit VR, big endian, deflated, encapsulated multi-frame), small enough to mutate fast."""
    from pydicom.uid import ExplicitVRBigEndian, RLELossless

    from tests.support.factories import encode as reencode
    from tests.support.factories import enhanced_ct, part10_bytes

    dx = fuzz_image()
    return (
        part10_bytes(dx),
        part10_bytes(dx, ImplicitVRLittleEndian),
        part10_bytes(dx, ExplicitVRBigEndian),
        part10_bytes(dx, DeflatedExplicitVRLittleEndian),
        part10_bytes(reencode(enhanced_ct(frames=3, rows=8, columns=8), RLELossless)),
    )


@functools.cache
def fuzz_datasets() -> tuple[tuple[Dataset, bytes, str], ...]:
    """Raw data sets (the bytes after the file meta; deflated ones before deflating) with the data
    set they encode and the transfer syntax to send them in."""
    from tests.support.factories import part10_bytes

    dx = fuzz_image()
    out = []
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        encoded = ExplicitVRLittleEndian if syntax == DeflatedExplicitVRLittleEndian else syntax
        out.append((dx, dataset_of(part10_bytes(dx, encoded)), syntax))
    return tuple(out)


def dataset_of(part10_file: bytes) -> bytes:
    """The data set of a Part 10 file: what follows the file meta group."""
    return part10_file[144 + struct.unpack_from("<L", part10_file, 140)[0] :]


def deflate(dataset: bytes) -> bytes:
    """Raw deflate (PS3.5 A.5), as a sender of Deflated Explicit VR Little Endian writes it."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(dataset) + compressor.flush()


INTERESTING_LENGTHS = (0, 1, 2, 3, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF)
Mutation = tuple[str, float, object]  # (kind, relative position, argument)


def mutate(data: bytes, mutations: Iterable[Mutation], *, keep: int = 0) -> bytes:
    """``data`` with ``mutations`` applied at relative positions; the first ``keep`` bytes stay.

    Kinds: ``set`` a byte, ``length`` (a 16- or 32-bit length field that lies), ``insert`` bytes,
    ``delete`` a run of bytes, ``cut`` the rest."""
    out = bytearray(data)
    for kind, where, value in mutations:
        span = len(out) - keep
        if span <= 0:
            break
        at = keep + int(where * span)
        number = value if isinstance(value, int) else 0
        if kind == "set" and at < len(out):
            out[at] = number & 0xFF
        elif kind == "length":
            width = 2 if number <= 0xFFFF and at % 2 else 4
            out[at : at + width] = number.to_bytes(4, "little")[:width]
        elif kind == "insert" and isinstance(value, bytes):
            out[at:at] = value
        elif kind == "delete":
            del out[at : at + number]
        elif kind == "cut":
            del out[at:]
    return bytes(out)


def random_mutations(rng: random.Random, most: int = 6) -> list[Mutation]:
    """Mutations drawn as the property tests draw them (``tests/unit/dicom/test_parse_fuzz.py``)."""
    out: list[Mutation] = []
    for _ in range(rng.randint(1, most)):
        kind = rng.choice(("set", "length", "insert", "delete", "cut"))
        where = rng.random()
        value: object
        if kind == "set":
            value = rng.randrange(256)
        elif kind == "length":
            value = rng.choice(INTERESTING_LENGTHS)
        elif kind == "insert":
            value = rng.randbytes(rng.randint(1, 24))
        elif kind == "delete":
            value = rng.randint(1, 64)
        else:
            value = 0
        out.append((kind, where, value))
    return out


# -- STOW-RS bodies ---------------------------------------------------------------------------------
def body_of(parts: Iterable[bytes], *, boundary: str, close: bool = True) -> bytes:
    """A multipart/related body of application/dicom parts."""
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    out = b"".join(head + part + b"\r\n" for part in parts)
    return out + (f"--{boundary}--\r\n".encode() if close else b"")


def broken_stow_bodies(good: bytes, boundary: str) -> dict[str, tuple[bytes, str]]:
    """STOW-RS requests (body, Content-Type) around the valid Part 10 object ``good`` that must get
    a 4xx and store nothing: wrong or missing boundaries, cut parts, framing far over its limits."""
    related = f'multipart/related; type="application/dicom"; boundary="{boundary}"'
    whole = body_of([good], boundary=boundary)
    end = f"\r\n--{boundary}--\r\n".encode()
    return {
        "boundary not in the body": (body_of([good], boundary="another-boundary"), related),
        "no boundary parameter": (whole, 'multipart/related; type="application/dicom"'),
        "a boundary of 200 characters": (
            whole,
            f'multipart/related; type="application/dicom"; boundary="{"b" * 200}"',
        ),
        "another media type": (whole, f"multipart/form-data; boundary={boundary}"),
        "a part cut off, no closing delimiter": (whole[: len(good) // 2], related),
        "a part header line of a megabyte": (
            f"--{boundary}\r\nX-Junk: {'x' * (1 << 20)}\r\n\r\n".encode() + good + end,
            related,
        ),
        "a thousand part headers": (
            f"--{boundary}\r\n".encode() + b"X-A: b\r\n" * 1000 + b"\r\n" + good + end,
            related,
        ),
        "a preamble of two megabytes": (b"p" * (2 << 20) + whole, related),
        "a part that is not DICOM": (body_of([b"\x00" * 4096], boundary=boundary), related),
        "a part of a billion lying bytes": (
            body_of(
                [good[:132] + element(0x00020000, b"UL", struct.pack("<L", 1 << 30)) + b"\0" * 64],
                boundary=boundary,
            ),
            related,
        ),
    }


# -- upper layer PDUs (PS3.8 9.3) ---------------------------------------------------------------
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT = ImplicitVRLittleEndian
EXPLICIT = ExplicitVRLittleEndian


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def _uid(uid: str) -> bytes:
    return uid.encode("ascii")


def pdu(kind: int, body: bytes, *, length: int | None = None) -> bytes:
    """A PDU of ``kind`` around ``body``; ``length`` lies about its size when given."""
    return struct.pack(">BBL", kind, 0, len(body) if length is None else length) + body


def associate_rq(
    called: str,
    contexts: Iterable[tuple[int, str, Iterable[str]]],
    *,
    calling: str = "HOSTILE",
    max_pdu: int = 1 << 20,
    extra_items: bytes = b"",
) -> bytes:
    """A-ASSOCIATE-RQ; ``contexts``: (context ID, abstract syntax, transfer syntaxes)."""
    items = _item(0x10, _uid(APPLICATION_CONTEXT))
    for context_id, abstract, syntaxes in contexts:
        body = struct.pack(">BBBB", context_id, 0, 0, 0) + _item(0x30, _uid(abstract))
        body += b"".join(_item(0x40, _uid(ts)) for ts in syntaxes)
        items += _item(0x20, body)
    user = _item(0x51, struct.pack(">L", max_pdu)) + _item(0x52, _uid("1.2.826.0.1.3680043.10.1081.99"))
    items += _item(0x50, user) + extra_items
    fixed = struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32)
    return pdu(0x01, fixed + items)


def p_data(context_id: int, data: bytes, *, command: bool, last: bool) -> bytes:
    control = (1 if command else 0) | (2 if last else 0)
    value = struct.pack(">BB", context_id, control) + data
    return pdu(0x04, struct.pack(">L", len(value)) + value)


RELEASE_RQ = pdu(0x05, bytes(4))
ABORT = pdu(0x07, bytes(4))


def malformed_pdus(called: str) -> dict[str, bytes]:
    """PDUs an acceptor must answer with an A-ABORT or an A-ASSOCIATE-RJ (or by closing), never by
    hanging: unknown types, PDUs out of order, association requests with broken items."""

    def rq(extra: bytes = b"") -> bytes:
        return associate_rq(called, [(1, VERIFICATION, [ImplicitVRLittleEndian])], extra_items=extra)

    body = rq()[6:]
    return {
        "unknown PDU type": pdu(0x09, b"\x00" * 10),
        "P-DATA before association": p_data(1, c_echo_rq(), command=True, last=True),
        "A-RELEASE-RQ before association": RELEASE_RQ,
        "A-ABORT before association": ABORT,
        "empty A-ASSOCIATE-RQ": pdu(0x01, b""),
        "A-ASSOCIATE-RQ cut after its fixed fields": pdu(0x01, body[:34]),
        "A-ASSOCIATE-RQ with an unknown item": rq(b"\x99\x00\x00\x08garbage!"),
        "A-ASSOCIATE-RQ item longer than the PDU": rq(b"\x20\x00\xff\xf0\x01"),
        "A-ASSOCIATE-RQ with an empty presentation context": rq(b"\x20\x00\x00\x04\x03\x00\x00\x00"),
        "A-ASSOCIATE-RQ with binary AE titles": pdu(0x01, body[:4] + bytes(range(200, 232)) + body[36:]),
        "A-ASSOCIATE-RQ of protocol version 0": pdu(0x01, b"\x00\x00" + body[2:]),
        "A-ASSOCIATE-RQ with a zero-length user item": pdu(
            0x01, body.replace(b"\x50\x00", b"\x50\x00\x00\x00", 1)
        ),
        "random bytes": bytes(range(256)) * 4,
    }


def command_set(ds: Dataset) -> bytes:
    """A DIMSE command set: implicit VR little endian, Command Group Length (0000,0000) first."""
    body = encode(ds, ImplicitVRLittleEndian)
    return struct.pack("<HHLL", 0, 0, 4, len(body)) + body


def c_echo_rq(message_id: int = 1) -> bytes:
    ds = Dataset()
    ds.AffectedSOPClassUID = VERIFICATION
    ds.CommandField = 0x0030
    ds.MessageID = message_id
    ds.CommandDataSetType = 0x0101
    return command_set(ds)


def string_element(tag: int, vr: str, value: str, *, encoding: str = "utf-8") -> bytes:
    """One explicit VR little endian element of a string VR, ``value`` encoded verbatim (padded to
    an even length: NUL for UI, space for the others)."""
    raw = value.encode(encoding, "surrogateescape")
    if len(raw) % 2:
        raw += b"\0" if vr == "UI" else b" "
    if len(raw) > 0xFFFF:
        raise ValueError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}): {len(raw)} bytes do not fit a {vr}")
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(raw)) + raw


def identifier(elements: dict[int, tuple[str, str]]) -> bytes:
    """A query identifier of ``{tag: (VR, value)}``, UTF-8, elements in tag order."""
    items = {0x00080005: ("CS", "ISO_IR 192"), **elements}
    return b"".join(string_element(tag, vr, value) for tag, (vr, value) in sorted(items.items()))


def c_store_rq(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    ds = Dataset()
    ds.AffectedSOPClassUID = sop_class
    ds.CommandField = 0x0001
    ds.MessageID = message_id
    ds.Priority = 0
    ds.CommandDataSetType = 0x0000
    ds.AffectedSOPInstanceUID = sop_instance
    return command_set(ds)


@dataclass
class Accepted:
    """An A-ASSOCIATE-AC: per presentation context ID, (result, transfer syntax); the largest
    P-DATA-TF the acceptor takes (0: no limit)."""

    contexts: dict[int, tuple[int, str]]
    max_pdu: int = 0


class RawPeer:
    """A DICOM peer on a plain socket: it sends whatever bytes it is given."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _exactly(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError(f"connection closed after {len(data)} of {n} bytes")
            data += chunk
        return bytes(data)

    def receive(self) -> tuple[int, bytes]:
        """The next PDU: (type, body)."""
        kind, _, length = struct.unpack(">BBL", self._exactly(6))
        return kind, self._exactly(length)

    def closed_by_peer(self) -> bool:
        """Whether the server closes the connection (after an A-ABORT, or without one) before the
        socket's timeout."""
        try:
            while True:
                self.receive()  # an A-ABORT, say: the connection closes next
        except TimeoutError:
            return False
        except (ConnectionError, OSError):
            return True

    def associate(self, called: str, contexts: Iterable[tuple[int, str, Iterable[str]]]) -> Accepted:
        self.send(associate_rq(called, contexts))
        kind, body = self.receive()
        if kind != 0x02:
            raise ConnectionError(f"association not accepted: PDU type 0x{kind:02X}")
        accepted = Accepted({})
        pos = 68
        while pos < len(body):
            item, _, length = struct.unpack_from(">BBH", body, pos)
            if item == 0x21:
                context_id, result = body[pos + 4], body[pos + 6]
                ts_length = struct.unpack_from(">H", body, pos + 10)[0]
                syntax = body[pos + 12 : pos + 12 + ts_length].decode().rstrip("\0 ")
                accepted.contexts[context_id] = (result, syntax)
            elif item == 0x50:
                sub = pos + 4
                while sub < pos + 4 + length:
                    kind, _, sub_length = struct.unpack_from(">BBH", body, sub)
                    if kind == 0x51:
                        accepted.max_pdu = struct.unpack_from(">L", body, sub + 4)[0]
                    sub += 4 + sub_length
            pos += 4 + length
        self.accepted = accepted
        return accepted

    def _pdv(self) -> tuple[int, bytes]:
        """The next presentation data value: (message control header, fragment)."""
        pending: list[tuple[int, bytes]] = getattr(self, "_pdvs", [])
        while not pending:
            kind, body = self.receive()
            if kind != 0x04:
                raise ConnectionError(f"expected P-DATA-TF, got PDU type 0x{kind:02X}")
            pos = 0
            while pos < len(body):
                (length,) = struct.unpack_from(">L", body, pos)
                pending.append((body[pos + 5], body[pos + 6 : pos + 4 + length]))
                pos += 4 + length
        self._pdvs = pending
        return pending.pop(0)

    def _fragments(self, command: bool) -> bytes:
        data = b""
        while True:
            control, fragment = self._pdv()
            if bool(control & 1) != command:
                raise ConnectionError("command and data set fragments out of order")
            data += fragment
            if control & 2:
                return data

    def message(self) -> tuple[Dataset, bytes | None]:
        """The next DIMSE message: its command set and its data set's bytes (None without one)."""
        from pydicom.filereader import read_dataset

        command = read_dataset(io.BytesIO(self._fragments(command=True)), True, True)
        has_data = int(command.get("CommandDataSetType", 0x0101)) != 0x0101
        return command, self._fragments(command=False) if has_data else None

    def response(self) -> Dataset:
        """The command set of the next DIMSE response."""
        return self.message()[0]

    def find(self, context_id: int, sop_class: str, identifier: bytes) -> list[int]:
        """A C-FIND of ``identifier`` (bytes sent as they are): the status of every response."""
        ds = Dataset()
        ds.AffectedSOPClassUID = sop_class
        ds.CommandField = 0x0020
        ds.MessageID = 1
        ds.Priority = 0
        ds.CommandDataSetType = 0x0000
        self.send(p_data(context_id, command_set(ds), command=True, last=True))
        self.send_dataset(context_id, identifier)
        statuses = []
        while True:
            command, _ = self.message()
            statuses.append(int(command.Status))
            if statuses[-1] not in (0xFF00, 0xFF01):
                return statuses

    def send_dataset(self, context_id: int, dataset: bytes, *, last: bool = True) -> None:
        """``dataset`` as P-DATA-TF PDUs no larger than the acceptor takes; the last fragment is
        marked last unless ``last`` is False (a transfer left unfinished)."""
        max_pdu = getattr(self, "accepted", Accepted({})).max_pdu or 16384
        step = max(1, max_pdu - 6)  # PDV item header: length (4), context ID, control
        fragments = [dataset[i : i + step] for i in range(0, len(dataset), step)] or [b""]
        for number, fragment in enumerate(fragments, 1):
            self.send(p_data(context_id, fragment, command=False, last=last and number == len(fragments)))

    def store(self, context_id: int, sop_class: str, sop_instance: str, dataset: bytes) -> Dataset:
        """A C-STORE of ``dataset`` (bytes sent as they are); returns the response command set."""
        self.send(p_data(context_id, c_store_rq(sop_class, sop_instance), command=True, last=True))
        self.send_dataset(context_id, dataset)
        return self.response()

    def echo(self, context_id: int) -> Dataset:
        self.send(p_data(context_id, c_echo_rq(), command=True, last=True))
        return self.response()

    def release(self) -> None:
        self.send(RELEASE_RQ)
        try:
            self.receive()
        finally:
            self.close()

    def reset(self) -> None:
        """Close with a TCP RST instead of a FIN, as a crashed or unplugged peer does."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()  # a failing test must not leave the server waiting on this connection
