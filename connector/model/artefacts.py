"""Checks on native artefacts before a runtime is asked to load them.

dlopen's own words for a library built for another CPU ("cannot open shared object file: No such
file or directory" for an aarch64 library on x86_64, when the loader looks for the interpreter)
and TVM's for a single-file factory export ("GraphExecutorFactory ... loader not registered") send
users the wrong way; the ELF header and the library's embedded module blob say what is wrong.
"""
from __future__ import annotations

import os
import platform
import struct
import sys
from typing import Optional, Tuple

# e_machine values (ELF specification / Linux elf-em.h) of the CPUs models are compiled for.
_MACHINES = {3: "x86", 62: "x86_64", 40: "armv7", 183: "aarch64", 243: "riscv", 8: "mips",
             20: "ppc", 21: "ppc64"}
# Type keys TVM writes into the module blob of a relay.build() result exported as one file.
_FACTORY_KEYS = (b"GraphExecutorFactory", b"GraphRuntimeFactory")
_CHUNK = 1 << 20


def elf_target(path: str) -> Optional[Tuple[str, int]]:
    """(cpu, bits) an ELF file is built for; None when the file is not ELF."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
        return None
    bits = 32 if head[4] == 1 else 64
    machine = struct.unpack("<H" if head[5] == 1 else ">H", head[18:20])[0]
    return _MACHINES.get(machine, "ELF machine {}".format(machine)), bits


def host_target() -> Tuple[str, int]:
    """(cpu, bits) of this Python process: read from the interpreter, because a 32-bit userland
    on a 64-bit kernel (Raspberry Pi OS) reports aarch64 in platform.machine()."""
    try:
        found = elf_target(os.path.realpath(sys.executable))
    except OSError:
        found = None
    if found is not None:
        return found
    return platform.machine(), struct.calcsize("P") * 8


def describe(target: Tuple[str, int]) -> str:
    return "{} ({}-bit)".format(*target)


def architecture_problem(path: str, host: Optional[Tuple[str, int]] = None) -> Optional[str]:
    """Why the shared library `path` cannot load on this machine, or None when it can try (a
    file that is not ELF at all is left to the loader, whose error then says so)."""
    target = elf_target(path)
    if target is None:
        return None
    host = host or host_target()
    if target != host:
        return ("{} is compiled for {}, this machine is {}: compile the model (and take the "
                "libdlr.so) for this device's target".format(path, describe(target), describe(host)))
    return None


def factory_export_problem(path: str) -> Optional[str]:
    """A message when `path` is a TVM factory export (graph and parameters packed into the .so),
    which DLR cannot load; None otherwise."""
    tail = b""
    keep = max(len(k) for k in _FACTORY_KEYS)
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                return None
            window = tail + chunk
            if any(k in window for k in _FACTORY_KEYS):
                break
            tail = window[-keep:]
    return ("{} is a TVM factory export (the whole relay.build() result in one file), which DLR "
            "cannot load. Export the bare module and its two companions instead: "
            "factory.get_lib().export_library('model.so'); write factory.get_graph_json() to "
            "model.json; write tvm.runtime.save_param_dict(factory.get_params()) to model.params"
            .format(path))
