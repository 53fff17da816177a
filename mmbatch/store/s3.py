"""The S3 object store: `s3://bucket/prefix` on AWS S3 or an S3-compatible server.

One boto3 client per store (thread-safe; the repository calls it from
`parallel` threads), built once from `[store]`:
- credentials come from boto3's default chain (on EC2 the instance role)
  and are never logged; an error says which provider supplied them, never
  what they are;
- retries are botocore's adaptive mode (exponential backoff plus client-side
  rate limiting once S3 answers SlowDown), connection pool `parallel + 2`
  so `parallel` transfers never wait behind the control path (LATEST,
  listings);
- `endpoint_url` selects an S3-compatible server, addressed path-style;
- server-side encryption is on by default: `sse = "AES256"` (SSE-S3) or
  `"aws:kms"` with `kms_key_id` (and an S3 Bucket Key, so a checkpoint of
  thousands of objects does not cost thousands of KMS requests); `"none"`
  only for servers without SSE. A botocore hook adds the SSE headers to
  every request that takes them (PutObject, CreateMultipartUpload) and
  `ExpectedBucketOwner` to every request, s3transfer's included, so no
  code path can forget them. A server that rejects the SSE headers (as
  SeaweedFS does without a configured key) is detected on the first failed
  write by an empty probe object without them: the error then says to set
  `sse = "none"`, instead of "internal error".

Integrity: a PUT (and a multipart upload, which only becomes visible on
CompleteMultipartUpload) is atomic. Every upload carries a CRC32 checksum
(`ChecksumAlgorithm`, per part for multipart uploads) that the server checks
before it stores anything: a transfer corrupted on the way is refused
(BadDigest) and retried, so a corrupt checkpoint is caught when it is
written, not at restore time. CRC32 rather than SHA-256 or Content-MD5:
the repository already checks the SHA-256 of every chunk and file on fetch
(end to end, whatever happened at rest), so the transport check only needs
to be cheap. Whole-object reads (`get_bytes`: manifests, LATEST, records)
ask for the stored checksum and botocore verifies it; ranged reads cannot
be checked by S3 and are verified by the repository's chunk hashes.

Big files (`put_file`, `get_file`, `put_bytes` above the multipart
threshold) go through s3transfer with a bounded configuration: parts of
16 MiB, `parallel` requests at a time, at most `parallel` parts and 32 MiB of
download buffers in memory. Downloads land in a 0600 temp name in the
destination's directory and are renamed into place.
"""

from __future__ import annotations

import io
import logging
import os
import re
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import boto3
import botocore.exceptions as bce
from botocore.config import Config
from botocore.utils import determine_content_length
from s3transfer.exceptions import RetriesExceededError
from s3transfer.manager import TransferConfig, TransferManager

from mmbatch.errors import CorruptObject, ObjectNotFound, StoreError
from mmbatch.store.base import (
    GARBAGE_TAG_KEY,
    GARBAGE_TAG_VALUE,
    RESERVED_PREFIX,
    ObjectInfo,
    ObjectStore,
    validate_key,
    validate_prefix,
)

if TYPE_CHECKING:
    from mmbatch.config import StoreSection

log = logging.getLogger(__name__)

MiB = 1024 * 1024

# Objects up to this size are one PutObject; bigger ones are multipart uploads.
MULTIPART_THRESHOLD = 32 * MiB
MULTIPART_CHUNKSIZE = 16 * MiB
IO_CHUNKSIZE = 256 * 1024
IO_QUEUE = 128  # download buffers: at most IO_QUEUE * IO_CHUNKSIZE = 32 MiB
MAX_S3_KEY_BYTES = 1024
DEFAULT_MAX_ATTEMPTS = 5
CHECKSUM_ALGORITHM = "CRC32"
_DELETE_BATCH = 1000
_READ_ATTEMPTS = 3  # whole reads again after a broken or corrupt response body
_PUT_ATTEMPTS = 3  # uploads again after the server found a bad checksum

# Bodies smaller than this are sent without "Expect: 100-continue" (see _no_expect_for_small_bodies).
EXPECT_CONTINUE_MIN = 1 * MiB

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PROBE_PREFIX = RESERVED_PREFIX + "sse-probe-"

_NOT_FOUND = frozenset({"NoSuchKey", "NotFound", "404"})
_BAD_CREDENTIALS = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired",
    "InvalidClientTokenId", "UnrecognizedClientException",
})
_DENIED = frozenset({"AccessDenied", "AllAccessDisabled", "403", "Forbidden", "AccountProblem"})
_BAD_DIGEST = frozenset({"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "InvalidChecksum"})
_WRONG_REGION = frozenset({"PermanentRedirect", "301", "AuthorizationHeaderMalformed",
                           "IllegalLocationConstraintException"})
# What a server that does not implement the SSE headers it was sent answers.
_SSE_SUSPECT = frozenset({"InternalError", "500", "NotImplemented", "501", "InvalidArgument", "InvalidRequest",
                          "InvalidEncryptionAlgorithmError", "UnsupportedHeader", "KMS.NotFoundException"})
_TRANSIENT = frozenset({"SlowDown", "503", "ServiceUnavailable", "RequestTimeout", "InternalError", "500",
                        "RequestTimeTooSkewed"})
_UNREACHABLE = (bce.ConnectionError, bce.HTTPClientError)
_NO_CREDENTIALS = (bce.NoCredentialsError, bce.PartialCredentialsError, bce.CredentialRetrievalError)


# One boto3 Session per process for stores built from the default chain:
# mmbatchd opens a store per checkpoint, and a fresh Session would load the S3
# model again (~0.3 s) and fetch the instance role's credentials again; a
# shared one does both once (and refreshes the credentials before they expire).
# boto3 Sessions are not thread-safe: clients are made under _CLIENT_LOCK.
_CLIENT_LOCK = threading.Lock()
_default_session: Any = None


def _shared_session() -> Any:
    global _default_session
    with _CLIENT_LOCK:
        if _default_session is None:
            _default_session = boto3.session.Session()
        return _default_session


def parse_s3_url(url: str) -> Tuple[str, str]:
    """(bucket, prefix) of `s3://bucket[/prefix]`; StoreError when it cannot be a store URL."""
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise StoreError(f"not an s3 URL: {url!r}", hint="use s3://bucket/prefix")
    rest = url[len("s3://"):]
    if any(c in rest for c in "?#"):
        raise StoreError(f"s3 URL {url!r} must not have a query or fragment", hint="use s3://bucket/prefix")
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise StoreError(
            f"invalid bucket name {bucket!r} in {url!r}",
            hint="a bucket name is 3-63 lowercase letters, digits, '.' and '-' (s3://bucket/prefix)",
        )
    prefix = prefix.strip("/")
    if prefix:
        try:
            validate_prefix(prefix)
        except StoreError as e:
            raise StoreError(f"invalid prefix in s3 URL {url!r}: {e.message}",
                             hint="use s3://bucket/some/prefix without '.', '..' or empty components") from None
        if "\\" in prefix:
            raise StoreError(f"invalid prefix in s3 URL {url!r}: it contains a backslash")
    return bucket, prefix


def _code(err: bce.ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", "") or
               err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _status(err: bce.ClientError) -> int:
    try:
        return int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    except (TypeError, ValueError):
        return 0


def _no_expect_for_small_bodies(params: Dict[str, Any], **_: Any) -> None:
    """Drop botocore's "Expect: 100-continue" from small uploads.

    100-continue makes the client wait for the server's go-ahead before it
    sends the body: worth a round trip only for big bodies, which S3 may
    refuse before they are sent. For small ones (manifests, LATEST, records)
    it is pure latency, and with an empty body SeaweedFS leaves a kept-alive
    connection in a state where the next request hangs until the read
    timeout (seen with urllib3 1.26, Python 3.9).
    """
    headers = params.get("headers") or {}
    if "Expect" not in headers:
        return
    body = params.get("body")
    try:
        size = determine_content_length(body) if body is not None else 0
    except Exception:
        return
    if size is not None and size < EXPECT_CONTINUE_MIN:
        del headers["Expect"]


def _root_cause(err: BaseException) -> BaseException:
    """The botocore error under s3transfer's wrappers."""
    seen = 0
    while seen < 5:
        seen += 1
        if isinstance(err, RetriesExceededError) and err.last_exception is not None:
            err = err.last_exception
        elif isinstance(err, (bce.ClientError, bce.BotoCoreError)):
            return err
        elif err.__cause__ is not None:
            err = err.__cause__
        else:
            return err
    return err


class S3ObjectStore(ObjectStore):
    """Objects as S3 objects under `s3://bucket/prefix/`; see the module docstring."""

    def __init__(self, url: str, store_cfg: Optional[StoreSection] = None, *, session: Any = None,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS, connect_timeout: float = 10.0,
                 read_timeout: float = 60.0) -> None:
        """`session`: a boto3 Session (tests; default: one per process, boto3's default credential chain)."""
        self._bucket, self._prefix = parse_s3_url(url)
        self._root = self._prefix + "/" if self._prefix else ""
        self._url = f"s3://{self._bucket}/{self._prefix}" if self._prefix else f"s3://{self._bucket}"
        endpoint = getattr(store_cfg, "endpoint_url", "") or ""
        region = getattr(store_cfg, "region", "") or None
        sse = getattr(store_cfg, "sse", "AES256") if store_cfg is not None else "AES256"
        kms_key_id = getattr(store_cfg, "kms_key_id", "") or ""
        owner = getattr(store_cfg, "expected_bucket_owner", "") or ""
        parallel = int(getattr(store_cfg, "parallel", 8) or 8)
        if sse not in ("AES256", "aws:kms", "none"):
            raise StoreError(f"invalid store.sse {sse!r}", hint='use "AES256", "aws:kms" or "none"')
        if sse == "aws:kms" and not kms_key_id:
            raise StoreError("store.sse = \"aws:kms\" needs store.kms_key_id", hint="a KMS key id, ARN or alias")
        if endpoint and not re.match(r"^https?://[^/\s]+/?$", endpoint):
            raise StoreError(f"invalid store.endpoint_url {endpoint!r}", hint="use http(s)://host[:port]")
        if parallel < 1:
            raise StoreError(f"store.parallel must be at least 1, got {parallel}")
        self._endpoint = endpoint.rstrip("/")
        self._sse = sse
        self._owner = owner
        self._parallel = parallel
        self._sse_params: Dict[str, Any] = {}
        if sse == "AES256":
            self._sse_params = {"ServerSideEncryption": "AES256"}
        elif sse == "aws:kms":
            self._sse_params = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id,
                                "BucketKeyEnabled": True}
        self._sse_rejected: Optional[bool] = None  # probed on the first suspicious write failure
        self._bucket_checked = False
        self._lock = threading.Lock()
        self._session = session or _shared_session()
        self._config = self._client_config(max_attempts, connect_timeout, read_timeout)
        self._region = region
        try:
            self._client = self._make_client(with_sse=True)
        except bce.BotoCoreError as e:
            raise StoreError(f"cannot set up the S3 client for {self._url}: {e}",
                             hint="check store.region and store.endpoint_url") from e
        self._transfer_config = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_CHUNKSIZE,
            max_request_concurrency=parallel,
            max_submission_concurrency=2,
            max_request_queue_size=max(64, 4 * parallel),
            io_chunksize=IO_CHUNKSIZE,
            max_io_queue_size=IO_QUEUE,
            max_in_memory_upload_chunks=parallel,
            max_in_memory_download_chunks=parallel,
        )

    # -- set-up ---------------------------------------------------------------------

    def _client_config(self, max_attempts: int, connect_timeout: float, read_timeout: float) -> Config:
        kw: Dict[str, Any] = {
            "retries": {"mode": "adaptive", "max_attempts": max(1, max_attempts)},
            "max_pool_connections": self._parallel + 2,
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "tcp_keepalive": True,
            "user_agent_extra": "mmbatch",
        }
        if self._endpoint:
            kw["s3"] = {"addressing_style": "path"}
        try:
            # botocore >= 1.36: checksums only where we ask for them (see the module docstring).
            return Config(request_checksum_calculation="when_required",
                          response_checksum_validation="when_required", **kw)
        except TypeError:
            return Config(**kw)

    def _make_client(self, with_sse: bool) -> Any:
        with _CLIENT_LOCK:
            client = self._session.client("s3", region_name=self._region, endpoint_url=self._endpoint or None,
                                          config=self._config)
        client.meta.events.register("before-call.s3", _no_expect_for_small_bodies)
        add: Dict[str, Any] = {}
        if self._owner:
            add["ExpectedBucketOwner"] = self._owner
        if with_sse:
            add.update(self._sse_params)
        if add:
            def inject(params: Dict[str, Any], model: Any, **_: Any) -> None:
                members = model.input_shape.members if model.input_shape is not None else {}
                for name, value in add.items():
                    if name in members:
                        params.setdefault(name, value)

            client.meta.events.register("before-parameter-build.s3", inject)
        return client

    # -- identity -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._url

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def client(self) -> Any:
        """The boto3 client (tests hook their request counters on it)."""
        return self._client

    def describe(self) -> str:
        where = f" at {self._endpoint}" if self._endpoint else ""
        return f"S3 store {self._url}{where}"

    def close(self) -> None:
        close = getattr(self._client, "close", None)
        if close is not None:
            close()

    # -- keys and errors -------------------------------------------------------------

    def _key(self, key: str) -> str:
        validate_key(key)
        if "\\" in key:
            # S3 lists them as typed, but some S3-compatible servers turn them into '/'.
            raise StoreError(f"object key {key!r} contains a backslash, which S3 stores do not accept")
        full = self._root + key
        if len(full.encode("utf-8")) > MAX_S3_KEY_BYTES:
            raise StoreError(f"object key {key[:64]!r}... is too long for S3 under the prefix {self._prefix!r}")
        return full

    def _credentials_source(self) -> str:
        try:
            with _CLIENT_LOCK:
                creds = self._session.get_credentials()
        except Exception:
            return "unknown"
        if creds is None:
            return "none found"
        return getattr(creds, "method", None) or "unknown"

    def _credentials_hint(self) -> str:
        server = (f"the access key and secret that the server at {self._endpoint} knows" if self._endpoint
                  else "the instance role (an instance profile on EC2)")
        return (f"the credentials in use (source: {self._credentials_source()}) are not accepted: mmbatchd "
                f"takes them from the default AWS chain; use {server}, and look for AWS_ACCESS_KEY_ID, "
                f"AWS_PROFILE or ~/.aws files that override it")

    def _denied_hint(self) -> str:
        resource = f"arn:aws:s3:::{self._bucket}/{self._root}*"
        hint = (f"the role (credentials source: {self._credentials_source()}) needs s3:GetObject, s3:PutObject "
                f"and s3:DeleteObject on {resource} and s3:ListBucket on arn:aws:s3:::{self._bucket}; "
                f"check the bucket policy too (see docs/stores.md)")
        if self._sse == "aws:kms":
            hint += "; with aws:kms also kms:GenerateDataKey and kms:Decrypt on store.kms_key_id"
        if self._owner:
            hint += f"; and the bucket must belong to account {self._owner} (store.expected_bucket_owner)"
        if self._endpoint:
            hint += f"; on an S3-compatible server the bucket may not exist: create it ({self._endpoint})"
        return hint

    def _bucket_error(self, op: str, key: str) -> StoreError:
        return StoreError(
            f"cannot {op} {key!r}: bucket {self._bucket!r} does not exist ({self.describe()})",
            hint="create the bucket, or fix store.url" + ("" if self._endpoint else " and store.region"),
        )

    def _what(self, key: str) -> str:
        return f"{key!r} in {self.describe()}" if key else self.describe()

    def _error(self, err: BaseException, op: str, key: str) -> StoreError:
        """A typed StoreError for a botocore/s3transfer failure of `op` on `key`."""
        err = _root_cause(err)
        what = self._what(key)
        if isinstance(err, bce.ClientError):
            code, status = _code(err), _status(err)
            message = err.response.get("Error", {}).get("Message", "") or code
            if code == "NoSuchBucket":
                return self._bucket_error(op, key)
            if code in _NOT_FOUND or (status == 404 and code not in ("NoSuchUpload",)):
                return ObjectNotFound(f"object {what} does not exist")
            if code in _BAD_CREDENTIALS:
                return StoreError(f"cannot {op} {what}: {code}: {message}", hint=self._credentials_hint())
            if code.startswith("KMS.") or (code in _DENIED and "kms" in message.lower()):
                return StoreError(
                    f"cannot {op} {what}: the KMS key refused it ({code}: {message})",
                    hint="check store.kms_key_id (it must exist, be enabled and in the bucket's region) and that "
                         "the role may use it: kms:GenerateDataKey and kms:Decrypt",
                )
            if code in _DENIED or status == 403:
                # A HEAD has no error body, and some servers answer AccessDenied for a missing
                # bucket: a listing says which it is.
                better = self._diagnosis(op, key)
                if better is not None:
                    return better
                return StoreError(f"cannot {op} {what}: access denied ({code})", hint=self._denied_hint())
            if code in _WRONG_REGION:
                return StoreError(f"cannot {op} {what}: {code}: {message}",
                                  hint=f"the bucket {self._bucket!r} is in another region: set store.region to it")
            if code in _BAD_DIGEST:
                return StoreError(f"cannot {op} {what}: the data was corrupted in transit ({code})",
                                  hint="a network or memory fault between this node and the store; retry")
            if code in _TRANSIENT or status >= 500:
                return StoreError(f"cannot {op} {what}: the store keeps failing ({code}: {message})",
                                  hint="S3 was retried with backoff; if this persists, check the service's health")
            return StoreError(f"cannot {op} {what}: {code}: {message}")
        if isinstance(err, _NO_CREDENTIALS):
            return StoreError(
                f"cannot {op} {what}: no usable AWS credentials ({err})",
                hint="on EC2 attach an instance profile (role) to the instance; elsewhere configure the "
                     "default AWS credential chain (environment, ~/.aws)",
            )
        if isinstance(err, bce.FlexibleChecksumError):
            return CorruptObject(f"cannot {op} {what}: the object does not match its stored checksum ({err})")
        if isinstance(err, _UNREACHABLE):
            where = self._endpoint or "S3"
            return StoreError(
                f"store unreachable: cannot {op} {what}: {err}",
                hint=f"check the network path to {where} (security groups, NAT or a VPC endpoint for S3)"
                     + (" and that the server runs" if self._endpoint else ""),
            )
        if isinstance(err, bce.BotoCoreError):
            return StoreError(f"cannot {op} {what}: {err}")
        return StoreError(f"cannot {op} {what}: {type(err).__name__}: {err}")

    def _call(self, op: str, key: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (bce.ClientError, bce.BotoCoreError) as e:
            raise self._error(e, op, key) from e

    def _diagnosis(self, op: str, key: str) -> Optional[StoreError]:
        """A missing bucket or rejected credentials, as a listing reports them; None otherwise."""
        try:
            self._client.list_objects_v2(Bucket=self._bucket, Prefix=self._root, MaxKeys=1)
        except bce.ClientError as e:
            if _code(e) == "NoSuchBucket" or _code(e) in _BAD_CREDENTIALS:
                return self._error(e, op, key)
        except bce.BotoCoreError:
            pass
        else:
            self._bucket_checked = True
        return None

    def _not_found(self, key: str) -> ObjectNotFound:
        """For a bare 404 (HEAD has no error body): the object, unless the bucket itself is missing."""
        self._check_bucket(key)
        return ObjectNotFound(f"object {self._what(key)} does not exist")

    def _check_bucket(self, key: str) -> None:
        if self._bucket_checked:
            return
        # A listing limited to our prefix needs only what the role has anyway (s3:ListBucket on the prefix).
        self._call("look up", key, lambda: self._client.list_objects_v2(
            Bucket=self._bucket, Prefix=self._root, MaxKeys=1))
        self._bucket_checked = True

    # -- SSE support detection ---------------------------------------------------------

    def _write_error(self, err: BaseException, key: str) -> StoreError:
        """The error of a failed write; says so when the server cannot take our SSE headers."""
        cause = _root_cause(err)
        if (self._sse_params and self._endpoint and isinstance(cause, bce.ClientError)
                and (_code(cause) in _SSE_SUSPECT or _status(cause) in (500, 501))
                and self._server_rejects_sse()):
            return StoreError(
                f"cannot write {self._what(key)}: the server rejects server-side encryption "
                f"(sse = {self._sse!r}; it answered {_code(cause)})",
                hint='set store.sse = "none" for S3-compatible servers without SSE (checkpoints then rely on the '
                     'server\'s own at-rest encryption), or enable SSE on the server (SeaweedFS: an SSE-S3 key, '
                     'WEED_S3_SSE_KEK or s3.sse.kek in security.toml; it has no aws:kms)',
            )
        return self._error(err, "write", key)

    def _server_rejects_sse(self) -> bool:
        """Whether an empty object without SSE headers is accepted where ours were not (probed once)."""
        with self._lock:
            if self._sse_rejected is not None:
                return self._sse_rejected
            probe = self._root + _PROBE_PREFIX + secrets.token_hex(8)
            plain = self._make_client(with_sse=False)
            try:
                plain.put_object(Bucket=self._bucket, Key=probe, Body=b"")
            except (bce.ClientError, bce.BotoCoreError):
                self._sse_rejected = False
            else:
                self._sse_rejected = True
                try:
                    plain.delete_object(Bucket=self._bucket, Key=probe)
                except (bce.ClientError, bce.BotoCoreError):
                    log.debug("cannot remove the SSE probe object %s", probe)
            finally:
                getattr(plain, "close", lambda: None)()
            return self._sse_rejected

    # -- writes ---------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        full = self._key(key)
        if len(data) > MULTIPART_THRESHOLD:
            self._upload(key, full, io.BytesIO(data))
            return
        for attempt in range(1, _PUT_ATTEMPTS + 1):
            try:
                self._client.put_object(Bucket=self._bucket, Key=full, Body=data,
                                        ChecksumAlgorithm=CHECKSUM_ALGORITHM)
                return
            except (bce.ClientError, bce.BotoCoreError) as e:
                if attempt < _PUT_ATTEMPTS and isinstance(e, bce.ClientError) and _code(e) in _BAD_DIGEST:
                    log.warning("%s: upload of %r corrupted in transit; sending it again", self.describe(), key)
                    continue
                raise self._write_error(e, key) from e

    def put_file(self, key: str, src_path: str) -> None:
        full = self._key(key)
        try:
            with open(src_path, "rb"):
                pass  # a clear error for a missing or unreadable source, before any request
        except OSError as e:
            raise StoreError(f"cannot read {src_path} to store it as {key!r}: {e.strerror}") from e
        self._upload(key, full, src_path)

    def _upload(self, key: str, full: str, source: Any) -> None:
        """Through s3transfer: one PUT, or a multipart upload that only appears once complete."""
        for attempt in range(1, _PUT_ATTEMPTS + 1):
            if hasattr(source, "seek"):
                source.seek(0)
            try:
                with TransferManager(self._client, self._transfer_config) as manager:
                    manager.upload(source, self._bucket, full,
                                   extra_args={"ChecksumAlgorithm": CHECKSUM_ALGORITHM}).result()
                return
            except OSError as e:
                raise StoreError(f"cannot read the data to store as {self._what(key)}: {e}") from e
            except Exception as e:
                cause = _root_cause(e)
                if (attempt < _PUT_ATTEMPTS and isinstance(cause, bce.ClientError)
                        and _code(cause) in _BAD_DIGEST):
                    continue
                if isinstance(cause, (bce.ClientError, bce.BotoCoreError)):
                    raise self._write_error(cause, key) from e
                raise

    # -- reads ------------------------------------------------------------------------------

    def _get(self, key: str, **range_args: Any) -> Tuple[bytes, Dict[str, Any]]:
        """One GetObject, its body read whole (read again when the stream breaks)."""
        full = self._key(key)
        for attempt in range(1, _READ_ATTEMPTS + 1):
            try:
                resp = self._client.get_object(Bucket=self._bucket, Key=full, **range_args)
                return resp["Body"].read(), resp
            except (bce.IncompleteReadError, bce.ResponseStreamingError, bce.ReadTimeoutError,
                    bce.ConnectionClosedError, bce.FlexibleChecksumError) as e:
                if attempt == _READ_ATTEMPTS:
                    raise self._error(e, "read", key) from e
                log.info("%s: reading %r again after %s", self.describe(), key, e)
            except (bce.ClientError, bce.BotoCoreError) as e:
                raise self._error(e, "read", key) from e
        raise AssertionError("unreachable")

    def get_bytes(self, key: str) -> bytes:
        data, _ = self._get(key, ChecksumMode="ENABLED")
        return data

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"invalid range offset={offset} length={length}")
        if length == 0:
            self.stat(key)  # ObjectNotFound as for any other read
            return b""
        try:
            data, resp = self._get(key, Range=f"bytes={offset}-{offset + length - 1}")
        except StoreError as e:
            cause = e.__cause__
            if isinstance(cause, bce.ClientError) and (_code(cause) == "InvalidRange" or _status(cause) == 416):
                return b""  # the object ends before `offset` (or is empty)
            raise
        if not resp.get("ContentRange"):
            data = data[offset:]  # a server that ignored the Range header sent the whole object
        return data[:length]

    def get_file(self, key: str, dest_path: str) -> None:
        full = self._key(key)
        dest_path = os.path.abspath(dest_path)
        tmp = os.path.join(os.path.dirname(dest_path), RESERVED_PREFIX + "tmp-" + secrets.token_hex(8))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as e:
            raise StoreError(f"cannot write {dest_path} (from {key!r}): {e.strerror}") from e
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)
                try:
                    with TransferManager(self._client, self._transfer_config) as manager:
                        manager.download(self._bucket, full, f).result()
                except OSError as e:
                    raise StoreError(f"cannot write {dest_path} (from {self._what(key)}): {e}") from e
                except Exception as e:
                    cause = _root_cause(e)
                    if isinstance(cause, bce.ClientError) and _status(cause) == 404 and _code(cause) in ("404", ""):
                        raise self._not_found(key) from e
                    if isinstance(cause, (bce.ClientError, bce.BotoCoreError)):
                        raise self._error(cause, "read", key) from e
                    raise
            os.rename(tmp, dest_path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def _head(self, key: str) -> Dict[str, Any]:
        full = self._key(key)
        try:
            return self._client.head_object(Bucket=self._bucket, Key=full)
        except bce.ClientError as e:
            if _status(e) == 404 or _code(e) in _NOT_FOUND:
                raise self._not_found(key) from e
            raise self._error(e, "look up", key) from e
        except bce.BotoCoreError as e:
            raise self._error(e, "look up", key) from e

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except ObjectNotFound:
            return False
        return True

    def stat(self, key: str) -> ObjectInfo:
        head = self._head(key)
        return ObjectInfo(size=int(head["ContentLength"]), mtime=head["LastModified"].timestamp())

    # -- listing ------------------------------------------------------------------------------

    def _listing(self, prefix: str) -> Iterator[Tuple[str, Dict[str, Any]]]:
        prefix = validate_prefix(prefix)
        below = self._key(prefix) + "/" if prefix else self._root
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket, Prefix=below, PaginationConfig={"PageSize": 1000})
        it = iter(pages)
        while True:
            try:
                page = next(it)
            except StopIteration:
                return
            except (bce.ClientError, bce.BotoCoreError) as e:
                raise self._error(e, "list", prefix or "/") from e
            self._bucket_checked = True
            for obj in page.get("Contents", ()):
                key = obj["Key"][len(self._root):]
                try:
                    validate_key(key)
                except StoreError:
                    continue  # not something a key can name: a "directory" marker, another tool's object
                if "\\" in key:
                    continue
                yield key, obj

    def list(self, prefix: str = "") -> Iterator[str]:
        validate_prefix(prefix)  # fail at the call, not at the first next()
        return (key for key, _ in self._listing(prefix))

    def list_info(self, prefix: str = "") -> Iterator[Tuple[str, ObjectInfo]]:
        """From the listing itself (size, LastModified): no request per object."""
        validate_prefix(prefix)
        return ((key, ObjectInfo(size=int(obj["Size"]), mtime=obj["LastModified"].timestamp()))
                for key, obj in self._listing(prefix))

    # -- deletes -----------------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        full = self._key(key)
        self._call("delete", key, lambda: self._client.delete_object(Bucket=self._bucket, Key=full))

    def delete_many(self, keys: Iterable[str]) -> None:
        """DeleteObjects in batches of 1000; every per-key error but "already gone" fails the call."""
        fulls: List[str] = [self._key(k) for k in keys]  # validate all before deleting any
        for i in range(0, len(fulls), _DELETE_BATCH):
            batch = fulls[i:i + _DELETE_BATCH]
            first = batch[0][len(self._root):]
            resp = self._call("delete", first, lambda b=batch: self._client.delete_objects(  # type: ignore[misc]
                Bucket=self._bucket, Delete={"Objects": [{"Key": k} for k in b], "Quiet": True}))
            errors = [e for e in resp.get("Errors", ()) if e.get("Code") not in _NOT_FOUND]
            if errors:
                e0 = errors[0]
                key = str(e0.get("Key", ""))[len(self._root):]
                code = str(e0.get("Code", ""))
                hint = self._denied_hint() if code in _DENIED else None
                raise StoreError(
                    f"cannot delete {self._what(key)}: {code}: {e0.get('Message', '')}"
                    + (f" (and {len(errors) - 1} more objects)" if len(errors) > 1 else ""),
                    hint=hint,
                )

    def mark_garbage(self, keys: Iterable[str]) -> int:
        """Tag each object `mmbatch-gc=garbage` (PutObjectTagging, `parallel` at a time).

        A bucket lifecycle rule filtered on that tag expires what a gc marked
        but could not delete. A PUT of the same key later (a commit uploading
        that chunk again) replaces the object and its tags, so a re-used key
        is never left marked. Gone objects are skipped; a refused tagging
        (a role without s3:PutObjectTagging) is logged once and stops marking,
        and gc deletes as before.
        """
        fulls = [(k, self._key(k)) for k in keys]
        if not fulls:
            return 0
        tagging = {"TagSet": [{"Key": GARBAGE_TAG_KEY, "Value": GARBAGE_TAG_VALUE}]}
        refused = threading.Event()

        def mark(item: Tuple[str, str]) -> bool:
            key, full = item
            if refused.is_set():
                return False
            try:
                self._client.put_object_tagging(Bucket=self._bucket, Key=full, Tagging=tagging)
                return True
            except bce.ClientError as e:
                if _status(e) == 404 or _code(e) in _NOT_FOUND:
                    return False
                if (_code(e) in _DENIED or _status(e) == 403) and not refused.is_set():
                    refused.set()
                    log.warning("%s: cannot tag garbage for the lifecycle rule (%s); objects are still deleted. "
                                "Allow s3:PutObjectTagging on the prefix (docs/aws.md)", self.describe(), _code(e))
                    return False
                log.warning("%s: cannot tag %r as garbage: %s", self.describe(), key, _code(e))
            except bce.BotoCoreError as e:
                log.warning("%s: cannot tag %r as garbage: %s", self.describe(), key, e)
            return False

        with ThreadPoolExecutor(max_workers=self._parallel, thread_name_prefix="mmbatch-gc-tag") as pool:
            return sum(pool.map(mark, fulls))
