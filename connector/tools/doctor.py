"""`python -m connector doctor`: can the service run on this machine, and if not, why.

Reports the platform, Python and package versions, the model runtimes that load (and the GPU), the
seed's table of required system libraries for this platform checked against the symbol versions
the libraries really define, what the installed native binaries (libdlr.so, ONNX Runtime, OpenCV)
really require, the model directory when parameters name one, and known remedies. Each finding is
one line marked ok / warn / FAIL; the exit status is 1 when any FAIL says the service cannot run.
"""
from __future__ import annotations

import glob
import importlib
import io
import os
import platform
import sys
from typing import Dict, List, Optional, Set, TextIO, Tuple

from ..model.backends import dlr_runtime
from . import elf

# The seed's "required system libraries" per variant: (soname, [minimum versions]). An empty list
# is the seed's "not applicable" (only presence matters).
SEED_LIBRARIES: Dict[str, List[Tuple[str, List[str]]]] = {
    "x86_64": [
        ("ld-linux-x86-64.so.2", ["GCC_4.0.0"]), ("libc.so.6", ["GLIBC_2.4"]),
        ("libgfortran.so.3", ["GFORTRAN_1.0"]), ("libm.so.6", ["GLIBC_2.23"]),
        ("libpthread.so.0", ["GLIBC_2.2.5"]), ("librt.so.1", ["GLIBC_2.2.5"]),
        ("libstdc++.so.6", ["CXXABI_1.3.8", "GLIBCXX_3.4.21"])],
    "armv7l": [
        ("ld-linux-armhf.so.3", ["GLIBC_2.4"]), ("libc.so.6", ["GLIBC_2.7"]),
        ("libgcc_s.so.1", ["GCC_4.0.0"]), ("libgfortran.so.3", ["GFORTRAN_1.0"]),
        ("libm.so.6", ["GLIBC_2.4"]), ("libpthread.so.0", ["GLIBC_2.4"]), ("librt.so.1", ["GLIBC_2.4"]),
        ("libstdc++.so.6", ["CXXABI_1.3.8", "CXXABI_ARM_1.3.3", "GLIBCXX_3.4.20"])],
    "aarch64": [
        ("ld-linux-aarch64.so.1", ["GLIBC_2.17"]), ("libc.so.6", ["GLIBC_2.17"]),
        ("libgcc_s.so.1", ["GCC_4.2.0"]), ("libgomp.so.1", ["GOMP_4.0", "OMP_1.0"]),
        ("libm.so.6", ["GLIBC_2.23"]), ("libpthread.so.0", ["GLIBC_2.17"]), ("librt.so.1", ["GLIBC_2.17"]),
        ("libstdc++.so.6", ["GLIBCXX_3.4.21", "CXXABI_1.3.8"])],
}
# Jetson TX2 rows of the seed (CUDA 9 / TensorRT 4 era): only meaningful on a Jetson.
SEED_JETSON = [("libcudart.so.9.0", []), ("libcublas.so.9.0", []), ("libcudnn.so.7", []),
               ("libcufft.so.9.0", []), ("libcurand.so.9.0", []), ("libcusolver.so.9.0", []),
               ("libnvinfer.so.4", [])]
# Why a seed row fails on current systems although nothing is wrong. Such a row is a warning only
# when a runtime binary installed here really needs what it names (runtime_needs decides).
SEED_NOTES = {
    "libgfortran.so.3": "gfortran 3 was dropped (Debian 10+, Ubuntu 18.10+); neither DLR 1.6 nor "
                        "ONNX Runtime nor OpenCV wheels link it",
    "libgomp.so.1": "the original's DLR used OpenMP; libdlr.so 1.6 built by scripts/arm/build-libdlr.sh "
                    "and the ONNX Runtime/OpenCV wheels do not need it (apt-get install libgomp1 if a "
                    "Neo-shipped libdlr.so does)",
    "GCC_4.0.0@ld-linux-x86-64.so.2": "the seed's row is wrong: the x86_64 loader defines only GLIBC_* versions",
}


# (import name, distribution, required, install hint): what check_packages imports, one at a time
# and guarded, so that the doctor itself needs none of them.
PACKAGES = (
    ("numpy", "numpy", True, "pip install numpy (ARMv7: apt-get install python3-numpy)"),
    ("cv2", "opencv-python-headless", True,
     "pip install opencv-python-headless (ARMv7: apt-get install python3-opencv)"),
    ("yaml", "PyYAML", True, "pip install pyyaml (ARMv7: apt-get install python3-yaml)"),
    ("onnxruntime", "onnxruntime", False, "pip install onnxruntime (Python >= 3.8; not on ARMv7)"),
    ("boto3", "boto3", False, "only for the ML feedback service: pip install boto3"),
    ("paho.mqtt", "paho-mqtt", False, "only for the ML feedback service: pip install paho-mqtt"))
# What the model check (check_model.py, the engine) imports.
MODEL_CHECK_NEEDS = ("numpy", "cv2", "yaml")


def install_hint(module: Optional[str]) -> Optional[str]:
    """How to install what provides `module` (as ModuleNotFoundError names it); None: not ours."""
    for name, _dist, _required, hint in PACKAGES:
        if module and (module == name or name.startswith(module + ".") or module.startswith(name + ".")):
            return hint
    return None


class Report:
    def __init__(self, out: TextIO) -> None:
        self.out, self.failures, self.warnings = out, [], []  # type: (TextIO, List[str], List[str])

    def section(self, title: str) -> None:
        print("\n" + title, file=self.out)

    def line(self, mark: str, text: str) -> None:
        if mark == "FAIL":
            self.failures.append(text)
        elif mark == "warn":
            self.warnings.append(text)
        print("  {:<4} {}".format(mark, text), file=self.out)

    def info(self, text: str) -> None:
        print("       " + text, file=self.out)


def machine() -> str:
    m = platform.machine()
    return "armv7l" if m in ("armv7l", "armv8l", "armv6l") else m


def os_name() -> str:
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def dist_version(name: str) -> Optional[str]:
    """Installed version of distribution `name` without importing it (works on Python 3.7)."""
    try:
        from importlib import metadata  # type: ignore[attr-defined]  # novermin (guarded: 3.8+)
    except ImportError:  # Python 3.7
        metadata = None
    if metadata is not None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None
    canon = name.lower().replace("-", "_")
    for entry in sys.path:
        for meta in glob.glob(os.path.join(entry or ".", "*.dist-info")) + \
                glob.glob(os.path.join(entry or ".", "*.egg-info")):
            base = os.path.basename(meta).rsplit(".", 1)[0]
            dist, _, version = base.partition("-")
            if dist.lower().replace("-", "_") == canon and version:
                return version.split("-")[0]
    return None


def check_python(r: Report) -> None:
    r.section("Platform")
    r.line("ok", "{} on {} ({}), glibc {}".format(os_name(), platform.machine(), platform.node(),
                                                   platform.libc_ver()[1] or "unknown"))
    v = sys.version_info
    mark = "ok" if v >= (3, 7) else "FAIL"
    r.line(mark, "Python {} at {}{}".format(platform.python_version(), sys.executable,
                                            "" if mark == "ok" else ": the connector needs 3.7 or newer"))
    if os.path.exists("/etc/nv_tegra_release"):
        with open("/etc/nv_tegra_release", encoding="utf-8", errors="replace") as f:
            r.info("Jetson: " + f.readline().strip())


def check_packages(r: Report) -> Dict[str, object]:
    """Import the packages the service needs; returns the modules that imported."""
    r.section("Python packages")
    found: Dict[str, object] = {}
    for module, dist, required, hint in PACKAGES:
        try:
            mod = importlib.import_module(module)
        except Exception as e:  # a broken native module raises anything
            r.line("FAIL" if required else "warn", "{}: cannot import ({}); {}".format(
                module, str(e).splitlines()[0][:200] if str(e) else type(e).__name__, hint))
            continue
        found[module] = mod
        version = getattr(mod, "__version__", None) or dist_version(dist) or "?"
        r.line("ok", "{} {} ({})".format(module, version, os.path.dirname(getattr(mod, "__file__", "") or "")))
    # dlr is not imported here: importing it before its phone-home is off could report usage.
    pkg = dlr_runtime.find_dlr_package()
    if pkg is None:
        r.line("warn", "dlr: not installed; DLR (Neo) models cannot load: " + dlr_runtime.INSTALL_HINT)
    else:
        check_phone_home(r, pkg)
    return found


def check_phone_home(r: Report, pkg: str) -> None:
    """DLR's phone-home still on is a problem only when the service cannot switch it off: it then
    refuses to load DLR models (dlr_runtime.disable_phone_home). Writable here means it will."""
    version = dist_version("dlr") or "?"
    if dlr_runtime.phone_home_disabled(pkg):
        r.line("ok", "dlr {} ({}); phone-home off".format(version, pkg))
        return
    config = dlr_runtime.phone_home_config_path(pkg)
    counter = os.path.dirname(config)
    if not os.path.isdir(counter):
        r.line("ok", "dlr {} ({}); no phone-home module".format(version, pkg))
    elif os.access(counter, os.W_OK) and (not os.path.exists(config) or os.access(config, os.W_OK)):
        r.line("ok", "dlr {} ({}); phone-home still on: the service switches it off before its "
               "first DLR load (this user can write {})".format(version, pkg, config))
    else:
        r.line("warn", "dlr {} ({}); phone-home on and {} is not writable by this user: the service "
               "will refuse DLR models. As the installing user run: python -c 'from connector.model."
               "backends.dlr_runtime import disable_phone_home; disable_phone_home()'".format(
                   version, pkg, config))


def libdlr_candidates(model_dir: Optional[str]) -> List[str]:
    """libdlr.so files DLR would consider: the model directory's, then the install prefix's."""
    out = []
    if model_dir:
        out.append(os.path.join(model_dir, "libdlr.so"))
    out.append(os.path.join(sys.prefix, "dlr", "libdlr.so"))
    pkg = dlr_runtime.find_dlr_package()
    if pkg:
        out.append(os.path.join(pkg, "libdlr.so"))
    seen, unique = set(), []
    for p in out:
        real = os.path.realpath(p)
        if os.path.isfile(p) and real not in seen:
            seen.add(real)
            unique.append(p)
    return unique


def check_runtimes(r: Report, found: Dict[str, object], model_dir: Optional[str]) -> List[str]:
    """Which runtimes can load models here; returns the native binaries to check for symbols."""
    import ctypes
    r.section("Model runtimes")
    binaries: List[str] = []
    usable = 0
    libs = libdlr_candidates(model_dir)
    for path in libs:
        try:
            info = elf.read_elf(path)
        except elf.ElfError as e:
            r.line("warn", "libdlr.so: {}".format(e))
            continue
        arch = elf.MACHINES.get(info.machine, str(info.machine))
        here = {"armv7l": "arm"}.get(machine(), machine())
        if arch != here:
            r.line("warn", "{} is built for {}, this machine is {}".format(path, arch, machine()))
            continue
        try:
            ctypes.CDLL(path)
        except OSError as e:
            r.line("warn", "{} does not load: {}".format(path, str(e)[:300]))
            binaries.append(path)
            continue
        usable += 1
        binaries.append(path)
        r.line("ok", "DLR: {} loads".format(path))
    if not libs:
        r.line("warn", "DLR: no libdlr.so in {} (nor in a model directory); Neo models must ship one"
               .format(os.path.join(sys.prefix, "dlr")))
    ort = found.get("onnxruntime")
    if ort is not None:
        providers = ort.get_available_providers()  # type: ignore[attr-defined]
        usable += 1
        r.line("ok", "ONNX Runtime {}: {}".format(getattr(ort, "__version__", "?"), ", ".join(providers)))
        binaries += glob.glob(os.path.join(os.path.dirname(ort.__file__), "capi", "onnxruntime_pybind11_state*.so"))  # type: ignore[attr-defined]
    cv2 = found.get("cv2")
    if cv2 is not None and getattr(cv2, "__file__", None):
        binaries += [p for p in glob.glob(os.path.join(os.path.dirname(cv2.__file__), "**", "cv2*.so"),  # type: ignore[attr-defined]
                                          recursive=True)] or [cv2.__file__]  # type: ignore[attr-defined]
    if usable == 0:
        r.line("FAIL", "no model runtime can load here: install ONNX Runtime (pip install onnxruntime) "
               "or give DLR a libdlr.so built for {}".format(machine()))
    problem = dlr_runtime.cuda_problem()
    if problem is None:
        r.line("ok", "GPU: the CUDA driver reports a device (GPUAcceleration=GPU possible with a CUDA-enabled runtime)")
    else:
        r.info("GPU: none usable ({}); GPUAcceleration must be CPU".format(problem))
    return [b for b in binaries if os.path.isfile(b)]


def _bundled_libraries(binary: str) -> List[str]:
    """Libraries a wheel vendors beside `binary` (e.g. opencv_python_headless.libs): its RUNPATH
    finds them there, not in the system."""
    here = os.path.dirname(binary)
    return sorted(glob.glob(os.path.join(here, "*.libs", "*.so*")) +
                  glob.glob(os.path.join(here, "..", "*.libs", "*.so*")))


def runtime_needs(binaries: List[str]) -> Dict[str, Set[str]]:
    """soname -> symbol versions required of it, by the runtime binaries installed here and the
    libraries their wheels vendor. What the system's own libraries need is the system's business."""
    needs: Dict[str, Set[str]] = {}
    files = set(binaries)
    for binary in binaries:
        files.update(_bundled_libraries(binary))
    for path in sorted(files):
        try:
            info = elf.read_elf(path)
        except elf.ElfError:
            continue  # check_runtimes/check_binaries report unreadable binaries
        for lib in set(info.needed) | set(info.requires):
            needs.setdefault(lib, set()).update(info.requires.get(lib, ()))
    return needs


def _unneeded(needs: Optional[Dict[str, Set[str]]], soname: str, version: Optional[str] = None) -> bool:
    """True when the installed runtimes provably do not need `soname` (at `version`)."""
    if not needs:  # no runtime binary to judge by: the seed's row stands
        return False
    return soname not in needs if version is None else version not in needs.get(soname, ())


def check_library_table(r: Report, needs: Optional[Dict[str, Set[str]]] = None) -> None:
    """The seed's table, row by row, beside what this system defines. The seed describes the
    original's binaries (DLR 1.x with OpenMP, CUDA 9 on the TX2), so a row the system does not meet
    is a warning only when a runtime installed here (`needs`, from runtime_needs) requires what it
    names; otherwise it is ok, with the reason. What the binaries need is checked next."""
    m = machine()
    rows = list(SEED_LIBRARIES.get(m, []))
    if os.path.exists("/etc/nv_tegra_release"):
        rows += SEED_JETSON
    r.section("System libraries of the seed's table for {} (minimum -> what this system defines)".format(m))
    if not rows:
        r.line("warn", "the seed has no table for {}".format(m))
        return
    for soname, minimum in rows:
        path = elf.locate_library(soname)
        if path is None:
            note = SEED_NOTES.get(soname)
            if _unneeded(needs, soname):
                r.line("ok", "{} not found; not needed here: no installed runtime links it{}".format(
                    soname, "; " + note if note else ""))
            else:
                r.line("warn", "{} not found: {}".format(soname, note or "not needed by the installed "
                                                         "binaries unless listed below"))
            continue
        try:
            defined = elf.read_elf(path).defines
        except elf.ElfError as e:
            r.line("warn", str(e))
            continue
        newest = elf.newest_by_family(defined)
        for version in minimum:
            family = elf.version_key(version)[0]
            notes = [SEED_NOTES.get("{}@{}".format(version, soname), "")]
            mark = "ok" if version in defined else "warn"
            if mark == "warn" and _unneeded(needs, soname, version):
                mark, notes = "ok", ["not needed here: no installed runtime requires it"] + notes
            r.line(mark, "{:<22} {:<18} -> {}".format(soname, version, "; ".join(
                [newest.get(family) or "no {} versions".format(family)] + [n for n in notes if n])))
        if not minimum:
            r.line("ok", "{:<22} {:<18} -> {}".format(soname, "(present)", path))


def check_binaries(r: Report, binaries: List[str]) -> None:
    """What the installed native binaries really require, checked like the dynamic linker does."""
    r.section("What the installed native binaries require (checked against this system)")
    if not binaries:
        r.info("no native runtime binaries found")
        return
    cache: Dict[str, Tuple[Optional[str], List[str]]] = {}
    for path in binaries:
        try:
            info = elf.read_elf(path)
        except elf.ElfError as e:
            r.line("warn", str(e))
            continue
        bad: List[str] = []
        needs: List[str] = []
        old_glibc = False
        for lib, versions in sorted(info.requires.items()):
            if lib not in cache:
                where = elf.locate_library(lib)
                cache[lib] = (where, elf.read_elf(where).defines if where else [])
            where, defined = cache[lib]
            newest = elf.newest_by_family(list(versions))
            needs.append("{} {}".format(lib, " ".join(sorted(newest.values()))))
            if where is None:
                # Libraries a wheel bundles (e.g. opencv_python.libs) resolve through its RUNPATH.
                if not [b for b in _bundled_libraries(path) if os.path.basename(b).startswith(lib)]:
                    bad.append("{} not found".format(lib))
                continue
            missing = elf.missing_versions(defined, versions)
            if missing:
                bad.append("{} lacks {}".format(lib, ", ".join(sorted(missing, key=elf.version_key))))
                old_glibc = old_glibc or lib == "libc.so.6"
        r.line("FAIL" if bad else "ok", "{}{}".format(path, ": " + "; ".join(bad) if bad else ""))
        r.info("needs: " + "; ".join(needs))
        if old_glibc:
            r.info("this binary was built against a newer glibc than this system has (e.g. a libdlr.so "
                   "built on Debian 12 on JetPack 4/5): build it in a sysroot of this release")


def check_model(r: Report, model_dir: str, device: str) -> None:
    from ..errors import ConnectorError
    r.section("Model directory " + model_dir)
    try:
        from .check_model import check_model as run_check
        text = io.StringIO()
        run_check(model_dir, device, 1, out=text)
    except ConnectorError as e:
        r.line("FAIL", str(e))
        return
    except ImportError as e:
        r.line("FAIL", "cannot check the model: {}".format(e))
        return
    for line in text.getvalue().splitlines():
        r.info(line)
    r.line("ok", "the connector can serve this model")


def remedies(r: Report) -> None:
    r.section("Known remedies")
    r.info("'Failed to initialize libdc1394' in the log (Raspberry Pi; OpenCV probes a FireWire "
           "camera): harmless; silence it with: sudo ln /dev/null /dev/raw1394 (until reboot)")
    r.info("installing NumPy/OpenCV runs out of memory on a Raspberry Pi: raise CONF_SWAPSIZE in "
           "/etc/dphys-swapfile, then /etc/init.d/dphys-swapfile restart")


def run(model_dir: Optional[str] = None, config: Optional[str] = None,
        out: TextIO = sys.stdout) -> int:
    r = Report(out)
    device = "cpu"
    if config:
        from ..errors import ConnectorError
        try:
            from ..params import load_parameters  # reads YAML: needs PyYAML
            params = load_parameters(config)
            model_dir = model_dir or params.model_path
            device = params.device
        except ConnectorError as e:
            r.section("Parameters " + config)
            r.line("FAIL", str(e))
        except ImportError as e:
            r.section("Parameters " + config)
            r.line("FAIL", "cannot read the parameter file ({}); pip install pyyaml".format(e))
    check_python(r)
    found = check_packages(r)
    binaries = check_runtimes(r, found, model_dir)
    # A Neo model's compiled.so is loaded too: what it links (e.g. libgomp) counts as needed.
    model_libraries = sorted(glob.glob(os.path.join(model_dir, "*.so"))) if model_dir else []
    check_library_table(r, runtime_needs(binaries + [p for p in model_libraries if os.path.isfile(p)]))
    check_binaries(r, binaries)
    if model_dir:
        missing = [m for m in MODEL_CHECK_NEEDS if m not in found]
        if missing:
            r.section("Model directory " + model_dir)
            r.info("not checked: it needs {} (marked FAIL above)".format(", ".join(missing)))
        else:
            check_model(r, model_dir, device)
    remedies(r)
    print("", file=out)
    if r.failures:
        print("doctor: the service CANNOT run here ({} problem(s) marked FAIL)".format(len(r.failures)), file=out)
        return 1
    if r.warnings:
        print("doctor: the service can run here ({} warning(s))".format(len(r.warnings)), file=out)
    else:
        print("doctor: the service can run here; this machine is clean (no warnings)", file=out)
    return 0
