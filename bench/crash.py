"""Crash safety: ``pacs serve`` killed with SIGKILL while eight associations store; nothing it
acknowledged may be lost.

One archive per backend pair takes every round. In a round, eight pynetdicom associations send new
instances (two new parts, four inspections, eight series, every series filled by all associations at
once; every tenth instance 2 MB, the rest 33 kB) to the running server, recording per instance
whether the C-STORE response was Success (0x0000). At a random moment of the sending window (once a
random number of instances is acknowledged, plus a random delay) the whole server, supervisor and
workers, is killed with SIGKILL (every fifth round the supervisor alone, as the OOM killer might:
its workers must die with it). It is restarted on the same ports and data, and then:

* every instance acknowledged in this or any earlier round is read back through the archive's
  retrieve service and the SHA-256 of its dataset compared with the file sent (lost = not
  retrievable, or other bytes);
* ``pacs fsck`` must exit 0 and find no index entry without its object (missing, corrupt,
  unreadable); the objects a crash leaves without an index entry are counted with
  ``--quick --grace-seconds 0``;
* the unacknowledged instances are sent again (eight associations), and the index must then hold
  exactly the parts, inspections, series, instances and versions sent: no duplicate row, no second
  version for an instance that was stored but not acknowledged before the kill.

The restarted server takes the next round. The figures go into a section (``crash``) of
``--doc`` (default docs/reliability.md); the script exits 1 if anything acknowledged was lost or a
check failed.

    python bench/crash.py                                  # 20 rounds on each backend pair
    python bench/crash.py --rounds 5 --backend sqlite+file
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import random
import shlex
import shutil
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/crash.py` from anywhere
    sys.path.insert(0, str(ROOT))

from bench.ingest import Infrastructure, disk_of, machine  # noqa: E402
from tests.support.serve import (  # noqa: E402
    FsckSummary,
    PacsServer,
    SentInstance,
    StoreLoad,
    archive_flags,
    fsck_summary,
    index_counts,
    instance_corpus,
    kill_server,
    restart_on_ports,
    verify_stored,
)

RESULTS = ROOT / "bench" / "results" / "crash"
DOC = ROOT / "docs" / "reliability.md"
POSTGRES_URL = os.environ.get("PACS_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ("sqlite+file", "postgresql+s3")
PARTS, INSPECTIONS, SERIES = 2, 2, 2  # per round: new parts, inspections per part, series per inspection
LOAD_TIMEOUT = 300.0


@dataclass
class Round:
    number: int
    kill: str = "server"  # what was killed: the whole server, or the supervisor alone
    sent: int = 0
    acknowledged: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    kill_after: float = 0.0  # seconds from the first association's start
    kill_threshold: int = 0
    restart_seconds: float = 0.0
    lost: dict[str, str] = field(default_factory=dict)  # acknowledged, not verified after the restart
    verified: int = 0  # instances acknowledged so far, all rounds, checked after the restart
    stored_unacknowledged: int = 0  # in the index after the restart without having been acknowledged
    fsck: FsckSummary | None = None
    left_unreferenced: int = 0
    resent: int = 0
    incomplete: dict[str, str] = field(default_factory=dict)  # after re-sending
    counts: dict[str, int] = field(default_factory=dict)
    expected_counts: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not self.lost
            and not self.refused
            and self.fsck is not None
            and self.fsck.returncode == 0
            and self.fsck.no_entry_without_object
            and not self.incomplete
            and self.counts == self.expected_counts
            and not self.errors
        )


@dataclass
class Campaign:
    backend: str
    settings: dict[str, str]
    folder: Path
    rounds: list[Round] = field(default_factory=list)
    acknowledged: list[SentInstance] = field(default_factory=list)  # all rounds
    setup_error: str = ""
    server: PacsServer | None = None  # the one running now, stopped at the end whatever happens


def run_campaign(
    backend: str, settings: dict[str, str], folder: Path, args: argparse.Namespace, rng: random.Random
) -> Campaign:
    campaign = Campaign(backend, settings, folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        campaign.server = PacsServer(
            archive_flags(settings), workers=args.workers, log_path=folder / "serve-0.log"
        )
        campaign.server.start()
        for number in range(1, args.rounds + 1):
            record = Round(number, "supervisor" if number % args.supervisor_every == 0 else "server")
            campaign.rounds.append(record)
            try:
                crash_round(campaign, record, args, rng)
            except Exception as exc:  # recorded as a failed round; the campaign cannot go on
                print(f"{backend} round {number}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                first_line = (str(exc).splitlines() or [""])[0]
                record.errors.append(f"{type(exc).__name__}: {first_line} (see {folder})")
                _progress(campaign, record)
                break
            _progress(campaign, record)
    except Exception as exc:
        campaign.setup_error = f"{type(exc).__name__}: {exc}"
        print(f"{backend}: {campaign.setup_error}", file=sys.stderr, flush=True)
    finally:
        server = campaign.server
        if server is not None and server.process is not None and server.returncode is None:
            try:
                server.stop(timeout=60)
            except Exception as exc:
                print(f"warning: stopping the server: {exc}", file=sys.stderr)
    return campaign


def crash_round(campaign: Campaign, record: Round, args: argparse.Namespace, rng: random.Random) -> None:
    """One round on the campaign's running server, which is then the restarted one."""
    server = campaign.server
    assert server is not None
    n = record.number
    instances = instance_corpus(
        campaign.folder / "corpus" / f"r{n:03d}",
        args.instances,
        tag=f"CRASH-{n:03d}",
        parts=PARTS,
        inspections=INSPECTIONS,
        series=SERIES,
        large_every=args.large_every,
    )
    record.sent = len(instances)
    # A random moment of the sending window: once `threshold` instances are acknowledged (between
    # 5 % and 75 % of them), plus up to 100 ms; the associations are then at random points of
    # their transfers, parses, object commits and index transactions.
    record.kill_threshold = rng.randint(max(1, len(instances) // 20), max(1, len(instances) * 3 // 4))
    load = StoreLoad.to(server, instances, args.associations).start()
    if not load.wait_for_acknowledged(record.kill_threshold, LOAD_TIMEOUT):
        record.errors.append(
            f"only {len(load.acknowledged)} of {record.kill_threshold} instances acknowledged before the "
            f"load ended: {load.errors[:3]}"
        )
    time.sleep(rng.uniform(0.0, 0.1))
    record.kill_after = time.monotonic() - load.started_at
    ports = ["--dicom-port", str(server.dicom_port), "--http-port", str(server.http_port)]
    kill_server(server, supervisor_only=record.kill == "supervisor")
    load.join(LOAD_TIMEOUT)
    record.acknowledged = len(load.acknowledged)
    record.refused = dict(load.refused)
    campaign.acknowledged.extend(load.acknowledged)

    started = time.monotonic()
    restarted = campaign.server = restart_on_ports(
        [*archive_flags(campaign.settings), *ports],
        workers=args.workers,
        log_path=campaign.folder / f"serve-{n}.log",
    )
    record.restart_seconds = time.monotonic() - started

    record.lost = verify_stored(campaign.settings, campaign.acknowledged)
    record.verified = len(campaign.acknowledged)
    record.stored_unacknowledged = index_counts(campaign.settings)["instances"] - record.verified
    record.fsck = fsck_summary(campaign.settings)
    record.left_unreferenced = fsck_summary(campaign.settings, "--quick", "--grace-seconds", "0").unreferenced

    acknowledged = {i.sop_instance_uid for i in load.acknowledged}
    missing = [i for i in instances if i.sop_instance_uid not in acknowledged]
    record.resent = len(missing)
    if missing:
        resend = StoreLoad.to(restarted, missing, args.associations).run(LOAD_TIMEOUT)
        campaign.acknowledged.extend(resend.acknowledged)
        if not resend.complete:
            record.errors.append(
                f"re-send: {len(resend.acknowledged)} of {len(missing)} acknowledged, refused "
                f"{resend.refused}, errors {resend.errors[:3]}"
            )
    record.incomplete = verify_stored(campaign.settings, instances)
    record.counts = index_counts(campaign.settings)
    total = n * args.instances
    record.expected_counts = {
        "components": n * PARTS,
        "inspections": n * PARTS * INSPECTIONS,
        "series": n * PARTS * INSPECTIONS * SERIES,
        "instances": total,
        "versions": total,
    }
    if not args.keep:
        shutil.rmtree(campaign.folder / "corpus" / f"r{n:03d}", ignore_errors=True)


def _progress(campaign: Campaign, record: Round) -> None:
    fsck = record.fsck
    fsck_text = (
        "-" if fsck is None else f"exit {fsck.returncode}, {fsck.missing}/{fsck.corrupt} missing/corrupt"
    )
    status = "ok" if record.ok else "FAILED " + "; ".join(_problems(record))
    print(
        f"[{campaign.backend} round {record.number}] {record.kill} killed at {record.kill_after:5.2f} s "
        f"after {record.acknowledged}/{record.sent} acknowledged; "
        f"restart {record.restart_seconds:4.1f} s; lost {len(record.lost)} of {record.verified}; "
        f"fsck {fsck_text}, {record.left_unreferenced} unreferenced; re-sent {record.resent}; {status}",
        flush=True,
    )


def _problems(record: Round) -> list[str]:
    problems = [*record.errors]
    if record.lost:
        problems.append(f"lost {len(record.lost)}: {_first(record.lost)}")
    if record.refused:
        problems.append(f"refused before the kill: {_first(record.refused)}")
    if record.fsck is not None and (record.fsck.returncode != 0 or not record.fsck.no_entry_without_object):
        problems.append(f"fsck: {record.fsck.output.strip().splitlines()[-1:]}")
    if record.incomplete:
        problems.append(f"incomplete after re-send: {_first(record.incomplete)}")
    if record.counts and record.counts != record.expected_counts:
        problems.append(f"index rows {record.counts}, expected {record.expected_counts}")
    return problems


def _first(mapping: dict[str, Any]) -> str:
    key = next(iter(mapping))
    more = f" (and {len(mapping) - 1} more)" if len(mapping) > 1 else ""
    return f"{key}: {mapping[key]}{more}"


# -- report ---------------------------------------------------------------------------------------
def table(campaigns: Sequence[Campaign]) -> list[str]:
    lines = [
        "| Backend pair | Rounds | Instances sent | Acknowledged before the kill | Lost "
        "| Stored, not acknowledged | Re-sent to complete | fsck | Left unreferenced | Kill moment (s) "
        "| Restart (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---|---:|",
    ]
    for c in campaigns:
        rounds = c.rounds
        if not rounds:
            lines.append(f"| {c.backend} | 0 | - | - | - | - | - | - | - | - | - |")
            continue
        fscks = [r.fsck for r in rounds if r.fsck is not None]
        fsck_ok = sum(1 for f in fscks if f.returncode == 0 and f.no_entry_without_object)
        kills = [r.kill_after for r in rounds]
        restart = statistics.median(r.restart_seconds for r in rounds)
        lines.append(
            f"| {c.backend} | {len(rounds)} | {sum(r.sent for r in rounds)} | "
            f"{sum(r.acknowledged for r in rounds)} | {sum(len(r.lost) for r in rounds)} | "
            f"{sum(r.stored_unacknowledged for r in rounds)} | "
            f"{sum(r.resent for r in rounds)} | {fsck_ok}/{len(rounds)} exit 0, "
            f"{sum(f.missing + f.corrupt + f.unreadable for f in fscks)} entries without object | "
            f"{sum(r.left_unreferenced for r in rounds[-1:])} | "
            f"{min(kills):.2f} to {max(kills):.2f} | {restart:.1f} |"
        )
    return lines


def round_table(campaign: Campaign) -> list[str]:
    lines = [
        "| Round | Killed | At (s) | Acknowledged / sent | Verified after restart | Lost "
        "| Stored, not acknowledged | fsck | Unreferenced (total) | Re-sent "
        "| Index rows after re-send | Result |",
        "|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---|---|",
    ]
    for r in campaign.rounds:
        fsck = "-" if r.fsck is None else f"exit {r.fsck.returncode}, {r.fsck.checked} checked"
        rows = "/".join(
            str(r.counts.get(k, "?")) for k in ("components", "inspections", "series", "instances")
        )
        lines.append(
            f"| {r.number} | {r.kill} | {r.kill_after:.2f} | {r.acknowledged} / {r.sent} | {r.verified} | "
            f"{len(r.lost)} | {r.stored_unacknowledged} | {fsck} | {r.left_unreferenced} | {r.resent} | "
            f"{rows} | "
            f"{'ok' if r.ok else 'FAILED: ' + '; '.join(_problems(r))} |"
        )
    return lines


def render(campaigns: Sequence[Campaign], args: argparse.Namespace, meta: dict[str, Any]) -> str:
    lines = [
        "## Crash safety (SIGKILL during C-STORE)",
        "",
        "Re-run: `python bench/crash.py` (the venv's python, from the repository root; `--help` lists the "
        "options). It rewrites this section.",
        "",
        f"Last run: {meta['date']}, `{meta['command']}`, took {meta['minutes']:.1f} min, seed {args.seed}.",
        "",
        f"- Machine: {meta['machine']}; work folder on {meta['disk']}.",
        f"- Server: `pacs serve --workers {args.workers}`; the embedded pair (SQLite + files) and the "
        "production pair (the local PostgreSQL, a fresh database; SeaweedFS S3 on loopback, a fresh bucket).",
        f"- Per round: {args.instances} new instances ({PARTS} new parts x {INSPECTIONS} inspections x "
        f"{SERIES} series, dealt in turn so every series is filled by all associations at once; every "
        f"{args.large_every}th instance 2 MB, the rest 33 kB) from {args.associations} pynetdicom "
        "associations; only a Success (0x0000) response counts as acknowledged.",
        '- The kill: SIGKILL to the supervisor and every worker at once ("server"), or in rounds '
        f'{args.supervisor_every}, {2 * args.supervisor_every}, ... to the supervisor alone ("supervisor"; '
        "its workers must die with it), once a random number of instances (5 % to 75 % of the "
        "round's) is acknowledged, plus a random 0-100 ms. Restart on the same ports and data; the "
        "restarted server takes the next round.",
        "- After each restart: every instance acknowledged in any round so far is read through the "
        'retrieve service and its dataset\'s SHA-256 compared with the file sent ("Lost": not '
        "retrievable or other bytes); `pacs fsck` (full, hashes every object) must exit 0 with no "
        "missing, corrupt or unreadable object; `pacs fsck --quick --grace-seconds 0` counts the "
        "objects crashes left without an index entry (harmless, `pacs fsck --repair` removes them); the "
        "unacknowledged instances are sent again, and then every instance of the round must verify and "
        "the index hold exactly the parts, inspections, series, instances and versions sent.",
        "",
        "### Results",
        "",
        *table(campaigns),
        "",
        '"Stored, not acknowledged": instances in the index after the restart that were never answered '
        "Success (committed, then killed before the response went out); the re-send finds them stored "
        '(no second version). "Left unreferenced": objects without an index entry after the last '
        "round (interrupted stores), all rounds together.",
    ]
    for campaign in campaigns:
        lines += ["", f"### Rounds, {campaign.backend}", ""]
        if campaign.setup_error:
            lines += [f"Could not run: {campaign.setup_error}", ""]
        lines += round_table(campaign)
    return "\n".join(lines) + "\n"


# -- main -----------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="kills per backend pair (20)")
    parser.add_argument(
        "--backend", choices=(*BACKENDS, "both"), default="both", help="backend pair(s) to run (both)"
    )
    parser.add_argument("--instances", type=int, default=160, help="instances sent per round (160)")
    parser.add_argument("--associations", type=int, default=8, help="parallel associations (8)")
    parser.add_argument("--large-every", type=int, default=10, help="every Nth instance is 2 MB (10)")
    parser.add_argument("--workers", type=int, default=2, help="pacs serve --workers (2)")
    parser.add_argument(
        "--supervisor-every", type=int, default=5, help="every Nth round kills the supervisor alone (5)"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock)")
    parser.add_argument(
        "--workdir", type=Path, default=RESULTS, help="where archives live (bench/results/crash)"
    )
    parser.add_argument(
        "--postgres-url", default=POSTGRES_URL, help="server for the production pair's database"
    )
    parser.add_argument("--doc", type=Path, default=DOC, help="file whose `crash` section is rewritten")
    parser.add_argument("--no-doc", action="store_true", help="print the section only")
    parser.add_argument("--keep", action="store_true", help="keep the archives, corpus and logs")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = int(time.time())
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Every kill aborts eight associations; the senders' error reports would drown the progress.
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    started = time.monotonic()
    rng = random.Random(args.seed)
    workdir: Path = args.workdir.resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    infra = Infrastructure(workdir, args.postgres_url)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    campaigns: list[Campaign] = []
    try:
        for backend in BACKENDS if args.backend == "both" else (args.backend,):
            folder = workdir / backend
            settings = {"data_dir": str(folder / "pacs-data")}
            if backend == "postgresql+s3":
                print("starting SeaweedFS, creating a database ...", flush=True)
                settings["database_url"] = infra.postgres.create()
                settings["object_store"] = infra.s3.url(f"crash-{uuid.uuid4().hex[:12]}")
            print(f"{backend}: {args.rounds} rounds, seed {args.seed}", flush=True)
            campaigns.append(run_campaign(backend, settings, folder, args, rng))
        meta = {
            "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "command": shlex.join(["python", "bench/crash.py", *(sys.argv[1:] if argv is None else argv)]),
            "minutes": (time.monotonic() - started) / 60,
            "machine": machine(),
            "disk": disk_of(workdir),
        }
        section = render(campaigns, args, meta)
        print()
        print(section)
        if not args.no_doc:
            from bench.report import write_section

            write_section("crash", section, doc=args.doc, intro="# Reliability\n")
            print(f"wrote the crash section of {args.doc}")
        failed = any(c.setup_error or not c.rounds or not all(r.ok for r in c.rounds) for c in campaigns)
        return 1 if failed else 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        infra.close(keep=args.keep)
        signal.signal(signal.SIGTERM, previous)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _raise_interrupt(signo: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
