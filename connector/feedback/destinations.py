"""Where kept samples go: S3 (boto3) and a local directory (image plus a JSON sidecar).

A failure is either :class:`PermanentError` (retrying cannot help: no such bucket, access denied,
bad credentials; the request gets one ``fail`` status) or :class:`TransientError` (the link, the
server or the credentials source is away; the request stays in the spool and is retried).

S3: boto3's standard credential chain; ``AWS_ENDPOINT_URL_S3`` (or ``AWS_ENDPOINT_URL``) points
at an S3-compatible store. They are read here as well as by boto3, because the older boto3 a
Python 3.7 Lambda may have ignores them. boto3's own retries are off: the spool retries.
"""
from __future__ import annotations

import datetime
import errno
import json
import os
import threading
import uuid
from typing import Any, Callable, Dict, Mapping, Optional

from .config import FeedbackConfig
from .spool import write_atomic

PERMANENT_S3_CODES = frozenset([
    "NoSuchBucket", "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId",
    "SignatureDoesNotMatch", "InvalidBucketName", "AccountProblem", "InvalidArgument",
    "MetadataTooLarge", "EntityTooLarge", "InvalidStorageClass", "InvalidRequest",
    "AuthorizationHeaderMalformed", "InvalidToken", "ExpiredToken", "NoSuchKey",
])


class DeliveryError(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class PermanentError(DeliveryError):
    """Retrying cannot help; the request fails with this error name."""


class TransientError(DeliveryError):
    """Try again later."""


def object_key(prefix: str, file_ext: str, sample_id: Optional[str] = None) -> str:
    """``<prefix stripped of slashes>/<uuid4>.<ext>``, without an empty segment or a dangling dot."""
    name = sample_id or str(uuid.uuid4())
    if file_ext:
        name += "." + file_ext.lstrip(".")
    prefix = prefix.strip("/")
    return prefix + "/" + name if prefix else name


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def s3_client_factory(environ: Optional[Mapping[str, str]] = None) -> Callable[[], Any]:
    """A function making one boto3 S3 client (lazily: boto3 is the user's install)."""
    env = os.environ if environ is None else environ

    def make() -> Any:
        import boto3
        from botocore.config import Config

        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        return boto3.session.Session().client(
            "s3", endpoint_url=endpoint,
            config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=30))
    return make


class S3Destination(object):
    def __init__(self, client_factory: Callable[[], Any]) -> None:
        self._factory = client_factory
        self._client: Any = None
        self._lock = threading.Lock()

    def _s3(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._factory()
            return self._client

    def put(self, config: FeedbackConfig, key: str, image: bytes, metadata: Dict[str, str]
            ) -> Dict[str, Any]:
        """put_object; the response with "bucket" and "key" added (the status's s3_response)."""
        try:
            import botocore.exceptions as bex
        except ImportError:
            raise PermanentError("ImportError", "boto3 is not installed; install it (pip install "
                                                "boto3) to upload feedback samples to S3")
        try:
            response = self._s3().put_object(Bucket=config.bucket, Key=key, Body=image,
                                             ContentType=config.content_type, Metadata=metadata)
        except bex.ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code") or "ClientError")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            message = "{}: {}".format(code, error.get("Message") or exc)
            if code in PERMANENT_S3_CODES or (400 <= int(status) < 500 and int(status) not in (408, 429)):
                raise PermanentError(code, message)
            raise TransientError(code, message)
        except bex.ParamValidationError as exc:  # the request itself is wrong: it stays wrong
            raise PermanentError(type(exc).__name__, str(exc))
        except bex.NoCredentialsError as exc:
            # Inside Greengrass the credentials come from the core's token service, which may
            # simply not be up yet.
            raise TransientError(type(exc).__name__, str(exc))
        except (bex.BotoCoreError, OSError) as exc:
            raise TransientError(type(exc).__name__, str(exc))
        response = _json_safe(response)
        response.update(bucket=config.bucket, key=key)
        return response


def utc_now_text() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


class LocalDirectory(object):
    """``<local-directory>/<key>`` and ``<...>.json``: prediction, metadata, time, ids."""

    def put(self, config: FeedbackConfig, key: str, image: bytes, sidecar: Dict[str, Any]
            ) -> Dict[str, Any]:
        path = os.path.join(str(config.local_directory), key)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_atomic(path, image)
            write_atomic(path + ".json", json.dumps(sidecar, indent=1).encode("utf-8"))
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
            message = "cannot write {}: {}".format(path, exc.strerror or exc)
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR):
                raise PermanentError(name, message)
            raise TransientError(name, message)  # e.g. ENOSPC: the card may get room again
        return {"path": path, "sidecar": path + ".json"}
