"""Open an object store from its URL.

* ``file://PATH`` — a folder (``file:///var/lib/pacs/objects`` or ``file://./pacs-data/objects``)
* ``s3://ACCESS:SECRET@HOST:PORT/BUCKET?secure=false&region=us-east-1`` — an S3-compatible bucket;
  ``secure`` defaults to true (HTTPS). Access and secret key may be percent-encoded.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from storage.base import ObjectStore
from storage.filesystem import FilesystemStore
from storage.s3 import S3Store


class StoreURLError(ValueError):
    """The object store URL cannot be understood."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def open_store(url: str, *, staging_dir: Path | None = None) -> ObjectStore:
    """``staging_dir``: local folder for objects on their way to a remote store (S3)."""
    if url.startswith("file://"):
        path = url[len("file://") :]
        if not path:
            raise StoreURLError("file:// URL needs a path, e.g. file:///var/lib/pacs/objects")
        return FilesystemStore(Path(path))
    if url.startswith("s3://"):
        return _open_s3(url, staging_dir)
    raise StoreURLError(f"unsupported object store URL {redact(url)!r}: use file://PATH or s3://...")


def _open_s3(url: str, staging_dir: Path | None) -> S3Store:
    parts = urlsplit(url)
    if not parts.hostname:
        raise StoreURLError(f"S3 URL {redact(url)!r} has no host")
    bucket = parts.path.strip("/")
    if not bucket or "/" in bucket:
        raise StoreURLError(
            f"S3 URL {redact(url)!r} must name exactly one bucket: s3://KEY:SECRET@HOST:PORT/BUCKET"
        )
    if parts.username is None or parts.password is None:
        raise StoreURLError(f"S3 URL {redact(url)!r} needs credentials: s3://ACCESS:SECRET@HOST:PORT/BUCKET")
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = set(query) - {"secure", "region"}
    if unknown:
        raise StoreURLError(f"S3 URL has unknown parameters: {', '.join(sorted(unknown))}")
    secure_text = query.get("secure", "true").lower()
    if secure_text not in _TRUE | _FALSE:
        raise StoreURLError(f"S3 URL parameter secure={secure_text!r} is not a boolean")
    endpoint = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    try:
        return S3Store(
            endpoint,
            unquote(parts.username),
            unquote(parts.password),
            bucket,
            secure=secure_text in _TRUE,
            region=query.get("region"),
            staging_dir=staging_dir,
        )
    except ValueError as exc:  # the minio SDK's verdict on a bucket name or endpoint
        raise StoreURLError(f"S3 URL {redact(url)!r}: {exc}") from exc


def redact(url: str) -> str:
    """The URL without its secret, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()
