"""The ``pacs`` command: the composition root that wires settings, backends and faces together.

Every subcommand takes the same configuration flags (and ``PACS_*`` variables, and ``--config``),
so maintenance commands always act on the archive that ``pacs serve`` runs. The faces are imported
inside the commands that need them, which keeps ``import pacs`` light.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import logging
import multiprocessing
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pacs import __version__
from pacs.archive import Archive, open_archive
from pacs.config import ConfigError, Settings, load_settings
from pacs.context import CallerContext, host_port
from pacs.errors import PacsError
from pacs.evidence_cli import add_commands as add_evidence_commands
from pacs.retention_cli import add_commands as add_retention_commands

log = logging.getLogger("pacs")

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2

# flag -> settings field, shared by every subcommand
_CONFIG_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "--data-dir",
        "data_dir",
        {"type": Path, "help": "folder of the embedded index and objects (./pacs-data)"},
    ),
    ("--database-url", "database_url", {"help": "sqlite:///PATH or postgresql://USER@HOST/DB"}),
    (
        "--object-store",
        "object_store",
        {"help": "file://PATH or s3://ACCESS:SECRET@HOST:PORT/BUCKET?secure=false"},
    ),
    ("--host", "host", {"help": "address the DICOM, DICOM TLS and HTTP listeners bind (0.0.0.0)"}),
    ("--dicom-port", "dicom_port", {"type": int, "help": "DICOM port (11112)"}),
    (
        "--dicom-tls-port",
        "dicom_tls_port",
        {"type": int, "help": "DICOM TLS port (2762 is the registered one); unset = no TLS listener"},
    ),
    ("--tls-certificate", "tls_certificate", {"type": Path, "help": "the archive's certificate (PEM)"}),
    ("--tls-private-key", "tls_private_key", {"type": Path, "help": "its private key (PEM)"}),
    (
        "--tls-ca-certificates",
        "tls_ca_certificates",
        {"type": Path, "help": "CA certificates (PEM) that peers' certificates must chain to"},
    ),
    ("--http-port", "http_port", {"type": int, "help": "HTTP port (8042)"}),
    ("--ae-title", "ae_title", {"help": "the archive's AE title (NDT_PACS)"}),
    ("--workers", "workers", {"type": int, "help": "server processes; 0 = one per CPU"}),
    (
        "--allowed-peers",
        "allowed_peers",
        {"help": "comma-separated calling AE titles (AE or AE@host, either optionally =ROLE); empty = any"},
    ),
    ("--max-associations", "max_associations", {"type": int, "help": "concurrent associations (64)"}),
    (
        "--cors-allowed-origins",
        "cors_allowed_origins",
        {"help": "comma-separated origins whose web pages may call the HTTP API (e.g. https://ohif.example)"},
    ),
    ("--log-level", "log_level", {"help": "DEBUG, INFO, WARNING, ERROR"}),
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        settings = load_settings(
            {field: getattr(args, field, None) for _, field, _ in _CONFIG_FLAGS}, config_file=args.config
        )
    except ConfigError as exc:
        print(f"pacs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _setup_logging(settings.log_level)
    try:
        return int(args.run(settings, args))
    except PacsError as exc:
        print(f"pacs: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("configuration (flags > PACS_* variables > --config file > defaults)")
    group.add_argument("--config", type=Path, help="TOML configuration file (or PACS_CONFIG)")
    for flag, field, options in _CONFIG_FLAGS:
        group.add_argument(flag, dest=field, default=None, **options)

    parser = argparse.ArgumentParser(prog="pacs", description="NDT archive: DICONDE PACS")
    parser.add_argument("--version", action="version", version=f"pacs {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="run the DICOM and HTTP servers")
    serve.set_defaults(run=_serve)

    db = commands.add_parser("db", help="index schema management")
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    upgrade = db_commands.add_parser(
        "upgrade", parents=[common], help="bring the index schema to the current version"
    )
    upgrade.set_defaults(run=_db_upgrade)
    current = db_commands.add_parser(
        "current", parents=[common], help="print the schema version of the index"
    )
    current.set_defaults(run=_db_current)

    fsck = commands.add_parser("fsck", parents=[common], help="verify objects against the index")
    fsck.add_argument(
        "--repair", action="store_true", help="remove unreferenced objects and stale staging copies"
    )
    fsck.add_argument("--quick", action="store_true", help="check existence and size only, not SHA-256")
    fsck.add_argument(
        "--grace-seconds",
        type=float,
        default=3600.0,
        help="leave objects younger than this alone (stores in flight on a running archive); default 3600",
    )
    fsck.set_defaults(run=_fsck)

    imp = commands.add_parser("import", parents=[common], help="import DICOM files and folders")
    imp.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    imp.add_argument("--jobs", type=int, default=4, help="files processed in parallel (4)")
    imp.set_defaults(run=_import)
    add_evidence_commands(commands, common)
    add_retention_commands(commands, common)

    nodes = commands.add_parser("nodes", help="DICOM nodes the archive sends to (C-MOVE destinations, peers)")
    node_commands = nodes.add_subparsers(dest="nodes_command", metavar="ACTION", required=True)
    node_add = node_commands.add_parser("add", parents=[common], help="register a node")
    node_add.add_argument("node_ae_title", metavar="AE_TITLE")
    node_add.add_argument("node_host", metavar="HOST")
    node_add.add_argument("node_port", metavar="PORT", type=int)
    node_add.add_argument("--tls", action="store_true", help="associate over TLS")
    node_add.add_argument("--description", help="what the node is (free text)")
    node_add.add_argument("--replace", action="store_true", help="replace a node with this AE title")
    node_add.set_defaults(run=_nodes_add)
    node_list = node_commands.add_parser("list", parents=[common], help="list registered nodes")
    node_list.set_defaults(run=_nodes_list)
    node_remove = node_commands.add_parser("remove", parents=[common], help="remove a node")
    node_remove.add_argument("node_ae_title", metavar="AE_TITLE")
    node_remove.set_defaults(run=_nodes_remove)

    users = commands.add_parser("users", help="users of the HTTP API and their tokens")
    expiry = argparse.ArgumentParser(add_help=False)
    expiry.add_argument(
        "--expires-in",
        type=_days,
        metavar="DAYS",
        help="the token stops working after DAYS days (default: never)",
    )
    user_commands = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    user_add = user_commands.add_parser(
        "add",
        parents=[common, expiry],
        help="create a user; prints its API token (last line), shown only once",
    )
    user_add.add_argument("user_name", metavar="NAME")
    user_add.add_argument(
        "--role",
        required=True,
        type=str.lower,
        choices=["device", "inspector", "auditor", "admin"],
        help="device: store only; inspector: query, retrieve, view; auditor: read-only, evidence and "
        "audit trail; admin: everything, users and nodes",
    )
    user_add.set_defaults(run=_users_add)
    user_list = user_commands.add_parser("list", parents=[common], help="list users, revoked ones included")
    user_list.set_defaults(run=_users_list)
    user_revoke = user_commands.add_parser(
        "revoke", parents=[common], help="revoke a user: its token stops working at once"
    )
    user_revoke.add_argument("user_name", metavar="NAME")
    user_revoke.set_defaults(run=_users_revoke)
    user_renew = user_commands.add_parser(
        "renew",
        parents=[common, expiry],
        help="give a user a new API token (last line); the old one stops working",
    )
    user_renew.add_argument("user_name", metavar="NAME")
    user_renew.set_defaults(run=_users_renew)

    audit = commands.add_parser("audit", help="the audit trail: verify its hash chain, export it")
    audit_commands = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    audit_verify = audit_commands.add_parser(
        "verify",
        parents=[common],
        help="recompute the hash chain; names the first edited, inserted or deleted entry",
    )
    audit_verify.set_defaults(run=_audit_verify)
    audit_export = audit_commands.add_parser(
        "export",
        parents=[common],
        help="write the trail (or a part's entries) as JSON lines or DICOM audit messages",
    )
    audit_export.add_argument("out", metavar="OUT", help="the file to write; - for standard output")
    audit_export.add_argument("--part", metavar="PART_ID", help="only the entries of this part ID")
    audit_export.add_argument(
        "--format",
        choices=["jsonl", "dicom"],
        default="jsonl",
        help="jsonl: one entry a line, with its hash (default); dicom: PS3.15 A.5 audit messages (XML)",
    )
    audit_export.set_defaults(run=_audit_export)

    send = commands.add_parser("send", parents=[common], help="send stored instances to a node (C-STORE)")
    send.add_argument("node", metavar="NODE", help="AE title of a node registered with `pacs nodes add`")
    send.add_argument("uids", nargs="+", metavar="UID", help="SOP Instance, Series or Study Instance UIDs")
    send.set_defaults(run=_send)

    query = commands.add_parser("query", parents=[common], help="query a node (C-FIND)")
    _add_query_arguments(query)
    query.set_defaults(run=_query)

    pull = commands.add_parser(
        "retrieve", parents=[common], help="retrieve from a node into this archive (C-GET or C-MOVE)"
    )
    _add_query_arguments(pull)
    pull.add_argument(
        "--via",
        choices=["get", "move"],
        default="get",
        help="get: C-GET on one association (default); move: C-MOVE to this archive's AE title, "
        "which must be serving (`pacs serve`) and known to the node",
    )
    pull.set_defaults(run=_retrieve)

    config = commands.add_parser("config", parents=[common], help="print the effective configuration")
    config.set_defaults(run=_show_config)
    return parser


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s [%(processName)s] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # pynetdicom narrates every PDU at INFO; pydicom warns about each out-of-spec value a device
    # sends. Both matter when debugging a peer, not in an archive's log.
    if level != "DEBUG":
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        logging.getLogger("pydicom").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module="pydicom")


# -- serve ------------------------------------------------------------------------------------------
def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from dicom_nodes import tls

    # The TLS files are read first, before anything is created: a bad one stops the start (exit 2).
    try:
        tls_context = tls.check(settings)
    except ConfigError as exc:
        print(f"pacs: {exc}", file=sys.stderr)
        return EXIT_USAGE

    import uvicorn

    from api.app import create_app
    from dicom_nodes.peers import ScuPeers
    from dicom_nodes.policy import AssociationLimiter
    from dicom_nodes.server import DicomNode
    from dicom_nodes.spool import Spooler
    from pacs import metrics
    from pacs.index.users import FIRST_ADMIN
    from pacs.supervisor import Supervisor

    archive = open_archive(settings)  # applies migrations once, before any worker starts
    register_configured_nodes(archive)
    first_token = archive.users.add_first_admin()
    if first_token is not None:
        _audit_change(
            archive, "user-change", {"user": FIRST_ADMIN, "change": "add", "role": "admin", "first": True}
        )
        # Printed once, on stdout (not in the log); only its SHA-256 is kept.
        print(
            f"no users yet: created the user {FIRST_ADMIN!r} with role admin; its API token follows, "
            "shown only this once (more users: pacs users add NAME --role ROLE)",
            flush=True,
        )
        print(first_token, flush=True)
    _audit_configuration(archive, settings)
    description = archive.describe()
    stale = archive.store.sweep_staging(older_than=3600)
    if stale:
        log.info("removed %d copies left in the object store's staging area by an earlier crash", stale)
    archive.close()
    dicom_socket = _listen(settings.host, settings.dicom_port)
    tls_socket = (
        _listen(settings.host, settings.dicom_tls_port) if settings.dicom_tls_port is not None else None
    )
    http_socket = _listen(settings.host, settings.http_port)
    tls_listener = (tls_socket, tls_context) if tls_socket is not None and tls_context is not None else None
    # Only now that the ports are ours is no other server using this data folder: drop what a
    # previous run left half-received.
    if settings.incoming_dir.exists():
        shutil.rmtree(settings.incoming_dir)
    metrics_dir = metrics.setup_multiprocess(_metrics_dir())  # the workers' metrics add up
    # One association count per worker, shared: the limit holds across workers, and a dead worker's
    # count is reset by the supervisor.
    association_slots = multiprocessing.get_context("fork").Array("i", settings.worker_count)

    def worker_main(index: int, ready: Any, wait_for_stop: Any) -> None:
        worker_archive = open_archive(settings, upgrade_schema=False)
        worker_archive.peers = ScuPeers(worker_archive)  # C-ECHO / C-STORE for /api/nodes
        node = DicomNode(
            settings,
            worker_archive,
            dicom_socket,
            AssociationLimiter(settings.max_associations, association_slots, index - 1),
            Spooler(worker_archive.ingest.receive, settings.incoming_dir),
            tls=tls_listener,
        )
        node.start()
        http = uvicorn.Server(
            uvicorn.Config(
                create_app(worker_archive),
                log_config=None,
                log_level=settings.log_level.lower(),
                access_log=False,
                timeout_graceful_shutdown=int(settings.shutdown_grace) or None,
                # X-Forwarded-For / -Proto only from the configured proxies (uvicorn's default
                # trusts 127.0.0.1, where any local process could claim another address).
                proxy_headers=bool(settings.trusted_proxies),
                forwarded_allow_ips=settings.trusted_proxies,
            )
        )
        http_thread = threading.Thread(target=http.run, kwargs={"sockets": [http_socket]}, name="http")
        http_thread.start()
        while not http.started:
            if not http_thread.is_alive():
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.01)
        ready()
        wait_for_stop()
        http.should_exit = True
        node.stop(settings.shutdown_grace)
        http_thread.join(settings.shutdown_grace + 5)
        worker_archive.close()

    dicom_host, dicom_port = dicom_socket.getsockname()[:2]
    http_host, http_port = http_socket.getsockname()[:2]
    tls_detail = ""
    if tls_socket is not None:
        tls_host, tls_port = tls_socket.getsockname()[:2]
        tls_detail = f"DICOM TLS on {tls_host}:{tls_port}; "

    def announce() -> None:
        print(
            f"NDT archive ready: DICOM {settings.ae_title} on {dicom_host}:{dicom_port}, "
            f"HTTP on http://{http_host}:{http_port} "
            f"({settings.worker_count} workers; {tls_detail}{description})",
            flush=True,
        )

    supervisor = Supervisor(
        settings.worker_count,
        worker_main,
        announce,
        stop_timeout=settings.shutdown_grace + 10,
        on_worker_exit=lambda index: AssociationLimiter.reset(association_slots, index - 1),
    )
    code = supervisor.run()
    dicom_socket.close()
    if tls_socket is not None:
        tls_socket.close()
    http_socket.close()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    log.info("stopped")
    return code


def _metrics_dir() -> Path:
    """Where the workers' metrics files go: in memory (/dev/shm) where the system has it, never on
    the data disk. prometheus_client memory-maps them and grows them sparse; on a full disk the first
    write into a new page kills the worker with SIGBUS, so a full data disk would take the server
    down instead of refusing stores with "out of resources"."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    for left in base.glob("pacs-metrics-*"):  # of servers that were killed (SIGKILL, power loss)
        pid = left.name.rpartition("-")[2]
        if pid.isdigit() and Path("/proc/self").exists() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(left, ignore_errors=True)
    return base / f"pacs-metrics-{os.getpid()}"


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        raise PacsError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


# -- db ---------------------------------------------------------------------------------------------
def _db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    from pacs.index import migrate

    archive = open_archive(settings)
    try:
        print(f"index schema at revision {migrate.current_revision(archive.engine)} ({archive.describe()})")
    finally:
        archive.close()
    return EXIT_OK


def _db_current(settings: Settings, args: argparse.Namespace) -> int:
    from pacs.index import migrate

    archive = open_archive(settings, upgrade_schema=False)
    try:
        current, head = migrate.current_revision(archive.engine), migrate.head_revision()
    finally:
        archive.close()
    print(f"index schema at revision {current}; this version of pacs expects {head}")
    return EXIT_OK if current == head else EXIT_PROBLEMS


# -- fsck -------------------------------------------------------------------------------------------
def _fsck(settings: Settings, args: argparse.Namespace) -> int:
    import datetime as dt

    from tqdm import tqdm

    archive = open_archive(settings, upgrade_schema=False)
    try:
        total = archive.index.counts()["versions"]
        bars: dict[str, tqdm] = {}

        def progress(phase: str, n: int) -> None:
            if phase not in bars:
                for bar in bars.values():
                    bar.close()
                label = "verifying objects" if phase == "verify" else "looking for unreferenced objects"
                bars[phase] = tqdm(
                    total=total if phase == "verify" else None, desc=label, unit=" obj", file=sys.stderr
                )
            bars[phase].update(n)

        report = archive.fsck().run(
            quick=args.quick,
            repair=args.repair,
            grace=dt.timedelta(seconds=args.grace_seconds),
            progress=progress,
        )
        for bar in bars.values():
            bar.close()
    finally:
        archive.close()
    for problem in report.problems:
        print(f"{problem.kind}: {problem.detail}")
    print(report.summary())
    return EXIT_OK if report.ok else EXIT_PROBLEMS


# -- import -----------------------------------------------------------------------------------------
def _import(settings: Settings, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pacs.services.importer import collect_files

    missing = [p for p in args.paths if not p.exists()]
    if missing:
        print(f"pacs import: no such file or folder: {', '.join(map(str, missing))}", file=sys.stderr)
        return EXIT_USAGE
    files = collect_files(args.paths)
    archive: Archive = open_archive(settings)
    try:
        with tqdm(total=len(files), desc="importing", unit=" files", file=sys.stderr) as bar:
            summary = archive.importer().run(
                files,
                CallerContext(via="import", user=getpass.getuser()),
                jobs=args.jobs,
                on_file=lambda path, outcome: bar.update(1),
            )
        _audit_import(archive, summary)
    finally:
        archive.close()
    for path, reason in summary.rejected:
        print(f"rejected: {path}: {_without_path(reason, path)}")
    for path, reason in summary.skipped:
        print(f"skipped: {path}: {reason}")
    print(summary.line())
    return EXIT_PROBLEMS if summary.rejected else EXIT_OK


def _audit_import(archive: Archive, summary: Any) -> None:
    """One audit entry per part the import stored into, and one for the files it rejected."""
    from pacs.audit import Action, AuditEvent, Outcome

    caller = CallerContext(via="import", user=f"os:{getpass.getuser()}")
    events = [
        AuditEvent(Action.STORE, caller, part_id=part_id, instances=uids, detail={"files": len(uids)})
        for part_id, uids in sorted(summary.instances.items())
    ]
    if summary.rejected:
        rejected = [f"{path}: {reason}"[:300] for path, reason in summary.rejected[:100]]
        events.append(
            AuditEvent(
                Action.STORE,
                caller,
                Outcome.REFUSED,
                detail={"rejected": len(summary.rejected), "files": rejected},
            )
        )
    for event in events:
        archive.audit.record_later(event)


def _without_path(reason: str, path: Path) -> str:
    prefix = f"{path}: "
    return reason[len(prefix) :] if reason.startswith(prefix) else reason


# -- nodes ------------------------------------------------------------------------------------------
def _nodes_add(settings: Settings, args: argparse.Namespace) -> int:
    from pacs.config import validate_ae_title
    from pacs.index.nodes import Node

    try:
        title = validate_ae_title(args.node_ae_title, "AE_TITLE")
    except ValueError as exc:
        print(f"pacs nodes add: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not 1 <= args.node_port <= 65535:
        print(f"pacs nodes add: PORT {args.node_port} is not between 1 and 65535", file=sys.stderr)
        return EXIT_USAGE
    node = Node(title, args.node_host, args.node_port, args.tls, args.description)
    archive = open_archive(settings)
    try:
        archive.nodes.add(node, replace=args.replace)
        _audit_change(
            archive,
            "node-change",
            {"node": node.ae_title, "change": "add", "address": host_port(node.host, node.port)},
        )
    finally:
        archive.close()
    print(f"registered {node.describe()}")
    return EXIT_OK


def _nodes_list(settings: Settings, args: argparse.Namespace) -> int:
    archive = open_archive(settings, upgrade_schema=False)
    try:
        nodes = archive.nodes.all()
    finally:
        archive.close()
    for node in nodes:
        tls = "  TLS" if node.tls else ""
        print(f"{node.ae_title:16} {node.host}:{node.port}{tls}  {node.description or ''}".rstrip())
    if not nodes:
        print("no nodes registered (pacs nodes add AE_TITLE HOST PORT)", file=sys.stderr)
    return EXIT_OK


def _nodes_remove(settings: Settings, args: argparse.Namespace) -> int:
    archive = open_archive(settings, upgrade_schema=False)
    try:
        archive.nodes.remove(args.node_ae_title)
        _audit_change(archive, "node-change", {"node": args.node_ae_title, "change": "remove"})
    finally:
        archive.close()
    print(f"removed {args.node_ae_title}")
    return EXIT_OK


# -- users ------------------------------------------------------------------------------------------
def _users_add(settings: Settings, args: argparse.Namespace) -> int:
    from pacs.index.users import InvalidUser

    archive = open_archive(settings)
    expires_at = _expiry(args.expires_in)
    try:
        token = archive.users.add(args.user_name, args.role, expires_at=expires_at)
        _audit_change(archive, "user-change", {"user": args.user_name, "change": "add", "role": args.role})
    except InvalidUser as exc:
        print(f"pacs users add: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        archive.close()
    print(
        f"created user {args.user_name!r} with role {args.role}; its API token{_expiry_text(expires_at)} "
        "(shown only this once):"
    )
    print(token)
    return EXIT_OK


def _users_renew(settings: Settings, args: argparse.Namespace) -> int:
    archive = open_archive(settings, upgrade_schema=False)
    expires_at = _expiry(args.expires_in)
    try:
        token = archive.users.renew(args.user_name, expires_at=expires_at)
        _audit_change(archive, "user-change", {"user": args.user_name, "change": "renew"})
    finally:
        archive.close()
    print(
        f"new API token for {args.user_name!r}{_expiry_text(expires_at)}; the old one no longer works "
        "(shown only this once):"
    )
    print(token)
    return EXIT_OK


def _days(value: str) -> float:
    try:
        days = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of days") from None
    if not 0 < days <= 36_500:
        raise argparse.ArgumentTypeError(f"{value!r}: between 0 and 36500 days")
    return days


def _expiry(days: float | None) -> dt.datetime | None:
    return None if days is None else dt.datetime.now(dt.UTC) + dt.timedelta(days=days)


def _expiry_text(expires_at: dt.datetime | None) -> str:
    return "" if expires_at is None else f", valid until {expires_at:%Y-%m-%d %H:%M:%S} UTC"


def _users_list(settings: Settings, args: argparse.Namespace) -> int:
    archive = open_archive(settings, upgrade_schema=False)
    try:
        users = archive.users.all()
    finally:
        archive.close()
    for user in users:
        if user.revoked_at:
            state = f"revoked {user.revoked_at:%Y-%m-%d %H:%M:%S}"
        elif user.expires_at:
            state = (
                f"{'expired' if user.expired() else 'active, expires'} {user.expires_at:%Y-%m-%d %H:%M:%S}"
            )
        else:
            state = "active"
        print(f"{user.name:24} {user.role:10} created {user.created_at:%Y-%m-%d %H:%M:%S}  {state}")
    if not users:
        print("no users (pacs users add NAME --role ROLE)", file=sys.stderr)
    return EXIT_OK


def _users_revoke(settings: Settings, args: argparse.Namespace) -> int:
    archive = open_archive(settings, upgrade_schema=False)
    try:
        user = archive.users.revoke(args.user_name)
        _audit_change(archive, "user-change", {"user": args.user_name, "change": "revoke"})
    finally:
        archive.close()
    print(f"revoked {user.name} ({user.role}): its token no longer works")
    return EXIT_OK


# -- audit ------------------------------------------------------------------------------------------
def _audit_change(archive: Archive, action: str, detail: dict[str, Any]) -> None:
    """Record a change made from the command line, by the operating system user who ran it."""
    from pacs.audit import Action, AuditEvent

    archive.audit.record(
        AuditEvent(Action(action), CallerContext(via="cli", user=f"os:{getpass.getuser()}"), detail=detail)
    )


def _audit_configuration(archive: Archive, settings: Settings) -> None:
    """At start: a config-change entry when the effective settings differ from the last recorded
    ones (secrets in URLs masked), naming the settings that changed."""
    import hashlib
    import json
    import re

    from pacs.audit import Action, AuditEvent

    values = settings.model_dump(mode="json", exclude={"nodes"})
    for key in ("database_url", "object_store"):
        if isinstance(values.get(key), str):
            values[key] = re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", values[key])
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
    last = None
    for entry in archive.audit.iterate(action=str(Action.CONFIG_CHANGE)):
        last = entry
    if last is not None and last.detail.get("digest") == digest:
        return
    before = last.detail.get("settings", {}) if last is not None else {}
    changed = sorted(k for k in values if before.get(k) != values[k])
    archive.audit.record(
        AuditEvent(
            Action.CONFIG_CHANGE,
            CallerContext(via="cli", user=f"os:{getpass.getuser()}"),
            detail={"digest": digest, "settings": values, "changed": changed, "first": last is None},
        )
    )


def _audit_cli_event(
    archive: Archive,
    action: str,
    detail: dict[str, Any],
    *,
    instances: Sequence[str] = (),
    failed: bool = False,
) -> None:
    """An exchange with another node run from the command line (``pacs send`` / ``retrieve``)."""
    from pacs.audit import Action, AuditEvent, Outcome

    caller = CallerContext(via="cli", user=f"os:{getpass.getuser()}")
    outcome = Outcome.FAILURE if failed else Outcome.SUCCESS
    archive.audit.record_later(
        AuditEvent(Action(action), caller, outcome, detail=detail, instances=instances)
    )


def _audit_verify(settings: Settings, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    archive = open_archive(settings, upgrade_schema=False)
    try:
        with tqdm(desc="verifying", unit=" entries", file=sys.stderr, disable=None) as bar:
            result = archive.audit.verify(progress=lambda n: bar.update(1))
    finally:
        archive.close()
    if result.ok:
        print(f"audit trail intact: {result.checked} entries, head {result.head_seq}")
        return EXIT_OK
    print(f"audit trail BROKEN at entry {result.broken_seq}: {result.problem}", file=sys.stderr)
    print(f"checked {result.checked} entries before it; head {result.head_seq}", file=sys.stderr)
    return EXIT_PROBLEMS


def _audit_export(settings: Settings, args: argparse.Namespace) -> int:
    from pacs.audit import dicom_audit_message, json_lines

    archive = open_archive(settings, upgrade_schema=False)
    count = 0
    try:
        entries = archive.audit.iterate(part_id=args.part)
        out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")  # noqa: SIM115
        try:
            if args.format == "jsonl":
                for line in json_lines(entries):
                    out.write(line)
                    count += 1
            else:
                out.write('<?xml version="1.0" encoding="UTF-8"?>\n<AuditMessages>\n')
                for entry in entries:
                    out.write(dicom_audit_message(entry, settings.ae_title) + "\n")
                    count += 1
                out.write("</AuditMessages>\n")
        finally:
            if out is not sys.stdout:
                out.close()
    finally:
        archive.close()
    print(f"wrote {count} audit entries to {args.out}", file=sys.stderr)
    return EXIT_OK


def register_configured_nodes(archive: Archive) -> None:
    """Nodes of the configuration file are registered (replacing same-titled ones) at start."""
    from pacs.index.nodes import Node

    for spec in archive.settings.nodes:
        archive.nodes.add(Node(spec.ae_title, spec.host, spec.port, spec.tls, spec.description), replace=True)


# -- send / query / retrieve: the archive as a client of other nodes ---------------------------------
def _add_query_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("node", metavar="NODE", help="AE title of a node registered with `pacs nodes add`")
    parser.add_argument(
        "--level",
        type=str.upper,
        choices=["PATIENT", "STUDY", "SERIES", "IMAGE"],
        default="STUDY",
        help="query/retrieve level (STUDY); PATIENT = component, needs --model patient",
    )
    parser.add_argument(
        "--model",
        choices=["study", "patient"],
        default="study",
        help="Study Root (default) or Patient Root information model",
    )
    parser.add_argument(
        "-k",
        "--key",
        dest="keys",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="match KEY (keyword or gggg,eeee) against VALUE; `KEY=` asks for it back; repeatable",
    )


def _peer(archive: Archive, title: str, command: str) -> Any:
    node = archive.nodes.get(title)
    if node is None:
        print(
            f"pacs {command}: no node with AE title {title!r} is registered "
            f"(pacs nodes add {title} HOST PORT)",
            file=sys.stderr,
        )
    return node


def _send(settings: Settings, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dicom_nodes import scu

    archive = open_archive(settings, upgrade_schema=False)
    try:
        node = _peer(archive, args.node, "send")
        if node is None:
            return EXIT_USAGE
        items, unknown = archive.retrieve.resolve_uids(args.uids)
        if unknown:
            for uid in unknown:
                print(f"pacs send: not in the archive: {uid}", file=sys.stderr)
            return EXIT_PROBLEMS
        with tqdm(total=len(items), desc=f"sending to {node.ae_title}", unit=" inst", file=sys.stderr) as bar:
            results = scu.send(archive, node, items, on_result=lambda result: bar.update(1))
        _audit_cli_event(
            archive,
            "export",
            {
                "node": node.ae_title,
                "sent": sum(1 for r in results if r.ok),
                "failed": sum(1 for r in results if not r.ok),
            },
            instances=[r.sop_instance_uid for r in results],
            failed=any(not r.ok for r in results),
        )
    finally:
        archive.close()
    failed = [r for r in results if not r.ok]
    for result in failed:
        print(f"failed: {result.sop_instance_uid}: {result.reason}")
    for result in results:
        if result.ok and result.status != 0:
            print(
                f"warning: {result.sop_instance_uid}: status 0x{result.status:04X} {result.reason}".rstrip()
            )
    transcoded = sum(1 for r in results if r.ok and r.transcoded)
    sent = len(results) - len(failed)
    print(
        f"sent {sent} of {len(results)} instances to {node.describe()}: "
        f"{sent - transcoded} in their stored transfer syntax, {transcoded} transcoded, "
        f"{len(failed)} failed"
    )
    return EXIT_PROBLEMS if failed else EXIT_OK


def _identifier_or_usage(args: argparse.Namespace, command: str) -> Any:
    from dicom_nodes import scu

    try:
        return scu.build_identifier(args.level, args.keys, args.model)
    except ValueError as exc:
        print(f"pacs {command}: {exc}", file=sys.stderr)
        return None


def _query(settings: Settings, args: argparse.Namespace) -> int:
    from dicom_nodes import scu

    identifier = _identifier_or_usage(args, "query")
    if identifier is None:
        return EXIT_USAGE
    archive = open_archive(settings, upgrade_schema=False)
    try:
        node = _peer(archive, args.node, "query")
    finally:
        archive.close()
    if node is None:
        return EXIT_USAGE
    matches = scu.find(settings, node, identifier, args.model)
    for match in matches:
        print(scu.describe_match(match))
    print(f"{len(matches)} match{'es' if len(matches) != 1 else ''} from {node.describe()}", file=sys.stderr)
    return EXIT_OK


def _retrieve(settings: Settings, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dicom_nodes import scu

    if _identifier_or_usage(args, "retrieve") is None:
        return EXIT_USAGE
    archive = open_archive(settings, upgrade_schema=False)
    try:
        node = _peer(archive, args.node, "retrieve")
        if node is None:
            return EXIT_USAGE
        identifiers = scu.retrieve_identifiers(settings, node, args.level, args.keys, args.model)
        if not identifiers:
            print(f"nothing on {node.describe()} matches; nothing retrieved")
            return EXIT_OK
        with tqdm(desc=f"retrieving from {node.ae_title}", unit=" inst", file=sys.stderr) as bar:

            def progress(done: int, total: int | None) -> None:
                if total is not None and bar.total != total:
                    bar.total = total
                bar.n = done
                bar.refresh()

            if args.via == "get":
                report = scu.get(archive, node, identifiers, args.model, progress)
            else:
                report = scu.move(settings, node, identifiers, args.model, progress=progress)
        _audit_cli_event(
            archive,
            "store",
            {
                "node": node.ae_title,
                "via": f"c-{args.via}",
                "failed": report.failed,
                "errors": report.errors[:20],
            },
            failed=bool(report.failed or report.errors),
        )
    finally:
        archive.close()
    for error in report.errors:
        print(f"error: {error}")
    for uid, reason in report.refused:
        print(f"failed: {uid}: {reason}")
    refused = {uid for uid, _ in report.refused}
    for uid in report.failed_uids:
        if uid not in refused:
            print(f"failed: {uid}: the node reported the sub-operation failed")
    failed = max(report.failed, len(report.refused))
    if args.via == "get" and report.failed > len(report.refused):
        print(
            "hint: C-GET offers to receive only the SOP classes DICONDE devices produce "
            "(docs/conformance.md); --via move has no such limit"
        )
    if args.via == "get":
        outcomes = report.outcomes
        received = sum(outcomes.values())
        print(
            f"retrieved {received} instances from {node.describe()} by C-GET: "
            f"{outcomes['stored']} stored, {outcomes['already present']} already present, "
            f"{outcomes['new version']} new versions, {failed} failed"
        )
    else:
        print(
            f"moved {report.completed + report.warning} instances from {node.describe()} to "
            f"{settings.ae_title} by C-MOVE: {report.completed} completed, {report.warning} with warnings, "
            f"{failed} failed"
        )
    return EXIT_OK if report.ok else EXIT_PROBLEMS


# -- config -----------------------------------------------------------------------------------------
def _show_config(settings: Settings, args: argparse.Namespace) -> int:
    from pacs.index.database import redact_url
    from storage.url import redact

    for name, value in settings.model_dump().items():
        if name == "database_url":
            value = redact_url(str(value))
        elif name == "object_store":
            value = redact(str(value))
        print(f"{name} = {value}")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
