"""Objects in an S3-compatible bucket (MinIO in production), through the ``minio`` SDK.

A put returns after the upload completed (single PUT, or multipart for objects above
``part_size``), which is S3's point of durability. S3 has no portable "create only if absent",
so :meth:`S3Store.put_file` checks for the key right before it uploads; an object written through
:meth:`S3Store.create` is checked the same way at its commit, not also when it is started (one
request per C-STORE less). Keys are random 128-bit values made by the archive; the check guards
against a bug reusing one rather than against a race.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, BinaryIO, cast

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from storage.base import (
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    StorageError,
    os_error,
    remove_files,
    stale_files,
)

_MISSING = {"NoSuchKey", "NoSuchObject", "ResourceNotFound"}
DEFAULT_PART_SIZE = 16 * 1024 * 1024  # minio reads a part into memory, up to 3 in parallel


class _Body(io.RawIOBase):
    """A streamed GET body as a raw binary file; closing returns the connection to the pool."""

    def __init__(self, response: Any) -> None:
        super().__init__()
        self._response = response

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._response.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            self._response.close()
            self._response.release_conn()
        super().close()


class S3ObjectWriter:
    """Spools the object to a local file; :meth:`commit` uploads it (multipart when large)."""

    def __init__(self, store: S3Store, key: str, staging: Path) -> None:
        self.key = key
        self._store = store
        try:
            fd, name = tempfile.mkstemp(dir=staging, prefix="s3-", suffix=".part")
        except OSError as exc:
            raise os_error(exc, f"spooling object {key!r} in {staging}") from exc
        self.path = Path(name)
        self._file: BinaryIO | None = os.fdopen(fd, "wb", buffering=0)
        self._committed = False
        self._finished = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._file is None or self._finished:
            raise StorageError(f"object {self.key!r} is closed for writing")
        try:
            self._file.write(data)
        except OSError as exc:  # the spool's disk is full, say
            raise os_error(exc, f"spooling object {self.key!r} in {self.path.parent}") from exc
        return len(data)

    def finish(self) -> None:
        """Nothing to start early: the upload is the commit, and a rejected object is never sent."""
        self._finished = True

    def commit(self) -> None:
        if self._file is None:
            raise StorageError(f"object {self.key!r} was already committed or aborted")
        try:
            self._file.close()
        except OSError as exc:
            raise os_error(exc, f"spooling object {self.key!r} in {self.path.parent}") from exc
        finally:
            self._file = None
        try:
            self._store.put_file(self.key, self.path)
        finally:
            self.path.unlink(missing_ok=True)
        self._committed = True

    def abort(self) -> None:
        if self._committed:
            return
        if self._file is not None:
            self._file.close()
            self._file = None
        self.path.unlink(missing_ok=True)


class S3Store:
    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = True,
        region: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        create_bucket: bool = True,
        staging_dir: Path | None = None,
    ) -> None:
        self.bucket = bucket
        self.endpoint = endpoint
        self.staging_dir = Path(staging_dir or tempfile.gettempdir())
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self.part_size = part_size
        scheme = "https" if secure else "http"
        self.location = f"s3://{endpoint}/{bucket} ({scheme})"
        http = urllib3.PoolManager(
            maxsize=32,
            timeout=urllib3.Timeout(connect=10, read=300),
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=http,
        )
        if create_bucket:
            try:
                if not self._client.bucket_exists(bucket):
                    self._client.make_bucket(bucket)
            except S3Error as exc:
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise StorageError(f"cannot use bucket {bucket!r} at {endpoint}: {exc}") from exc
            except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
                raise self._failed(exc, f"opening bucket {bucket!r}") from exc

    def create(self, key: str, *, background: Executor | None = None) -> S3ObjectWriter:
        """The key is checked at commit (see the module docstring)."""
        return S3ObjectWriter(self, key, self.staging_dir)

    def put_file(self, key: str, path: Path) -> None:
        if self._exists(key):
            raise ObjectExists(key)
        try:
            self._client.fput_object(
                self.bucket,
                key,
                str(path),
                part_size=self.part_size,
                num_parallel_uploads=2,
            )
        except (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise self._failed(exc, f"uploading object {key!r}") from exc

    def _exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ObjectNotFound:
            return False
        return True

    def open(self, key: str) -> BinaryIO:
        return cast(BinaryIO, io.BufferedReader(_Body(self._get(key)), 1 << 20))

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        if length == 0:
            return b""
        try:
            response = self._get(key, offset=offset, length=length)
        except StorageError as exc:
            # A range that starts at or past the end is not an error for this contract.
            if "InvalidRange" in str(exc):
                return b""
            raise
        try:
            return cast(bytes, response.read())
        finally:
            response.close()
            response.release_conn()

    def _get(self, key: str, offset: int = 0, length: int = 0) -> Any:
        try:
            return self._client.get_object(self.bucket, key, offset=offset, length=length)
        except S3Error as exc:
            if exc.code in _MISSING:
                raise ObjectNotFound(key) from None
            raise self._failed(exc, f"reading object {key!r}") from exc
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._failed(exc, f"reading object {key!r}") from exc

    def stat(self, key: str) -> ObjectInfo:
        try:
            st = self._client.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in _MISSING:
                raise ObjectNotFound(key) from None
            raise self._failed(exc, f"looking up object {key!r}") from exc
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._failed(exc, f"looking up object {key!r}") from exc
        return ObjectInfo(key, int(st.size or 0), _utc(st.last_modified))

    def delete(self, key: str) -> None:
        try:
            self._client.remove_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in _MISSING:
                return
            raise self._failed(exc, f"deleting object {key!r}") from exc
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._failed(exc, f"deleting object {key!r}") from exc

    def iter_objects(self) -> Iterator[ObjectInfo]:
        try:
            for obj in self._client.list_objects(self.bucket, recursive=True):
                if obj.object_name and not obj.is_dir:
                    yield ObjectInfo(obj.object_name, int(obj.size or 0), _utc(obj.last_modified))
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._failed(exc, f"listing bucket {self.bucket!r}") from exc

    def stale_staging(self, older_than: float) -> list[ObjectInfo]:
        return stale_files(self.staging_dir.glob("s3-*.part"), older_than)

    def sweep_staging(self, older_than: float) -> int:
        return remove_files(self.staging_dir, self.stale_staging(older_than))

    def check(self) -> None:
        try:
            if not self._client.bucket_exists(self.bucket):
                raise StorageError(f"bucket {self.bucket!r} does not exist")
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._failed(exc, f"checking bucket {self.bucket!r}") from exc

    def close(self) -> None:
        self._client._http.clear()

    def _failed(self, exc: Exception, doing: str) -> StorageError:
        """The error for a failed request, the reason first: "S3 unreachable (Connection refused) at
        HOST:PORT: uploading object 'ab…'" (callers may keep only a message's first 64 characters)."""
        if isinstance(exc, S3Error):
            return StorageError(f"S3 error {exc.code} ({exc.message}) at {self.endpoint}: {doing}")
        if isinstance(exc, MinioException | ValueError):  # e.g. HTTP 5xx without an S3 error document
            return StorageError(f"S3 failed ({_first_line(exc)}) at {self.endpoint}: {doing}")
        return StorageError(f"S3 unreachable ({_cause(exc)}) at {self.endpoint}: {doing}")


def _cause(exc: BaseException) -> str:
    """What went wrong with a connection, in a few words ("Connection refused", "Read timed out")."""
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    text = _first_line(exc)
    # "HTTPConnection(…): Failed to establish a new connection: [Errno 111] Connection refused"
    if "[Errno" in text:
        return text.rsplit("] ", 1)[-1].rstrip("')\"")
    if "timed out" in text:
        return "Read timed out" if "Read timed out" in text else "timed out"
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return "connection lost"
    return text.rsplit(": ", 1)[-1][:80] or type(exc).__name__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _utc(value: dt.datetime | None) -> dt.datetime:
    if value is None:
        return dt.datetime.now(dt.UTC)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
