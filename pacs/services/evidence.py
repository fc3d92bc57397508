"""Evidence packages for auditors: one part's stored objects in a signed ZIP, and its offline check.

A package is built in two steps. :meth:`EvidenceService.plan` reads the index (every instance
version of every inspection of the part), builds the DICOMDIR from the indexed attributes, asks for
the decisions and loads the signing key: whatever can fail for a reason the caller should hear as
an error (unknown part, index or key unavailable) fails there, before the first byte is sent.
:meth:`EvidenceService.stream` then yields the ZIP as bytes, in bounded memory whatever the size:

* the ZIP is written to a stream that cannot seek, so :mod:`zipfile` puts a data descriptor after
  each entry and ZIP64 records where an entry or the archive passes 4 GiB; stored objects are
  ``ZIP_STORED`` (pixel data does not deflate well, and deflate would cost CPU), the small JSON
  files are deflated;
* each object is read from the store in 1 MiB chunks and hashed as it is written: the SHA-256 of
  the file as written into the ZIP, and the file meta's and data set's SHA-256, which are compared
  with the values recorded at ingest. A mismatch is **not refused and not hidden**: the object is
  still packed (it is what the archive holds), its manifest entry says ``"verified_at_export":
  false`` with the reason, an error is logged, and ``verify`` reports it, so the package cannot
  pass as clean;
* the manifest comes last (it lists every other file's SHA-256), then its Ed25519 signature.

Layout of a package (paths inside the ZIP)::

    DICOMDIR                          PS3.10 File-set directory of the current versions (pydicom)
    PT000000/ST000000/SE000000/IM000000   current versions, File IDs as pydicom lays them out:
                                      PT (part / patient), ST (inspection / study), SE (series),
                                      IM (instance; other record types use their own two letters)
    OTHER/I0000001                    a current version the DICOMDIR cannot reference (rare; see log)
    SUPERSEDED/<current path>/V0000001  earlier versions (``versions=all`` only), not in the DICOMDIR
    decisions.json                    the part's decisions (a JSON array)
    audit.jsonl                       the part's audit entries, one JSON object a line
    evidence-key.pem                  the public key that made the signature
    manifest.json                     what is in the package (sorted keys, UTF-8, deterministic)
    manifest.sig                      base64 of the 64-byte Ed25519 signature of manifest.json's bytes

:func:`verify_package` checks a package offline: the signature (with a key given independently, or
only the one inside the package, with a warning), every file's size and SHA-256, each DICOM file's
file meta and data set SHA-256 against the ingest values, and files missing or extra.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.uid import UID, generate_uid
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

import pacs
from pacs.dicom import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacs.errors import NotFound, PacsError, ResourceUnavailable
from pacs.index.database import read_transaction
from pacs.index.schema import component, inspection, instance, instance_version, series
from pacs.signing import EvidenceKey, fingerprint, load_public_pem, verify
from storage import ObjectNotFound, ObjectStore, StorageError

log = logging.getLogger(__name__)

FORMAT = "ndt-archive-evidence/1"
MANIFEST, SIGNATURE, PUBLIC_KEY = "manifest.json", "manifest.sig", "evidence-key.pem"
DICOMDIR, DECISIONS, AUDIT = "DICOMDIR", "decisions.json", "audit.jsonl"
_CHUNK = 1 << 20

#: ``decisions(part_id)``: the part's decisions, as JSON-able dicts (the lead's decision service).
Decisions = Callable[[str], list[dict[str, Any]]]
#: ``audit_entries(part_id)``: the part's audit entries, as JSON-able dicts, oldest first.
AuditEntries = Callable[[str], Iterable[dict[str, Any]]]


def no_decisions(part_id: str) -> list[dict[str, Any]]:
    return []


def no_audit_entries(part_id: str) -> Iterable[dict[str, Any]]:
    return ()


@dataclass
class PackedObject:
    """One stored version as it goes into the package; ``manifest`` is filled while it streams."""

    path: str
    current: bool
    in_dicomdir: bool
    object_key: str
    dataset_offset: int
    size: int
    received_at: dt.datetime
    facts: dict[str, Any]  # manifest fields known from the index
    manifest: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvidencePlan:
    part_id: str
    component_name: str | None
    generated_at: dt.datetime
    include_superseded: bool
    objects: list[PackedObject]
    dicomdir: bytes
    decisions: bytes
    key: EvidenceKey

    @property
    def total_bytes(self) -> int:
        return sum(o.size for o in self.objects)

    def file_name(self) -> str:
        """A download name: ``evidence-<part ID, safe characters only>-<UTC time>.zip``."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", self.part_id).strip("._") or "part"
        return f"evidence-{safe[:64]}-{self.generated_at.strftime('%Y%m%dT%H%M%SZ')}.zip"


class EvidenceService:
    def __init__(
        self,
        engine: Engine,
        store: ObjectStore,
        key: Callable[[], EvidenceKey],
        *,
        ae_title: str,
        decisions: Decisions | None = None,
        audit_entries: AuditEntries | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self._key = key
        self.ae_title = ae_title
        self.decisions = decisions or no_decisions
        self.audit_entries = audit_entries or no_audit_entries

    @classmethod
    def for_archive(
        cls, archive: Any, *, decisions: Decisions | None = None, audit_entries: AuditEntries | None = None
    ) -> EvidenceService:
        """On an :class:`pacs.archive.Archive` (its engine, store and settings)."""
        settings = archive.settings
        path = settings.evidence_key
        assert path is not None  # filled in by Settings
        return cls(
            archive.engine,
            archive.store,
            lambda: EvidenceKey.load_or_create(path),
            ae_title=settings.ae_title,
            decisions=decisions or (lambda part: [d.to_json() for d in archive.decisions.for_part(part)]),
            audit_entries=audit_entries
            or (lambda part: (e.to_json() for e in archive.audit.iterate(part_id=part))),
        )

    # -- before the first byte ----------------------------------------------------------------
    def plan(
        self, part_id: str, *, include_superseded: bool = False, now: dt.datetime | None = None
    ) -> EvidencePlan:
        """Everything but the objects' bytes; :class:`NotFound` for an unknown part ID,
        :class:`ResourceUnavailable` when the index or the key cannot be read."""
        rows, name = self._rows(part_id)
        generated_at = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).replace(microsecond=0)
        current_rows = [r for r in rows if r.id == r.current_version_id]
        dicomdir, paths = _dicomdir(current_rows, part_id, name)
        objects: list[PackedObject] = []
        numbers = _version_numbers(rows)
        others = 0
        for row in sorted(
            current_rows, key=lambda r: paths.get(r.sop_instance_uid, "~" + r.sop_instance_uid)
        ):
            path = paths.get(row.sop_instance_uid)
            if path is None:
                others += 1
                path = f"OTHER/I{others:07d}"
            objects.append(
                _packed(row, path, numbers[row.id], current=True, in_dicomdir=row.sop_instance_uid in paths)
            )
        if include_superseded:
            current_path = {o.facts["sop_instance_uid"]: o.path for o in objects}
            for row in sorted(rows, key=lambda r: (r.sop_instance_uid, r.id)):
                if row.id == row.current_version_id:
                    continue
                base = current_path.get(row.sop_instance_uid, f"NOCURRENT/{row.sop_instance_uid}")
                path = f"SUPERSEDED/{base}/V{numbers[row.id]:07d}"
                objects.append(_packed(row, path, numbers[row.id], current=False, in_dicomdir=False))
        decisions = _json_bytes(list(self.decisions(part_id)))
        try:
            key = self._key()
        except PacsError:
            raise
        except Exception as exc:
            raise ResourceUnavailable(f"cannot load the evidence key: {exc}") from exc
        return EvidencePlan(
            part_id=part_id,
            component_name=name,
            generated_at=generated_at,
            include_superseded=include_superseded,
            objects=objects,
            dicomdir=dicomdir,
            decisions=decisions,
            key=key,
        )

    def _rows(self, part_id: str) -> tuple[list[Any], str | None]:
        query = (
            select(
                inspection.c.study_instance_uid,
                inspection.c.study_date,
                inspection.c.study_time,
                inspection.c.study_id,
                inspection.c.accession_number,
                inspection.c.study_description,
                series.c.series_instance_uid,
                series.c.modality,
                series.c.series_number,
                instance.c.sop_instance_uid,
                instance.c.sop_class_uid,
                instance.c.instance_number,
                instance.c.content_date,
                instance.c.content_time,
                instance.c.current_version_id,
                instance_version.c.id,
                instance_version.c.object_key,
                instance_version.c.dataset_sha256,
                instance_version.c.file_meta_sha256,
                instance_version.c.dataset_offset,
                instance_version.c.size,
                instance_version.c.transfer_syntax_uid,
                instance_version.c.received_at,
                instance_version.c.received_via,
                instance_version.c.source_ae,
                instance_version.c.source_address,
                instance_version.c.received_by,
            )
            .select_from(
                component.join(inspection, inspection.c.component_id == component.c.id)
                .join(series, series.c.inspection_id == inspection.c.id)
                .join(instance, instance.c.series_id == series.c.id)
                .join(instance_version, instance_version.c.instance_id == instance.c.id)
            )
            .where(component.c.part_id == part_id)
        )
        try:
            with read_transaction(self.engine) as conn:
                found = conn.execute(
                    select(component.c.id, component.c.component_name).where(component.c.part_id == part_id)
                ).first()
                if found is None:
                    raise NotFound(f"no component with part ID {part_id!r}")
                rows = conn.execute(query).all()
        except SQLAlchemyError as exc:
            raise ResourceUnavailable(f"index unavailable: {getattr(exc, 'orig', None) or exc}") from exc
        return list(rows), found.component_name

    # -- the bytes ----------------------------------------------------------------------------------
    def stream(self, plan: EvidencePlan, progress: Callable[[int], None] | None = None) -> Iterator[bytes]:
        """The package as ZIP bytes, in chunks of about 1 MiB; raises :class:`ResourceUnavailable`
        mid-stream when the store fails (the ZIP is then incomplete: ``verify`` says so)."""
        for chunk in self._zip(plan, progress):
            if chunk:
                yield chunk

    def _zip(self, plan: EvidencePlan, progress: Callable[[int], None] | None) -> Iterator[bytes]:
        sink = _Sink()
        files: list[dict[str, Any]] = []
        with zipfile.ZipFile(sink, "w", allowZip64=True) as zf:
            files.append(_small_file(DICOMDIR, "dicomdir", plan.dicomdir))
            _write_small(zf, DICOMDIR, plan.dicomdir, plan.generated_at, deflate=False)
            yield sink.drain()
            for packed in plan.objects:
                yield from self._write_object(zf, sink, packed, progress)
                files.append(packed.manifest)
            files.append(_small_file(DECISIONS, "decisions", plan.decisions))
            _write_small(zf, DECISIONS, plan.decisions, plan.generated_at, deflate=True)
            yield sink.drain()
            audit = _entry(AUDIT, plan.generated_at, deflate=True)
            digest, size = hashlib.sha256(), 0
            with zf.open(audit, "w", force_zip64=True) as out:
                for entry in self.audit_entries(plan.part_id):
                    line = json.dumps(entry, sort_keys=True, ensure_ascii=False, default=str).encode() + b"\n"
                    digest.update(line)
                    size += len(line)
                    out.write(line)
                    if sink.pending > _CHUNK:
                        yield sink.drain()
            files.append({"path": AUDIT, "kind": "audit", "sha256": digest.hexdigest(), "size": size})
            yield sink.drain()
            pem = plan.key.public_pem()
            _write_small(zf, PUBLIC_KEY, pem, plan.generated_at, deflate=False)
            manifest = _manifest_bytes(plan, self.ae_title, files)
            _write_small(zf, MANIFEST, manifest, plan.generated_at, deflate=True)
            signature = base64.b64encode(plan.key.sign(manifest)) + b"\n"
            _write_small(zf, SIGNATURE, signature, plan.generated_at, deflate=False)
        yield sink.drain()

    def _write_object(
        self,
        zf: zipfile.ZipFile,
        sink: _Sink,
        packed: PackedObject,
        progress: Callable[[int], None] | None,
    ) -> Iterator[bytes]:
        entry = _entry(packed.path, packed.received_at, deflate=False)
        entry.file_size = packed.size  # lets zipfile choose ZIP64 for an object over 4 GiB
        whole, meta, dataset = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
        written = 0
        try:
            stored = self.store.open(packed.object_key)
        except ObjectNotFound:
            reason = f"object {packed.object_key} is missing from the store"
            log.error("evidence for %s: %s: %s", packed.facts["sop_instance_uid"], packed.path, reason)
            packed.manifest = {**packed.facts, "path": None, "verified_at_export": False, "reason": reason}
            return
        except StorageError as exc:
            raise ResourceUnavailable(f"cannot read {packed.facts['sop_instance_uid']}: {exc}") from exc
        try:
            with stored, zf.open(entry, "w") as out:
                while True:
                    try:
                        chunk = stored.read(_CHUNK)
                    except (StorageError, OSError) as exc:
                        raise ResourceUnavailable(
                            f"cannot read {packed.facts['sop_instance_uid']} ({packed.object_key}): {exc}"
                        ) from exc
                    if not chunk:
                        break
                    whole.update(chunk)
                    head = max(0, min(len(chunk), packed.dataset_offset - written))
                    if head:
                        meta.update(chunk[:head])
                    if head < len(chunk):
                        dataset.update(chunk[head:] if head else chunk)
                    written += len(chunk)
                    out.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
                    yield sink.drain()
        except StorageError as exc:
            raise ResourceUnavailable(f"cannot read {packed.facts['sop_instance_uid']}: {exc}") from exc
        yield sink.drain()
        ingest = packed.facts["ingest"]
        reasons = []
        if written != ingest["size"]:
            reasons.append(f"{written} bytes in the store, {ingest['size']} recorded at ingest")
        if meta.hexdigest() != ingest["file_meta_sha256"]:
            reasons.append("file meta SHA-256 differs from the one recorded at ingest")
        if dataset.hexdigest() != ingest["dataset_sha256"]:
            reasons.append("data set SHA-256 differs from the one recorded at ingest")
        packed.manifest = {
            **packed.facts,
            "path": packed.path,
            "sha256": whole.hexdigest(),
            "size": written,
            "verified_at_export": not reasons,
        }
        if reasons:
            packed.manifest["reason"] = "; ".join(reasons)
            log.error(
                "evidence for part: %s (%s, object %s) does not match its ingest record: %s",
                packed.facts["sop_instance_uid"],
                packed.path,
                packed.object_key,
                packed.manifest["reason"],
            )

    def write(
        self, plan: EvidencePlan, out: IO[bytes], progress: Callable[[int], None] | None = None
    ) -> None:
        for chunk in self.stream(plan, progress):
            out.write(chunk)


class _Sink:
    """What :class:`zipfile.ZipFile` writes into: it has no ``tell``/``seek``, so zipfile streams
    (data descriptors); the bytes are taken out with :meth:`drain` and yielded."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self.pending = 0

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        self.pending += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def drain(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        self.pending = 0
        return data


def _entry(name: str, when: dt.datetime, *, deflate: bool) -> zipfile.ZipInfo:
    stamp = when.astimezone(dt.UTC)
    date_time = (max(stamp.year, 1980), stamp.month, stamp.day, stamp.hour, stamp.minute, stamp.second)
    info = zipfile.ZipInfo(name, date_time=date_time)
    info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    info.external_attr = 0o444 << 16
    return info


def _write_small(zf: zipfile.ZipFile, name: str, data: bytes, when: dt.datetime, *, deflate: bool) -> None:
    zf.writestr(_entry(name, when, deflate=deflate), data)


def _small_file(path: str, kind: str, data: bytes) -> dict[str, Any]:
    return {"path": path, "kind": kind, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, indent=1, default=str).encode() + b"\n"


def _manifest_bytes(plan: EvidencePlan, ae_title: str, files: list[dict[str, Any]]) -> bytes:
    return _json_bytes(
        {
            "format": FORMAT,
            "part_id": plan.part_id,
            "component_name": plan.component_name,
            "generated_at": plan.generated_at.isoformat().replace("+00:00", "Z"),
            "versions": "all" if plan.include_superseded else "current",
            "archive": {
                "ae_title": ae_title,
                "version": pacs.__version__,
                "implementation_class_uid": IMPLEMENTATION_CLASS_UID,
                "implementation_version_name": IMPLEMENTATION_VERSION_NAME,
            },
            "signature": {
                "algorithm": "Ed25519",
                "file": SIGNATURE,
                "encoding": "base64 of the 64-byte signature of the exact bytes of manifest.json",
                "public_key": PUBLIC_KEY,
                "public_key_sha256": plan.key.fingerprint(),
            },
            "files": files,
        }
    )


def _version_numbers(rows: list[Any]) -> dict[int, int]:
    """Version id → its number among the versions of its instance (1 = first received)."""
    by_instance: dict[str, list[int]] = {}
    for row in rows:
        by_instance.setdefault(row.sop_instance_uid, []).append(int(row.id))
    return {vid: n for ids in by_instance.values() for n, vid in enumerate(sorted(ids), start=1)}


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _packed(row: Any, path: str, number: int, *, current: bool, in_dicomdir: bool) -> PackedObject:
    received_at = row.received_at
    facts = {
        "kind": "instance",
        "sop_instance_uid": row.sop_instance_uid,
        "sop_class_uid": row.sop_class_uid,
        "study_instance_uid": row.study_instance_uid,
        "study_date": row.study_date,
        "accession_number": row.accession_number,
        "series_instance_uid": row.series_instance_uid,
        "modality": row.modality,
        "version_id": int(row.id),
        "version_number": number,
        "current": current,
        "in_dicomdir": in_dicomdir,
        "transfer_syntax_uid": row.transfer_syntax_uid,
        "received_at": _iso(row.received_at),
        "received_from": {
            "via": row.received_via,
            "calling_ae": row.source_ae,
            "address": row.source_address,
            "user": row.received_by,
        },
        "ingest": {
            "dataset_sha256": row.dataset_sha256,
            "file_meta_sha256": row.file_meta_sha256,
            "dataset_offset": int(row.dataset_offset),
            "size": int(row.size),
        },
    }
    return PackedObject(
        path=path,
        current=current,
        in_dicomdir=in_dicomdir,
        object_key=row.object_key,
        dataset_offset=int(row.dataset_offset),
        size=int(row.size),
        received_at=received_at,
        facts=facts,
    )


# -- DICOMDIR --------------------------------------------------------------------------------------
def _dicomdir(rows: list[Any], part_id: str, name: str | None) -> tuple[bytes, dict[str, str]]:
    """The DICOMDIR of the current versions and each one's File ID as a ZIP path, by SOP Instance UID.

    pydicom's :class:`FileSet` makes the directory records and lays out the File IDs; it is fed
    header-only stand-ins built from the indexed attributes (no stored object is opened), written in
    a temporary folder and thrown away. A Type 1 record key the instance lacks (PS3.3 F.5: Study
    Date / Time / ID, Series and Instance Number) is filled so the record is valid: dates and times
    from the receipt, numbers by order; the manifest and the objects keep the true values.
    """
    if not rows:
        return b"", {}
    ordered = sorted(
        rows,
        key=lambda r: (
            r.study_date or "",
            r.study_instance_uid,
            r.series_number is None,
            r.series_number or 0,
            r.series_instance_uid,
            r.instance_number is None,
            r.instance_number or 0,
            r.sop_instance_uid,
        ),
    )
    fileset = FileSet()
    fileset.ID = "NDT_EVIDENCE"
    # The same versions give the same DICOMDIR, byte for byte (pydicom would pick a random UID).
    fileset.UID = generate_uid(entropy_srcs=[part_id, *sorted(str(r.id) for r in rows)])
    series_numbers: dict[str, int] = {}
    added: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="evidence-dicomdir-") as folder:
        for n, row in enumerate(ordered, start=1):
            series_numbers.setdefault(row.series_instance_uid, len(series_numbers) + 1)
            stub = _stand_in(row, part_id, name, series_numbers[row.series_instance_uid], n)
            try:
                fileset.add(stub)
            except (ValueError, KeyError, TypeError) as exc:
                log.error(
                    "evidence: %s cannot be referenced from a DICOMDIR (%s); it is packed under OTHER/",
                    row.sop_instance_uid,
                    exc,
                )
                continue
            added.add(row.sop_instance_uid)
        if not added:
            return b"", {}
        fileset.write(folder)
        paths = {str(i.SOPInstanceUID): "/".join(Path(i.FileID).parts) for i in fileset}
        data = (Path(folder) / "DICOMDIR").read_bytes()
    return data, paths


def _stand_in(row: Any, part_id: str, name: str | None, series_number: int, instance_number: int) -> Dataset:
    received = row.received_at
    ds = Dataset()
    ds.SOPClassUID = UID(row.sop_class_uid or "1.2.840.10008.5.1.4.1.1.7")
    ds.SOPInstanceUID = UID(row.sop_instance_uid)
    ds.PatientID = part_id
    ds.PatientName = name or ""
    ds.StudyInstanceUID = UID(row.study_instance_uid)
    ds.StudyDate = row.study_date or received.strftime("%Y%m%d")
    ds.StudyTime = row.study_time or received.strftime("%H%M%S")
    ds.StudyID = row.study_id or row.study_instance_uid[-16:]
    ds.AccessionNumber = row.accession_number or ""
    if row.study_description:
        ds.StudyDescription = row.study_description
    ds.SeriesInstanceUID = UID(row.series_instance_uid)
    ds.Modality = row.modality or "OT"
    ds.SeriesNumber = row.series_number if row.series_number is not None else series_number
    ds.InstanceNumber = row.instance_number if row.instance_number is not None else instance_number
    ds.ContentDate = row.content_date or received.strftime("%Y%m%d")
    ds.ContentTime = row.content_time or received.strftime("%H%M%S")
    if any(
        not str(v).isascii()
        for v in (ds.PatientID, ds.PatientName, ds.StudyID, ds.get("StudyDescription", ""))
    ):
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = UID(row.transfer_syntax_uid)
    return ds


# -- verification ----------------------------------------------------------------------------------
@dataclass
class VerifyReport:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files_checked: int = 0
    part_id: str | None = None
    signature_ok: bool = False
    key_fingerprint: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        verdict = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        signature = "signature verified" if self.signature_ok else "signature NOT verified"
        return (
            f"evidence package of part {self.part_id!r}: {self.files_checked} files checked, {signature}"
            f" (key SHA-256 {self.key_fingerprint or 'unknown'}): {verdict}"
        )


def verify_package(path: Path, key_pem: bytes | None = None) -> VerifyReport:
    """Check a package offline; ``key_pem``: the archive's public key obtained independently
    (``/api/system/evidence-key``), else only the key inside the package is used (a warning)."""
    report = VerifyReport()
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        report.problems.append(f"{path}: not a complete ZIP file ({exc}): the export was cut off or damaged")
        return report
    with zf:
        names = set(zf.namelist())
        manifest_bytes = _member(zf, MANIFEST, report)
        signature_text = _member(zf, SIGNATURE, report)
        inner_pem = _member(zf, PUBLIC_KEY, report)
        if manifest_bytes is None:
            return report
        try:
            manifest = json.loads(manifest_bytes)
            files = list(manifest["files"])
        except (ValueError, KeyError, TypeError) as exc:
            report.problems.append(f"{MANIFEST}: not a manifest ({exc})")
            return report
        report.part_id = manifest.get("part_id")
        _check_signature(report, manifest, manifest_bytes, signature_text, inner_pem, key_pem)
        listed: set[str] = set()
        for entry in files:
            _check_file(zf, names, entry, report, listed)
        for extra in sorted(names - listed - {MANIFEST, SIGNATURE, PUBLIC_KEY}):
            if not extra.endswith("/"):
                report.problems.append(f"extra: {extra}: in the ZIP but not in the manifest")
    return report


def _member(zf: zipfile.ZipFile, name: str, report: VerifyReport) -> bytes | None:
    try:
        return zf.read(name)
    except KeyError:
        report.problems.append(f"missing: {name}")
    except (zipfile.BadZipFile, OSError) as exc:
        report.problems.append(f"changed: {name}: unreadable ({exc})")
    return None


def _check_signature(
    report: VerifyReport,
    manifest: dict[str, Any],
    manifest_bytes: bytes,
    signature_text: bytes | None,
    inner_pem: bytes | None,
    key_pem: bytes | None,
) -> None:
    keys: list[tuple[str, bytes]] = []
    if key_pem is not None:
        keys.append(("the given key", key_pem))
    elif inner_pem is not None:
        keys.append((f"{PUBLIC_KEY} inside the package", inner_pem))
        report.warnings.append(
            f"the signature was checked only with the key inside the package ({PUBLIC_KEY}), which anyone "
            "could have replaced: check with --key, the key from the archive's /api/system/evidence-key"
        )
    if not keys:
        report.problems.append("signature: no public key to check it with")
        return
    label, pem = keys[0]
    try:
        key = load_public_pem(pem)
    except ValueError as exc:
        report.problems.append(f"signature: {label} is not an Ed25519 public key ({exc})")
        return
    report.key_fingerprint = fingerprint(key)
    if key_pem is not None and inner_pem is not None and inner_pem.strip() != key_pem.strip():
        report.warnings.append(f"{PUBLIC_KEY} inside the package is not the given key")
    named = (manifest.get("signature") or {}).get("public_key_sha256")
    if named and named != report.key_fingerprint:
        report.warnings.append(
            f"the manifest names signing key SHA-256 {named}, "
            f"the key used to check is {report.key_fingerprint}"
        )
    if signature_text is None:
        return
    try:
        signature = base64.b64decode(signature_text.strip(), validate=True)
    except ValueError:
        report.problems.append(f"{SIGNATURE}: not base64")
        return
    if verify(key, signature, manifest_bytes):
        report.signature_ok = True
    else:
        report.problems.append(
            f"{MANIFEST}: the signature does not verify with {label}: the manifest was changed "
            "or signed by another key"
        )


def _check_file(
    zf: zipfile.ZipFile, names: set[str], entry: dict[str, Any], report: VerifyReport, listed: set[str]
) -> None:
    path = entry.get("path")
    uid = entry.get("sop_instance_uid")
    if entry.get("verified_at_export") is False:
        report.problems.append(
            f"not verified at export: {path or '(not packed)'} ({uid}): "
            f"{entry.get('reason', 'no reason given')}"
        )
    if not path:
        return
    listed.add(path)
    if path not in names:
        report.problems.append(f"missing: {path}" + (f" ({uid})" if uid else ""))
        return
    report.files_checked += 1
    whole, meta, dataset = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    ingest = entry.get("ingest") or {}
    offset = int(ingest.get("dataset_offset", 0))
    size = 0
    try:
        with zf.open(path) as f:
            while chunk := f.read(_CHUNK):
                whole.update(chunk)
                head = max(0, min(len(chunk), offset - size))
                if head:
                    meta.update(chunk[:head])
                if head < len(chunk):
                    dataset.update(chunk[head:] if head else chunk)
                size += len(chunk)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        report.problems.append(f"changed: {path}" + (f" ({uid})" if uid else "") + f": unreadable ({exc})")
        return
    label = path + (f" ({uid})" if uid else "")
    if size != entry.get("size") or whole.hexdigest() != entry.get("sha256"):
        report.problems.append(
            f"changed: {label}: SHA-256 {whole.hexdigest()}, {size} bytes; the manifest says "
            f"{entry.get('sha256')}, {entry.get('size')} bytes"
        )
        return
    if entry.get("kind") == "instance" and ingest:
        if meta.hexdigest() != ingest.get("file_meta_sha256"):
            report.problems.append(
                f"changed since ingest: {label}: file meta SHA-256 differs from the ingest record"
            )
        if dataset.hexdigest() != ingest.get("dataset_sha256"):
            report.problems.append(
                f"changed since ingest: {label}: data set SHA-256 differs from the ingest record"
            )
