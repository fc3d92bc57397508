"""``pacs hold``, ``pacs delete``, ``pacs retention report`` and ``pacs purge`` (``pacs.retention``).

The command functions; ``pacs/cli.py`` adds them to its parser with :func:`add_commands`. Exit
codes as every ``pacs`` command: 0 done, 1 refused or failed (with the reason), 2 usage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import sys
from typing import Any

from pacs.config import Settings
from pacs.context import CallerContext

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    hold = commands.add_parser("hold", help="legal holds: a held part's inspections cannot be deleted")
    holds = hold.add_subparsers(dest="hold_command", metavar="ACTION", required=True)
    place = holds.add_parser("place", parents=[common], help="place a legal hold on a part")
    place.add_argument("part_id", metavar="PART_ID")
    place.add_argument("--reason", required=True, help="the case, order or claim the hold is for")
    place.set_defaults(run=_hold_place)
    release = holds.add_parser("release", parents=[common], help="release a part's legal hold")
    release.add_argument("part_id", metavar="PART_ID")
    release.set_defaults(run=_hold_release)
    listing = holds.add_parser("list", parents=[common], help="list active holds (--all: released ones too)")
    listing.add_argument("--all", action="store_true")
    listing.set_defaults(run=_hold_list)

    remove = commands.add_parser(
        "delete",
        parents=[common],
        help="request the deletion of an inspection; `pacs purge` carries it out after the grace period",
    )
    remove.add_argument("study_uid", metavar="STUDY_UID", help="the inspection's Study Instance UID")
    remove.add_argument("--reason", help="why (required unless --withdraw)")
    remove.add_argument("--withdraw", action="store_true", help="withdraw a pending deletion request")
    remove.set_defaults(run=_delete)

    retention = commands.add_parser("retention", help="retention of inspections")
    actions = retention.add_subparsers(dest="retention_command", metavar="ACTION", required=True)
    report = actions.add_parser(
        "report",
        parents=[common],
        help="what may be purged: pending deletions and inspections past retention",
    )
    report.set_defaults(run=_report)

    purge = commands.add_parser(
        "purge",
        parents=[common],
        help="carry out deletion requests older than purge_grace_days (rows, then objects)",
    )
    purge.add_argument("--dry-run", action="store_true", help="only say what would be purged")
    purge.set_defaults(run=_purge)


def _caller() -> CallerContext:
    return CallerContext(via="cli", user=f"os:{getpass.getuser()}")


def _open(settings: Settings) -> Any:
    from pacs.archive import open_archive

    return open_archive(settings, upgrade_schema=False)


def _hold_place(settings: Settings, args: argparse.Namespace) -> int:
    archive = _open(settings)
    try:
        hold = archive.retention.place_hold(args.part_id, args.reason, _caller())
    finally:
        archive.close()
    print(f"legal hold placed on {hold.part_id}: {hold.reason}")
    return EXIT_OK


def _hold_release(settings: Settings, args: argparse.Namespace) -> int:
    archive = _open(settings)
    try:
        hold = archive.retention.release_hold(args.part_id, _caller())
    finally:
        archive.close()
    print(f"legal hold on {hold.part_id} released (placed {hold.placed_at:%Y-%m-%d} by {hold.placed_by})")
    return EXIT_OK


def _hold_list(settings: Settings, args: argparse.Namespace) -> int:
    archive = _open(settings)
    try:
        holds = archive.retention.holds(include_released=args.all)
    finally:
        archive.close()
    for h in holds:
        state = f"released {h.released_at:%Y-%m-%d} by {h.released_by}" if h.released_at else "ACTIVE"
        print(f"{h.part_id:24} {state:32} placed {h.placed_at:%Y-%m-%d} by {h.placed_by}: {h.reason}")
    if not holds:
        print("no legal holds", file=sys.stderr)
    return EXIT_OK


def _delete(settings: Settings, args: argparse.Namespace) -> int:
    from pacs.retention import DeletionRefused

    if not args.withdraw and not args.reason:
        print("pacs delete: --reason is required", file=sys.stderr)
        return EXIT_USAGE
    archive = _open(settings)
    try:
        if args.withdraw:
            archive.retention.withdraw_delete(args.study_uid, _caller())
            print(f"deletion of {args.study_uid} withdrawn")
            return EXIT_OK
        try:
            state = archive.retention.request_delete(args.study_uid, args.reason, _caller())
        except DeletionRefused as exc:
            print(f"pacs delete: {exc}", file=sys.stderr)
            return EXIT_PROBLEMS
        assert state.delete_requested_at is not None
        after = state.delete_requested_at + archive.retention.grace
        print(
            f"deletion of {args.study_uid} (part {state.part_id}, {state.objects} objects) requested; "
            f"`pacs purge` carries it out from {after:%Y-%m-%d %H:%M} UTC"
        )
        return EXIT_OK
    finally:
        archive.close()


def _report(settings: Settings, args: argparse.Namespace) -> int:
    archive = _open(settings)
    try:
        now = dt.datetime.now(dt.UTC)
        states = archive.retention.report(now)
        grace = archive.retention.grace
    finally:
        archive.close()
    purgeable = 0
    for s in states:
        if s.purgeable(now, grace):
            verdict = "PURGEABLE"
            purgeable += 1
        elif s.delete_requested_at is not None:
            why = s.why_not_deletable(now.date())
            verdict = (
                f"requested, waits: {why}"
                if why
                else f"requested, grace until {s.delete_requested_at + grace:%Y-%m-%d}"
            )
        else:
            verdict = "retention expired, no deletion requested"
        keep = s.keep_until.isoformat() if s.keep_until else "no rule"
        print(
            f"{s.study_instance_uid}  {s.part_id:20} {s.date} {','.join(s.methods):8} "
            f"keep until {keep}  {verdict}"
        )
    print(f"{len(states)} inspection(s) listed, {purgeable} purgeable now", file=sys.stderr)
    return EXIT_OK


def _purge(settings: Settings, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    archive = _open(settings)
    try:
        now = dt.datetime.now(dt.UTC)
        due = [s for s in archive.retention.report(now) if s.purgeable(now, archive.retention.grace)]
        if args.dry_run:
            for s in due:
                print(
                    f"would purge {s.study_instance_uid} (part {s.part_id}, "
                    f"{s.objects} objects, {s.bytes} bytes)"
                )
            print(f"{len(due)} inspection(s) would be purged", file=sys.stderr)
            return EXIT_OK
        with tqdm(total=len(due), desc="purging", unit=" inspections", file=sys.stderr, disable=None) as bar:
            result = archive.retention.purge(now, _caller(), progress=lambda _uid: bar.update(1))
    finally:
        archive.close()
    print(
        f"purged {len(result.inspections)} inspection(s): {result.objects_deleted} objects, "
        f"{result.bytes / 1e6:.1f} MB; {len(result.objects_left)} object(s) left for `pacs fsck --repair`"
    )
    return EXIT_PROBLEMS if result.objects_left else EXIT_OK
