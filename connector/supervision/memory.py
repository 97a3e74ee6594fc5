"""How much memory the inference workers use, and how much more this machine lets them take.

* :func:`resident_kb` - a process's resident memory (VmRSS), the supervisor's watchdog reading;
* :func:`mem_available_kb` - the machine's MemAvailable;
* :func:`cgroup_room_kb` - what this process's memory cgroup (v1 or v2, and every cgroup above it)
  still allows; :func:`cgroup_visible` - whether any of them can be seen at all.

Every reader of the machine's state takes the root of the file system to read (`/`, or a tree
written by a test) and answers None for "no information": a missing, unreadable, oversized or
garbled file is never an error, because the answer only sizes a default. Files are read with the
standard library and at most READ_CAP bytes each (a /proc file that long is not the one we expect).
"""
from __future__ import annotations

import os
from typing import Iterator, List, Optional, Tuple

READ_CAP = 64 * 1024
# cgroup v1 writes "no limit" as the largest page-aligned counter (9223372036854771712 on 4 KiB
# pages); v2 writes "max". Any limit from 2**60 bytes (an exbibyte) on is treated as none.
NO_LIMIT_BYTES = 1 << 60
MAX_DEPTH = 64  # cgroup levels walked upwards; real hierarchies are a handful deep


def _read(path: str, cap: int = READ_CAP) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            data = f.read(cap + 1)
    except (OSError, ValueError):
        return None
    if len(data) > cap:
        return None
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        return None


def resident_kb(pid: int) -> Optional[int]:
    """VmRSS of a process in KiB (Linux /proc), None where it cannot be read."""
    try:
        with open("/proc/{}/status".format(pid), "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def mem_available_kb(root: str = "/") -> Optional[int]:
    """/proc/meminfo's MemAvailable in KiB (the kernel's estimate of what can be allocated
    without swapping), None where it cannot be read."""
    text = _read(os.path.join(root, "proc", "meminfo"))
    for line in (text or "").splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "MemAvailable:" and fields[1].isdigit():
            if len(fields) == 2 or fields[2] == "kB":
                return int(fields[1])
    return None


def _cgroup_lines(root: str) -> List[Tuple[str, str]]:
    """(controllers, path) of each line of /proc/self/cgroup ("4:memory:/greengrass/x" for v1,
    "0::/system.slice/x.service" for v2)."""
    lines = []
    for line in (_read(os.path.join(root, "proc", "self", "cgroup")) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[2].startswith("/"):
            lines.append((parts[1], parts[2]))
    return lines


def _levels(mount: str, path: str) -> Iterator[str]:
    """The cgroup's directory under `mount` and every one above it, up to the mount itself. Where
    the cgroup's own directory is absent (a container that mounts only its cgroup, at the root)
    the levels that exist still answer."""
    parts = [p for p in path.split("/") if p and p not in (".", "..")][:MAX_DEPTH]
    for depth in range(len(parts), -1, -1):
        yield os.path.join(mount, *parts[:depth])


def _bytes(text: Optional[str]) -> Optional[int]:
    value = (text or "").strip()
    return int(value) if value.isdigit() and len(value) <= 20 else None


def _room_at(directory: str, limit_file: str, usage_file: str) -> Optional[int]:
    """limit - usage in bytes at one cgroup level; None where it sets no limit or cannot be read."""
    raw = _read(os.path.join(directory, limit_file), 64)
    if raw is None or raw.strip() == "max":
        return None
    limit = _bytes(raw)
    if limit is None or limit >= NO_LIMIT_BYTES:
        return None
    usage = _bytes(_read(os.path.join(directory, usage_file), 64))
    if usage is None:
        return None
    return max(0, limit - usage)


V2_FILES = ("memory.max", "memory.current")
V1_FILES = ("memory.limit_in_bytes", "memory.usage_in_bytes")


def _memory_levels(root: str) -> Iterator[Tuple[str, str, str]]:
    """(directory, limit file, usage file) of each level of this process's memory cgroups, in the
    v2 hierarchy and the v1 memory hierarchy, its own first."""
    for controllers, path in _cgroup_lines(root):
        if controllers == "":  # v2; "unified" is where systemd's hybrid layout mounts it
            mounts, (limit_file, usage_file) = ("", "unified"), V2_FILES
        elif "memory" in controllers.split(",") and "/" not in controllers:  # v1, maybe "cpu,memory"
            mounts, (limit_file, usage_file) = ("memory", controllers), V1_FILES
        else:
            continue
        for mount in dict.fromkeys(mounts):
            for level in _levels(os.path.join(root, "sys", "fs", "cgroup", mount), path):
                yield level, limit_file, usage_file


def cgroup_room_kb(root: str = "/") -> Optional[int]:
    """What the memory cgroups of this process still allow, in KiB: the smallest limit - usage
    over its cgroup and those above it. None where no level sets a limit (or none can be read).
    A Greengrass V1 Lambda container is a v1 memory cgroup sized by the function's MemorySize."""
    rooms = [room for room in (_room_at(*level) for level in _memory_levels(root)) if room is not None]
    return min(rooms) // 1024 if rooms else None


def cgroup_visible(root: str = "/") -> bool:
    """Whether any of this process's cgroups can be seen under /sys/fs/cgroup, so that "no limit"
    from cgroup_room_kb means none is set, not that none could be read. A Greengrass container
    sees no /sys unless its function allows it (V1 AccessSysfs, V2 mountROSysfs; off by default)."""
    return any(os.path.isfile(os.path.join(level, "cgroup.procs")) for level, _, _ in _memory_levels(root))
