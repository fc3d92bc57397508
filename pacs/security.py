"""Who may do what over HTTP and DICOM: roles, the permissions each grants, and API tokens.

Roles (issue: "Authentication and roles"): ``device`` stores only; ``inspector`` queries, retrieves
and views; ``auditor`` reads everything, evidence and the audit trail included, and changes
nothing; ``admin`` does everything, users and nodes included.
"""

from __future__ import annotations

import enum


class Permission(enum.StrEnum):
    STORE = "store"  # C-STORE, STOW-RS
    QUERY = "query"  # C-FIND, QIDO-RS, /api/parts
    RETRIEVE = "retrieve"  # C-MOVE, C-GET, WADO-RS / WADO-URI, rendered images
    AUDIT = "audit"  # evidence and audit trail
    ADMIN = "admin"  # users, nodes, sending to nodes, system operations


class Role(enum.StrEnum):
    DEVICE = "device"
    INSPECTOR = "inspector"
    AUDITOR = "auditor"
    ADMIN = "admin"


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.DEVICE: frozenset({Permission.STORE}),
    Role.INSPECTOR: frozenset({Permission.QUERY, Permission.RETRIEVE}),
    Role.AUDITOR: frozenset({Permission.QUERY, Permission.RETRIEVE, Permission.AUDIT}),
    Role.ADMIN: frozenset(Permission),
}


def allows(role: Role, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS[role]
