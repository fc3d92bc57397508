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
