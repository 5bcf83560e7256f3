"""The S3 L2 adapter (type ``s3``) on boto3: LMCache 0.5.6's object names and bodies, a circuit breaker.

Objects (LMCache 0.5.6's ``s3_l2_adapter.py``: names and bodies)
----------------------------------------------------------------------------------
* One object per key, named :func:`lmcache_core.keys.object_name`:
  ``<model_name verbatim>@<kv_rank:08x>@<object_group_id:x>@<chunk_hash hex>[@<cache_salt>]``
  (boto3 URL-quotes it in the request path, as LMCache does), under the optional
  ``prefix`` (default none, as LMCache; objects under a prefix are invisible to
  LMCache's adapter, which has none).
* Body: the raw chunk bytes, no header: the same bytes as the ``fs`` file. Either
  server serves what the other wrote to the same bucket.

Operations
----------
Each batch (store / lookup / load / delete) runs its per-object requests in parallel
on the adapter's own pool of ``s3_num_io_threads`` threads (also boto3's
``max_pool_connections``). A store of a key this adapter already knows to be in the
bucket (a PUT or HEAD saw it) sends nothing: keys are content-addressed. Lookups
HEAD each key unless its size is cached; a hit stays locked until ``unlock``. A
load GETs straight into the caller's buffer in 8 MiB reads (no whole-object
``bytes``), after checking the stored size equals the buffer's. A key deleted
behind our back (another node's ``DELETE /l2`` or eviction) is a clean miss: a 404
on GET or HEAD drops the cached size and the accounting, never an error. Delete
HEADs keys whose size is unknown (absent: nothing to do), then DELETEs.

``GET /l2/keys`` pages with ``ListObjectsV2`` (``prefix`` + ``<model_name>@``), the
continuation token is the opaque page token (S3 rejects a forged one: 400), at most
1000 keys a page (S3's cap), objects that are not key names skipped. With
``recover_on_start`` the adapter lists the bucket (under ``prefix``) at start, so
``max_capacity_gb`` eviction and IsolatedLRU quotas count what earlier runs (or
other nodes) stored.

Outages and slow S3
-------------------
Every request has a connect and a read timeout (``connect_timeout_s``,
``read_timeout_s``; ``retries`` retries in botocore's standard mode). Lookups use a
second client with ``lookup_timeout_s`` for both and no retry, so a lookup batch
waits at most about ``2 x lookup_timeout_s`` per wave of ``s3_num_io_threads``
HEADs — and not at all once the breaker is open. Connection-class failures feed a
:class:`~lmcache_plugin_s3.breaker.CircuitBreaker`: while it is open, stores answer
"not stored" at once (counted as ``skipped.store``; L1 keeps the data), lookups
answer "miss" at once, loads fail at once, listing answers 503; a background probe
(``HeadBucket``) closes it with exponential backoff. STORE replies never wait on S3
(the write-behind thread does), and L1 hits never touch S3.

Startup
-------
The adapter checks the bucket once (``HeadBucket``) when it starts. An unreachable
endpoint does not stop the server: the breaker starts open and probes (a node of a
fleet comes up while S3 is down). A missing bucket or rejected credentials do not
stop it either: they are logged as an error naming the cause, shown in ``/status``
(``is_healthy: false``, ``startup_error``, until a request succeeds) and every request that meets them is a
counted failure (``failures_by_reason``: ``http_404``, ``http_403``).

Config keys with no boto3 meaning
---------------------------------
``s3_prefer_http2``: botocore speaks HTTP/1.1 only; accepted and ignored.
``s3_enable_s3express``: botocore signs S3 Express (directory bucket names ending
``--x-s3``) by itself; the key is accepted and changes nothing.

Secrets
-------
``aws_access_key_id``, ``aws_secret_access_key`` and ``aws_session_token`` are
masked by name in ``/conf``; no status field, log line, exception or metric of this
adapter holds them, and credentials embedded in ``s3_endpoint``
(``https://user:pass@host``) are refused at startup without echoing them.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import boto3
import botocore.exceptions as bce
from botocore.config import Config

from lmcache_core.api import (
    L2Adapter,
    L2AdapterConfig,
    L2AdapterContext,
    ObjectKey,
    UnencodableKeyError,
    object_name,
    object_name_prefix,
    try_parse_object_name,
)
from lmcache_plugin_s3 import metrics
from lmcache_plugin_s3.breaker import CLOSED, STATE_CODES, CircuitBreaker

logger = logging.getLogger(__name__)

TYPE_NAME = "s3"
ADDRESSING_STYLES = ("virtual", "path")
READ_BLOCK = 8 << 20  # bytes per read from a GET body into the caller's buffer
MAX_LIST_KEYS = 1000  # ListObjectsV2's cap
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_LATENCY_WINDOW = 512
T = TypeVar("T")
R = TypeVar("R")


class S3AdapterConfig(L2AdapterConfig, kw_only=True, forbid_unknown_fields=True):
    """``--l2-adapter '{"type": "s3", ...}'``: LMCache's ``s3`` keys, their newer ones, and ours.

    LMCache's: ``s3_endpoint`` (required; ``[s3://]<bucket>.<host>[:port]`` virtual-hosted,
    or ``<host>[:port]`` with ``s3_addressing_style: "path"``; ``http://`` / ``https://``
    also accepted), ``s3_region`` (required), ``aws_access_key_id`` /
    ``aws_secret_access_key`` (both or neither; neither: boto3's default credential
    chain), ``disable_tls``, ``max_capacity_gb``, ``s3_num_io_threads`` (request
    threads and pooled connections), ``s3_prefer_http2`` and ``s3_enable_s3express``
    (accepted; see the module docstring), ``s3_addressing_style``, ``s3_bucket``
    (required for path style), ``s3_ca_bundle`` (a CA file for TLS).

    Ours: ``aws_session_token`` (with the static keys), ``prefix`` (a key prefix inside
    the bucket), ``recover_on_start`` (list the bucket at start; default false: a big
    bucket takes a while), ``connect_timeout_s``, ``read_timeout_s``, ``retries``,
    ``lookup_timeout_s``, ``breaker_failures`` (consecutive connection failures that
    open the breaker; 3, LMCache's count), ``breaker_backoff_s`` /
    ``breaker_max_backoff_s`` (first and longest wait before a probe).
    """

    s3_endpoint: str
    s3_region: str
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    disable_tls: bool = False
    s3_addressing_style: str = "virtual"
    s3_bucket: str | None = None
    s3_ca_bundle: str | None = None
    s3_num_io_threads: int = 64
    s3_prefer_http2: bool = True
    s3_enable_s3express: bool = False
    prefix: str = ""
    recover_on_start: bool = False
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 30.0
    retries: int = 2
    lookup_timeout_s: float = 1.0
    breaker_failures: int = 3
    breaker_backoff_s: float = 0.5
    breaker_max_backoff_s: float = 30.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.s3_region, str) or not self.s3_region:
            raise ValueError("s3_region must be a non-empty string")
        if (self.aws_access_key_id is None) != (self.aws_secret_access_key is None) or \
                self.aws_access_key_id == "" or self.aws_secret_access_key == "":
            raise ValueError("aws_access_key_id and aws_secret_access_key: give both or neither")
        if self.aws_session_token is not None and self.aws_access_key_id is None:
            raise ValueError("aws_session_token needs aws_access_key_id and aws_secret_access_key")
        if self.s3_addressing_style not in ADDRESSING_STYLES:
            raise ValueError(f"s3_addressing_style must be 'virtual' or 'path', got {self.s3_addressing_style!r}")
        for name in ("s3_num_io_threads", "breaker_failures"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        for name in ("connect_timeout_s", "read_timeout_s", "lookup_timeout_s", "breaker_backoff_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.breaker_max_backoff_s >= self.breaker_backoff_s:
            raise ValueError("breaker_max_backoff_s must be >= breaker_backoff_s")
        if "\x00" in self.prefix or self.prefix.startswith("/"):
            raise ValueError(f"prefix must not start with '/' or hold NUL, got {self.prefix!r}")
        parse_endpoint(self)  # raises naming the field


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where requests go: boto3's ``endpoint_url`` (no bucket), the bucket, the addressing style."""

    url: str
    bucket: str
    style: str

    @property
    def display(self) -> str:
        """The endpoint as requests address it (for status and logs)."""
        if self.style == "virtual":
            scheme, _, host = self.url.partition("://")
            return f"{scheme}://{self.bucket}.{host}"
        return f"{self.url}/{self.bucket}"


def parse_endpoint(config: S3AdapterConfig) -> Endpoint:
    """``s3_endpoint`` + ``s3_bucket`` + ``s3_addressing_style`` + ``disable_tls`` → :class:`Endpoint`.

    ValueError names the field; it never quotes userinfo (credentials in a URL).
    """
    raw = config.s3_endpoint
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("s3_endpoint must be a non-empty string")
    text = raw.strip()
    scheme = "http" if config.disable_tls else "https"
    for prefix in ("s3://", "http://", "https://"):
        if text.lower().startswith(prefix):
            text = text[len(prefix):]
            if prefix != "s3://":
                given = prefix[:-3]
                if given != scheme:
                    raise ValueError(f"s3_endpoint: scheme {given!r} contradicts disable_tls={config.disable_tls}")
            break
    host = text.rstrip("/")
    if "@" in host.split("/")[0]:
        raise ValueError("s3_endpoint: credentials in the URL are not accepted (the value is not shown); "
                         "use aws_access_key_id / aws_secret_access_key")
    if "/" in host or not host or any(c.isspace() for c in host):
        raise ValueError("s3_endpoint must be [s3://]<bucket>.<host>[:port] (virtual) or <host>[:port] (path), "
                         "with no path")
    bucket = config.s3_bucket
    if bucket is not None and not _BUCKET.fullmatch(bucket):
        raise ValueError(f"s3_bucket {bucket!r} is not a valid bucket name")
    if config.s3_addressing_style == "path":
        if bucket is None:
            raise ValueError("s3_bucket is required when s3_addressing_style is 'path'")
        if host.lower().startswith(bucket + "."):
            raise ValueError(f"s3_endpoint names bucket {bucket!r} in its host (virtual-hosted) but "
                             "s3_addressing_style is 'path': give the service host only, or use 'virtual'")
        return Endpoint(f"{scheme}://{host}", bucket, "path")
    if bucket is not None and host.lower().startswith(bucket + "."):
        service = host[len(bucket) + 1:]
    else:
        first, dot, service = host.partition(".")
        if not dot or not service:
            raise ValueError("s3_endpoint must be <bucket>.<host>[:port] in virtual-hosted style "
                             "(or set s3_addressing_style to 'path' with s3_bucket)")
        if bucket is not None and first.lower() != bucket:
            raise ValueError(f"s3_bucket {bucket!r} contradicts the bucket {first!r} in s3_endpoint "
                             "(virtual-hosted style)")
        bucket = first.lower()
        if not _BUCKET.fullmatch(bucket):
            raise ValueError(f"s3_endpoint: {bucket!r} is not a valid bucket name")
    return Endpoint(f"{scheme}://{service}", bucket, "virtual")


class _ViewReader(io.RawIOBase):
    """A seekable file over a memoryview; ``read`` returns views (no copy), so botocore streams the
    caller's buffer straight to the socket and can rewind it for a retry."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> memoryview:  # type: ignore[override]
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._pos + size)
        chunk = self._view[self._pos:end]
        self._pos = end
        return chunk

    def readinto(self, b: Any) -> int:
        chunk = self.read(len(b))
        n = len(chunk)
        b[:n] = chunk
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: len(self._view)}[whence]
        self._pos = max(0, min(len(self._view), base + offset))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return len(self._view)


def read_body_into(body: Any, out: memoryview) -> int:
    """Read a GET body into ``out`` block by block (no whole-object ``bytes``); the bytes read."""
    done, total = 0, out.nbytes
    while done < total:
        chunk = body.read(min(READ_BLOCK, total - done))
        if not chunk:
            break
        out[done:done + len(chunk)] = chunk
        done += len(chunk)
    return done


def failure_reason(exc: BaseException) -> tuple[str, bool]:
    """``(reason, connection_class)`` of an exception from botocore."""
    if isinstance(exc, bce.ConnectTimeoutError):
        return "connect_timeout", True
    if isinstance(exc, bce.ReadTimeoutError):
        return "read_timeout", True
    if isinstance(exc, bce.EndpointConnectionError):
        return "connect", True
    if isinstance(exc, bce.ConnectionClosedError):
        return "connection_closed", True
    if isinstance(exc, bce.HTTPClientError):
        return "connection", True
    if isinstance(exc, bce.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return (f"http_{status}" if status else "client_error"), False
    if isinstance(exc, bce.NoCredentialsError):
        return "no_credentials", False
    return type(exc).__name__, False


def _status_code(exc: bce.ClientError) -> int | None:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


class BreakerOpen(RuntimeError):
    """The request was not sent: S3 is unavailable (circuit open)."""


class S3L2Adapter(L2Adapter):
    """An L2 tier in an S3 bucket; see the module docstring."""

    config: S3AdapterConfig

    def __init__(self, config: S3AdapterConfig, context: L2AdapterContext) -> None:
        self.endpoint = parse_endpoint(config)
        self.bucket = self.endpoint.bucket
        self.prefix = config.prefix
        super().__init__(config, context)
        threads = config.s3_num_io_threads
        self._io = ThreadPoolExecutor(threads, thread_name_prefix=f"s3-io-{context.index}")
        session = boto3.session.Session(
            aws_access_key_id=config.aws_access_key_id,
            aws_secret_access_key=config.aws_secret_access_key,
            aws_session_token=config.aws_session_token,
            region_name=config.s3_region,
        )
        verify: str | bool | None = None if config.disable_tls else config.s3_ca_bundle

        def client(connect: float, read: float, attempts: int) -> Any:
            return session.client("s3", endpoint_url=self.endpoint.url, verify=verify, config=Config(
                region_name=config.s3_region, connect_timeout=connect, read_timeout=read,
                retries={"mode": "standard", "total_max_attempts": attempts},
                max_pool_connections=threads, s3={"addressing_style": self.endpoint.style},
                request_checksum_calculation="when_required", response_checksum_validation="when_required",
            ))

        self._client = client(config.connect_timeout_s, config.read_timeout_s, config.retries + 1)
        self._fast = client(config.lookup_timeout_s, config.lookup_timeout_s, 1)
        self._known: dict[ObjectKey, int] = {}  # sizes a PUT or HEAD saw in the bucket
        self._stats_lock = threading.Lock()
        self.failures_by_reason: dict[str, int] = {}
        self.skipped = {"store": 0, "lookup": 0, "load": 0}
        self.last_error: str | None = None
        self.startup_error: str | None = None  # a missing bucket or rejected credentials, until a request succeeds
        self._latency: dict[str, deque[float]] = {}
        self.breaker = CircuitBreaker(self.l2_name, self._probe, threshold=config.breaker_failures,
                                      backoff_s=config.breaker_backoff_s,
                                      max_backoff_s=config.breaker_max_backoff_s, on_change=self._breaker_changed)
        metrics.BREAKER_STATE.labels(self.l2_name).set(STATE_CODES[CLOSED])
        if config.s3_prefer_http2:
            logger.debug("s3 adapter: s3_prefer_http2 has no boto3 meaning (HTTP/1.1 is used)")
        if config.disable_tls and config.s3_ca_bundle:
            logger.warning("s3 adapter: s3_ca_bundle is ignored with disable_tls")

    # -- requests ---------------------------------------------------------------------

    def _name(self, key: ObjectKey) -> str:
        return self.prefix + object_name(key)

    def _call(self, op: str, fn: Callable[..., T], **kwargs: Any) -> T:
        """One S3 request: breaker gate, latency, failure accounting. ClientError 404 passes through uncounted."""
        if not self.breaker.allow():
            raise BreakerOpen(f"S3 {self.endpoint.display} unavailable (circuit {self.breaker.state})")
        started = time.perf_counter()
        try:
            result = fn(Bucket=self.bucket, **kwargs)
        except bce.ClientError as exc:
            self.breaker.record_success()  # S3 answered
            self._observe(op, started)
            if _status_code(exc) != 404 or op not in ("head", "get"):  # a missing key is a miss
                self._count_failure(op, exc)
            raise
        except Exception as exc:
            reason, connection = failure_reason(exc)
            self._count_failure(op, exc, reason)
            if connection:
                self.breaker.record_failure()
            raise
        self.breaker.record_success()
        self._observe(op, started)
        if self.startup_error is not None:
            self.startup_error = None  # the bucket or the credentials were fixed meanwhile
        return result

    def _count_failure(self, op: str, exc: BaseException, reason: str | None = None) -> None:
        reason = reason or failure_reason(exc)[0]
        with self._stats_lock:
            self.failures_by_reason[reason] = self.failures_by_reason.get(reason, 0) + 1
            self.last_error = f"{op}: {reason}: {type(exc).__name__}"
        metrics.S3_FAILURES.labels(self.l2_name, op, reason).inc()

    def _observe(self, op: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        metrics.S3_LATENCY.labels(self.l2_name, op).observe(elapsed)
        with self._stats_lock:
            window = self._latency.get(op)
            if window is None:
                window = self._latency[op] = deque(maxlen=_LATENCY_WINDOW)
            window.append(elapsed)

    def _skip(self, op: str) -> None:
        self._short_circuit(op, 1)

    def _forget(self, key: ObjectKey) -> None:
        """The object is not in the bucket (404): no cached size, no accounting."""
        with self._lock:
            self._known.pop(key, None)
        self._account_deleted([key])

    def _probe(self) -> None:
        """The breaker's probe: any answer from S3 (even 403 or 404) means the endpoint is back."""
        try:
            self._fast.head_bucket(Bucket=self.bucket)
        except bce.ClientError:
            return

    def _breaker_changed(self, state: str) -> None:
        metrics.BREAKER_STATE.labels(self.l2_name).set(STATE_CODES[state])

    # -- the author's surface ------------------------------------------------------------

    def _map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        if len(items) <= 1:
            return [fn(x) for x in items]
        return list(self._io.map(fn, items))

    def _put(self, key: ObjectKey, data: memoryview) -> None:
        with self._lock:
            known = self._known.get(key)
        if known == data.nbytes:
            return  # in the bucket already (content-addressed)
        if not self.breaker.allow():
            self._skip("store")
            raise BreakerOpen(f"S3 {self.endpoint.display} unavailable: store skipped")
        self._call("put", self._client.put_object, Key=self._name(key), Body=_ViewReader(data),
                   ContentLength=data.nbytes, ContentType="application/octet-stream")
        with self._lock:
            self._known[key] = data.nbytes

    def _head(self, key: ObjectKey, client: Any) -> int | None:
        try:
            resp = self._call("head", client.head_object, Key=self._name(key))
        except bce.ClientError as exc:
            if _status_code(exc) == 404:
                self._forget(key)
                return None
            raise
        size = int(resp["ContentLength"])
        if size <= 0:
            return None
        with self._lock:
            self._known[key] = size
        return size

    def _size(self, key: ObjectKey) -> int | None:
        with self._lock:
            known = self._known.get(key)
        if known is not None:
            return known
        if not self.breaker.allow():
            self._skip("lookup")
            return None
        try:
            self._name(key)
        except UnencodableKeyError:
            return None
        return self._head(key, self._fast)

    def _get(self, key: ObjectKey, out: memoryview) -> bool:
        try:
            name = self._name(key)
        except UnencodableKeyError:
            return False
        if not self.breaker.allow():
            self._skip("load")
            return False
        try:
            resp = self._call("get", self._client.get_object, Key=name)
        except bce.ClientError as exc:
            if _status_code(exc) == 404:
                self._forget(key)  # deleted behind our back: a clean miss
                return False
            raise
        body = resp["Body"]
        try:
            if int(resp["ContentLength"]) != out.nbytes:
                return False  # another size: the caller expects another layout
            started = time.perf_counter()
            try:
                done = read_body_into(body, out)
            except Exception as exc:
                reason, connection = failure_reason(exc)
                self._count_failure("get", exc, reason)
                if connection:
                    self.breaker.record_failure()
                raise
            self._observe("get_body", started)
            return done == out.nbytes
        finally:
            body.close()

    def _remove(self, key: ObjectKey) -> int | None:
        with self._lock:
            size = self._sizes.get(key) or self._known.get(key)
        if size is None:
            size = self._head(key, self._client)
            if size is None:
                return None
        self._call("delete", self._client.delete_object, Key=self._name(key))
        with self._lock:
            self._known.pop(key, None)
        return size

    def _list(self, model_name: str | None, cursor: str | None,
              limit: int) -> tuple[list[tuple[ObjectKey, int]], str | None]:
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"page size must be a positive integer, got {limit!r}")
        if cursor is not None and (not cursor or len(cursor) > 4096 or not cursor.isprintable()):
            raise ValueError("malformed page token")
        prefix = self.prefix + (object_name_prefix(model_name) if model_name is not None else "")
        kwargs: dict[str, Any] = {"Prefix": prefix, "MaxKeys": min(limit, MAX_LIST_KEYS)}
        if cursor is not None:
            kwargs["ContinuationToken"] = cursor
        try:
            resp = self._call("list", self._client.list_objects_v2, **kwargs)
        except bce.ClientError as exc:
            if _status_code(exc) == 400 and cursor is not None:
                raise ValueError("malformed page token") from None
            raise
        items = [(key, size) for key, size in self._parse_listing(resp)
                 if model_name is None or key.model_name == model_name]
        token = resp.get("NextContinuationToken") if resp.get("IsTruncated") else None
        return items, token

    def _parse_listing(self, resp: dict[str, Any]) -> Iterator[tuple[ObjectKey, int]]:
        for obj in resp.get("Contents", ()):
            name = obj.get("Key", "")
            if not name.startswith(self.prefix):
                continue
            key = try_parse_object_name(name[len(self.prefix):])
            size = int(obj.get("Size", 0))
            if key is not None and size > 0:  # another tool's object, or an empty one: not ours
                yield key, size

    def _recover(self) -> list[tuple[ObjectKey, int]]:
        try:
            self._call("head_bucket", self._fast.head_bucket)
        except bce.ClientError as exc:
            status = _status_code(exc)
            what = {404: f"bucket {self.bucket!r} does not exist", 403: "credentials rejected (403)"}.get(
                status, f"HeadBucket answered {status}")
            logger.error("s3 adapter %s at %s: %s; requests will fail until this is fixed", self.l2_name,
                         self.endpoint.display, what)
            self.startup_error = what
            return []
        except Exception as exc:
            if failure_reason(exc)[1]:
                logger.error("s3 adapter %s: %s unreachable at start (%s); serving from L1 and probing",
                             self.l2_name, self.endpoint.display, type(exc).__name__)
                self.breaker.trip()
                return []
            raise
        if not self.config.recover_on_start:
            return []
        found: list[tuple[ObjectKey, int]] = []
        cursor: str | None = None
        while True:
            page, cursor = self._list(None, cursor, MAX_LIST_KEYS)
            found.extend(page)
            if cursor is None:
                break
        with self._lock:
            self._known.update(found)
        return found

    def _status(self) -> dict[str, Any]:
        breaker = self.breaker.report()
        with self._stats_lock:
            latency = {op: _summary(window) for op, window in self._latency.items()}
            doc: dict[str, Any] = {
                "type": "S3L2Adapter",
                "endpoint": self.endpoint.display,
                "region": self.config.s3_region,
                "bucket": self.bucket,
                "addressing_style": self.endpoint.style,
                "prefix": self.prefix,
                "breaker": breaker,
                "connection_failures": breaker["consecutive_failures"],  # LMCache's field names
                "connection_disabled": breaker["state"] != CLOSED,
                "failures_by_reason": dict(self.failures_by_reason),
                "skipped": dict(self.skipped),
                "latency_ms": latency,
                "last_error": self.last_error,
                "startup_error": self.startup_error,
            }
        if breaker["state"] != CLOSED or self.startup_error is not None:
            doc["is_healthy"] = False
        return doc

    def _health(self) -> dict[str, Any]:
        breaker = self.breaker.report()
        with self._stats_lock:
            latency = {op: _summary(window) for op, window in self._latency.items()}
            failures = dict(self.failures_by_reason)
        return {"is_healthy": breaker["state"] == CLOSED and self.startup_error is None and not self._closed,
                "breaker": breaker["state"], "consecutive_failures": breaker["consecutive_failures"],
                "failures_by_reason": failures, "latency_ms": latency}

    def _close(self) -> None:
        self.breaker.close()
        self._io.shutdown(wait=True, cancel_futures=True)
        for client in (self._client, self._fast):
            client.close()

    # -- while the breaker is open: answer at once, no pool hop, no log line per key --------

    def store(self, keys: Sequence[ObjectKey], objs: Sequence[Any]) -> Future[list[bool]]:
        """As the base class; while the breaker is open, "not stored" at once (counted in ``skipped``)."""
        if self.breaker.allow():
            return super().store(keys, objs)
        return self._short_circuit("store", len(keys))

    def lookup_and_lock(self, keys: Sequence[ObjectKey]) -> Future[list[bool]]:
        """As the base class; while the breaker is open, every key misses at once (nothing locked)."""
        if self.breaker.allow():
            return super().lookup_and_lock(keys)
        return self._short_circuit("lookup", len(keys))

    def load(self, keys: Sequence[ObjectKey], bufs: Sequence[Any]) -> Future[list[bool]]:
        """As the base class; while the breaker is open, every load fails at once."""
        if self.breaker.allow():
            return super().load(keys, bufs)
        return self._short_circuit("load", len(keys))

    def _short_circuit(self, op: str, n: int) -> Future[list[bool]]:
        with self._stats_lock:
            self.skipped[op] += n
        metrics.BREAKER_SKIPPED.labels(self.l2_name, op).inc(n)
        fut: Future[list[bool]] = Future()
        fut.set_result([False] * n)
        return fut


def _summary(window: deque[float]) -> dict[str, float | int]:
    ordered = sorted(window)
    n = len(ordered)
    return {"count": n, "p50": round(ordered[n // 2] * 1e3, 3), "p99": round(ordered[min(n - 1, (n * 99) // 100)] * 1e3, 3),
            "max": round(ordered[-1] * 1e3, 3)}


def make_adapter(config: S3AdapterConfig, context: L2AdapterContext) -> S3L2Adapter:
    """The factory registered for type ``s3``."""
    return S3L2Adapter(config, context)


__all__ = ["TYPE_NAME", "BreakerOpen", "Endpoint", "S3AdapterConfig", "S3L2Adapter", "make_adapter",
           "parse_endpoint"]
