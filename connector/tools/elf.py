"""Symbol versions of ELF shared objects, read with the standard library.

`doctor` needs what a system library *defines* (.gnu.version_d: GLIBC_2.17, GLIBCXX_3.4.21, ...)
and what a binary *requires* from each library it links (.gnu.version_r). Reading the sections
ourselves avoids shelling out to objdump/readelf, which minimal images (and the Raspberry Pi OS
Lite installs this runs on) often lack, and avoids a runtime dependency for ~100 lines of parsing.
"""
from __future__ import annotations

import ctypes
import os
import struct
from typing import Dict, List, NamedTuple, Optional, Set

SHT_DYNAMIC = 6
SHT_GNU_VERDEF = 0x6FFFFFFD
SHT_GNU_VERNEED = 0x6FFFFFFE
DT_NEEDED, DT_SONAME = 1, 14
VER_FLG_BASE = 0x1


class ElfError(Exception):
    """The file is not an ELF shared object this reader understands."""


class _Section(NamedTuple):
    type: int
    offset: int
    size: int
    link: int
    info: int
    entsize: int


class ElfInfo(NamedTuple):
    path: str
    bits: int                      # 32 or 64
    machine: int                   # e_machine: 3 x86, 62 x86-64, 40 ARM, 183 AArch64
    soname: Optional[str]
    needed: List[str]              # DT_NEEDED
    defines: List[str]             # version nodes it defines (without the base node)
    requires: Dict[str, Set[str]]  # library -> versions required from it


MACHINES = {3: "i386", 62: "x86_64", 40: "arm", 183: "aarch64"}


def read_elf(path: str) -> ElfInfo:
    """Parse `path`'s dynamic section and symbol version sections; ElfError when it is not ELF."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ElfError("{}: {}".format(path, e.strerror or e)) from None
    if data[:4] != b"\x7fELF" or len(data) < 64:
        raise ElfError("{}: not an ELF file".format(path))
    bits = {1: 32, 2: 64}.get(data[4])
    end = {1: "<", 2: ">"}.get(data[5])
    if bits is None or end is None:
        raise ElfError("{}: unknown ELF class or byte order".format(path))
    try:
        return _parse(path, data, bits, end)
    except (struct.error, IndexError, UnicodeDecodeError) as e:
        raise ElfError("{}: truncated or malformed ELF ({})".format(path, e)) from None


def _parse(path: str, data: bytes, bits: int, end: str) -> ElfInfo:
    machine = struct.unpack_from(end + "H", data, 18)[0]
    if bits == 64:
        shoff, = struct.unpack_from(end + "Q", data, 0x28)
        shentsize, shnum = struct.unpack_from(end + "HH", data, 0x3A)
        fmt = end + "IIQQQQIIQQ"
    else:
        shoff, = struct.unpack_from(end + "I", data, 0x20)
        shentsize, shnum = struct.unpack_from(end + "HH", data, 0x2E)
        fmt = end + "IIIIIIIIII"
    sections = []
    for i in range(shnum):
        f = struct.unpack_from(fmt, data, shoff + i * shentsize)
        # name, type, flags, addr, offset, size, link, info, addralign, entsize
        sections.append(_Section(f[1], f[4], f[5], f[6], f[7], f[9]))

    def string(section: _Section, offset: int) -> str:
        start = section.offset + offset
        return data[start:data.index(b"\0", start)].decode("utf-8")

    soname, needed, defines, requires = None, [], [], {}  # type: ignore[var-annotated]
    for sec in sections:
        if sec.type == SHT_DYNAMIC:
            strtab = sections[sec.link]
            word = "q" if bits == 64 else "i"
            step = struct.calcsize(end + word + word.upper())
            for off in range(sec.offset, sec.offset + sec.size, step):
                tag, val = struct.unpack_from(end + word + word.upper(), data, off)
                if tag == 0:
                    break
                if tag == DT_NEEDED:
                    needed.append(string(strtab, val))
                elif tag == DT_SONAME:
                    soname = string(strtab, val)
        elif sec.type == SHT_GNU_VERDEF:
            strtab, off = sections[sec.link], sec.offset
            for _ in range(sec.info):
                _v, flags, _ndx, cnt, _hash, aux, nxt = struct.unpack_from(end + "HHHHIII", data, off)
                if cnt and not flags & VER_FLG_BASE:
                    name_off, = struct.unpack_from(end + "I", data, off + aux)
                    defines.append(string(strtab, name_off))
                if not nxt:
                    break
                off += nxt
        elif sec.type == SHT_GNU_VERNEED:
            strtab, off = sections[sec.link], sec.offset
            for _ in range(sec.info):
                _v, cnt, file_off, aux, nxt = struct.unpack_from(end + "HHIII", data, off)
                versions = requires.setdefault(string(strtab, file_off), set())
                aoff = off + aux
                for _ in range(cnt):
                    _h, _f, _o, name_off, anext = struct.unpack_from(end + "IHHII", data, aoff)
                    versions.add(string(strtab, name_off))
                    if not anext:
                        break
                    aoff += anext
                if not nxt:
                    break
                off += nxt
    return ElfInfo(path, bits, machine, soname, needed, defines, requires)


class _LinkMap(ctypes.Structure):
    _fields_ = [("l_addr", ctypes.c_void_p), ("l_name", ctypes.c_char_p)]


def locate_library(soname: str) -> Optional[str]:
    """Path the dynamic linker picks for `soname` (dlopen + dlinfo), or None when it cannot load it.

    Asking the linker itself honours ld.so.cache, LD_LIBRARY_PATH and multiarch directories, which a
    hand-written search would have to imitate."""
    try:
        lib = ctypes.CDLL(soname)
    except OSError:
        return None
    dlinfo = None
    for name in (None, "libdl.so.2"):
        try:
            dlinfo = ctypes.CDLL(name).dlinfo
            break
        except (OSError, AttributeError):
            continue
    if dlinfo is None:
        return None
    lm = ctypes.POINTER(_LinkMap)()
    rtld_di_linkmap = 2
    if dlinfo(ctypes.c_void_p(lib._handle), rtld_di_linkmap, ctypes.byref(lm)) != 0 or not lm:
        return None
    path = lm.contents.l_name
    return os.path.realpath(path.decode()) if path else None


def version_key(version: str) -> tuple:
    """GLIBCXX_3.4.21 -> ("GLIBCXX", (3, 4, 21)): the family and a comparable number tuple."""
    family, _, number = version.rpartition("_")
    try:
        return family, tuple(int(p) for p in number.split("."))
    except ValueError:
        return version, ()


def newest_by_family(versions: List[str]) -> Dict[str, str]:
    """The highest version of each family, e.g. {"GLIBC": "GLIBC_2.36", "GLIBC_PRIVATE": ...}."""
    best: Dict[str, str] = {}
    for v in versions:
        family, number = version_key(v)
        if not number:
            continue
        if family not in best or version_key(best[family])[1] < number:
            best[family] = v
    return best


def missing_versions(defined: List[str], required: Set[str]) -> Set[str]:
    """Required nodes the library does not define: exactly what the dynamic linker refuses."""
    return set(required) - set(defined)
