"""CONNECTOR_INFERENCE_WORKERS=auto (the default): one worker per core, at most 4, and only as many
as fit in the memory the machine and the process's cgroup still allow. The readers run on real
files: a /proc and /sys/fs/cgroup tree written under a temporary root."""
import json
import os
import re
import subprocess
import sys

import pytest

from connector.tools import deploy
from connector.errors import ParameterError
from connector.supervision.memory import READ_CAP, cgroup_room_kb, cgroup_visible, mem_available_kb
from connector.supervision.sizing import (AUTO_MAX_WORKERS, SUPERVISOR_KB, WORKERS_ENV,
                                          auto_workers, choose_workers, memory_room_kb,
                                          requested_workers, workers_in_memory)
from tests.service_process import ROOT, clean_env, params_file

GB_KB = 1024 * 1024
V1_NO_LIMIT = 9223372036854771712  # what cgroup v1 writes for "no limit" on 4 KiB pages


def write(root, relative, content):
    path = os.path.join(str(root), relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content if isinstance(content, bytes) else content.encode())
    return path


def meminfo(available_kb):
    return ("MemTotal:       24684084 kB\nMemFree:         1234567 kB\n"
            "MemAvailable:   {} kB\nBuffers:          123456 kB\n".format(available_kb))


def v1_tree(root, limit_bytes, usage_bytes, path="/greengrass/3f2a9c", ancestors_unlimited=True):
    """A cgroup v1 memory hierarchy as a Greengrass V1 Lambda container sees it."""
    write(root, "proc/self/cgroup", "11:cpuset:/\n6:memory:{}\n1:name=systemd:/\n0::/\n".format(path))
    base = "sys/fs/cgroup/memory" + path
    write(root, base + "/memory.limit_in_bytes", "{}\n".format(limit_bytes))
    write(root, base + "/memory.usage_in_bytes", "{}\n".format(usage_bytes))
    write(root, base + "/cgroup.procs", "1\n")
    if ancestors_unlimited:
        write(root, "sys/fs/cgroup/memory/memory.limit_in_bytes", "{}\n".format(V1_NO_LIMIT))
        write(root, "sys/fs/cgroup/memory/memory.usage_in_bytes", "3414712320\n")
        write(root, "sys/fs/cgroup/memory/cgroup.procs", "1\n")


def v2_tree(root, levels):
    """`levels`: {cgroup path: (memory.max text, memory.current text)}; the process is in the deepest."""
    deepest = max(levels, key=len)
    write(root, "proc/self/cgroup", "0::{}\n".format(deepest))
    for path, (limit, current) in levels.items():
        base = "sys/fs/cgroup" + path.rstrip("/")
        write(root, base + "/cgroup.procs", "1\n")
        if limit is not None:
            write(root, base + "/memory.max", limit)
        if current is not None:
            write(root, base + "/memory.current", current)


# -- the setting --------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, count", [("", None), ("auto", None), ("AUTO", None), (" auto ", None),
                                        ("1", 1), ("3", 3), ("16", 16), (" 2 ", 2), ("09", 9)])
def test_the_setting_from_the_environment(raw, count):
    assert requested_workers({WORKERS_ENV: raw}) == count
    assert requested_workers({}) is None  # unset: auto


@pytest.mark.parametrize("raw", ["0", "17", "-1", "two", "1.5", "2e1", "\u0663", "auto2", "100", "1 2"])
def test_a_bad_setting_names_the_variable(raw):
    with pytest.raises(ParameterError, match=WORKERS_ENV + " must be a number of workers from 1 to 16 or auto"):
        requested_workers({WORKERS_ENV: raw})
    with pytest.raises(ParameterError, match=WORKERS_ENV):
        choose_workers(500000, {WORKERS_ENV: raw})


# -- the rule -----------------------------------------------------------------------------------

LIMIT = 500000


@pytest.mark.parametrize("cpus, room_kb, expected", [
    (2, None, 1),                              # nothing known about memory: one worker
    (8, None, 1),
    (1, 64 * GB_KB, 1),                        # one core: one worker, however much memory
    (2, 64 * GB_KB, 2),                        # cores decide
    (3, 64 * GB_KB, 3),
    (8, 64 * GB_KB, AUTO_MAX_WORKERS),         # at most 4
    (64, 64 * GB_KB, AUTO_MAX_WORKERS),
    (8, SUPERVISOR_KB + 4 * LIMIT, 3),         # memory decides: 3 workers + 1 reloading
    (8, SUPERVISOR_KB + 3 * LIMIT, 2),
    (8, SUPERVISOR_KB + 3 * LIMIT - 1, 1),     # one KB short of the third slot
    (8, SUPERVISOR_KB + 2 * LIMIT, 1),         # one worker and its reload
    (8, SUPERVISOR_KB + LIMIT, 1),             # not even that: still one (the limit is a ceiling)
    (8, 0, 1),
    (2, SUPERVISOR_KB + 3 * LIMIT, 2),         # both agree
    (1, SUPERVISOR_KB + 5 * LIMIT, 1),
])
def test_auto_is_cores_capped_by_memory(cpus, room_kb, expected):
    assert auto_workers(cpus, room_kb, LIMIT) == expected


def test_workers_in_memory_keeps_room_for_a_reload_and_the_supervisor():
    assert workers_in_memory(SUPERVISOR_KB + 5 * LIMIT, LIMIT) == 4
    assert workers_in_memory(SUPERVISOR_KB + 5 * LIMIT - 1, LIMIT) == 3
    assert workers_in_memory(0, LIMIT) == 0
    assert workers_in_memory(SUPERVISOR_KB - 1, LIMIT) == 0  # never negative


@pytest.mark.parametrize("available, cgroup, room", [(None, None, None), (5, None, 5), (None, 7, 7),
                                                     (5, 7, 5), (9, 7, 7), (0, 7, 0)])
def test_the_room_is_the_smaller_of_machine_and_cgroup(available, cgroup, room):
    assert memory_room_kb(available, cgroup) == room


# -- /proc/meminfo --------------------------------------------------------------------------------

def test_mem_available_is_read_from_meminfo(tmp_path):
    write(tmp_path, "proc/meminfo", meminfo(5123456))
    assert mem_available_kb(str(tmp_path)) == 5123456


@pytest.mark.parametrize("content", [
    b"",                                                   # empty
    b"MemTotal: 1000 kB\nMemFree: 500 kB\n",               # an old kernel without MemAvailable
    b"MemAvailable: lots kB\n",
    b"MemAvailable: -5 kB\n",
    b"MemAvailable: 5 MB\n",                               # not the unit the kernel writes
    b"MemAvailable:\n",
    b"\xff\xfe\x00garbage\x00\n",
    ("MemAvailable: 123 kB\n" + "x" * READ_CAP).encode(),  # too long to be meminfo
])
def test_unreadable_meminfo_is_no_information(tmp_path, content):
    write(tmp_path, "proc/meminfo", content)
    assert mem_available_kb(str(tmp_path)) is None


def test_missing_meminfo_is_no_information(tmp_path):
    assert mem_available_kb(str(tmp_path)) is None
    os.makedirs(str(tmp_path / "proc" / "meminfo"))  # a directory where the file should be
    assert mem_available_kb(str(tmp_path)) is None


def test_the_real_meminfo_is_read():
    assert mem_available_kb() is None or mem_available_kb() > 0


# -- cgroup v2 ----------------------------------------------------------------------------------

def test_v2_limit_less_usage(tmp_path):
    v2_tree(tmp_path, {"/system.slice/gg-ml.service": ("2147483648\n", "1073741824\n")})
    assert cgroup_room_kb(str(tmp_path)) == GB_KB


def test_v2_max_is_no_limit(tmp_path):
    v2_tree(tmp_path, {"/system.slice/gg-ml.service": ("max\n", "1073741824\n")})
    assert cgroup_room_kb(str(tmp_path)) is None


def test_v2_a_tighter_parent_wins(tmp_path):
    v2_tree(tmp_path, {"/system.slice/gg-ml.service": ("max\n", "100000000\n"),
                       "/system.slice": ("1500000000\n", "1000000000\n")})
    assert cgroup_room_kb(str(tmp_path)) == 500000000 // 1024


def test_v2_usage_over_the_limit_is_no_room(tmp_path):
    v2_tree(tmp_path, {"/a": ("1000\n", "5000\n")})
    assert cgroup_room_kb(str(tmp_path)) == 0


# -- layouts --------------------------------------------------------------------------------------

@pytest.mark.parametrize("cgroup_lines, files, room_kb", [
    # systemd's hybrid layout: v1 controllers, the v2 hierarchy mounted at unified/
    ("4:memory:/\n0::/system.slice/x.service\n",
     {"unified/system.slice/x.service/memory.max": "3221225472\n",
      "unified/system.slice/x.service/memory.current": "1073741824\n"}, 2 * GB_KB),
    # Without a cgroup namespace /proc/self/cgroup names the host's path, which the container's
    # /sys/fs/cgroup (its own cgroup, at the root) does not have: the levels that exist answer.
    ("0::/kubepods/burstable/pod1234/abcdef\n",
     {"memory.max": "1073741824\n", "memory.current": "536870912\n"}, GB_KB // 2),
    # v1 memory co-mounted with another controller
    ("3:cpu,memory:/svc\n",
     {"cpu,memory/svc/memory.limit_in_bytes": "2147483648", "cpu,memory/svc/memory.usage_in_bytes": "0"},
     2 * GB_KB),
    # v1 and v2 both limiting: the smaller
    ("6:memory:/a\n0::/b\n",
     {"memory/a/memory.limit_in_bytes": "2147483648", "memory/a/memory.usage_in_bytes": "0",
      "b/memory.max": "1073741824", "b/memory.current": "0"}, GB_KB),
])
def test_cgroup_layouts(tmp_path, cgroup_lines, files, room_kb):
    write(tmp_path, "proc/self/cgroup", cgroup_lines)
    for relative, content in files.items():
        write(tmp_path, "sys/fs/cgroup/" + relative, content)
    assert cgroup_room_kb(str(tmp_path)) == room_kb


# -- cgroup v1 ----------------------------------------------------------------------------------

def test_v1_limit_less_usage(tmp_path):
    v1_tree(tmp_path, 1128857600, 62914560)
    assert cgroup_room_kb(str(tmp_path)) == (1128857600 - 62914560) // 1024


def test_v1_the_unlimited_value_is_no_limit(tmp_path):
    v1_tree(tmp_path, V1_NO_LIMIT, 62914560)
    assert cgroup_room_kb(str(tmp_path)) is None


@pytest.mark.parametrize("limit, usage", [
    ("12ab\n", "0\n"), ("-5\n", "0\n"), ("\n", "0\n"), ("1" * 100, "0\n"),  # garbled or oversized limit
    ("1e9\n", "0\n"), ("0x40000000\n", "0\n"), ("\u0661\u0662\n", "0\n"),
    ("1073741824\n", "lots\n"), ("1073741824\n", ""), ("1073741824\n", None),  # usage unreadable
    (None, "0\n"),                                                           # no limit file
    ("99999999999999999999999\n", "0\n"),                                    # beyond any machine
])
def test_garbled_cgroup_files_are_no_information(tmp_path, limit, usage):
    v2_tree(tmp_path, {"/svc": (limit, usage)})
    assert cgroup_room_kb(str(tmp_path)) is None


@pytest.mark.parametrize("content", [b"", b"garbage without colons\n", b"\xff\xfe\x00\x01",
                                     b"6:memory:relative/path\n", b"x" * (READ_CAP + 1),
                                     b"6:memory/../..:/a\n"])
def test_a_garbled_proc_self_cgroup_is_no_information(tmp_path, content):
    write(tmp_path, "proc/self/cgroup", content)
    write(tmp_path, "sys/fs/cgroup/memory/a/memory.limit_in_bytes", "1073741824")
    write(tmp_path, "sys/fs/cgroup/memory/a/memory.usage_in_bytes", "0")
    assert cgroup_room_kb(str(tmp_path)) is None


def test_nothing_there_is_no_information(tmp_path):
    assert cgroup_room_kb(str(tmp_path)) is None
    assert cgroup_room_kb(str(tmp_path / "does-not-exist")) is None


def test_the_real_cgroup_is_read():
    room = cgroup_room_kb()
    assert room is None or room >= 0
    assert cgroup_visible() in (True, False)


def test_a_cgroup_is_visible_where_its_directory_is(tmp_path):
    v1_tree(tmp_path, V1_NO_LIMIT, 0)
    assert cgroup_visible(str(tmp_path)) and cgroup_room_kb(str(tmp_path)) is None  # seen, no limit


@pytest.mark.parametrize("cgroup_lines", ["6:memory:/greengrass/3f2a9c\n", "0::/\n", "0::/system.slice/x\n", ""])
def test_a_cgroup_without_sys_is_not_visible(tmp_path, cgroup_lines):
    """A Greengrass container without /sys access: /proc/self/cgroup names the cgroup, nothing
    under /sys/fs/cgroup shows it (maybe an empty directory)."""
    write(tmp_path, "proc/self/cgroup", cgroup_lines)
    os.makedirs(str(tmp_path / "sys" / "fs" / "cgroup"))
    assert not cgroup_visible(str(tmp_path))
    assert not cgroup_visible(str(tmp_path / "nothing-at-all"))


# -- the whole choice, from files -----------------------------------------------------------------

def test_nothing_readable_means_one_worker(tmp_path):
    choice = choose_workers(LIMIT, {}, root=str(tmp_path), cpus=8)
    assert choice.count == 1 and not choice.over_memory
    assert "memory unknown" in choice.why and "8 cores" in choice.why


def test_meminfo_alone_decides_without_a_cgroup_limit(tmp_path):
    write(tmp_path, "proc/meminfo", meminfo(5000000))
    choice = choose_workers(LIMIT, {}, root=str(tmp_path), cpus=8)
    assert choice.count == AUTO_MAX_WORKERS
    assert choice.why == ("CONNECTOR_INFERENCE_WORKERS auto: 8 cores, memory for 8 workers and a reload "
                          "(MemAvailable 5.1 GB, cgroup limit none) at LocalInferenceServiceMemoryLimitKB=500000")


def test_a_small_machine_gets_one_worker(tmp_path):
    write(tmp_path, "proc/meminfo", meminfo(900000))  # a Raspberry Pi with 1 GB
    assert choose_workers(LIMIT, {}, root=str(tmp_path), cpus=4).count == 1


def test_the_cgroup_decides_when_it_is_tighter(tmp_path):
    write(tmp_path, "proc/meminfo", meminfo(64 * GB_KB))
    v2_tree(tmp_path, {"/system.slice/gg.service": (str(SUPERVISOR_KB * 1024 + 3 * LIMIT * 1024), "0")})
    choice = choose_workers(LIMIT, {}, root=str(tmp_path), cpus=8)
    assert choice.count == 2 and "cgroup allows 1.6 GB" in choice.why


def test_an_explicit_count_holds_even_where_it_does_not_fit(tmp_path):
    write(tmp_path, "proc/meminfo", meminfo(900000))
    choice = choose_workers(LIMIT, {WORKERS_ENV: "3"}, root=str(tmp_path), cpus=1)
    assert choice.count == 3 and choice.over_memory
    assert choice.why.startswith("CONNECTOR_INFERENCE_WORKERS=3; 1 core, memory for 0 workers")
    assert choose_workers(LIMIT, {WORKERS_ENV: "1"}, root=str(tmp_path), cpus=1) == (
        1, choice.why.replace("=3", "=1"), False)  # one always "fits": the limit is a ceiling
    assert choose_workers(LIMIT, {WORKERS_ENV: "3"}, root=str(tmp_path / "empty"), cpus=1).over_memory is False


def test_a_hidden_cgroup_is_unknown_memory_where_the_caller_says_so(tmp_path):
    write(tmp_path, "proc/meminfo", meminfo(64 * GB_KB))
    write(tmp_path, "proc/self/cgroup", "6:memory:/greengrass/3f2a9c\n")
    hidden = choose_workers(LIMIT, {}, root=str(tmp_path), cpus=4, hidden_cgroup_is_unknown=True)
    assert hidden.count == 1 and "memory unknown" in hidden.why and "cgroup not visible" in hidden.why
    assert choose_workers(LIMIT, {}, root=str(tmp_path), cpus=4).count == 4  # serve: MemAvailable
    v1_tree(tmp_path, V1_NO_LIMIT, 0)  # seen, and it sets no limit: MemAvailable decides
    assert choose_workers(LIMIT, {}, root=str(tmp_path), cpus=4, hidden_cgroup_is_unknown=True).count == 4


def test_the_greengrass_v1_container_gets_one_worker(tmp_path):
    """The function definition's MemorySize is one worker, one reload and the supervisor
    (connector.tools.deploy): its container's v1 memory cgroup leaves room for one worker, on any
    number of cores and however much the machine has free, even before the supervisor used any."""
    with open(os.path.join(str(ROOT), "manifests", "greengrass-v1", "function-definition.json")) as f:
        function = json.load(f)["Functions"][0]["FunctionConfiguration"]
    memory_size_kb = function["MemorySize"]
    limit_kb = int(function["Environment"]["Variables"]["LocalInferenceServiceMemoryLimitKB"])
    assert memory_size_kb == deploy.outer_memory_kb(limit_kb)
    write(tmp_path, "proc/meminfo", meminfo(64 * GB_KB))
    for usage_bytes in (0, 62914560):  # nothing yet; the supervisor's ~60 MB at import
        v1_tree(tmp_path, memory_size_kb * 1024, usage_bytes)
        choice = choose_workers(limit_kb, {}, root=str(tmp_path), cpus=16, hidden_cgroup_is_unknown=True)
        assert choice.count == 1, choice.why
        assert re.search(r"memory for [01] workers and a reload .*cgroup allows 1\.[01] GB", choice.why)
    # The same container with twice the worker limit's room more gets a second worker.
    v1_tree(tmp_path, (memory_size_kb + 2 * limit_kb) * 1024, 62914560)
    assert choose_workers(limit_kb, {}, root=str(tmp_path), cpus=16).count == 2


def test_serve_refuses_a_bad_setting_at_start_up(tmp_path, model_dir):
    """One message naming the variable, exit status 2, before anything starts."""
    cfg = params_file(tmp_path / "params.json", model_dir)
    out = subprocess.run([sys.executable, "-m", "connector", "serve", "--config", str(cfg), "--port", "0"],
                         env=clean_env(tmp_path / "ipc.json", CONNECTOR_INFERENCE_WORKERS="lots"), cwd=str(ROOT),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: CONNECTOR_INFERENCE_WORKERS must be a number of workers from 1 to 16 or auto, got 'lots'"]
    assert not (tmp_path / "ipc.json").exists()
