"""Object storage (any fsspec location: ``s3://``, ``gs://``, ``az://``, ``hf://buckets/...``, ``memory://``) as a
dataset's home.

A :class:`Store` is a prefix in a filesystem, with the few operations a run needs: read and write small files,
upload and download a file, list what is there, and create a file only if it does not exist (``If-None-Match:
*`` on S3, GCS and Azure, through fsspec's ``mode="create"``). Credentials and endpoints come from where the
filesystem's own library looks (the environment, profiles, ``AWS_ENDPOINT_URL``, fsspec's configuration) or from
``storage_options``; nothing here logs, prints or writes them. Every error is one line that names the location.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OutputError, first_line, shorten
from .writer import WORK_DIR

logger = logging.getLogger(__name__)

SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
            "abfss": "adlfs", "hf": "huggingface_hub"}
# exceptions whose class name says the credentials are missing or refused (botocore, google-auth, azure-identity)
CREDENTIALS = ("NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError",
               "ClientAuthenticationError", "CredentialUnavailableError", "InvalidAccessKeyId",
               "SignatureDoesNotMatch")


class StoreError(OutputError):
    """An object-store location that cannot be used as asked: the line names it and what is wrong."""


def is_remote(location: Any) -> bool:
    """Whether ``location`` is an fsspec URL of a store (``file://`` and plain paths are local)."""
    match = SCHEME.match(str(location)) if isinstance(location, str) else None
    return bool(match) and match.group(1).lower() != "file"


def _credentials(exc: BaseException) -> bool:
    return any(type(e).__name__ in CREDENTIALS or "credential" in str(e).lower()[:200]
               for e in (exc, exc.__cause__, exc.__context__) if e is not None)


@dataclass
class Store:
    """A prefix in an fsspec filesystem."""

    url: str
    fs: Any
    root: str
    where: str = "--out"
    options: dict[str, Any] = field(default_factory=dict, repr=False)  # never shown: it may hold secrets

    def path(self, name: str = "") -> str:
        return f"{self.root}/{name}" if name else self.root

    def url_of(self, name: str = "") -> str:
        return f"{self.url}/{name}" if name else self.url

    def read_bytes(self, name: str) -> bytes | None:
        """A file's bytes, or None where there is none."""
        try:
            return self._call(self.fs.cat_file, self.path(name))
        except FileNotFoundError:
            return None

    def write_bytes(self, name: str, data: bytes, create: bool = False) -> bool:
        """Write a file whole (one PUT on object stores: never seen half-written). With ``create``, only if
        there is none: returns False where one exists."""
        try:
            self._call(self.fs.pipe_file, self.path(name), data, mode="create" if create else "overwrite")
        except FileExistsError:
            if create:
                return False
            raise
        return True

    def upload(self, local: Path, name: str) -> None:
        self._call(self.fs.put_file, str(local), self.path(name))

    def download(self, name: str, local: Path) -> None:
        """Copy a file here through a temp name, so a killed download leaves no file that looks whole."""
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.download")
        try:
            self._call(self.fs.get_file, self.path(name), str(tmp))
            tmp.replace(local)
        finally:
            tmp.unlink(missing_ok=True)

    def listing(self) -> dict[str, int]:
        """Every file under the prefix: name (relative) -> size."""
        found = self._call(self.fs.find, self.root, detail=True)
        strip = len(self.root.rstrip("/")) + 1
        return {info["name"][strip:]: int(info.get("size") or 0) for info in found.values()
                if info.get("type", "file") == "file" and info["name"].startswith(self.root.rstrip("/") + "/")}

    def size(self, name: str) -> int | None:
        try:
            return int(self._call(self.fs.info, self.path(name))["size"])
        except FileNotFoundError:
            return None

    def check_writable(self) -> None:
        """A bucket that refuses writes, found before any model loads: a probe object written and removed (the one
        object facesynth deletes in a store, its own)."""
        import uuid

        probe = f"{WORK_DIR}/probe-{uuid.uuid4().hex}"
        self.write_bytes(probe, b"")
        self.delete(probe)

    def delete(self, name: str) -> None:
        try:
            self._call(self.fs.rm_file, self.path(name))
        except FileNotFoundError:
            pass

    def _call(self, fn, *args, **kwargs):
        """One store operation; its failures as one line naming the location (missing files stay
        FileNotFoundError, an existing one in create mode FileExistsError, for the caller to decide)."""
        try:
            return fn(*args, **kwargs)
        except (FileNotFoundError, FileExistsError):
            raise
        except PermissionError as exc:
            raise StoreError(f"{self.where}: '{self.url}' refuses this ({first_line(exc)}); check the bucket's "
                             "permissions for these credentials") from None
        except Exception as exc:  # noqa: BLE001 - each library has its own errors: one line
            if _credentials(exc):
                raise StoreError(f"{self.where}: no usable credentials for '{self.url}' ({type(exc).__name__}); "
                                 "set them where the storage library looks (environment, profile, or "
                                 "storage_options); they are never printed") from None
            raise StoreError(f"{self.where}: '{self.url}': {type(exc).__name__}: {shorten(first_line(exc), 200)}") \
                from None


def open_store(url: str, storage_options: dict[str, Any] | None = None, where: str = "--out",
               must_exist: bool = False) -> Store:
    """The store at ``url``, checked to be reachable: an unknown scheme, a missing package, a bucket that does not
    exist or credentials that do not work are each one line here, before any model loads."""
    import fsspec
    from fsspec.core import split_protocol

    match = SCHEME.match(url)
    if not match:
        raise StoreError(f"{where}: '{shorten(url, 80)}' is not a URL")
    protocol = match.group(1).lower()
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except ImportError:
        package = PACKAGES.get(protocol) or fsspec.registry.known_implementations.get(protocol, {}).get("err", "")
        raise StoreError(f"{where}: '{protocol}://' needs a package that is not installed ({package or 'see fsspec'}"
                         f"); install it, e.g. pip install {PACKAGES.get(protocol, protocol + 'fs')}") from None
    except ValueError:
        known = ", ".join(sorted(p for p in ("s3", "gs", "az", "hf", "memory", "file")))
        raise StoreError(f"{where}: unknown storage scheme '{shorten(protocol, 20)}://' (known: {known}, and the "
                         "others fsspec lists)") from None
    if protocol == "hf" and url.split("://", 1)[1].startswith("buckets/") and not hub_buckets():
        import huggingface_hub

        raise StoreError(f"{where}: '{shorten(url, 80)}' is a Storage Bucket, which this huggingface_hub "
                         f"({huggingface_hub.__version__}) cannot open; pip install -U huggingface_hub")
    options = dict(storage_options or {})
    try:
        fs = cls(**options)
    except Exception as exc:  # noqa: BLE001 - a bad option: one line, without the options' values
        raise StoreError(f"{where}: cannot open '{url}' with these storage options ({type(exc).__name__})") from None
    root = cls._strip_protocol(split_protocol(url)[1] if protocol != "memory" else url).rstrip("/")
    store = Store(url.rstrip("/"), fs, root, where, options)
    _check_reachable(store, must_exist)
    return store


def hub_buckets() -> bool:
    """Whether the installed huggingface_hub's filesystem opens ``hf://buckets/...`` (newer releases do)."""
    from huggingface_hub import hf_file_system

    return hasattr(hf_file_system, "HfFileSystemResolvedBucketPath")


def _bucket(store: Store) -> str:
    """The part of the root that names the bucket: its first part, or ``buckets/NS/NAME`` (a Hugging Face Storage
    Bucket; ``datasets/NS/NAME`` a Hub repo) for ``hf://``."""
    parts = store.root.split("/")
    hub = "hf" in _protocols(store)
    return "/".join(parts[:3] if hub and parts[0] in ("buckets", "datasets", "models", "spaces") else parts[:1])


def _protocols(store: Store) -> tuple[str, ...]:
    protocol = store.fs.protocol
    return protocol if isinstance(protocol, tuple) else (protocol,)


def _check_reachable(store: Store, must_exist: bool) -> None:
    """The bucket (the URL's first part) exists and answers; with ``must_exist``, the prefix holds files."""
    bucket = _bucket(store)
    try:
        store._call(store.fs.ls, bucket if bucket != store.root or not must_exist else store.root, detail=False)
    except FileNotFoundError:
        if "memory" in _protocols(store):
            return  # memory:// has no buckets
        raise StoreError(f"{store.where}: bucket '{bucket}' of '{store.url}' does not exist (or these "
                         "credentials cannot see it); create it first") from None
    if must_exist and not store.listing():
        raise StoreError(f"{store.where}: '{store.url}' holds no files; is it the dataset's location?")
