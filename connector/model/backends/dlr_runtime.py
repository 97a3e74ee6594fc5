"""What must happen around the `dlr` package before and while it loads a model.

Kept apart from the backend because none of it may import `dlr`: DLR 1.x's "phone home" feature
runs when `dlr` is first imported (``dlr/counter/phone_home.py`` creates its reporter at module
level, and a model load then posts to api.neo-dlr.amazonaws.com), so it has to be switched off in
the installed package's ``counter/ccm_config.json`` *before* that import. Calling
``PhoneHome.disable_feature()`` afterwards is too late for the import-time report.

Also here: the CUDA driver probe (GPU asked for -> check before DLR tries) and the capture of
libdlr's native stderr, which is where DLR 1.6 puts the reason a model failed to load.
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import logging
import os
import re
import sys
import tempfile
import threading
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ...errors import BackendError
from ...files import write_atomic

log = logging.getLogger(__name__)

PHONE_HOME_CONFIG = "ccm_config.json"
PHONE_HOME_KEY = "enable_phone_home"
PHONE_HOME_URL = "https://api.neo-dlr.amazonaws.com"
INSTALL_HINT = ("install it with: pip install 'ml-object-detection-connector[dlr]' (dlr==1.6.0, the last x86_64 wheel "
                "that ships libdlr.so), or put the libdlr.so built for this device into the "
                "model directory")


def find_dlr_package() -> Optional[str]:
    """Directory of the installed `dlr` package, found without importing it (None: not installed)."""
    try:
        spec = importlib.util.find_spec("dlr")
    except (ImportError, ValueError):  # ValueError: a 'dlr' in sys.modules without a spec
        module = sys.modules.get("dlr")
        path = getattr(module, "__file__", None)
        return os.path.dirname(os.path.abspath(path)) if path else None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if locations:
        return os.path.abspath(locations[0])
    return os.path.dirname(os.path.abspath(spec.origin)) if spec.origin else None


def _read_config(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def phone_home_config_path(package_dir: str) -> str:
    return os.path.join(package_dir, "counter", PHONE_HOME_CONFIG)


def phone_home_disabled(package_dir: str) -> bool:
    """True when the package's config explicitly switches phone-home off.

    Stricter than DLR itself (which also treats an unreadable or key-less file as "off"): only an
    explicit false counts, so that a DLR change of default can never turn it back on silently.
    """
    data = _read_config(phone_home_config_path(package_dir))
    return data is not None and data.get(PHONE_HOME_KEY) is False


def disable_phone_home(package_dir: Optional[str] = None) -> Optional[str]:
    """Make sure DLR's phone-home is off for the `dlr` package in `package_dir` (default: the one
    `import dlr` would load). Returns the config file path, or None when that dlr has no
    phone-home module. Raises BackendError when it cannot be switched off.
    """
    if package_dir is None:
        package_dir = find_dlr_package()
        if package_dir is None:
            raise BackendError("the DLR runtime (Python package 'dlr') is not installed; "
                               + INSTALL_HINT)
    counter_dir = os.path.join(package_dir, "counter")
    if not os.path.isdir(counter_dir):
        log.debug("dlr in %s has no phone-home module (no counter/ directory)", package_dir)
        return None
    path = phone_home_config_path(package_dir)
    if not phone_home_disabled(package_dir):
        current = _read_config(path) or {}
        current[PHONE_HOME_KEY] = False
        try:
            # Readable by every user that runs DLR from this install (it reads the file at import).
            write_atomic(path, json.dumps(current).encode("utf-8"), mode=0o644)
        except OSError as e:
            raise BackendError(
                "refusing to load DLR: its usage reporting ('phone home' to {}) could not be "
                "switched off because {!r} cannot be written ({}). Create that file with the "
                "content {{\"enable_phone_home\": false}} (as the user who installed dlr) or make "
                "it writable for this service.".format(PHONE_HOME_URL, path, e)) from None
        log.info("switched off DLR's phone-home (usage reporting to %s) in %s", PHONE_HOME_URL, path)
    _silence_loaded_phone_home()
    return path


def _silence_loaded_phone_home() -> None:
    """If something imported `dlr` before us, its reporter object already exists and every model
    load would still post; drop it (the decorator reads the module-level MGR at call time)."""
    module = sys.modules.get("dlr.counter.phone_home")
    if module is None or getattr(module, "MGR", None) is None:
        return
    log.warning("dlr was imported before its phone-home could be switched off; it may already "
                "have reported the runtime load. Disabling its reporter now.")
    module.MGR = None
    cls = getattr(module, "PhoneHome", None)
    if cls is not None:
        cls.instance = None
        cls._enable_feature = False


def cuda_problem() -> Optional[str]:
    """Why no usable CUDA GPU exists here, or None when the driver reports at least one device."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        return "the NVIDIA CUDA driver library libcuda.so.1 cannot be loaded ({})".format(e)
    try:
        rc = cuda.cuInit(0)
        if rc != 0:
            return "the CUDA driver failed to initialise (cuInit returned {})".format(
                _cuda_error_name(cuda, rc))
        count = ctypes.c_int(0)
        rc = cuda.cuDeviceGetCount(ctypes.byref(count))
        if rc != 0:
            return "the CUDA driver cannot count devices (cuDeviceGetCount returned {})".format(
                _cuda_error_name(cuda, rc))
        if count.value < 1:
            return "the CUDA driver reports no GPU device"
    except AttributeError as e:  # not a real driver library
        return "libcuda.so.1 is not a usable CUDA driver ({})".format(e)
    return None


def _cuda_error_name(cuda: Any, rc: int) -> str:
    name = ctypes.c_char_p()
    try:
        if cuda.cuGetErrorName(rc, ctypes.byref(name)) == 0 and name.value:
            return "{} ({})".format(rc, name.value.decode("ascii", "replace"))
    except AttributeError:
        pass
    return str(rc)


class NativeOutput:
    """What libdlr logged on file descriptor 2 while it was captured."""

    def __init__(self) -> None:
        self.messages: List[str] = []  # cleaned, one per native log message


_capture_lock = threading.RLock()


@contextlib.contextmanager
def capture_native_stderr() -> Iterator[NativeOutput]:
    """Redirect fd 2 to a temporary file for the duration of the block.

    libdlr 1.6's CreateDLRModel reports why a model failed to load only by logging it to
    std::cerr; DLRGetLastError() then returns an empty string or the previous call's error.
    Loading is rare (start-up), so the brief redirection is affordable. Anything else written to
    stderr meanwhile (Python logging, other threads) is written back to the real stderr after.
    """
    out = NativeOutput()
    # fd 2 is process-wide: overlapping captures from two threads would restore it in the wrong
    # order and leave stderr pointing at a temporary file. Re-entrant for nesting in one thread.
    with _capture_lock:
        saved = -1
        try:
            saved = os.dup(2)
            sink = tempfile.TemporaryFile()
        except OSError:  # no stderr at all (daemonised), or no temp space: run uncaptured
            if saved >= 0:
                os.close(saved)
            yield out
            return
        with sink:
            _flush_python_stderr()
            os.dup2(sink.fileno(), 2)
            try:
                yield out
            finally:
                _flush_python_stderr()
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                out.messages, other = split_native_output(sink.read().decode("utf-8", "replace"))
                if other:
                    with contextlib.suppress(OSError):
                        os.write(2, other.encode("utf-8", "replace"))


# dmlc/TVM log lines start with "[hh:mm:ss] file:line: "; stack traces follow them.
_NATIVE_START = re.compile(r"^\[\d\d:\d\d:\d\d\] \S+:\d+: ")
_NATIVE_TRACE = re.compile(r'^\s*(Stack trace:|\[bt\] |File ")')


def split_native_output(text: str) -> Tuple[List[str], str]:
    """(cleaned libdlr log messages, everything else) from captured stderr text."""
    native: List[str] = []
    other: List[str] = []
    in_native = False
    for line in text.splitlines(keepends=True):
        if _NATIVE_START.match(line):
            in_native = True
            message = clean_dlr_message(line)
            if message and message not in native:
                native.append(message)
        elif in_native and (not line.strip() or _NATIVE_TRACE.match(line)):
            continue
        else:
            in_native = False
            other.append(line)
    return native, "".join(other)


def _flush_python_stderr() -> None:
    with contextlib.suppress(Exception):
        if sys.stderr is not None:
            sys.stderr.flush()


_LOG_PREFIX = re.compile(r"^\s*(\[\d\d:\d\d:\d\d\]\s+\S+:\d+:\s*)+")
_PACKED_CHECK = re.compile(r"Check failed: ret == 0 \(-?\d+ vs\. 0\) : ")


def clean_dlr_message(text: str) -> str:
    """The useful part of a DLR/TVM error: without timestamps, source locations, stack traces,
    and TVM's generic "ret == 0" wrapper around an operator's own message."""
    lines: List[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("Stack trace") or stripped.startswith("[bt]") or \
                stripped.startswith('File "'):
            continue
        stripped = _LOG_PREFIX.sub("", stripped)
        stripped = _PACKED_CHECK.sub("", stripped)
        if stripped and stripped not in lines:
            lines.append(stripped)
    return "; ".join(lines)
