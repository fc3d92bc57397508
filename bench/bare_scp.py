"""The Python ceiling for C-STORE: a pynetdicom SCP that only moves each received dataset into a folder.

No hash, no parse, no index, no fsync. It negotiates exactly as the archive does (same maximum PDU
size, same presentation contexts, same timeouts) and receives the same way (pynetdicom's chunked
receive into a file, whole-PDU socket reads, event-driven loops and the one-pass C-STORE response
of ``dicom_nodes.store_service``, all installed by ``dicom_nodes.transport.RequestHandler``;
pynetdicom's per-PDU log handlers off), so the gap between it and ``pacs serve`` is what the
archive's own work costs. Its data set PDUs go through pynetdicom's own decoding: the archive's
shortcut (``dicom_nodes/pdata.py``) writes only into the archive's spool files, so this stays the
ceiling of pynetdicom's receive. ``--stock-transport`` uses pynetdicom's own socket reads and log
handlers instead, to show what those changes are worth.
The handler renames pynetdicom's temporary file into place; the temporary folder is on the same
filesystem as the output, so that is a rename, not a copy.

Run: ``python bench/bare_scp.py --output-dir D [--host 127.0.0.1] [--port 0]``; it prints one line,
``bare SCP ready on HOST:PORT``, once it listens, and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import cast

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.transport import RequestHandler as StockRequestHandler
from pynetdicom.transport import ThreadedAssociationServer

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from dicom_nodes.server import UNCOMPRESSED, storage_sop_classes  # noqa: E402
from dicom_nodes.transport import RequestHandler, quiet_logging  # noqa: E402
from pacs.config import Settings, load_settings  # noqa: E402
from pacs.diconde.encodings import STORED_TRANSFER_SYNTAXES  # noqa: E402

VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"


def handle_store(event: Event, output_dir: Path) -> Dataset:
    """Move the received Part 10 file into place: the least work that still keeps the data."""
    uid = str(cast(C_STORE, event.request).AffectedSOPInstanceUID)
    os.replace(event.dataset_path, output_dir / f"{uid}.dcm")
    status = Dataset()
    status.Status = 0x0000
    return status


def make_ae(settings: Settings) -> AE:
    """An AE negotiating like ``dicom_nodes.server.DicomNode``."""
    ae = AE("BARE_SCP")
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    ae.maximum_associations = settings.max_associations
    # The archive takes the sender's first choice (storescu -xe: explicit VR little endian); pynetdicom
    # takes the acceptor's first, so list that one first to receive the same bytes the same way.
    syntaxes = [EXPLICIT_VR_LE] + [ts for ts in STORED_TRANSFER_SYNTAXES if ts != EXPLICIT_VR_LE]
    for uid in storage_sop_classes():
        ae.add_supported_context(uid, syntaxes)
    ae.add_supported_context(VERIFICATION, list(UNCOMPRESSED))
    return ae


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = a free port, printed when ready")
    parser.add_argument("--stock-transport", action="store_true", help="pynetdicom's own 4 KiB socket reads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    output_dir: Path = args.output_dir.resolve()
    spool = output_dir / ".incoming"
    spool.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(spool)  # pynetdicom's NamedTemporaryFile lands next to the output: a rename
    _config.STORE_RECV_CHUNKED_DATASET = True

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # taken by sigwait below
    if not args.stock_transport:
        quiet_logging()  # as the archive: pynetdicom's per-PDU log handlers off (before the server)
    ae = make_ae(load_settings())  # the defaults: the bench starts us with no PACS_* variables
    server = ThreadedAssociationServer(
        ae,
        (args.host, args.port),
        ae.ae_title,
        ae.supported_contexts,
        evt_handlers=[(evt.EVT_C_STORE, handle_store, [output_dir])],
        request_handler=StockRequestHandler if args.stock_transport else RequestHandler,
    )
    ae._servers.append(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    print(f"bare SCP ready on {host}:{port}", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
