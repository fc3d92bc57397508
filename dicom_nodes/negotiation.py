"""Presentation context negotiation that keeps the sender's encoding.

PS3.8 leaves the choice among the transfer syntaxes proposed for a context to the acceptor.
pynetdicom takes, per context, the first of *the acceptor's* syntaxes that the sender proposed,
and keeps one list per SOP class. An archive must instead take the sender's first supported
choice in *each* context: a device proposing [RLE, Explicit VR LE] for an RLE original and
[Explicit VR LE] for another context of the same SOP class must get RLE in the first, or it would
decompress the original in flight.

:func:`negotiate_in_sender_order` runs pynetdicom's own negotiation once per requested context,
against our context for that SOP class with its transfer syntaxes listed in the order the sender
proposed them for that context; roles, rejections and result codes stay pynetdicom's (a supported
SOP class with no supported syntax is rejected with 0x04, an unknown one with 0x03).

pynetdicom 3.0 calls ``pynetdicom.acse.negotiate_as_acceptor``; :func:`install` replaces that
name for the process (the dependency is pinned; ``tests/integration/test_dcmtk_store.py`` checks
the order with real senders).

A refused context does not refuse the association: a device whose SOP class or transfer syntaxes
the archive lacks associates, then has nothing it may send, and pynetdicom says nothing about it.
:func:`log_refused_contexts` (bound to ``EVT_ACCEPTED``) logs one warning per such association
naming the peer, each refused abstract syntax and why, the operator's only clue why its images
never arrive.
"""

from __future__ import annotations

import logging
from typing import Any

import pynetdicom.acse
from pydicom.uid import UID, ImplicitVRLittleEndian
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

log = logging.getLogger(__name__)
_original = negotiate_as_acceptor
_NO_ABSTRACT_SYNTAX = "2.25.0"  # stands for a missing abstract syntax in the reply

# Presentation context results of refused contexts, PS3.8 Table 9-18.
_USER_REJECTION = 0x01  # pynetdicom: no SCU/SCP role both sides can take
_PROVIDER_REJECTION = 0x02  # _rejected(): a malformed item
_TRANSFER_SYNTAXES_NOT_SUPPORTED = 0x04


def negotiate_in_sender_order(
    rq_contexts: list[PresentationContext], ac_contexts: list[PresentationContext], roles: Any = None
) -> tuple[list[PresentationContext], list[Any]]:
    supported = {str(cx.abstract_syntax): cx for cx in ac_contexts}
    results: list[PresentationContext] = []
    reply_roles: dict[str, Any] = {}
    for requested in rq_contexts:
        ours = supported.get(str(requested.abstract_syntax))
        offer = [] if ours is None else [_in_sender_order(ours, requested)]
        try:
            accepted, role_items = _original([requested], offer, roles)
        except (TypeError, ValueError, IndexError) as exc:
            # An item without its abstract or transfer syntax sub-items (PS3.8 9.3.2.2): raised
            # here, it would end the association's thread and leave the connection open.
            log.warning("rejecting malformed presentation context %s: %s", requested.context_id, exc)
            results.append(_rejected(requested))
            continue
        results.extend(accepted)
        for item in role_items:
            reply_roles[str(item.sop_class_uid)] = item
    results.sort(key=lambda cx: cx.context_id or 0)
    return results, [reply_roles[uid] for uid in sorted(reply_roles)]


def _rejected(requested: PresentationContext) -> PresentationContext:
    context = PresentationContext()
    context.context_id = requested.context_id
    context.abstract_syntax = requested.abstract_syntax or _NO_ABSTRACT_SYNTAX
    context.transfer_syntax = [ImplicitVRLittleEndian]  # present in the reply, its value ignored
    context.result = _PROVIDER_REJECTION  # no reason given
    return context


def _in_sender_order(ours: PresentationContext, requested: PresentationContext) -> PresentationContext:
    offered = [str(ts) for ts in requested.transfer_syntax]
    supported = [str(ts) for ts in ours.transfer_syntax]
    ranked = [ts for ts in offered if ts in supported]
    context = PresentationContext()
    context.abstract_syntax = ours.abstract_syntax
    # No overlap: offer ours unchanged, so pynetdicom rejects with "transfer syntaxes not supported".
    context.transfer_syntax = ranked or supported  # type: ignore[assignment]
    context.scu_role = ours.scu_role
    context.scp_role = ours.scp_role
    return context


def log_refused_contexts(event: Event) -> None:
    """``EVT_ACCEPTED``: one line for an association accepted with refused contexts, none when
    every context was accepted. A warning when a refused SOP class was accepted in no other
    context (the peer cannot send it at all), else at INFO: senders often offer one class in
    several contexts, one per encoding, and one of them is enough. A SOP class proposed in several
    refused contexts is named once per reason."""
    assoc = event.assoc
    refused = assoc.rejected_contexts
    if not refused:
        return
    proposed = {cx.context_id: cx.transfer_syntax for cx in assoc.requestor.requested_contexts}
    reasons = dict.fromkeys(_why(cx, proposed.get(cx.context_id, [])) for cx in refused)
    accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    lost = any(str(cx.abstract_syntax) not in accepted for cx in refused)
    log.log(
        logging.WARNING if lost else logging.INFO,
        "association from %s@%s accepted with %d of %d presentation contexts refused; %s",
        (assoc.requestor.ae_title or "").strip(),
        assoc.requestor.address,
        len(refused),
        len(refused) + len(assoc.accepted_contexts),
        "; ".join(reasons),
    )


def _why(context: PresentationContext, offered: list[UID]) -> str:
    if context.result == _PROVIDER_REJECTION:  # its abstract syntax may be missing: name the context
        return f"context {context.context_id}: malformed"
    sop_class = _named(str(context.abstract_syntax))
    if context.result == _TRANSFER_SYNTAXES_NOT_SUPPORTED:
        return f"{sop_class}: no acceptable transfer syntax among {', '.join(_named(ts) for ts in offered)}"
    if context.result == _USER_REJECTION:
        return f"{sop_class}: no SCU/SCP role the archive can take"
    return f"{sop_class}: abstract syntax not supported"


def _named(uid: str) -> str:
    """``uid`` with its pydicom name, when pydicom knows one."""
    name = UID(uid).name
    return f"{uid} ({name})" if name != uid else uid


def install() -> None:
    pynetdicom.acse.negotiate_as_acceptor = negotiate_in_sender_order  # type: ignore[assignment]


def uninstall() -> None:
    pynetdicom.acse.negotiate_as_acceptor = _original  # type: ignore[assignment]
