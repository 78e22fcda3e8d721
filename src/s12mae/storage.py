"""Locations that are URLs or local paths: the one helper for object storage (design note 16).

Every place where a user passes a location (a dataset, a shard set, a run folder, a COG asset)
may give a local path or a URL: ``s3://bucket/key``, ``gs://bucket/key``, ``https://host/path``
(read only) or ``file://``. This module resolves them at the edges with fsspec; code that works on
local files keeps :class:`pathlib.Path`. Rasterio reads remote COGs through GDAL's virtual file
systems (``/vsis3/``, ``/vsigs/``, ``/vsicurl/``), which fetch only the byte ranges a windowed
read needs: :func:`open_raster` sets that up.

Credentials come from the usual places and are never printed: for S3 the environment
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``), ``AWS_PROFILE`` and
``~/.aws``, instance roles; ``AWS_NO_SIGN_REQUEST=YES`` for public buckets,
``AWS_REQUEST_PAYER=requester`` for requester-pays buckets (Earth Search's ``s3://`` assets), and
``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` for an S3-compatible endpoint (MinIO, Ceph, a local
test server; boto3's names, translated here for GDAL into ``AWS_S3_ENDPOINT``, ``AWS_HTTPS`` and
``AWS_VIRTUAL_HOSTING=FALSE``). For Google Cloud Storage: ``GOOGLE_APPLICATION_CREDENTIALS`` or
the gcloud default credentials. Every error raised here is a :class:`StorageError` whose message
has gone through :func:`redact` (no query strings, signatures, user info or credential values).

Atomic writes: on object stores (``s3``, ``gs``, ``az``) :func:`write_bytes` and
:func:`atomic_open` write the final key directly, because the service publishes an object only
when its upload completes (one PUT, or the completion of a multipart upload): a reader never
sees half an object. An interrupted streamed write is discarded (the multipart upload is
aborted), never completed. Other fsspec file systems write a temporary name beside the target and
move it into place; local paths use :mod:`s12mae.files`. A *set* of objects is not atomic: write
its marker (a manifest) last, as :func:`upload_folder` does.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from s12mae.files import TMP_MARK, atomic_path, atomic_write

__all__ = [
    "StorageError",
    "atomic_open",
    "exists",
    "filesystem",
    "is_url",
    "join",
    "list_files",
    "open_dataset",
    "open_input",
    "open_raster",
    "protocol",
    "raster_error",
    "rasterio_env",
    "rasterio_path",
    "read_bytes",
    "redact",
    "s3_endpoint",
    "size",
    "stage",
    "upload_folder",
    "write_bytes",
]

OBJECT_STORES = frozenset({"s3", "gs", "az", "abfs"})
"""Protocols whose objects appear only once their upload completes (atomic without a rename)."""
READ_ONLY = frozenset({"http", "https"})
SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "GS_SECRET_ACCESS_KEY",
    "GS_ACCESS_KEY_ID",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
)
"""Environment variables whose values :func:`redact` masks wherever they appear."""
_CREDENTIALS_HINT = (
    "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws for s3://; "
    "GOOGLE_APPLICATION_CREDENTIALS for gs://) and that they may access this location"
)
_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+)://")
_URL_IN_TEXT = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]+://)([^\s/@'\"]*@)?([^\s?#'\"<>]*)(\?[^\s#'\"<>]*)?(#[^\s'\"<>]*)?")
_SECRET_PARAM = re.compile(
    r"((?:X-Amz-[A-Za-z\-]+|Signature|Credential|AWSAccessKeyId|sig|se|sp|sv|token|access_token|key)=)"
    r"([^&\s,\"']+)",
    re.IGNORECASE,
)
_NO_CREDENTIALS = {"NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError"}
_UNREACHABLE = {
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ClientConnectorError",
    "ServerDisconnectedError",
    "ConnectionError",
    "ConnectionRefusedError",
}


_THROTTLED = re.compile(r"slow ?down|reduce your request rate|throttl|too many requests|service unavailable",
                        re.IGNORECASE)


class StorageError(ValueError):
    """A location cannot be read or written; the message names it (redacted) and the reason."""


# -- names ------------------------------------------------------------------------------------


def is_url(location: str | os.PathLike[str]) -> bool:
    """``True`` for ``scheme://...`` (``s3://``, ``gs://``, ``https://``, ``file://``), not for paths.

    A Windows drive (``C:\\data``) is a path: a scheme has at least two letters.
    """
    return bool(_URL_RE.match(str(location)))


def protocol(location: str | os.PathLike[str]) -> str:
    """The location's protocol: ``file`` for local paths, else the URL scheme (``gcs`` -> ``gs``)."""
    m = _URL_RE.match(str(location))
    scheme = m.group(1).lower() if m else "file"
    return {"gcs": "gs", "s3a": "s3", "abfss": "abfs"}.get(scheme, scheme)


def _local(location: str | os.PathLike[str]) -> Path | None:
    """The local path of a path or ``file://`` URL; ``None`` for remote URLs."""
    if not is_url(location):
        return Path(location)
    if protocol(location) == "file":
        return Path(urlsplit(str(location)).path)
    return None


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """``base / part / ...`` for paths and URLs alike (URLs join with ``/``)."""
    if not is_url(base):
        return str(Path(base).joinpath(*parts))
    return posixpath.join(str(base).rstrip("/"), *parts)


def redact(text: str) -> str:
    """``text`` safe to print or log: URLs lose user info, query strings and fragments (signed URLs
    carry their signature there); ``key=value`` signature/credential parameters elsewhere and the
    values of the credential variables in :data:`SECRET_ENV` become ``***``.

    >>> redact("GET https://user:pw@host/a.tif?X-Amz-Signature=abc failed")
    'GET https://host/a.tif?*** failed'
    """

    def _url(m: re.Match[str]) -> str:
        scheme, _, rest, query, _ = m.groups()
        return f"{scheme}{rest}" + ("?***" if query else "")

    out = _URL_IN_TEXT.sub(_url, str(text))
    out = _SECRET_PARAM.sub(lambda m: m.group(1) + "***", out)
    for name in SECRET_ENV:
        value = os.environ.get(name, "")
        if len(value) >= 4:
            out = out.replace(value, "***")
    return out


# -- errors -----------------------------------------------------------------------------------


def _names(err: BaseException) -> set[str]:
    return {c.__name__ for c in type(err).__mro__}


@contextlib.contextmanager
def _translated(location: str | os.PathLike[str], action: str) -> Iterator[None]:
    """Turn the errors of fsspec, s3fs, botocore, aiohttp and GDAL into one :class:`StorageError`."""
    where = redact(str(location))
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError:
        raise StorageError(f"{where}: not found (while trying to {action})") from None
    except PermissionError as err:
        raise StorageError(
            f"{where}: access denied while trying to {action} ({redact(str(err)) or 'refused'}); "
            f"{_CREDENTIALS_HINT}"
        ) from None
    except ImportError as err:
        raise StorageError(
            f"{where}: the {protocol(location)}:// file system is not installed ({err}); "
            "install the extra: pip install 's12mae[s3]' (s3://) or gcsfs (gs://)"
        ) from None
    except Exception as err:
        names = _names(err)
        if names & _NO_CREDENTIALS:
            raise StorageError(f"{where}: no credentials found to {action}; {_CREDENTIALS_HINT} "
                               "(or AWS_NO_SIGN_REQUEST=YES for a public bucket)") from None
        if names & _UNREACHABLE:
            raise StorageError(f"{where}: endpoint unreachable while trying to {action} "
                               f"({redact(str(err))})") from None
        if _THROTTLED.search(str(err)):
            raise StorageError(f"{where}: throttled by the server while trying to {action} ({redact(str(err))}), "
                               "still after the retries with backoff (botocore's AWS_MAX_ATTEMPTS tries, each "
                               "retried by s3fs); retry later or raise AWS_MAX_ATTEMPTS") from None
        if isinstance(err, OSError):
            raise StorageError(f"{where}: cannot {action} ({redact(str(err))})") from None
        raise


# -- file systems -----------------------------------------------------------------------------


def s3_endpoint() -> str | None:
    """The S3 endpoint URL from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (``None``: AWS)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "YES", "TRUE", "ON"}


def _storage_options(proto: str) -> dict[str, Any]:
    """fsspec options from the environment (credentials themselves stay in the default chain)."""
    if proto != "s3":
        return {}
    opts: dict[str, Any] = {}
    if _truthy("AWS_NO_SIGN_REQUEST"):
        opts["anon"] = True
    if os.environ.get("AWS_REQUEST_PAYER", "").lower() == "requester":
        opts["requester_pays"] = True
    if s3_endpoint():
        opts["client_kwargs"] = {"endpoint_url": s3_endpoint()}
    return opts


def filesystem(location: str | os.PathLike[str]) -> tuple[Any, str]:
    """``(fsspec file system, path within it)`` of a path or URL.

    fsspec caches file-system instances: a process that changes its credential variables should
    call ``fsspec.AbstractFileSystem.clear_instance_cache()``.
    """
    import fsspec

    local = _local(location)
    if local is not None:
        return fsspec.filesystem("file"), str(local)
    with _translated(location, "open the file system"):
        return fsspec.core.url_to_fs(str(location), **_storage_options(protocol(location)))


def exists(location: str | os.PathLike[str]) -> bool:
    """Whether a file (or folder/prefix) exists at ``location``."""
    local = _local(location)
    if local is not None:
        return local.exists()
    fs, path = filesystem(location)
    with _translated(location, "check whether it exists"):
        fs.invalidate_cache(path)
        return bool(fs.exists(path))


def size(location: str | os.PathLike[str]) -> int:
    """Size of the file at ``location`` in bytes."""
    local = _local(location)
    if local is not None:
        with _translated(location, "read its size"):
            return local.stat().st_size
    fs, path = filesystem(location)
    with _translated(location, "read its size"):
        return int(fs.size(path))


def read_bytes(location: str | os.PathLike[str]) -> bytes:
    """The whole content of the file at ``location``."""
    local = _local(location)
    with _translated(location, "read it"):
        if local is not None:
            return local.read_bytes()
        fs, path = filesystem(location)
        return fs.cat_file(path)


@contextlib.contextmanager
def open_input(location: str | os.PathLike[str], block_size: int = 4 * 2**20) -> Iterator[IO[bytes]]:
    """A seekable binary file to read ``location`` (remote files read ``block_size`` ranges)."""
    local = _local(location)
    with contextlib.ExitStack() as stack:
        with _translated(location, "open it for reading"):
            f = open(local, "rb") if local is not None else _remote_open(location, block_size)  # noqa: SIM115
            stack.enter_context(f)
        yield f


def _remote_open(location: str | os.PathLike[str], block_size: int) -> IO[bytes]:
    fs, path = filesystem(location)
    return fs.open(path, "rb", block_size=block_size, cache_type="readahead")


def list_files(location: str | os.PathLike[str], pattern: str | re.Pattern[str] | None = None) -> list[str]:
    """The files directly under the folder or prefix ``location`` whose name matches ``pattern``
    (a regular expression, matched in full), sorted by name, as locations of the same kind
    (URLs under a URL, paths under a path). Temporary names (``.*.tmp*``) are never listed."""
    rx = re.compile(pattern) if isinstance(pattern, str) else pattern
    local = _local(location)
    with _translated(location, "list it"):
        if local is not None:
            if not local.is_dir():
                raise FileNotFoundError(str(local))
            names = [p.name for p in local.iterdir() if p.is_file()]
        else:
            fs, path = filesystem(location)
            fs.invalidate_cache(path)
            names = [posixpath.basename(e["name"].rstrip("/")) for e in fs.ls(path, detail=True)
                     if e.get("type") == "file"]
    names = [n for n in names if not (n.startswith(".") and TMP_MARK in n)]
    return sorted(join(location, n) for n in names if rx is None or rx.fullmatch(n))


# -- writing ----------------------------------------------------------------------------------


def write_bytes(location: str | os.PathLike[str], data: bytes | str) -> str:
    """Write ``data`` to ``location`` atomically (see the module docstring for how, per protocol)."""
    payload = data.encode() if isinstance(data, str) else data
    local = _local(location)
    if local is not None:
        with _translated(location, "write it"):
            atomic_write(local, payload)
        return str(location)
    with atomic_open(location) as f:
        f.write(payload)
    return str(location)


@contextlib.contextmanager
def atomic_open(location: str | os.PathLike[str], **open_options: Any) -> Iterator[IO[bytes]]:
    """A binary file to write ``location``; the target appears only if the block succeeds.

    Object stores: the upload is completed on success and discarded (multipart upload aborted)
    on an exception. Other file systems: a temporary name beside the target, moved into place.
    ``open_options`` go to fsspec's ``open`` (e.g. ``block_size``, the multipart part size).
    """
    proto = protocol(location)
    if proto in READ_ONLY:
        raise StorageError(f"{redact(str(location))}: {proto}:// locations are read-only; write to a "
                           "local path, s3:// or gs:// instead")
    local = _local(location)
    if local is not None:
        with _translated(location, "write it"), atomic_path(local) as tmp, open(tmp, "wb") as f:
            yield f
        return
    fs, path = filesystem(location)
    direct = proto in OBJECT_STORES
    target = path if direct else posixpath.join(posixpath.dirname(path),
                                                f".{posixpath.basename(path)}.{uuid.uuid4().hex[:8]}{TMP_MARK}")
    with _translated(location, "write it"):
        f = fs.open(target, "wb", **open_options)
    try:
        yield f
    except BaseException:
        _discard(f, fs, target, direct)
        with _translated(location, "write it"):
            raise
    with _translated(location, "write it"):
        f.close()
        if not direct:
            fs.mv(target, path)
        fs.invalidate_cache(path)


def _discard(f: Any, fs: Any, target: str, direct: bool) -> None:
    """Drop an unfinished write without publishing it."""
    with contextlib.suppress(Exception):
        if direct and hasattr(f, "discard"):
            f.discard()  # fsspec's object-store files: abort the multipart upload, publish nothing
            f.closed = True  # so that garbage collection does not close (= publish) it
        else:
            f.close()  # completes the temporary, removed below
    if not direct:
        with contextlib.suppress(Exception):
            fs.rm(target)


def upload_folder(local: str | os.PathLike[str], location: str | os.PathLike[str],
                  last: Sequence[str] = ()) -> list[str]:
    """Copy the files of the local folder ``local`` (recursively) under ``location``.

    Files whose relative name is in ``last`` are copied after all the others (e.g. ``shards.json``
    of a shard set), so a reader that waits for them never sees a partial set. Temporary names
    (``.*.tmp*``) are skipped. Each file is written atomically.

    Returns:
        The locations written, in the order they were written.
    """
    root = Path(local)
    if not root.is_dir():
        raise StorageError(f"{root}: no such folder to upload")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not (p.name.startswith(".") and TMP_MARK in p.name))
    rel = [p.relative_to(root).as_posix() for p in files]
    order = [r for r in rel if r not in last] + [r for r in last if r in rel]
    written = []
    for name in order:
        target = join(location, *name.split("/"))
        _copy_to(root / name, target)
        written.append(target)
    return written


def _copy_to(src: Path, location: str) -> None:
    with open(src, "rb") as fin, atomic_open(location) as fout:
        while chunk := fin.read(16 * 2**20):
            fout.write(chunk)


def stage(location: str | os.PathLike[str], cache: str | os.PathLike[str],
          pattern: str | re.Pattern[str] | None = None) -> Path:
    """A local folder holding the files directly under ``location`` (a folder of a local path).

    A local ``location`` is returned as it is. For a URL the matching files are downloaded into
    ``cache`` (atomically, one by one); files already there with the same size and version tag
    (ETag) are kept, so a second call moves nothing. Use it to give code that reads local folders
    (shard streams, statistics) a remote shard set.
    """
    local = _local(location)
    if local is not None:
        return local
    out = Path(cache)
    out.mkdir(parents=True, exist_ok=True)
    record = out / ".s12mae-stage.json"
    known: dict[str, Any] = json.loads(record.read_text()) if record.is_file() else {}
    fs, _ = filesystem(location)
    for url in list_files(location, pattern):
        name = posixpath.basename(url)
        with _translated(url, "read its version"):
            info = fs.info(filesystem(url)[1])
        tag = [int(info.get("size", -1)), str(info.get("ETag") or info.get("etag") or info.get("mtime", ""))]
        dst = out / name
        if known.get(name) == tag and dst.is_file() and dst.stat().st_size == tag[0]:
            continue
        with open_input(url) as fin, atomic_path(dst) as tmp, open(tmp, "wb") as fout:
            while chunk := fin.read(16 * 2**20):
                fout.write(chunk)
        known[name] = tag
        atomic_write(record, json.dumps(known, sort_keys=True))
    return out


# -- rasters (COG windowed reads through GDAL's virtual file systems) ------------------------


RETRY_DEFAULTS = {"GDAL_HTTP_MAX_RETRY": "5", "GDAL_HTTP_RETRY_DELAY": "1"}
"""GDAL's retries of a COG request answered 429/5xx, and the first wait in seconds (GDAL doubles
it on each retry, with jitter) (ours); the environment variables of these names override them."""


def rasterio_path(location: str | os.PathLike[str]) -> str:
    """The name rasterio opens for ``location``: local paths as they are; ``s3://``, ``gs://``,
    ``az://`` and ``http(s)://`` URLs as they are (rasterio maps them to ``/vsis3/``, ``/vsigs/``,
    ``/vsiaz/``, ``/vsicurl/``, which read byte ranges); ``gcs://`` becomes ``gs://``."""
    local = _local(location)
    if local is not None:
        return str(local)
    proto = protocol(location)
    if proto not in {"s3", "gs", "az", "http", "https"}:
        raise StorageError(f"{redact(str(location))}: rasterio cannot read {proto}:// locations "
                           "(use a local path, s3://, gs://, az:// or https://)")
    rest = str(location).split("://", 1)[1]
    return f"{proto}://{rest}"


def rasterio_env(location: str | os.PathLike[str] | None = None, **gdal_options: Any) -> Any:
    """A ``rasterio.Env`` for reading COGs at ``location`` with windowed (byte-range) reads.

    Sets GDAL's options for cloud reads (no directory listing on open, retries with backoff on
    HTTP 429/5xx: :data:`RETRY_DEFAULTS`, each overridden by the environment variable of its
    name) and, for ``s3://``, an AWS session from boto3's credential chain with the
    endpoint of :func:`s3_endpoint` (``AWS_S3_ENDPOINT``; ``AWS_HTTPS=NO`` for an ``http://``
    endpoint; path-style addressing, ``AWS_VIRTUAL_HOSTING=FALSE``, for any custom endpoint) and
    requester pays from ``AWS_REQUEST_PAYER``. ``gdal_options`` override.
    """
    import rasterio

    options: dict[str, Any] = {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        **{key: os.environ.get(key, default) for key, default in RETRY_DEFAULTS.items()},
        "VSI_CACHE": "TRUE",
    }
    session = None
    if location is not None and protocol(location) == "s3":
        from rasterio.session import AWSSession

        endpoint = s3_endpoint()
        host = None
        if endpoint:
            parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
            host = parts.netloc
            options.update(AWS_HTTPS="NO" if parts.scheme == "http" else "YES", AWS_VIRTUAL_HOSTING="FALSE")
        session = AWSSession(endpoint_url=host,
                             requester_pays=os.environ.get("AWS_REQUEST_PAYER", "").lower() == "requester")
    options.update(gdal_options)
    return rasterio.Env(session=session, **options) if session is not None else rasterio.Env(**options)


@contextlib.contextmanager
def open_raster(location: str | os.PathLike[str], **gdal_options: Any) -> Iterator[Any]:
    """Open the raster at ``location`` (path or URL) with rasterio for windowed reads.

    Errors (not found, access denied, not a raster) are one :class:`StorageError` naming the
    redacted location. Reads inside the block run in the same GDAL environment.

    Example:
        >>> with open_raster("s3://bucket/B04.tif") as ds:
        ...     chip = ds.read(1, window=Window(512, 512, 256, 256))
    """
    from rasterio.errors import RasterioError

    with rasterio_env(location, **gdal_options):
        try:
            ds = _open_dataset(location)
        except RasterioError as err:
            raise StorageError(_raster_reason(location, err)) from None
        with ds:
            yield ds


def open_dataset(location: str | os.PathLike[str]) -> Any:
    """Open the raster at ``location`` (path or URL) in the caller's GDAL environment (for readers
    that open several files inside one :func:`rasterio_env`); a failure is one
    :class:`StorageError` naming the redacted location (see :func:`raster_error`)."""
    from rasterio.errors import RasterioError

    try:
        return _open_dataset(location)
    except RasterioError as err:
        raise raster_error(location, err) from None


def raster_error(location: str | os.PathLike[str], err: Exception, doing: str = "") -> StorageError:
    """A GDAL error on ``location`` as one :class:`StorageError`: not found, access denied,
    throttled, or unreadable (``doing`` prefixes the reason, e.g. ``"band 3: "``)."""
    return StorageError(f"{doing}{_raster_reason(location, err)}")


def _open_dataset(location: str | os.PathLike[str]) -> Any:
    import rasterio

    local = _local(location)
    if local is not None and not local.is_file():
        raise StorageError(f"{local}: not found")
    return rasterio.open(rasterio_path(location))


def _raster_reason(location: str | os.PathLike[str], err: Exception) -> str:
    text = redact(str(err))
    low = text.lower()
    where = redact(str(location))
    if any(s in low for s in ("403", "forbidden", "access denied", "accessdenied", "access key", "signature",
                              "credential", "security token", "permission")):
        return f"{where}: access denied ({text}); {_CREDENTIALS_HINT}"
    if any(s in low for s in ("404", "no such file", "does not exist", "not found", "nosuchkey")):
        return f"{where}: not found ({text})"
    if any(s in low for s in ("429", "503", "slow down", "slowdown", "too many requests", "throttl",
                              "reduce your request rate")):
        retries = os.environ.get("GDAL_HTTP_MAX_RETRY", RETRY_DEFAULTS["GDAL_HTTP_MAX_RETRY"])
        return (f"{where}: the server kept refusing with throttling after {retries} retries with backoff "
                f"({text}); retry later, or raise GDAL_HTTP_MAX_RETRY / GDAL_HTTP_RETRY_DELAY")
    return f"{where}: cannot open it as a raster ({text})"
