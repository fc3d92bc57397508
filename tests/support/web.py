"""The archive's HTTP face as ``pacs serve`` runs it: uvicorn on a free loopback port, in this process.

Real HTTP clients (httpx, dicomweb-client) talk to it over TCP, so streaming, headers and status
codes are what a workstation sees.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import uvicorn

from pacs.archive import Archive
from tests.support.net import free_port


@dataclass
class RunningWeb:
    base_url: str
    archive: Archive
    _tokens: dict[str, str] = field(default_factory=dict)

    @property
    def dicomweb(self) -> str:
        return f"{self.base_url}/dicom-web"

    def token(self, role: str = "admin") -> str | None:
        """A bearer token of a new user with ``role`` (one per role and server)."""
        if role not in self._tokens:
            self._tokens[role] = self.archive.users.add(f"test-{role}-{uuid.uuid4().hex[:8]}", role)
        return self._tokens[role]

    def headers(self, role: str | None = "admin") -> dict[str, str]:
        token = self.token(role) if role else None
        return {"Authorization": f"Bearer {token}"} if token else {}

    def client(self, role: str | None = "admin", **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers(role), timeout=60, **kwargs)  # type: ignore[arg-type]


@contextmanager
def running_web(archive: Archive) -> Iterator[RunningWeb]:
    from api.app import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(archive),
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            proxy_headers=False,  # as `pacs serve` with no trusted_proxies
        )
    )
    thread = threading.Thread(target=server.run, name="test-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the HTTP server did not start")
        time.sleep(0.01)
    try:
        yield RunningWeb(f"http://127.0.0.1:{port}", archive)
    finally:
        server.should_exit = True
        thread.join(10)
