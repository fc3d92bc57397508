"""One exception tree for the archive, mapped to DIMSE statuses in ``dicom_nodes`` and to HTTP in ``api``.

::

    PacsError
    ├── InvalidObject          the data cannot be understood         C-STORE 0xC000          HTTP 400
    │   └── ObjectMismatch     understood, but not what it claims    C-STORE 0xA900          HTTP 409
    ├── InvalidQuery           a query value that cannot be used     C-FIND  0xC000          HTTP 400
    │   └── QueryModelMismatch not a query of its information model  C-FIND  0xA900          HTTP 400
    ├── ResourceUnavailable    storage or index failed               C-STORE, C-FIND 0xA700  HTTP 503
    └── NotFound               no such instance / version / object                           HTTP 404

Every message names the file, tag or UID at fault, because it ends up in a log line or an error
comment that somebody will have to act on.
"""

from __future__ import annotations


class PacsError(Exception):
    """Base of every error the archive reports to a caller."""


class InvalidObject(PacsError):
    """The object is not a DICOM dataset we can parse (truncated, garbage, broken encapsulation)."""


class ObjectMismatch(InvalidObject):
    """The dataset parses but contradicts what it must be (a missing UID, a SOP class mismatch)."""


class InvalidQuery(PacsError):
    """A query key's value cannot be used: a malformed date or range, a wildcard where the value
    representation allows none, a value that is not a UID, an unknown character set.

    ``tag`` is the attribute at fault (for the response's Offending Element), when there is one.
    """

    def __init__(self, message: str, tag: int | None = None) -> None:
        super().__init__(message)
        self.tag = tag


class QueryModelMismatch(InvalidQuery):
    """The query does not fit its information model (PS3.4 C.4.1.2): a missing or unknown
    Query/Retrieve Level, a unique key of a level above missing or not a single value, a key of a
    level below the query level given a value to match."""


class ResourceUnavailable(PacsError):
    """Storage or index failed; the operation may succeed later. Nothing partial was kept."""


class NotFound(PacsError):
    """The requested instance, version or object does not exist."""
