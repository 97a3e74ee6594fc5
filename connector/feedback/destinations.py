"""Where kept samples go: S3 (boto3) and a local directory (image plus a JSON sidecar).

A failure is either :class:`PermanentError` (retrying cannot help: no such bucket, access denied,
bad credentials; the request gets one ``fail`` status) or :class:`TransientError` (the link, the
server or the credentials source is away; the request stays in the spool and is retried).

S3: boto3's standard credential chain; ``AWS_ENDPOINT_URL_S3`` (or ``AWS_ENDPOINT_URL``) points
at an S3-compatible store. They are read here as well as by boto3, because the older boto3 a
Python 3.7 Lambda may have ignores them. boto3's own retries are off: the spool retries.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import re
import stat
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Mapping, Optional

from .. import settings
from ..errors import ParameterError, excerpt
from ..files import DIRECTORY_FLAGS, OPERATOR_DIRECTORY_FLAGS, directory_reason, write_at
from .config import FeedbackConfig
from .records import UUID_PATTERN

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

    def __init__(self, name: str, message: str, disk_full: bool = False) -> None:
        super().__init__(name, message)
        self.disk_full = disk_full  # ENOSPC, EDQUOT, EFBIG: counted apart


def checked_sample(sample: Any) -> str:
    """`sample` when it is a uuid4 (what the service generates); it becomes a key and a file name."""
    if not isinstance(sample, str) or re.fullmatch(UUID_PATTERN, sample) is None:
        raise PermanentError("InvalidSample", "sample id {} is not a uuid4".format(excerpt(sample, 100)))
    return sample


def object_key(prefix: str, file_ext: str, sample_id: Optional[str] = None) -> str:
    """``<prefix stripped of slashes>/<uuid4>.<ext>``, without an empty segment or a dangling dot.
    `prefix` and `file_ext` are the config's (checked at start-up), `sample_id` a uuid4."""
    name = sample_id or str(uuid.uuid4())
    if file_ext:
        name += "." + file_ext.lstrip(".")
    prefix = prefix.strip("/")
    return prefix + "/" + name if prefix else name


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def s3_client_factory(environ: Optional[Mapping[str, str]] = None) -> Callable[[], Any]:
    """A function making one boto3 S3 client (lazily: boto3 is the user's install)."""
    endpoint = settings.get("AWS_ENDPOINT_URL_S3", environ) or settings.get("AWS_ENDPOINT_URL", environ) or None

    def make() -> Any:
        import boto3
        from botocore.config import Config

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


# A full disk, a quota, or a file-size limit: the card may get room again, so retry, but count it.
DISK_FULL_ERRNOS = frozenset([errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
_PERMANENT_ERRNOS = frozenset([errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.ELOOP,
                               errno.EISDIR])
LOCAL_FULL = "LocalDirectoryFull"
UNSAFE_LOCAL = "UnsafeLocalDirectory"
# A full local directory is counted again at most this often (seconds): a count walks the tree.
RECOUNT_INTERVAL_S = 60.0


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def _usage(root: str) -> int:
    """Bytes of the regular files under `root` (links are neither followed nor counted)."""
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(directory, name))
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
    return total


class UnsafeRoot(Exception):
    """Another user could plant or replace samples in a local-directory; the message says why."""


def _root_reason(root: str, fd: int) -> Optional[str]:
    """Why another user could plant or replace samples in the local directory `root`, opened as
    `fd`; None when no one could. The directory opened must be this user's (or root's) and
    writable by no one else; the path and the directories above it must keep the rule of
    connector.files; a symbolic link at `root` must be this user's or root's (one another user
    planted in a sticky directory such as /tmp could lead to any directory of ours); and the path
    must still lead to the directory opened (it was not swapped while it was checked)."""
    reason = directory_reason(root)
    if reason:
        return reason
    link = os.lstat(root)
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in (0, os.geteuid()):
        return "{} is a symbolic link of uid {}, not of this user (uid {}) or root".format(
            root, link.st_uid, os.geteuid())
    opened = os.fstat(fd)
    if opened.st_uid not in (0, os.geteuid()) or opened.st_mode & 0o022:
        return "{} belongs to uid {} with mode {:o}; it must be this user's (uid {}) and writable by no " \
               "one else".format(root, opened.st_uid, stat.S_IMODE(opened.st_mode), os.geteuid())
    now = os.stat(root)
    if (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino):
        return "{} was replaced while it was checked".format(root)
    return None


class LocalDirectory(object):
    """``<local-directory>/<prefix>/<sample>.<ext>`` and ``<...>.json``: prediction, metadata, time, ids.

    Names come only from the config's checked prefix and extension and the sample's uuid. The
    root is created at start when missing and checked then and before every sample (see
    :meth:`_open_root`); below it each directory is opened without following links, files are
    written with :func:`write_at` (no planted file or link is written through); files 0600 and
    directories 0700, or 0640/0750 with FeedbackFilesGroup. The directory holds at most the config's
    ``local-directory-max-bytes``: a sample that does not fit fails as ``LocalDirectoryFull``."""

    def __init__(self, gid: Optional[int] = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.gid = gid
        self.file_mode = 0o640 if gid is not None else 0o600
        self.dir_mode = 0o750 if gid is not None else 0o700
        self._clock = clock
        self._used: Dict[str, int] = {}  # bytes under each local directory, as far as we know
        self._counted: Dict[str, float] = {}  # when each was last counted (clock)
        self._lock = threading.Lock()

    def check_root(self, config: FeedbackConfig) -> None:
        """Create the config's local-directory when missing (the mode and group of the samples'
        directories) and check it: ParameterError (one line, with the fix) when another user could
        plant or replace samples in it (the rule of connector.files). Created now, not by the first
        sample: until then another user could make it in a directory like /tmp."""
        root = str(config.local_directory)
        try:
            with self._lock:
                os.close(self._open_root(root))
        except UnsafeRoot as exc:
            raise ParameterError("unsafe local-directory of config {}: {}; another user could plant or "
                                 "replace samples. Fix: chmod go-w (and chown to this user) the "
                                 "directories named, or choose a directory only this user can "
                                 "write".format(config.config_id, exc)) from None
        except OSError as exc:
            why = "it is not a directory" if exc.errno == errno.ENOTDIR else exc.strerror or str(exc)
            raise ParameterError("cannot use local-directory {} of config {}: {}".format(
                root, config.config_id, why)) from None

    def put(self, config: FeedbackConfig, sample: str, image: bytes, sidecar: Dict[str, Any]
            ) -> Dict[str, Any]:
        key = object_key(config.prefix, config.file_ext, checked_sample(sample))
        root = str(config.local_directory)
        path = os.path.join(root, key)
        body = json.dumps(sidecar, indent=1).encode("utf-8")
        try:
            with self._lock:
                self._reserve(root, len(image) + len(body), config.local_max_bytes)
                fd = self._open_directories(root, key.split("/")[:-1])
                try:
                    name = key.rsplit("/", 1)[-1]
                    write_at(fd, name, image, self.file_mode, self.gid)
                    write_at(fd, name + ".json", body, self.file_mode, self.gid)
                finally:
                    os.close(fd)
                self._used[root] += len(image) + len(body)
        except UnsafeRoot as exc:
            raise PermanentError(UNSAFE_LOCAL, "unsafe local-directory: {}; another user could plant or "
                                 "replace samples, so none is written there".format(exc))
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
            message = "cannot write {}: {}".format(path, exc.strerror or exc)
            if exc.errno in _PERMANENT_ERRNOS:
                raise PermanentError(name, message)
            raise TransientError(name, message, disk_full=is_disk_full(exc))
        return {"path": path, "sidecar": path + ".json"}

    def _reserve(self, root: str, size: int, budget: int) -> None:
        """PermanentError LocalDirectoryFull when `size` more bytes would pass the budget. Before
        refusing, the directory is counted afresh (someone may have moved samples away), but at
        most once every RECOUNT_INTERVAL_S: a count walks the whole tree, and a full directory
        would otherwise be walked again for every sample."""
        now = self._clock()
        last = self._counted.get(root)
        if last is None or (self._used[root] + size > budget and now - last >= RECOUNT_INTERVAL_S):
            self._used[root] = _usage(root)
            self._counted[root] = now
        if self._used[root] + size > budget:
            raise PermanentError(LOCAL_FULL, "local-directory {} holds {} bytes; this sample's {} would "
                                 "pass local-directory-max-bytes={}".format(root, self._used[root], size,
                                                                            budget))

    def _open_root(self, root: str) -> int:
        """A descriptor of `root` (an operator's link is followed), created when missing; UnsafeRoot
        when another user could plant or replace samples in it. Checked every time, not once: a
        directory removed since start (a cleaner of /tmp) could have been made again by anyone."""
        created = False
        if not os.path.lexists(root):
            os.makedirs(os.path.dirname(root), exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(root, self.dir_mode)
                created = True
        fd = os.open(root, OPERATOR_DIRECTORY_FLAGS)
        try:
            if created:
                self._own(fd)
            reason = _root_reason(root, fd)
            if reason:
                raise UnsafeRoot(reason)
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _open_directories(self, root: str, segments: List[str]) -> int:
        """A descriptor of root/segments..., creating what is missing; no segment is a link."""
        fd = self._open_root(root)
        try:
            for segment in segments:
                try:
                    os.mkdir(segment, self.dir_mode, dir_fd=fd)
                    created = True
                except FileExistsError:
                    created = False
                child = os.open(segment, DIRECTORY_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
                if created:
                    self._own(fd)
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _own(self, target: Any) -> None:
        """The mode (and group) a directory we created must have, whatever the umask."""
        if self.gid is not None:
            os.chown(target, -1, self.gid)
        os.chmod(target, self.dir_mode)
