"""``s3://bucket/prefix`` backend (boto3).

Endpoint, region, addressing style and credentials come from the standard
boto3 chain (``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``,
``AWS_PROFILE``, ``~/.aws/config`` ...).  A site that needs per-store
settings adds URL query parameters: ``endpoint``, ``region``,
``addressing`` (``path``/``virtual``/``auto``), ``profile``, ``verify``
(``0`` or a CA bundle path).  Secrets are never accepted in the URL, so the
URL can be logged.

Create-if-absent is ``PutObject`` with ``If-None-Match: *``: the server
answers 412 when the key exists.  botocore's own retries are switched off;
persistjob retries the retryable branch itself (see ``retry.py``).
"""

from typing import Any, Dict, Iterable, Iterator, List, Optional
from urllib.parse import parse_qs

from ..errors import (
    InvalidURL,
    ObjectExists,
    ObjectNotFound,
    StorageConfigError,
    StorageError,
    StorageUnavailable,
)
from ..identity import shown_url
from .base import Backend, ObjectInfo, check_key, split_url, tls_trust_error

_PARAMS = {"endpoint", "region", "addressing", "profile", "verify"}
_TLS_HINT = "set AWS_CA_BUNDLE to a file of the CA certificates to trust, or add ?verify=/path/to/ca.pem to the store URL"
_SECRET_PARAMS = {"access_key", "secret_key", "aws_access_key_id", "aws_secret_access_key", "token", "session_token"}

_RETRYABLE_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
    "InternalError", "ServiceUnavailable", "OperationAborted", "ConditionalRequestConflict",
    "RequestLimitExceeded", "TooManyRequests",
}
_CREDENTIAL_CODES = {
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
    "InvalidToken", "ExpiredToken", "AccountProblem", "Forbidden", "InvalidSecurity",
}


def classify_s3_error(code: str, status: int, what: str) -> StorageError:
    """Map an S3 error code and HTTP status to our error hierarchy.

    412 is fencing (never retried); 409, 429, 5xx and throttling are the
    retryable branch; credential and bucket problems are configuration
    errors (exit 78).
    """
    if status == 412 or code == "PreconditionFailed":
        return ObjectExists(what)
    if code in ("NoSuchKey", "NotFound") or (status == 404 and code != "NoSuchBucket"):
        return ObjectNotFound(what)
    if code == "NoSuchBucket":
        return StorageConfigError("S3 bucket does not exist (%s)" % what)
    if code in _RETRYABLE_CODES or status in (408, 409, 429) or status >= 500:
        return StorageUnavailable("S3 %s %s: %s" % (status, code, what))
    if code in _CREDENTIAL_CODES or status in (401, 403):
        return StorageConfigError("S3 refused the credentials or permissions (%s %s) for %s" % (status, code, what))
    if 400 <= status < 500:
        return StorageConfigError("S3 rejected the request (%s %s) for %s" % (status, code, what))
    return StorageError("S3 error %s %s: %s" % (status, code, what))


class S3Backend(Backend):
    def __init__(self, bucket: str, prefix: str, client: Any, url: str) -> None:
        self.bucket = bucket
        self.prefix = prefix  # "" or "some/prefix/"
        self.client = client
        self.url = url

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _call(self, what: str, fn: Any, **kw: Any) -> Any:
        import botocore.exceptions as be

        try:
            return fn(**kw)
        except be.ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code.isdigit() and not status:
                status = int(code)
            if code == "NoSuchBucket":
                raise StorageConfigError("S3 bucket %r does not exist at %s" % (self.bucket, self.client.meta.endpoint_url)) from None
            raise classify_s3_error(code, status, what) from None
        except be.NoCredentialsError:
            raise StorageConfigError("S3: no credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)") from None
        except be.ParamValidationError as exc:
            raise StorageConfigError("S3: invalid request: %s" % str(exc).splitlines()[0]) from None
        except be.SSLError as exc:
            trust = tls_trust_error(self.client.meta.endpoint_url, str(exc), _TLS_HINT)
            raise trust or StorageUnavailable("S3 TLS failure: %s" % str(exc).splitlines()[0]) from None
        except (be.EndpointConnectionError, be.ConnectionError, be.HTTPClientError) as exc:
            raise StorageUnavailable("S3 unreachable: %s" % type(exc).__name__) from None
        except be.BotoCoreError as exc:
            raise StorageError("S3: %s" % str(exc).splitlines()[0]) from None

    def get(self, key: str) -> bytes:
        k = self._key(key)
        resp = self._call(key, self.client.get_object, Bucket=self.bucket, Key=k)
        try:
            return resp["Body"].read()
        except Exception as exc:  # a connection dropped while streaming the body
            raise StorageUnavailable("S3 read of %s interrupted: %s" % (key, type(exc).__name__)) from None

    def put(self, key: str, data: bytes, immutable: bool = False) -> None:
        self._call(key, self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_if_absent(self, key: str, data: bytes) -> None:
        self._call(key, self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")

    def exists(self, key: str) -> bool:
        try:
            self._call(key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str, start_after: Optional[str] = None) -> Iterator[ObjectInfo]:
        kw = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        if start_after is not None:
            kw["StartAfter"] = self.prefix + start_after
        token = None
        n = len(self.prefix)
        while True:
            if token:
                kw["ContinuationToken"] = token
            resp = self._call(prefix, self.client.list_objects_v2, **kw)
            for obj in resp.get("Contents", ()):
                yield ObjectInfo(obj["Key"][n:], int(obj.get("Size", 0)), obj["LastModified"].timestamp())
            if not resp.get("IsTruncated"):
                return
            token = resp.get("NextContinuationToken")

    def delete(self, key: str) -> None:
        try:
            self._call(key, self.client.delete_object, Bucket=self.bucket, Key=self._key(key))
        except ObjectNotFound:
            pass

    def delete_many(self, keys: Iterable[str]) -> None:
        batch: List[Dict[str, str]] = []
        for key in keys:
            batch.append({"Key": self._key(key)})
            if len(batch) == 1000:
                self._delete_batch(batch)
                batch = []
        if batch:
            self._delete_batch(batch)

    def _delete_batch(self, batch: List[Dict[str, str]]) -> None:
        resp = self._call("delete", self.client.delete_objects, Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        errors = [e for e in resp.get("Errors", ()) if e.get("Code") != "NoSuchKey"]
        if errors:
            e = errors[0]
            raise classify_s3_error(str(e.get("Code", "")), 0, "delete %s" % e.get("Key"))


def make_client(endpoint: Optional[str] = None, region: Optional[str] = None, addressing: Optional[str] = None,
                profile: Optional[str] = None, verify: Any = None, max_pool: int = 32) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:  # pragma: no cover - boto3 is a declared dependency
        raise StorageConfigError("s3:// stores need boto3 (pip install boto3)") from None
    import botocore.exceptions as be

    from ..credentials import botocore_session

    cfg = Config(
        retries={"max_attempts": 1, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=max_pool,
        s3={"addressing_style": addressing} if addressing else None,
    )
    try:
        session = boto3.session.Session(botocore_session=botocore_session(profile))
        return session.client("s3", endpoint_url=endpoint, region_name=region, config=cfg, verify=verify)
    except be.ProfileNotFound:
        raise StorageConfigError("S3: AWS profile %r not found" % profile) from None
    except ValueError as exc:
        raise InvalidURL("S3 endpoint invalid: %s" % exc) from None
    except be.BotoCoreError as exc:
        raise StorageConfigError("S3 client: %s" % str(exc).splitlines()[0]) from None


def from_url(url: str) -> Optional[Backend]:
    scheme, rest = split_url(url)
    if scheme != "s3":
        return None
    path, _, query = rest.partition("?")
    bucket, _, prefix = path.partition("/")
    import re

    if not re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", bucket or ""):
        raise InvalidURL("malformed store URL '%s': bad bucket name" % shown_url(url))
    prefix = prefix.strip("/")
    if prefix:
        try:
            check_key(prefix)
        except ValueError:
            raise InvalidURL("malformed store URL '%s': bad prefix" % shown_url(url)) from None
        prefix += "/"
    params = parse_qs(query, keep_blank_values=True) if query else {}
    secrets = set(k.lower() for k in params) & _SECRET_PARAMS
    if secrets:
        raise InvalidURL("secrets do not belong in the store URL; use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE")
    unknown = set(params) - _PARAMS
    if unknown:
        raise InvalidURL("s3 store: unknown URL parameter(s) %s (known: %s)" % (", ".join(sorted(unknown)), ", ".join(sorted(_PARAMS))))
    p = {k: v[-1] for k, v in params.items()}
    addressing = p.get("addressing")
    if addressing and addressing not in ("path", "virtual", "auto"):
        raise InvalidURL("s3 store: addressing must be path, virtual or auto")
    verify: Any = p.get("verify")
    if verify in ("0", "false", "no"):
        verify = False
    elif verify in ("1", "true", "yes", None, ""):
        verify = None
    client = make_client(p.get("endpoint") or None, p.get("region") or None, addressing, p.get("profile") or None, verify)
    plain = "s3://%s/%s" % (bucket, prefix)
    return S3Backend(bucket, prefix, client, plain)
