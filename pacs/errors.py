"""One exception tree for the archive, mapped to DIMSE statuses in ``dicom_nodes`` and to HTTP in ``api``.

::

    PacsError
    ├── InvalidObject          the data cannot be understood       C-STORE 0xC000   HTTP 400
    │   └── ObjectMismatch     understood, but not what it claims  C-STORE 0xA900   HTTP 409
    ├── ResourceUnavailable    storage or index failed             C-STORE 0xA700   HTTP 503
    └── NotFound               no such instance / version / object                  HTTP 404

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


class ResourceUnavailable(PacsError):
    """Storage or index failed; the operation may succeed later. Nothing partial was kept."""


class NotFound(PacsError):
    """The requested instance, version or object does not exist."""
