"""Index versions in object storage: one URL (``s3://bucket/prefix``, ``gs://``, ``az://``, ``file://``).

Under the URL's prefix the layout is an index root's (remi/contract.py), so a version means the
same thing on both sides::

    versions/<version>/artifacts/<file>...   the model artifacts, then their manifest.json
    versions/<version>/<index files>         then versions/<version>/manifest.json, uploaded last:
                                             its presence is what makes a remote version complete
    current, previous                        one version name each, as in a local root

The client is obstore (the Rust ``object_store`` crate of the Apache Arrow project): one wheel
without Python dependencies, S3 / GCS / Azure / local folders behind one URL, the standard
``AWS_*`` variables (keys, ``AWS_REGION``, ``AWS_ENDPOINT_URL`` for MinIO and other S3-compatible
stores, the web identity token of Kubernetes service accounts), streamed and multipart transfers,
retries, and conditional puts, which move ``current`` only if nobody moved it since it was read.
Nothing here is a hand-written S3 client. The package is the ``remote`` extra; the service never
imports this module (it follows a local root that ``remi index sync`` fills).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from remi.contract import (
    CURRENT,
    MANIFEST,
    POINTER_MAX_BYTES,
    VERSION_ARTIFACTS,
    VERSIONS,
    ArtifactError,
    FileEntry,
    check_file_name,
    check_version_name,
)
from remi.errors import RemiError

if TYPE_CHECKING:
    from obstore.store import ClientConfig

log = logging.getLogger("remi.remote")

CHUNK = 4 << 20  # download chunks (bytes): streamed to disk and hashed on the way, never held whole
# One request's limit, the body included: a multi-GB index streams for minutes, while a dead
# connection still ends the request (and obstore retries it) instead of hanging a sync forever.
REQUEST_TIMEOUT = "30min"
ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")


class RemoteError(RemiError):
    """The object store refused or failed a request (credentials, network, a missing bucket)."""


class PointerMoved(RemoteError):
    """A pointer changed between our read and our write (another publisher or a rollback)."""


@dataclass(frozen=True)
class Pointer:
    """A remote pointer's version name (None: absent) and the tag a conditional write must match."""

    version: str | None
    e_tag: str | None


def _obstore() -> Any:
    try:
        import obstore
    except ModuleNotFoundError as exc:  # the service-only install without the `remote` extra
        raise RemiError(
            'object storage needs the obstore package: pip install "remi-match[remote]" (both images have it)'
        ) from exc
    return obstore


def open_store(url: str) -> Any:
    """The obstore store of ``url``; credentials, region and endpoint come from the environment (AWS_*).

    An ``http://`` endpoint (MinIO in the cluster, a test server) is allowed when
    ``AWS_ENDPOINT_URL`` names one: plain HTTP is otherwise refused by obstore.
    """
    _obstore()
    from obstore.store import from_url

    scheme = urlparse(url).scheme
    if not scheme:
        raise RemiError(f"{url!r}: not an object-store URL (s3://bucket/prefix, gs://..., az://..., file:///...)")
    try:
        if scheme in ("file", "memory"):
            return from_url(url, mkdir=True) if scheme == "file" else from_url(url)
        endpoint = next((os.environ[v] for v in ENDPOINT_VARS if os.environ.get(v)), "")
        options: ClientConfig = {"timeout": REQUEST_TIMEOUT}
        if endpoint.startswith("http://"):
            options["allow_http"] = True
        return from_url(url, client_options=options)
    except Exception as exc:  # obstore raises its own configuration errors (an unknown scheme, a bad key)
        raise RemoteError(f"{url}: cannot open the object store ({exc})") from exc


def _errors() -> tuple[type[BaseException], ...]:
    return (_obstore().exceptions.BaseError, OSError)


def _missing(exc: BaseException) -> bool:
    return isinstance(exc, FileNotFoundError | _obstore().exceptions.NotFoundError)


class Remote:
    """A published index root in object storage (see the module docstring for the layout)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.store = open_store(self.url)
        self.ob = _obstore()

    def _fail(self, what: str, key: str, exc: BaseException) -> RemoteError:
        return RemoteError(f"{self.url}/{key}: {what} failed ({str(exc).splitlines()[0][:300]})")

    # ------------------------------------------------------------------ reads
    def read_small(self, key: str, limit: int) -> bytes | None:
        """An object of at most ``limit`` bytes (a pointer, a manifest), or None when absent."""
        found = self._read_tagged(key, limit)
        return None if found is None else found[0]

    def _read_tagged(self, key: str, limit: int) -> tuple[bytes, str | None] | None:
        """The bytes and the tag of one small object, from one response (so they belong together)."""
        try:
            got = self.ob.get(self.store, key)
            size = int(got.meta["size"])
            if size > limit:
                raise ArtifactError(f"{self.url}/{key}: {size} bytes, over the {limit} such a file may hold (refused)")
            return bytes(got.bytes()), got.meta.get("e_tag")
        except _errors() as exc:
            if _missing(exc):
                return None
            raise self._fail("read", key, exc) from exc

    def download(self, key: str, dest: Path, entry: FileEntry) -> None:
        """``key`` streamed into a new file ``dest``, checked against ``entry`` (size first, then SHA-256)."""
        try:
            got = self.ob.get(self.store, key)
            size = int(got.meta["size"])
            if size != entry.bytes:
                raise ArtifactError(
                    f"{self.url}/{key}: {size} bytes, its manifest says {entry.bytes} (truncated or replaced; refused)"
                )
            digest = hashlib.sha256()
            with dest.open("xb") as out:
                for chunk in got.stream(min_chunk_size=CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
        except _errors() as exc:
            raise self._fail("download", key, exc) from exc
        if dest.stat().st_size != entry.bytes or digest.hexdigest() != entry.sha256:
            raise ArtifactError(f"{self.url}/{key}: checksum mismatch with its manifest (tampered or corrupt; refused)")

    def keys(self, prefix: str) -> list[str]:
        """Every object key under ``prefix`` (one listing, paged by the store)."""
        try:
            return [meta["path"] for batch in self.ob.list(self.store, prefix=prefix) for meta in batch]
        except _errors() as exc:
            if _missing(exc):
                return []
            raise self._fail("list", prefix, exc) from exc

    def versions(self) -> list[str]:
        """Complete remote versions (their manifest is there), oldest first (names start with a UTC time)."""
        found = set()
        for key in self.keys(f"{VERSIONS}/"):
            parts = key.split("/")
            if len(parts) == 3 and parts[2] == MANIFEST and not parts[1].startswith("."):
                found.add(parts[1])
        return sorted(found)

    def pointer(self, name: str = CURRENT) -> Pointer:
        """A pointer's version name (checked: a plain folder name) and its tag."""
        found = self._read_tagged(name, POINTER_MAX_BYTES)
        if found is None:
            return Pointer(None, None)
        version = found[0].decode("utf-8", errors="replace").strip() or None
        if version is not None:
            check_version_name(version, f"{self.url}/{name}")
        return Pointer(version, found[1])

    # ------------------------------------------------------------------ writes
    def upload(self, key: str, src: Path) -> None:
        try:
            self.ob.put(self.store, key, src)
        except _errors() as exc:
            raise self._fail("upload", key, exc) from exc

    def write_pointer(self, name: str, version: str, expected: Pointer) -> None:
        """Writes ``version`` to pointer ``name`` only if it still is ``expected`` (a conditional put).

        A store without conditional puts (some S3-compatible servers, local folders) gets a plain
        put, logged: two writers racing there can lose one write, never half of one.
        """
        check_version_name(version, f"{self.url}/{name}")
        body = (version + "\n").encode()
        mode: Any = {"e_tag": expected.e_tag} if expected.e_tag else "create"
        try:
            self.ob.put(self.store, name, body, mode=mode)
            return
        except (self.ob.exceptions.PreconditionError, self.ob.exceptions.AlreadyExistsError) as exc:
            raise PointerMoved(
                f"{self.url}/{name}: moved by another writer while this one ran (was {expected.version}); "
                "nothing changed: run it again"
            ) from exc
        except (self.ob.exceptions.NotSupportedError, NotImplementedError) as exc:
            log.warning(
                "no conditional put on this store: plain put", extra={"url": self.url, "error": str(exc).split("\n")[0]}
            )
        except _errors() as exc:
            raise self._fail("write", name, exc) from exc
        try:
            self.ob.put(self.store, name, body)
        except _errors() as exc:
            raise self._fail("write", name, exc) from exc

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:  # one by one: local folders have no batch delete, and versions hold a few files
            try:
                self.ob.delete(self.store, key)
            except _errors() as exc:
                if not _missing(exc):
                    raise self._fail("delete", key, exc) from exc


def version_key(version: str, name: str = MANIFEST, artifacts: bool = False) -> str:
    """The key of one file of a version (names checked: plain names only, as in a local root)."""
    check_version_name(version, VERSIONS)
    check_file_name(name, f"{VERSIONS}/{version}")
    return f"{VERSIONS}/{version}/{VERSION_ARTIFACTS}/{name}" if artifacts else f"{VERSIONS}/{version}/{name}"
