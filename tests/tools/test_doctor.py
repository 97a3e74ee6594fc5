"""`python -m connector doctor` and the ELF symbol-version reader behind it, on real binaries."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from connector.tools import doctor, elf

ROOT = Path(__file__).resolve().parents[2]
CROSS = {"aarch64": (183, 64), "armv7": (40, 32)}


def run_doctor(*args, env=None):
    return subprocess.run([sys.executable, "-m", "connector", "doctor", *args], cwd=str(ROOT),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          timeout=300, env=env)


def readelf_versions(path: str, section: str):
    """What binutils' readelf says, to check our parser against (where binutils is installed)."""
    out = subprocess.run(["readelf", "-V", "-W", path], stdout=subprocess.PIPE,
                         universal_newlines=True, check=True).stdout
    part = out.split("Version {} section".format(section))[1] if "Version {} section".format(section) in out else ""
    part = part.split("Version ")[0] if section == "definition" else part.split("\nVersion s")[0]
    return set(re.findall(r"Name: (\S+)", part))


@pytest.fixture(scope="module")
def libstdcxx():
    path = elf.locate_library("libstdc++.so.6")
    assert path, "libstdc++.so.6 must be loadable here (Python's own deps pull it in)"
    return path


def test_defined_versions_of_a_system_library(libstdcxx):
    info = elf.read_elf(libstdcxx)
    assert info.soname == "libstdc++.so.6"
    assert "GLIBCXX_3.4.21" in info.defines and "CXXABI_1.3.8" in info.defines
    assert "libc.so.6" in info.needed
    if shutil.which("readelf"):
        expected = readelf_versions(libstdcxx, "definition") - {"libstdc++.so.6"}
        assert set(info.defines) == expected


def test_required_versions_of_a_binary(libstdcxx):
    info = elf.read_elf(libstdcxx)
    assert any(v.startswith("GLIBC_2.") for v in info.requires["libc.so.6"])
    if shutil.which("readelf"):
        required = set().union(*info.requires.values())
        assert required == readelf_versions(libstdcxx, "needs") - set(info.requires)


@pytest.mark.parametrize("arch", sorted(CROSS))
def test_cross_compiled_model_libraries(arch):
    """32-bit little-endian ARM and 64-bit AArch64 files parse too (the ARM demos under tests/models)."""
    path = ROOT / "tests" / "models" / "neo-ssd-300-nhwc-{}".format(arch) / "compiled.so"
    info = elf.read_elf(str(path))
    assert (info.machine, info.bits) == CROSS[arch]
    assert "libc.so.6" in info.requires and all(v.startswith("GLIBC_") for v in info.requires["libc.so.6"])


def test_bad_files_are_refused_with_the_reason(tmp_path, libstdcxx):
    text = tmp_path / "notes.so"
    text.write_text("not a library")
    with pytest.raises(elf.ElfError, match="not an ELF file"):
        elf.read_elf(str(text))
    with pytest.raises(elf.ElfError, match="No such file"):
        elf.read_elf(str(tmp_path / "missing.so"))
    data = Path(libstdcxx).read_bytes()
    for cut in (64, 4096, len(data) // 2):
        piece = tmp_path / "cut{}.so".format(cut)
        piece.write_bytes(data[:cut])
        with pytest.raises(elf.ElfError, match="truncated or malformed"):
            elf.read_elf(str(piece))
    odd = tmp_path / "odd.so"
    odd.write_bytes(b"\x7fELF\x09\x09" + b"\0" * 100)
    with pytest.raises(elf.ElfError, match="unknown ELF class"):
        elf.read_elf(str(odd))


def test_version_comparison():
    assert elf.newest_by_family(["GLIBC_2.2.5", "GLIBC_2.17", "GLIBC_2.4", "GLIBC_PRIVATE"]) == {"GLIBC": "GLIBC_2.17"}
    assert elf.version_key("CXXABI_ARM_1.3.3") == ("CXXABI_ARM", (1, 3, 3))
    assert elf.missing_versions(["GLIBC_2.17", "GLIBC_2.4"], {"GLIBC_2.4", "GLIBC_2.34"}) == {"GLIBC_2.34"}
    assert elf.locate_library("libgfortran.so.3-no-such") is None


def test_doctor_on_this_machine(model_dir):
    out = run_doctor("--model-dir", str(model_dir))
    assert out.returncode == 0, out.stdout
    text = out.stdout
    assert "Python {}.{}".format(*sys.version_info[:2]) in text
    # The seed's table for this platform, row by row, with what the system defines.
    for soname, versions in doctor.SEED_LIBRARIES[doctor.machine()]:
        for version in versions:
            assert re.search(r"{}\s+{}".format(re.escape(soname), re.escape(version)), text) or \
                "{} not found".format(soname) in text, (soname, version)
    assert "the connector can serve this model" in text
    assert "ln /dev/null /dev/raw1394" in text
    assert text.rstrip().splitlines()[-1].startswith("doctor: the service can run here")


def test_doctor_reports_the_real_binaries_requirements():
    pytest.importorskip("cv2")
    out = run_doctor()
    section = out.stdout.split("What the installed native binaries require")[1]
    assert re.search(r"ok\s+\S*cv2\S*\.so", section), section
    assert "needs: " in section and "libc.so.6 GLIBC_2." in section


def test_doctor_fails_on_a_bad_model_directory(tmp_path):
    (tmp_path / "model").mkdir()  # empty: refused whatever runtimes are installed
    out = run_doctor("--model-dir", str(tmp_path / "model"))
    assert out.returncode == 1, out.stdout
    assert re.search(r"FAIL .*model", out.stdout), out.stdout
    assert "the service CANNOT run here" in out.stdout


def test_doctor_fails_on_bad_parameters(tmp_path):
    cfg = tmp_path / "params.json"
    cfg.write_text('{"MLModelDestinationPath": "/nowhere", "MLModelResourceId": "bad id!"}')
    out = run_doctor("--config", str(cfg))
    assert out.returncode == 1
    assert "MLModelResourceId" in out.stdout and "FAIL" in out.stdout


def test_doctor_on_a_fifo_as_config_fails_instead_of_hanging(tmp_path):
    """`doctor --config` on a FIFO with no writer: a plain open() would wait for a writer forever
    (the timeout here only keeps a regression from hanging the run)."""
    fifo = tmp_path / "params.fifo"
    os.mkfifo(str(fifo))
    out = subprocess.run([sys.executable, "-m", "connector", "doctor", "--config", str(fifo)],
                         cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         universal_newlines=True, timeout=120)
    assert out.returncode == 1, out.stdout
    assert re.search(r"FAIL\s+cannot read parameter file .*params\.fifo.*: it is not a regular file "
                     r"\(a FIFO\)", out.stdout), out.stdout


def test_doctor_warns_about_a_libdlr_for_another_cpu(tmp_path, model_dir):
    """A libdlr.so of the wrong architecture in the model directory is named, not loaded."""
    d = tmp_path / "model"
    shutil.copytree(str(model_dir), str(d))
    # A library of a CPU this machine is not (the armv7 one, except on ARMv7 itself).
    other, named = ("aarch64", "aarch64") if doctor.machine().startswith("arm") else ("armv7", "arm")
    shutil.copy(str(ROOT / "tests" / "models" / ("neo-ssd-300-nhwc-" + other) / "compiled.so"), str(d / "libdlr.so"))
    r = doctor.Report(open(os.devnull, "w"))
    doctor.check_runtimes(r, {}, str(d))
    assert any("built for " + named in w for w in r.warnings), r.warnings


CHECK_BINARY = r"""
import sys
from connector.tools import doctor
r = doctor.Report(sys.stdout)
doctor.check_binaries(r, [sys.argv[1]])
sys.exit(1 if r.failures else 0)
"""


@pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc")
def test_binary_needing_a_newer_symbol_version_fails(tmp_path):
    """A binary linked against libstub.so's STUB_2.0, checked where libstub.so defines only STUB_1.0
    (the JetPack-4-with-a-Debian-12-libdlr.so situation): doctor names the missing version."""
    def build_stub(versions, out_dir):
        out_dir.mkdir()
        script = tmp_path / "{}.map".format(out_dir.name)
        script.write_text(" ".join("{} {{ global: f_{}; }};".format(v, v.replace(".", "_")) for v in versions))
        src = tmp_path / "{}.c".format(out_dir.name)
        src.write_text("".join("int f_{}(void) {{ return 1; }}\n".format(v.replace(".", "_")) for v in versions))
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out_dir / "libstub.so"), str(src),
                        "-Wl,-soname,libstub.so", "-Wl,--version-script=" + str(script)], check=True)
    build_stub(["STUB_1.0", "STUB_2.0"], tmp_path / "new")
    build_stub(["STUB_1.0"], tmp_path / "old")
    user = tmp_path / "user.c"
    user.write_text("int f_STUB_2_0(void);\nint use(void) { return f_STUB_2_0(); }\n")
    binary = tmp_path / "libuser.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(binary), str(user), "-L" + str(tmp_path / "new"),
                    "-lstub"], check=True)
    assert elf.read_elf(str(binary)).requires["libstub.so"] == {"STUB_2.0"}

    def check(libdir):
        env = dict(os.environ, LD_LIBRARY_PATH=str(libdir), PYTHONPATH=str(ROOT))
        return subprocess.run([sys.executable, "-c", CHECK_BINARY, str(binary)], env=env, cwd=str(ROOT),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                              timeout=120)
    ok = check(tmp_path / "new")
    assert ok.returncode == 0, ok.stdout
    assert "libstub.so STUB_2.0" in ok.stdout
    old = check(tmp_path / "old")
    assert old.returncode == 1 and "libstub.so lacks STUB_2.0" in old.stdout, old.stdout
    gone = check(tmp_path / "nowhere")
    assert gone.returncode == 1 and "libstub.so not found" in gone.stdout, gone.stdout


def bare_python(tmp_path) -> str:
    """An interpreter made by `python -m venv` with nothing installed: no NumPy, OpenCV, PyYAML, DLR
    or ONNX Runtime (a fresh clone before any pip install)."""
    import venv
    venv.EnvBuilder(with_pip=False).create(str(tmp_path / "bare"))
    return str(tmp_path / "bare" / "bin" / "python")


def bare_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "GG_ML_"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_doctor_runs_without_any_third_party_package(tmp_path):
    """The faults doctor exists to report must not crash it: every missing package is a line with
    its install hint, required ones FAIL, optional runtimes warn, and no traceback."""
    python = bare_python(tmp_path)
    cfg = tmp_path / "params.yaml"
    cfg.write_text("MLModelDestinationPath: {}\n".format(tmp_path))
    texts = {}
    for extra in ([], ["--model-dir", str(tmp_path)], ["--config", str(cfg)]):
        out = subprocess.run([python, "-m", "connector", "doctor"] + extra, cwd=str(tmp_path), env=bare_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                             timeout=120)
        text = out.stdout
        assert "Traceback" not in text, text
        assert out.returncode == 1, text
        for module, _, required, hint in doctor.PACKAGES:
            assert re.search(r"{}\s+{}: cannot import .*; {}".format(
                "FAIL" if required else "warn", re.escape(module), re.escape(hint)), text), (module, text)
        assert re.search(r"warn\s+dlr: not installed; .*pip install", text), text
        assert re.search(r"FAIL\s+no model runtime can load here", text), text
        assert text.rstrip().splitlines()[-1].startswith("doctor: the service CANNOT run here")
        texts[" ".join(extra[:1])] = text
    assert "not checked: it needs numpy, cv2, yaml (marked FAIL above)" in texts["--model-dir"]
    assert re.search(r"FAIL\s+cannot read the parameter file \(No module named 'yaml'\); pip install pyyaml",
                     texts["--config"]), texts["--config"]
    # The commands that need no third-party package still work there, unchanged.
    for args, expected in ((["models"], "demo-ssd "), (["--version"], "0.")):
        out = subprocess.run([python, "-m", "connector"] + args, cwd=str(tmp_path), env=bare_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                             timeout=60)
        assert out.returncode == 0 and expected in out.stdout, out.stdout


@pytest.mark.parametrize("args", [["infer", "MODEL", "x.jpg"], ["check-model", "MODEL"], ["serve"]])
def test_a_command_whose_package_is_missing_says_which_and_how_to_install_it(tmp_path, args):
    """Not a traceback: one line naming the command, the module, the interpreter and doctor's hint."""
    python = bare_python(tmp_path)
    model = str(ROOT / "connector" / "demos" / "demo-ssd")
    out = subprocess.run([python, "-m", "connector"] + [model if a == "MODEL" else a for a in args],
                         cwd=str(tmp_path), env=bare_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    [line] = out.stderr.splitlines()
    assert re.fullmatch(r"error: `{}` needs the Python module (\w+), not installed for {}: (.*); "
                        r"`python -m connector doctor` checks everything the service needs".format(
                            args[0], re.escape(python)), line), line
    module, hint = re.fullmatch(r".* module (\w+), .*?: (.*); `python.*", line).groups()
    assert hints_of(module) == hint


def test_only_the_packages_doctor_knows_get_the_one_line(monkeypatch, capsys):
    """Only the packages doctor knows get the one line; a bug of ours is not hidden behind one."""
    from connector import cli
    assert doctor.install_hint("cv2") == hints_of("cv2") and doctor.install_hint("paho") == hints_of("paho.mqtt")
    assert doctor.install_hint("connector.nothing") is None and doctor.install_hint(None) is None

    def missing(name):
        def command(args):
            raise ModuleNotFoundError("No module named {!r}".format(name), name=name)
        return command

    monkeypatch.setattr(cli, "cmd_models", missing("paho"))
    assert cli.main(["models"]) == 2
    assert "`models` needs the Python module paho" in capsys.readouterr().err
    monkeypatch.setattr(cli, "cmd_models", missing("connector.nothing"))
    with pytest.raises(ModuleNotFoundError, match="connector.nothing"):
        cli.main(["models"])


def hints_of(module):
    return {name: hint for name, _, _, hint in doctor.PACKAGES}[module]


def test_doctor_is_clean_on_a_healthy_machine():
    """Everything installed (the dev venv): the seed's rows that no runtime here needs (libgfortran.so.3,
    the x86_64 loader's GCC_4.0.0, libgomp on aarch64) are ok with their reason, not warnings."""
    for module, _, _, _ in doctor.PACKAGES:
        pytest.importorskip(module)
    pytest.importorskip("dlr")
    out = run_doctor()
    assert out.returncode == 0, out.stdout
    assert not re.search(r"^\s+warn\s", out.stdout, re.M), out.stdout
    assert out.stdout.rstrip().splitlines()[-1] == \
        "doctor: the service can run here; this machine is clean (no warnings)"
    table = out.stdout.split("System libraries of the seed's table")[1].split("What the installed")[0]
    for soname, _ in doctor.SEED_LIBRARIES[doctor.machine()]:
        if "{} not found".format(soname) in table:
            assert re.search(r"ok\s+{} not found; not needed here".format(re.escape(soname)), table), table


@pytest.mark.parametrize("needs, mark", [
    ({"libc.so.6": {"GLIBC_2.17"}}, "ok"),                              # nothing here links them
    ({"libno-such-seed-lib.so.9": set(), "libc.so.6": {"GLIBC_99.0"}}, "warn"),  # a runtime needs both
    (None, "warn"),                                                     # no runtime to judge by
])
def test_a_seed_row_warns_only_when_an_installed_runtime_needs_it(monkeypatch, needs, mark):
    monkeypatch.setitem(doctor.SEED_LIBRARIES, doctor.machine(),
                        [("libno-such-seed-lib.so.9", ["X_1.0"]), ("libc.so.6", ["GLIBC_99.0", "GLIBC_2.4"])])
    monkeypatch.setattr(doctor.os.path, "exists", lambda p, _exists=os.path.exists:
                        False if p == "/etc/nv_tegra_release" else _exists(p))
    r = doctor.Report(open(os.devnull, "w"))
    doctor.check_library_table(r, needs)
    unmet = ["libno-such-seed-lib.so.9 not found", "GLIBC_99.0"]
    if mark == "ok":
        assert not r.warnings
    else:
        assert all(any(u in w for w in r.warnings) for u in unmet), r.warnings
    assert not any("GLIBC_2.4 " in w for w in r.warnings)  # a met row is ok either way


def test_runtime_needs_reads_the_binaries_requirements(libstdcxx):
    needs = doctor.runtime_needs([libstdcxx])
    assert "libc.so.6" in needs and any(v.startswith("GLIBC_2.") for v in needs["libc.so.6"])
    assert doctor.runtime_needs([]) == {}


PHONE_HOME_CHECK = r"""
import sys
from connector.tools import doctor
r = doctor.Report(sys.stdout)
doctor.check_phone_home(r, sys.argv[1])
"""


def test_dlr_phone_home_on_warns_only_when_the_service_cannot_switch_it_off(tmp_path):
    pkg = tmp_path / "dlr"
    (pkg / "counter").mkdir(parents=True)
    config = pkg / "counter" / "ccm_config.json"
    check = [sys.executable, "-c", PHONE_HOME_CHECK, str(pkg)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def run(cmd):
        return subprocess.run(cmd, env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True, timeout=60).stdout
    config.write_text('{"enable_phone_home": false}')
    assert re.match(r"\s+ok\s+dlr .*phone-home off", run(check))
    config.write_text('{"enable_phone_home": true}')
    assert re.match(r"\s+ok\s+dlr .*the service switches it off", run(check))
    if os.geteuid() == 0:  # root writes anywhere: make the package read-only in a mount namespace
        if not shutil.which("unshare"):
            pytest.skip("root without unshare(1): cannot make the package unwritable")
        cmd = ["unshare", "-m", "sh", "-c", 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && '
               'shift && exec "$@"', "sh", str(pkg)] + check
    else:
        config.chmod(0o444)
        (pkg / "counter").chmod(0o555)
        cmd = check
    text = run(cmd)
    if "Operation not permitted" in text or "permission denied" in text.lower() and "dlr" not in text:
        pytest.skip("no mount namespace here: " + text)
    assert re.match(r"\s+warn\s+dlr .*not writable by this user: the service will refuse DLR models", text), text


@pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc")
def test_a_model_library_that_links_a_missing_seed_library_makes_its_row_a_warning(tmp_path):
    """A Neo model's compiled.so is loaded as well: a seed row it needs (built here against a stub
    of the missing library, as a Neo-built compiled.so would link libgomp) is no longer ok."""
    missing = [s for s, _ in doctor.SEED_LIBRARIES.get(doctor.machine(), []) if elf.locate_library(s) is None]
    if not missing:
        pytest.skip("every seed library of this platform is installed here")
    soname = missing[0]
    stub = tmp_path / "stub"
    stub.mkdir()
    (tmp_path / "stub.c").write_text("int stub_fn(void) { return 1; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(stub / soname), str(tmp_path / "stub.c"),
                    "-Wl,-soname," + soname], check=True)
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "user.c").write_text("int stub_fn(void);\nint use(void) { return stub_fn(); }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(model / "compiled.so"), str(tmp_path / "user.c"),
                    "-Wl,--no-as-needed", str(stub / soname)], check=True)
    assert soname in elf.read_elf(str(model / "compiled.so")).needed
    table = lambda text: text.split("System libraries of the seed's table")[1].split("What the installed")[0]  # noqa: E731
    assert re.search(r"ok\s+{} not found; not needed here".format(re.escape(soname)), table(run_doctor().stdout))
    out = run_doctor("--model-dir", str(model))
    assert re.search(r"warn\s+{} not found".format(re.escape(soname)), table(out.stdout)), out.stdout
