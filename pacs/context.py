"""Who is calling: carried from the faces into the services, and recorded with what they do."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CallerContext:
    """The origin of a request.

    ``via`` names the path in (``c-store``, ``import``, ``stow``); ``ae_title`` and ``address`` are
    the DICOM peer's, ``user`` is the authenticated or local user where there is one.
    """

    via: str
    ae_title: str | None = None
    address: str | None = None
    user: str | None = None

    def describe(self) -> str:
        who = self.ae_title or self.user or "unknown"
        return f"{who}@{self.address}" if self.address else who


def host_port(host: str, port: int) -> str:
    """A peer's ``address`` as the archive records it: ``host:port``, an IPv6 address in brackets
    (``[::1]:40000``, RFC 3986 3.2.2) so that its colons and the port's stay apart."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def host_of(address: str) -> str:
    """The host of an ``address`` made by :func:`host_port`, without brackets."""
    host = address.rsplit(":", 1)[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host
