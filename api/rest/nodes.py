"""REST: DICOM nodes: list, add, remove, echo, send (admin only).

The registry is the one ``pacs nodes`` manages (``Archive.nodes``); C-ECHO and C-STORE go through
``Archive.peers`` (:mod:`pacs.peers`), which the composition root fills where the DIMSE face runs,
so this module never imports ``dicom_nodes``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, Field

from api.auth import require
from api.deps import archive_of
from api.rest.errors import http_error
from pacs.archive import Archive
from pacs.config import validate_ae_title
from pacs.context import CallerContext
from pacs.errors import PacsError
from pacs.index.nodes import Node, NodeExists
from pacs.peers import DicomPeers
from pacs.security import Permission

router = APIRouter(tags=["nodes"])

Admin = Annotated[CallerContext, Depends(require(Permission.ADMIN))]
MAX_SEND_UIDS = 1000


class NodeBody(BaseModel):
    ae_title: str = Field(description="the node's AE title: 1 to 16 printable ASCII characters, no backslash")
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    tls: bool = False
    description: str | None = Field(None, max_length=1024)


class NodeAdd(NodeBody):
    replace: bool = Field(False, description="replace a node registered under the same AE title")


class EchoResponse(BaseModel):
    ae_title: str
    ok: bool
    status: int | None = Field(description="C-ECHO response status; null without an association or answer")
    reason: str = Field(description="why it failed; empty on success")
    milliseconds: float = Field(description="association, C-ECHO and release")


class SendRequest(BaseModel):
    uids: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        min_length=1,
        max_length=MAX_SEND_UIDS,
        description="Study, Series or SOP Instance UIDs; every instance they name is sent",
    )


class SendResult(BaseModel):
    sop_instance_uid: str
    ok: bool = Field(description="the peer answered success or a warning")
    status: int | None = Field(description="the peer's C-STORE status; null when never answered")
    transfer_syntax_uid: str | None = Field(description="the transfer syntax it was sent in")
    transcoded: bool
    reason: str


class SendResponse(BaseModel):
    ae_title: str
    sent: int
    failed: int
    results: list[SendResult]


def _node(body: NodeBody | Node) -> NodeBody:
    return NodeBody(
        ae_title=body.ae_title, host=body.host, port=body.port, tls=body.tls, description=body.description
    )


def _registered(archive: Archive, ae_title: str) -> Node:
    found = archive.nodes.get(ae_title)
    if found is None:
        raise HTTPException(404, f"no node with AE title {ae_title!r}")
    return found


def _peers(archive: Archive) -> DicomPeers:
    if archive.peers is None:
        raise HTTPException(503, "this server process runs no DICOM client (start it with `pacs serve`)")
    return archive.peers


@router.get("/nodes", summary="List the registered DICOM nodes", response_model=list[NodeBody])
def list_nodes(request: Request, caller: Admin) -> list[NodeBody]:
    try:
        return [_node(n) for n in archive_of(request).nodes.all()]
    except PacsError as exc:
        raise http_error(exc) from exc


@router.post(
    "/nodes",
    summary="Register a DICOM node",
    status_code=201,
    response_model=NodeBody,
    responses={
        409: {"description": "a node with this AE title exists (send replace: true to replace it)"},
        400: {"description": "invalid AE title or host"},
        422: {"description": "a field missing or of the wrong type, port out of range"},
    },
)
def add_node(request: Request, response: Response, body: NodeAdd, caller: Admin) -> NodeBody:
    """C-MOVE destinations, storage commitment report targets and peers of ``send`` must be registered."""
    try:
        title = validate_ae_title(body.ae_title, "ae_title")
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    host = body.host.strip()
    if not host or any(c.isspace() or not c.isprintable() for c in host):
        raise HTTPException(400, f"host {body.host!r} must be a host name or an IP address, without spaces")
    node = Node(title, host, body.port, body.tls, body.description)
    try:
        archive_of(request).nodes.add(node, replace=body.replace)
    except NodeExists as exc:
        raise HTTPException(409, str(exc)) from exc
    except PacsError as exc:
        raise http_error(exc) from exc
    response.headers["Location"] = f"{request.url.path.rstrip('/')}/{node.ae_title}"
    return _node(node)


@router.delete(
    "/nodes/{ae_title}",
    summary="Remove a registered DICOM node",
    status_code=204,
    response_class=Response,
    responses={404: {"description": "no node with this AE title"}},
)
def remove_node(request: Request, ae_title: str, caller: Admin) -> Response:
    try:
        archive_of(request).nodes.remove(ae_title)
    except PacsError as exc:
        raise http_error(exc) from exc
    return Response(status_code=204)


@router.post(
    "/nodes/{ae_title}/echo",
    summary="C-ECHO a registered node",
    response_model=EchoResponse,
    responses={404: {"description": "no node with this AE title"}, 503: {"description": "no DICOM client"}},
)
def echo_node(request: Request, ae_title: str, caller: Admin) -> EchoResponse:
    """200 with ``ok: false`` and the reason when the node cannot be reached or refuses."""
    archive = archive_of(request)
    try:
        node = _registered(archive, ae_title)
        result = _peers(archive).echo(node)
    except PacsError as exc:
        raise http_error(exc) from exc
    return EchoResponse(
        ae_title=node.ae_title,
        ok=result.ok,
        status=result.status,
        reason=result.reason,
        milliseconds=round(result.seconds * 1000, 1),
    )


@router.post(
    "/nodes/{ae_title}/send",
    summary="Send stored studies, series or instances to a registered node (C-STORE)",
    response_model=SendResponse,
    responses={
        404: {"description": "no such node, or a UID that names nothing in the archive"},
        503: {"description": "the node cannot be reached (nothing was sent), or no DICOM client"},
    },
)
def send_to_node(request: Request, ae_title: str, body: SendRequest, caller: Admin) -> SendResponse:
    """Stored bytes are sent untouched when the node accepts their transfer syntax, else converted
    losslessly; one result per instance. Returns when the last instance is answered."""
    archive = archive_of(request)
    try:
        node = _registered(archive, ae_title)
        peers = _peers(archive)
        items, unknown = archive.retrieve.resolve_uids(body.uids)
        if unknown:
            raise HTTPException(404, f"not in the archive: {', '.join(unknown)}")
        if not items:
            raise HTTPException(404, "the UIDs name no instance")
        results = peers.send(node, items)
    except PacsError as exc:
        raise http_error(exc) from exc
    sent = sum(1 for r in results if r.ok)
    return SendResponse(
        ae_title=node.ae_title,
        sent=sent,
        failed=len(results) - sent,
        results=[
            SendResult(
                sop_instance_uid=r.sop_instance_uid,
                ok=r.ok,
                status=r.status,
                transfer_syntax_uid=r.transfer_syntax_uid,
                transcoded=r.transcoded,
                reason=r.reason,
            )
            for r in results
        ],
    )
