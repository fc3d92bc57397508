"""``pacs evidence export PART_ID OUT.zip`` and ``pacs evidence verify ZIP [--key PEM]``.

The command functions; ``pacs/cli.py`` (the composition root) adds them to its parser with
:func:`add_commands`. Exit codes as every ``pacs`` command: 0 clean, 1 problems, 2 usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from pacs.config import Settings

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """The ``evidence`` command group on ``pacs``'s subparsers (``common``: the configuration flags)."""
    evidence = commands.add_parser("evidence", help="signed evidence packages of a part for auditors")
    actions = evidence.add_subparsers(dest="evidence_command", metavar="ACTION", required=True)
    export = actions.add_parser(
        "export",
        parents=[common],
        help="write a part's evidence package (ZIP: DICOMDIR, objects, manifest, Ed25519 signature)",
    )
    export.add_argument("part_id", metavar="PART_ID", help="the component's part ID (PatientID)")
    export.add_argument("out", metavar="OUT.zip", type=Path, help="the ZIP file to write ('-': stdout)")
    export.add_argument(
        "--all-versions",
        action="store_true",
        help="also pack superseded versions (under SUPERSEDED/, not in the DICOMDIR)",
    )
    export.add_argument("--force", action="store_true", help="overwrite OUT.zip if it exists")
    export.set_defaults(run=export_command)
    check = actions.add_parser(
        "verify", parents=[common], help="check a package offline: signature and every SHA-256"
    )
    check.add_argument("zip", metavar="ZIP", type=Path)
    check.add_argument(
        "--key",
        type=Path,
        metavar="PEM",
        help="the archive's public key, obtained independently (GET /api/system/evidence-key); "
        "without it only the key inside the package is used",
    )
    check.set_defaults(run=verify_command)


def export_command(settings: Settings, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pacs.archive import open_archive
    from pacs.services.evidence import EvidenceService

    out: Path = args.out
    to_stdout = str(out) == "-"
    if not to_stdout and out.exists() and not getattr(args, "force", False):
        print(f"pacs evidence export: {out} exists (--force to overwrite)", file=sys.stderr)
        return EXIT_USAGE
    archive = open_archive(settings, upgrade_schema=False)
    try:
        service = EvidenceService.for_archive(archive)
        plan = service.plan(args.part_id, include_superseded=args.all_versions)
        partial = out.with_name(f".{out.name}.partial") if not to_stdout else None
        with tqdm(
            total=plan.total_bytes,
            desc=f"evidence of {args.part_id}",
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
        ) as bar:
            if partial is None:
                service.write(plan, sys.stdout.buffer, progress=bar.update)
                sys.stdout.buffer.flush()
            else:
                try:
                    with partial.open("wb") as f:
                        service.write(plan, f, progress=bar.update)
                        f.flush()
                        os.fsync(f.fileno())
                    partial.replace(out)
                finally:
                    partial.unlink(missing_ok=True)
        _audit_export(archive, args.part_id, plan, "-" if to_stdout else str(out))
    finally:
        archive.close()
    packed = [o.manifest for o in plan.objects]
    unverified = [m for m in packed if m.get("verified_at_export") is False]
    for m in unverified:
        print(
            f"not verified at export: {m.get('path') or '(not packed)'} "
            f"({m['sop_instance_uid']}): {m['reason']}"
        )
    current = sum(1 for o in plan.objects if o.current)
    written = "stdout" if to_stdout else str(out)
    print(
        f"evidence of part {args.part_id!r}: {current} current and {len(plan.objects) - current} superseded "
        f"versions, {plan.total_bytes / 1e6:.1f} MB, signed (key SHA-256 {plan.key.fingerprint()}), "
        f"{len(unverified)} not matching their ingest record; written to {written}",
        file=sys.stderr if to_stdout else sys.stdout,
    )
    return EXIT_PROBLEMS if unverified else EXIT_OK


def _audit_export(archive: Any, part_id: str, plan: Any, out: str) -> None:
    """The export in the audit trail, by the operating system user who ran the command."""
    import getpass

    from pacs.audit import Action, AuditEvent, Outcome
    from pacs.context import CallerContext

    unverified = sum(1 for o in plan.objects if o.manifest.get("verified_at_export") is False)
    archive.audit.record(
        AuditEvent(
            Action.EXPORT,
            CallerContext(via="cli", user=f"os:{getpass.getuser()}"),
            Outcome.FAILURE if unverified else Outcome.SUCCESS,
            part_id=part_id,
            detail={
                "package": out,
                "versions": len(plan.objects),
                "bytes": plan.total_bytes,
                "not_verified": unverified,
                "key_sha256": plan.key.fingerprint(),
            },
        )
    )


def verify_command(settings: Settings, args: argparse.Namespace) -> int:
    from pacs.services.evidence import verify_package

    if not args.zip.is_file():
        print(f"pacs evidence verify: no such file: {args.zip}", file=sys.stderr)
        return EXIT_USAGE
    key_pem = None
    if args.key is not None:
        try:
            key_pem = args.key.read_bytes()
        except OSError as exc:
            print(f"pacs evidence verify: cannot read --key {args.key}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    report = verify_package(args.zip, key_pem)
    for warning in report.warnings:
        print(f"warning: {warning}")
    for problem in report.problems:
        print(problem)
    print(report.summary())
    return EXIT_OK if report.ok else EXIT_PROBLEMS
