"""Deployment helpers: memory sizing for Greengrass and systemd, and the Lambda deployment package.

    python -m connector.tools.deploy lambda-zip --out FILE [--deps device|bundle] [--arch ARCH] [--python X.Y]
    python -m connector.tools.deploy memory-size --limit-kb N     # V1 MemorySize (KB) for that limit
    python -m connector.tools.deploy memory-max --config FILE     # systemd MemoryMax= for that config

Memory: LocalInferenceServiceMemoryLimitKB bounds one inference worker. The container (Greengrass
`MemorySize`) or cgroup (systemd `MemoryMax=`) also holds the supervisor (~70 MB resident) and,
during a reload, a second worker loading the new model beside the serving one. A container limit
equal to the worker's would fire first and kill everything; so the outer limit is two workers plus
the supervisor, and the connector's own per-worker limit is what trips on a real overrun. That
is room for one worker: the default CONNECTOR_INFERENCE_WORKERS=auto reads the cgroup and runs one
(connector.supervision.sizing).

The Lambda package (AWS limits: 50 MB zipped for a direct upload, 250 MB unzipped in all):
* `--deps device` (default): only this package and the SDK (< 1 MB). NumPy, OpenCV, PyYAML and the
  model runtime come from the device, installed by scripts/install/install-<arch>.sh into
  /opt/gg-ml-connector; the function's `GG_ML_SITE_PACKAGES` environment variable names that
  site-packages directory. This is how Greengrass ML users ran DLR and OpenCV (installed on the
  core by the AWS install scripts, not shipped in the function), and it keeps native libraries
  matched to the device's glibc and GPU stack.
* `--deps bundle`: the wheels for the chosen architecture and Python too, fetched by pip for that
  platform, with what a daemon never uses removed (tests, headers, type stubs, the caches, boto3
  unless --feedback). Refused when the result exceeds AWS's limits.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import Dict, Iterable, List, Optional, Tuple

SUPERVISOR_KB = 100 * 1024   # measured ~70 MB resident; rounded up for its own growth
DIRECT_UPLOAD_LIMIT = 50 * 1024 * 1024
UNZIPPED_LIMIT = 250 * 1024 * 1024
# The directory that holds connector/ and ml_sdk/ (the repository, or a site-packages).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pip --platform tags of the wheels each architecture's Lambda needs.
PLATFORMS = {"x86_64": ["manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64"],
             "aarch64": ["manylinux2014_aarch64", "manylinux_2_28_aarch64", "manylinux_2_17_aarch64"]}
# Paths inside site-packages that a serving daemon never loads.
PRUNE_DIRS = {"tests", "include", "__pycache__", "_pyinstaller", "benchmarks"}
PRUNE_SUFFIXES = (".pyi", ".pyc", ".h", ".hpp", ".c", ".pxd", ".a")
# Whole distributions a daemon never imports: ONNX Runtime pulls sympy/mpmath in for its
# transformer-optimisation tools only (~17 MB).
PRUNE_TOP = {"sympy", "mpmath"}


def outer_memory_kb(limit_kb: int) -> int:
    """Memory for the whole service given the per-worker limit: two workers plus the supervisor."""
    return 2 * limit_kb + SUPERVISOR_KB


def memory_max(limit_kb: int) -> str:
    """systemd MemoryMax= value (bytes suffix K) for a service whose worker limit is `limit_kb`."""
    return "{}K".format(outer_memory_kb(limit_kb))


def _package_files() -> Iterable[Tuple[str, str]]:
    """(path on disk, path in the zip) of the connector and the SDK, without the demo models."""
    for top, arc_top in (("connector", "connector"),
                         (os.path.join("ml_sdk", "greengrass_machine_learning_sdk"),
                          "greengrass_machine_learning_sdk")):
        base = os.path.join(ROOT, top)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            rel = os.path.relpath(dirpath, base)
            # The Lambda serves MLModelDestinationPath; the bundled demo models stay out.
            if rel.split(os.sep)[0] == "demos" and rel != "demos":
                continue
            for name in sorted(filenames):
                if name.endswith(".py"):
                    yield (os.path.join(dirpath, name),
                           os.path.normpath(os.path.join(arc_top, rel, name)))


def pip_install_command(target: str, arch: str, python: str) -> List[str]:
    """`pip install` of wheels for the Lambda's platform into `target` (append the requirements).

    --no-warn-conflicts: after installing, pip checks what it installed against the packages of the
    interpreter running it (this build machine's venv), not against `target`, and prints "ERROR:
    pip's dependency resolver does not currently take into account all the packages that are
    installed" for every package of that venv the bundle's versions would not suit (e.g. its onnx
    wanting a newer protobuf). That is no fault of the bundle: the resolver already made the bundle
    consistent within itself, for the target platform."""
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--no-warn-conflicts", "--target", target, "--only-binary=:all:", "--implementation", "cp",
           "--python-version", python, "--no-compile"]
    for tag in PLATFORMS[arch]:
        cmd += ["--platform", tag]
    return cmd


def run_pip(cmd: List[str], expected: Optional[str] = None) -> None:
    """Run pip; its messages go to stderr except lines matching `expected` (known and handled
    here). All of them when pip fails, which raises SystemExit naming the command."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    lines = proc.stdout.splitlines()
    if proc.returncode == 0 and expected:
        lines = [line for line in lines if not re.match(expected, line)]
    for line in lines:
        print(line, file=sys.stderr)
    if proc.returncode != 0:
        raise SystemExit("error: pip failed (exit status {}): {}".format(proc.returncode, " ".join(cmd)))


def _pip_target(target: str, arch: str, python: str, runtime: str, feedback: bool) -> None:
    if arch not in PLATFORMS:
        raise SystemExit("error: --deps bundle: PyPI has no {} wheels of NumPy/OpenCV/ONNX Runtime; "
                         "use --deps device (the install script puts them on the device)".format(arch))
    reqs = ["numpy>=1.16", "opencv-python-headless>=4.2", "pyyaml>=5.1"]
    if runtime == "onnx":
        if python == "3.7":
            raise SystemExit("error: ONNX Runtime >= 1.18 has no Python 3.7 wheel; use --runtime dlr")
        reqs.append("onnxruntime>=1.18,<1.33")
    else:
        reqs.append("dlr==1.6.0" if arch == "x86_64" else "dlr>=1.6,<1.11")
    if feedback:
        reqs += ["boto3", "paho-mqtt"]
    run_pip(pip_install_command(target, arch, python) + reqs,
            # dlr 1.6 ships libdlr.so as data for <prefix>/dlr/, which --target cannot place beside
            # the dlr package of the same name: pip says so, and _libdlr_into_package places it.
            expected=r"^WARNING: Target directory .*[/\\]dlr already exists" if runtime == "dlr" else None)
    if runtime == "dlr" and arch == "x86_64":
        _libdlr_into_package(target, python)


def _libdlr_into_package(target: str, python: str) -> None:
    """dlr==1.6.0 installs libdlr.so as data at <prefix>/dlr/, which `pip --target` cannot place (the
    directory has the package's own name); DLR also looks in its package directory: put it there."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
               "--no-deps", "--only-binary=:all:", "--implementation", "cp", "--python-version", python,
               "-d", tmp]
        for tag in PLATFORMS["x86_64"]:
            cmd += ["--platform", tag]
        run_pip(cmd + ["dlr==1.6.0"])
        wheel = os.path.join(tmp, [f for f in os.listdir(tmp) if f.endswith(".whl")][0])
        with zipfile.ZipFile(wheel) as z:
            member = [n for n in z.namelist() if n.endswith("/data/dlr/libdlr.so")][0]
            with z.open(member) as src, open(os.path.join(target, "dlr", "libdlr.so"), "wb") as dst:
                shutil.copyfileobj(src, dst)


def _prune(target: str) -> int:
    removed = 0
    for name in os.listdir(target):
        top = name.split("-")[0].lower()
        if top in PRUNE_TOP:
            full = os.path.join(target, name)
            removed += _tree_size(full)
            shutil.rmtree(full)
    for dirpath, dirnames, filenames in os.walk(target, topdown=True):
        for d in list(dirnames):
            if d in PRUNE_DIRS:
                full = os.path.join(dirpath, d)
                removed += _tree_size(full)
                shutil.rmtree(full)
                dirnames.remove(d)
        for name in filenames:
            if name.endswith(PRUNE_SUFFIXES):
                full = os.path.join(dirpath, name)
                removed += os.path.getsize(full)
                os.remove(full)
    bindir = os.path.join(target, "bin")
    if os.path.isdir(bindir):
        removed += _tree_size(bindir)
        shutil.rmtree(bindir)
    return removed


def _tree_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs
               if not os.path.islink(os.path.join(d, f)))


def build_lambda_zip(out: str, deps: str = "device", arch: str = "x86_64", python: str = "3.8",
                     runtime: str = "onnx", feedback: bool = False) -> Dict[str, int]:
    """Write the deployment package to `out`; returns its sizes. SystemExit when over the limits."""
    files: List[Tuple[str, str]] = list(_package_files())
    with tempfile.TemporaryDirectory() as tmp:
        pruned = 0
        if deps == "bundle":
            _pip_target(tmp, arch, python, runtime, feedback)
            pruned = _prune(tmp)
            for dirpath, _, filenames in os.walk(tmp):
                for name in sorted(filenames):
                    full = os.path.join(dirpath, name)
                    files.append((full, os.path.relpath(full, tmp)))
        unzipped = sum(os.path.getsize(src) for src, _ in files)
        if unzipped > UNZIPPED_LIMIT:
            raise SystemExit("error: the package would be {:.0f} MB unzipped, over AWS Lambda's 250 MB; "
                             "use --deps device".format(unzipped / 2**20))
        _write_zip(out, files)
    return {"files": len(files), "unzipped": unzipped, "zipped": os.path.getsize(out), "pruned": pruned}


def _write_zip(out: str, files: List[Tuple[str, str]]) -> None:
    """Zip `files` to `out` through a fresh file of an unpredictable name beside it (mkstemp:
    O_EXCL, so never through a link someone planted at a fixed name such as `out`.part), renamed
    over `out` (which replaces a link there instead of writing through it)."""
    directory = os.path.dirname(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix="." + os.path.basename(out) + ".", suffix=".part",
                                   dir=directory)
    try:
        with os.fdopen(fd, "w+b") as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as z:
            for src, arc in sorted(files, key=lambda f: f[1]):
                z.write(src, arc)
        os.chmod(partial, 0o644)  # mkstemp's 0600 would hide the package from the uploader
        os.replace(partial, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m connector.tools.deploy", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("lambda-zip", help="build the Greengrass Lambda deployment package")
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--deps", choices=("device", "bundle"), default="device")
    p.add_argument("--arch", choices=("x86_64", "aarch64", "armv7l"), default="x86_64")
    p.add_argument("--python", default="3.8", choices=("3.7", "3.8", "3.9", "3.10", "3.11", "3.12"))
    p.add_argument("--runtime", choices=("onnx", "dlr"), default="onnx")
    p.add_argument("--feedback", action="store_true", help="bundle boto3/paho-mqtt for the ML feedback service")
    p = sub.add_parser("memory-size", help="Greengrass V1 MemorySize (KB) for a worker limit")
    p.add_argument("--limit-kb", type=int, required=True)
    p = sub.add_parser("memory-max", help="systemd MemoryMax= for a connector parameter file")
    p.add_argument("--config", required=True, metavar="FILE")
    args = parser.parse_args(argv)
    if args.command == "memory-size":
        print(outer_memory_kb(args.limit_kb))
    elif args.command == "memory-max":
        from ..errors import ConnectorError
        from ..params import load_parameters
        try:
            print(memory_max(load_parameters(args.config, environ={}).memory_limit_kb))
        except ConnectorError as e:
            print("error: {}".format(e), file=sys.stderr)
            return 2
    else:
        sizes = build_lambda_zip(args.out, args.deps, args.arch, args.python, args.runtime, args.feedback)
        upload = "direct upload" if sizes["zipped"] <= DIRECT_UPLOAD_LIMIT else \
            "over 50 MB zipped: upload through S3 (aws lambda create-function --code S3Bucket=...,S3Key=...)"
        print("{}: {} files, {:.1f} MB unzipped (limit 250), {:.1f} MB zipped ({}); {:.1f} MB pruned"
              .format(args.out, sizes["files"], sizes["unzipped"] / 2**20, sizes["zipped"] / 2**20,
                      upload, sizes["pruned"] / 2**20))
        if args.deps == "device":
            print("the device provides NumPy, OpenCV, PyYAML and the runtime: set the function's "
                  "GG_ML_SITE_PACKAGES to the site-packages of scripts/install's venv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
