"""The feedback spool and destinations treat what is on disk, and what callers and operators send,
as untrusted: planted records and links, unsafe directories, escaping settings, oversized documents,
unbounded or public samples, full disks, a delivery loop that fails.

Real parts only: our IPC host plays the core (its GGRouter records what is published), the spool
and the samples are on disk; a full disk is a real one in tests/feedback_disk_full.py.
"""
import grp
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from connector.service import metrics
from connector.errors import ParameterError
from connector.feedback import config as fc
from connector.feedback.publisher import RouterPublisher
from connector.feedback.collector import FeedbackService, InvalidFeedbackRequest
from connector.feedback import destinations
from connector.feedback import spool as spool_module
from connector.feedback.destinations import LocalDirectory, PermanentError, TransientError
from connector.feedback.spool import Spool
from connector.files import UnsafeFile, write_atomic
from connector.ipc import run_lambda
from tests.unprivileged import NOBODY, as_nobody
from tests.waiting import wait_until as wait

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 200
DOC = {"prediction": [[1, 0.9, 0.1, 0.1, 0.2, 0.2]]}
SAMPLE = "0f3d2c1b-aaaa-4bbb-8ccc-0123456789ab"


def local_config(tmp_path, **extra):
    config = {"local-directory": str(tmp_path / "samples"), "content-type": "image/png",
              "s3-prefix": "cam", "file-ext": "png"}
    config.update(extra)
    return {"l1": config}


def params(tmp_path, configs=None, **extra):
    values = {"FeedbackConfigurationMap": configs or local_config(tmp_path),
              "FeedbackSpoolDirectory": str(tmp_path / "spool"), "FeedbackRetryMinSeconds": "0.02",
              "FeedbackRetryMaxSeconds": "0.1"}
    values.update(extra)
    return fc.parse_parameters(values, environ={})


def service(tmp_path, host, configs=None, **extra):
    return FeedbackService(params(tmp_path, configs, **extra),
                           RouterPublisher(host.client(timeout=5), "test-source")).start()


def statuses(published):
    return {d["id"]: d["response"] for t, d in published if t == "feedback/message/status"}


def spool_dir(tmp_path):
    d = tmp_path / "spool"
    d.mkdir(mode=0o700, exist_ok=True)
    return d


def plant(tmp_path, seq, request_id, record, image=PNG):
    """A record (any JSON value, or raw bytes) and image written straight into the spool."""
    d = spool_dir(tmp_path)
    name = "{:012d}-{}".format(seq, request_id)
    data = record if isinstance(record, bytes) else json.dumps(record).encode()
    (d / (name + ".json")).write_bytes(data)
    if image is not None:
        (d / (name + ".bin")).write_bytes(image)
    return d / name


def good_record(request_id, **extra):
    """A record as the service writes it (readable by the earlier version too: it has "key")."""
    record = {"id": request_id, "config-id": "l1", "accepted": time.time(), "kept": True,
              "verdict": "kept", "prediction": DOC, "metadata": {}, "sample": SAMPLE,
              "key": "cam/{}.png".format(SAMPLE)}
    record.update(extra)
    return record


def files_under(directory):
    return sorted(str(p.relative_to(directory)) for p in Path(directory).rglob("*") if not p.is_dir())


# -- spool records are untrusted input ---------------------------------------------------------

@pytest.mark.parametrize("key", ["../../outside/x.png", "ABSOLUTE"])
def test_a_planted_key_never_writes_outside_the_samples_directory(tmp_path, router, key):
    host, published = router
    outside = tmp_path / "outside"
    key = str(outside / "x.png") if key == "ABSOLUTE" else key
    record = good_record("planted", key=key)
    del record["sample"]
    plant(tmp_path, 1, "planted", record)
    svc = service(tmp_path, host)
    try:
        svc.accept(PNG, {"ConfigId": "l1", "ModelPrediction": DOC}, "after")
        wait(lambda: "after" in statuses(published) and "planted" in statuses(published))
        assert not outside.exists() and not list(tmp_path.glob("**/x.png*"))
        assert statuses(published)["planted"]["error"] == "Quarantined"
        assert statuses(published)["after"]["status"] == "success"
        assert all(name.startswith("cam/") for name in files_under(tmp_path / "samples"))
    finally:
        svc.close()


def test_a_planted_key_with_a_uuid_name_is_rebuilt_under_the_prefix(tmp_path, router):
    """A record of the earlier format (key, no sample) is delivered; only its uuid is taken."""
    host, published = router
    record = good_record("legacy", key="../../elsewhere/{}.png".format(SAMPLE))
    del record["sample"]
    plant(tmp_path, 1, "legacy", record)
    svc = service(tmp_path, host)
    try:
        wait(lambda: "legacy" in statuses(published))
        assert statuses(published)["legacy"]["status"] == "success"
        assert files_under(tmp_path / "samples") == ["cam/{}.png".format(SAMPLE), "cam/{}.png.json".format(SAMPLE)]
        assert not (tmp_path / "elsewhere").exists()
    finally:
        svc.close()


def test_a_symlinked_image_is_refused_not_copied(tmp_path, router):
    host, published = router
    secret = tmp_path / "secret"
    secret.write_bytes(b"\x89PNG\r\n\x1a\n the key to everything")
    secret.chmod(0o600)
    name = plant(tmp_path, 1, "linked", good_record("linked"), image=None)
    os.symlink(str(secret), str(name) + ".bin")
    svc = service(tmp_path, host)
    try:
        svc.accept(PNG, {"ConfigId": "l1", "ModelPrediction": DOC}, "after")
        wait(lambda: "after" in statuses(published) and "linked" in statuses(published))
        assert statuses(published)["linked"]["error"] == "Quarantined"
        assert "not a regular file" in statuses(published)["linked"]["error_message"]
        for path in (tmp_path / "samples").rglob("*"):
            assert path.is_dir() or b"the key to everything" not in path.read_bytes()
    finally:
        svc.close()


def test_reading_an_image_never_follows_a_link_swapped_in_later(tmp_path):
    s = Spool(str(tmp_path / "spool"), 10 ** 6, 10, 3600, "reject-new")
    entry, _ = s.add(good_record("r1", **{"image-bytes": len(PNG)}), PNG)
    assert entry.read_image(10 ** 6) == PNG
    with pytest.raises(UnsafeFile, match="larger than"):
        entry.read_image(10)
    os.unlink(entry.image_path)
    os.symlink(str(tmp_path / "secret"), entry.image_path)
    (tmp_path / "secret").write_bytes(PNG)
    with pytest.raises(UnsafeFile, match="symbolic link"):
        entry.read_image(10 ** 6)


@pytest.mark.parametrize("record", [[], "text", 7, None, b"{not json", b"\xff\xfe", b"[" * 100000])
def test_a_malformed_record_is_quarantined_and_the_service_starts(tmp_path, router, record):
    host, published = router
    plant(tmp_path, 1, "broken", record)
    svc = service(tmp_path, host)
    try:
        svc.accept(PNG, {"ConfigId": "l1", "ModelPrediction": DOC}, "after")
        wait(lambda: "after" in statuses(published))
        assert svc.describe()["quarantined"] == 1
        assert statuses(published)["after"]["status"] == "success"
        assert statuses(published)["broken"]["error"] == "Quarantined"
        # Moved aside (behind the time it was quarantined), not deleted: an operator may look.
        assert sorted(p.name.split("-", 1)[1] for p in (tmp_path / "spool" / "quarantine").iterdir()) == [
            "000000000001-broken.bin", "000000000001-broken.json"]
    finally:
        svc.close()


@pytest.mark.parametrize("change", [{"accepted": "yesterday"}, {"accepted": None}, {"kept": None},
                                    {"verdict": "kept", "kept": False}, {"metadata": {"k": 5}},
                                    {"config-id": "../x"}, {"id": "someone-else"}, {"prediction": {}}])
def test_a_record_with_a_bad_field_does_not_stop_or_block_delivery(tmp_path, router, change):
    host, published = router
    record = good_record("bad")
    record.update(change)
    if "kept" in change and change["kept"] is None:
        del record["kept"]
    plant(tmp_path, 1, "bad", record)
    svc = service(tmp_path, host)
    try:
        for i in range(3):
            svc.accept(PNG, {"ConfigId": "l1", "ModelPrediction": DOC}, "later-{}".format(i))
        wait(lambda: all("later-{}".format(i) in statuses(published) for i in range(3)))
        assert all(statuses(published)["later-{}".format(i)]["status"] == "success" for i in range(3))
        assert svc.describe()["quarantined"] == 1 and svc.describe()["delivery"] == "running"
    finally:
        svc.close()


def test_a_planted_fifo_does_not_hang_the_start(tmp_path):
    d = spool_dir(tmp_path)
    os.mkfifo(str(d / "000000000001-fifo.json"))
    opened = []
    thread = threading.Thread(target=lambda: opened.append(
        Spool(str(d), 10 ** 6, 10, 3600, "reject-new")), daemon=True)
    thread.start()
    thread.join(10)
    assert opened and opened[0].quarantined_count == 1 and len(opened[0]) == 0


def test_planted_directories_and_links_do_not_stop_the_start(tmp_path):
    d = spool_dir(tmp_path)
    for name in ("000000000001-a.json", "000000000002-b.bin", ".tmp-000000000003-c.json"):
        (d / name).mkdir()
    os.symlink(str(tmp_path / "nowhere"), str(d / "000000000004-d.json"))
    s = Spool(str(d), 10 ** 6, 10, 3600, "reject-new")
    assert s.quarantined_count == 2 and len(s) == 0
    entry, _ = s.add(good_record("r1"), PNG)
    assert entry.name == "000000000005-r1"


def test_the_quarantine_is_bounded(tmp_path):
    QUARANTINE_MAX_FILES = 200
    for i in range(QUARANTINE_MAX_FILES + 30):
        plant(tmp_path, i + 1, "junk", [], image=b"x")
    s = Spool(str(tmp_path / "spool"), 10 ** 6, 10, 3600, "reject-new")
    assert s.quarantined_count == QUARANTINE_MAX_FILES + 30
    assert len(os.listdir(str(tmp_path / "spool" / "quarantine"))) == QUARANTINE_MAX_FILES
    assert [n for n in os.listdir(str(tmp_path / "spool")) if n != "quarantine"] == []
    assert spool_module.QUARANTINE_MAX_FILES == QUARANTINE_MAX_FILES


def test_the_quarantine_is_bounded_in_bytes(tmp_path, monkeypatch):
    """Few files but large ones: the byte bound (32 MiB, made 10 KB here) removes the oldest."""
    assert spool_module.QUARANTINE_MAX_BYTES == 32 * 1024 * 1024
    monkeypatch.setattr(spool_module, "QUARANTINE_MAX_BYTES", 10000)
    for i in range(8):
        plant(tmp_path, i + 1, "junk", [], image=b"x" * 3000)
    s = Spool(str(tmp_path / "spool"), 10 ** 6, 10, 3600, "reject-new")
    assert s.quarantined_count == 8
    folder = tmp_path / "spool" / "quarantine"
    kept = sorted(p.name.split("-", 1)[1] for p in folder.iterdir())
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 10000
    # The newest three entries fit whole (3 x 3002 bytes); the older ones went first.
    assert kept[-6:] == ["00000000000{}-junk.{}".format(i, ext) for i in (6, 7, 8) for ext in ("bin", "json")]
    assert len(kept) <= 7


def test_a_delivery_loop_that_dies_is_restarted_and_counted(tmp_path, router, monkeypatch):
    host, published = router
    svc = FeedbackService(params(tmp_path), RouterPublisher(host.client(timeout=5), "test-source"))
    real = svc.spool.take_expired
    failures = [RuntimeError("a bug nobody foresaw"), TypeError("another one")]

    def failing(*args, **kwargs):
        if failures:
            raise failures.pop(0)
        return real(*args, **kwargs)

    monkeypatch.setattr(svc.spool, "take_expired", failing)
    svc.start()
    try:
        svc.accept(PNG, {"ConfigId": "l1", "ModelPrediction": DOC}, "after")
        wait(lambda: "after" in statuses(published))
        assert statuses(published)["after"]["status"] == "success"
        info = svc.describe()
        assert info["delivery_restarts"] == 2 and info["delivery"] == "running"
    finally:
        svc.close()
    text = metrics.render("svc", metrics.RequestMetrics(), {"feedback": svc.describe()})
    assert 'ggml_feedback_delivery_restarts_total{service="svc"} 2' in text


def test_metrics_show_the_feedback_counters(tmp_path):
    health = {"feedback": {"quarantined": 3, "delivery_restarts": 1, "full": 4, "disk_errors": 5}}
    text = metrics.render("svc", metrics.RequestMetrics(), health)
    for name, value in (("quarantined", 3), ("delivery_restarts", 1), ("local_directory_full", 4),
                        ("disk_errors", 5)):
        assert 'ggml_feedback_{}_total{{service="svc"}} {}'.format(name, value) in text
    assert "feedback" not in metrics.render("svc", metrics.RequestMetrics(), {})


# -- the spool directory ------------------------------------------------------------------------

@pytest.mark.parametrize("mode, who", [(0o770, "its group"), (0o707, "others"), (0o777, "others")])
def test_a_spool_directory_others_can_write_is_refused(tmp_path, mode, who):
    d = tmp_path / "spool"
    d.mkdir()
    d.chmod(mode)
    with pytest.raises(ParameterError) as refused:
        Spool(str(d), 10 ** 6, 10, 3600, "reject-new")
    message = str(refused.value)
    assert "\n" not in message and str(d) in message and "writable by " + who in message
    assert "chmod go-w" in message


@pytest.mark.parametrize("mode,who", [(0o777, "others"), (0o775, "its group")])
def test_a_local_directory_others_can_write_is_refused_at_start(tmp_path, router, mode, who):
    """The samples' root is checked like the spool directory: another user who can write it could
    plant or replace samples (a missing one is made at start: test_a_missing_local_directory_is_made_at_start)."""
    host, _ = router
    root = tmp_path / "samples"
    root.mkdir()
    root.chmod(mode)
    with pytest.raises(ParameterError) as refused:
        service(tmp_path, host)
    message = str(refused.value)
    assert "\n" not in message and "local-directory of config l1" in message
    assert "writable by " + who in message and "chmod go-w" in message
    root.chmod(0o700)
    service(tmp_path, host).close()


@pytest.fixture()
def sticky():
    """A directory every user may create entries in, like /tmp (1777), reachable by uid NOBODY."""
    base = Path(tempfile.mkdtemp(prefix="ggml-sticky-", dir="/tmp"))
    base.chmod(0o755)
    shared = base / "x"
    shared.mkdir()
    shared.chmod(0o1777)
    yield shared
    shutil.rmtree(str(base))


def local_under(tmp_path, root, **extra):
    return fc.parse_config("l1", dict(local_config(tmp_path)["l1"], **dict({"local-directory": str(root)},
                                                                          **extra)))


@pytest.mark.parametrize("group", [None, "gid"])
def test_a_missing_local_directory_is_made_at_start(tmp_path, router, sticky, group):
    """Made by the service when it starts, not by its first sample: until then another user could
    make it (the directory above is like /tmp). Its mode and group are the samples' directories'."""
    host, _ = router
    root = sticky / "samples"
    extra = {"FeedbackFilesGroup": str(os.getgid())} if group else {}
    service(tmp_path, host, local_config(tmp_path, **{"local-directory": str(root)}), **extra).close()
    st = os.lstat(str(root))
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and os.listdir(str(root)) == []
    assert stat.S_IMODE(st.st_mode) == (0o750 if group else 0o700)
    assert group is None or st.st_gid == os.getgid()


def test_another_user_cannot_make_the_local_directory_after_the_start(tmp_path, sticky):
    """The review's case: local-directory missing at start under a 1777 directory, then another
    user makes it 0777; before, the check had passed (nothing to check) and samples went there."""
    root = sticky / "samples"
    config = local_under(tmp_path, root)
    local = LocalDirectory()
    local.check_root(config)  # what the service does when it starts
    outcome = as_nobody(lambda: (os.mkdir(str(root)), os.chmod(str(root), 0o777)))
    assert outcome.startswith("FileExistsError"), outcome
    response = local.put(config, SAMPLE, PNG, {"id": "r1"})
    assert response["path"] == str(root / "cam" / (SAMPLE + ".png"))
    assert os.stat(str(root)).st_uid == os.geteuid() and stat.S_IMODE(os.stat(str(root)).st_mode) == 0o700


@pytest.mark.parametrize("replacement", ["directory", "link", "none"])
def test_a_local_directory_replaced_after_the_start_is_checked_before_a_sample(tmp_path, sticky,
                                                                               replacement):
    """Removed after the start (a cleaner of /tmp), then made again by another user: a directory
    of theirs, or their link to a directory of ours. No sample goes there; one made again by no
    one else is made by the service, as at start."""
    root = sticky / "samples"
    config = local_under(tmp_path, root)
    local = LocalDirectory()
    local.check_root(config)
    os.rmdir(str(root))
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o700)
    if replacement == "directory":
        assert as_nobody(lambda: (os.mkdir(str(root)), os.chmod(str(root), 0o777))).startswith("ok")
    elif replacement == "link":
        assert as_nobody(lambda: os.symlink(str(ours), str(root))).startswith("ok")
    if replacement == "none":
        local.put(config, SAMPLE, PNG, {"id": "r1"})
        assert stat.S_IMODE(os.stat(str(root)).st_mode) == 0o700 and len(files_under(root)) == 2
        return
    with pytest.raises(PermanentError) as refused:
        local.put(config, SAMPLE, PNG, {"id": "r1"})
    message = str(refused.value)
    assert refused.value.name == "UnsafeLocalDirectory" and "\n" not in message
    assert ("belongs to uid {}".format(NOBODY) if replacement == "directory"
            else "is a symbolic link of uid {}".format(NOBODY)) in message, message
    assert files_under(ours) == [] and (replacement == "link" or files_under(root) == [])


@pytest.mark.parametrize("suffix", ["", "/"])
def test_a_local_directory_linked_by_another_user_is_refused_at_start(tmp_path, router, sticky, suffix):
    """Also with a trailing slash, with which lstat would follow the link (the value is normalised
    when it is parsed). An operator's own link stays allowed (security.md, what is not guaranteed)."""
    host, _ = router
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o700)
    root = sticky / "samples"
    assert as_nobody(lambda: os.symlink(str(ours), str(root))).startswith("ok")
    configs = local_config(tmp_path, **{"local-directory": str(root) + suffix})
    with pytest.raises(ParameterError) as refused:
        service(tmp_path, host, configs)
    assert "is a symbolic link of uid {}".format(NOBODY) in str(refused.value)
    os.unlink(str(root))
    os.symlink(str(ours), str(root))  # the operator's
    service(tmp_path, host, configs).close()


@pytest.mark.parametrize("suffix", ["", "/", "//", "/."])
@pytest.mark.parametrize("how", ["parameter", "spool"])
def test_a_symlinked_spool_directory_is_refused(tmp_path, suffix, how):
    """Also with a trailing slash, which makes lstat (and O_NOFOLLOW) follow the link: the value
    is normalised when it is parsed, and by the spool itself."""
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    os.symlink(str(real), str(tmp_path / "spool"))
    directory = str(tmp_path / "spool") + suffix
    if suffix == "/.":  # a '.' segment is refused as an escape before anything else
        with pytest.raises(ParameterError, match="'.' or '..' segment"):
            params(tmp_path, FeedbackSpoolDirectory=directory)
        return
    if how == "parameter":
        directory = params(tmp_path, FeedbackSpoolDirectory=directory).spool_directory
        assert directory == str(tmp_path / "spool")
    with pytest.raises(ParameterError, match="is a symbolic link"):
        Spool(directory, 10 ** 6, 10, 3600, "reject-new")
    assert os.listdir(str(real)) == []


def test_a_missing_spool_directory_is_created_0700(tmp_path):
    Spool(str(tmp_path / "a" / "spool"), 10 ** 6, 10, 3600, "reject-new")
    assert stat.S_IMODE(os.stat(str(tmp_path / "a" / "spool")).st_mode) == 0o700


def test_serve_refuses_an_unsafe_spool_directory_with_one_line(tmp_path, model_dir):
    from tests.service_process import Proc, clean_env, params_file
    spool = tmp_path / "spool"
    spool.mkdir()
    spool.chmod(0o777)
    fb = tmp_path / "feedback.json"
    fb.write_text(json.dumps({"FeedbackConfigurationMap": local_config(tmp_path),
                              "FeedbackSpoolDirectory": str(spool)}))
    cfg = params_file(tmp_path / "params.json", model_dir)
    proc = Proc(["serve", "--config", str(cfg), "--port", "0", "--feedback-config", str(fb)],
                clean_env(tmp_path / "ipc.json"), tmp_path / "serve.log")
    assert proc.popen.wait(60) == 2
    proc.stop()
    lines = [l for l in proc.log().splitlines() if "FeedbackSpoolDirectory" in l]
    assert len(lines) == 1 and "writable by others" in lines[0], proc.log()
    assert "Traceback" not in proc.log()


# -- writers never follow planted links ----------------------------------------------------------

def fixed_random(monkeypatch):
    """write_at's temporary names, made predictable: ".tmp-<name>.000000000000"."""
    monkeypatch.setattr(os, "urandom", lambda n: b"\x00" * n)
    return lambda name: ".tmp-{}.{}".format(name, "00" * 6)


def test_the_spool_never_writes_through_a_link_at_a_temporary_name(tmp_path, monkeypatch):
    """The links are planted at exactly the temporary names write_at opens (its random source is
    fixed here): only O_EXCL|O_NOFOLLOW keep it from writing through them."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    s = Spool(str(tmp_path / "spool"), 10 ** 6, 10, 3600, "reject-new")
    temporary = fixed_random(monkeypatch)
    for name in ("000000000001-r1.json", "000000000001-r1.bin"):
        os.symlink(str(victim), str(tmp_path / "spool" / temporary(name)))
    with pytest.raises(OSError):
        s.add(good_record("r1"), PNG)
    with pytest.raises(OSError):
        write_atomic(str(tmp_path / "spool" / "000000000001-r1.json"), b"{}")
    assert victim.read_bytes() == b"untouched" and stat.S_IMODE(victim.stat().st_mode) != 0o600
    assert len(s) == 0 and not (tmp_path / "spool" / "000000000001-r1.json").exists()


def test_a_local_directory_sample_never_writes_through_a_link_at_its_temporary_name(tmp_path,
                                                                                      monkeypatch):
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    victim.chmod(0o644)
    config = local_under(tmp_path, tmp_path / "samples")
    local = LocalDirectory()
    local.check_root(config)
    temporary = fixed_random(monkeypatch)
    (tmp_path / "samples" / "cam").mkdir(mode=0o700)
    os.symlink(str(victim), str(tmp_path / "samples" / "cam" / temporary(SAMPLE + ".png")))
    with pytest.raises(TransientError):
        local.put(config, SAMPLE, PNG, {"id": "r1"})
    assert victim.read_bytes() == b"untouched" and stat.S_IMODE(victim.stat().st_mode) == 0o644


def test_the_local_directory_never_writes_through_planted_links(tmp_path, router):
    host, published = router
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    cam = tmp_path / "samples" / "cam"
    cam.mkdir(parents=True)
    for name in (".tmp-{}.png".format(SAMPLE), ".tmp-{}.png.json".format(SAMPLE)):
        os.symlink(str(victim), str(cam / name))
    plant(tmp_path, 1, "r1", good_record("r1"))
    # A second config whose prefix directory is a link to somewhere else.
    (tmp_path / "elsewhere").mkdir()
    os.symlink(str(tmp_path / "elsewhere"), str(tmp_path / "samples" / "linked"))
    configs = dict(local_config(tmp_path), l2=dict(local_config(tmp_path)["l1"], **{"s3-prefix": "linked"}))
    plant(tmp_path, 2, "r2", good_record("r2", **{"config-id": "l2", "key": "linked/{}.png".format(SAMPLE)}))
    svc = service(tmp_path, host, configs)
    try:
        wait(lambda: {"r1", "r2"} <= set(statuses(published)))
        assert statuses(published)["r1"]["status"] == "success"
        assert statuses(published)["r2"]["status"] == "fail"
        assert statuses(published)["r2"]["error"] in ("ENOTDIR", "ELOOP")
        assert victim.read_bytes() == b"untouched" and os.listdir(str(tmp_path / "elsewhere")) == []
    finally:
        svc.close()


# -- samples written locally are bounded and private ----------------------------------------------

def test_the_local_directory_budget_counts_full(tmp_path, router):
    host, published = router
    now = [1000.0]
    svc = FeedbackService(params(tmp_path, local_config(tmp_path, **{"local-directory-max-bytes": 3000})),
                          RouterPublisher(host.client(timeout=5), "test-source"),
                          clock=lambda: now[0]).start()
    try:
        for i in range(4):
            svc.accept(PNG + b"\x00" * 800, {"ConfigId": "l1", "ModelPrediction": DOC}, "r{}".format(i))
        wait(lambda: len(statuses(published)) == 4)
        outcomes = [statuses(published)["r{}".format(i)] for i in range(4)]
        assert [o["status"] for o in outcomes] == ["success", "success", "fail", "fail"]
        assert outcomes[2]["error"] == "LocalDirectoryFull"
        assert "local-directory-max-bytes=3000" in outcomes[2]["error_message"]
        # Counted just after its status goes out (a status that fails to go out is retried, and
        # must not be counted twice), so the count is awaited, not read at once.
        wait(lambda: svc.describe()["full"] == 2)
        total = sum(p.stat().st_size for p in (tmp_path / "samples").rglob("*") if p.is_file())
        assert total <= 3000
        # Room made by moving samples away is seen once the directory is counted again.
        for p in (tmp_path / "samples" / "cam").iterdir():
            p.unlink()
        now[0] += destinations.RECOUNT_INTERVAL_S
        svc.accept(PNG + b"\x00" * 800, {"ConfigId": "l1", "ModelPrediction": DOC}, "after")
        wait(lambda: "after" in statuses(published))
        assert statuses(published)["after"]["status"] == "success"
    finally:
        svc.close()


def test_a_full_local_directory_is_counted_again_at_most_once_an_interval(tmp_path, monkeypatch):
    """Counting walks the whole tree: a full directory is not walked again for every sample, and
    a freed one is seen again after RECOUNT_INTERVAL_S (60 s; the clock is the test's)."""
    assert destinations.RECOUNT_INTERVAL_S == 60
    walks = []
    count = destinations._usage
    monkeypatch.setattr(destinations, "_usage", lambda root: walks.append(root) or count(root))
    now = [1000.0]
    config = local_under(tmp_path, tmp_path / "samples", **{"local-directory-max-bytes": 3000})
    local = LocalDirectory(clock=lambda: now[0])
    local.check_root(config)

    def put():
        return local.put(config, str(uuid.uuid4()), PNG + b"\x00" * 800, {"id": "r"})

    put()
    put()
    assert len(walks) == 1
    for _ in range(20):
        now[0] += 1
        with pytest.raises(PermanentError, match="local-directory-max-bytes=3000"):
            put()
    assert len(walks) == 1, "a full directory was walked again before the interval passed"
    for p in (tmp_path / "samples" / "cam").iterdir():
        p.unlink()
    now[0] += destinations.RECOUNT_INTERVAL_S - 20  # 60 s after the last count
    put()
    assert len(walks) == 2
    put()
    with pytest.raises(PermanentError, match="LocalDirectoryFull|holds"):
        put()
    assert len(walks) == 2


def modes(root):
    return {str(p.relative_to(root)): (stat.S_IMODE(p.stat().st_mode), p.stat().st_gid)
            for p in [root] + sorted(root.rglob("*"))}


@pytest.mark.parametrize("group", [None, "gid", "name"])
def test_samples_are_private_or_shared_with_the_named_group(tmp_path, router, group):
    import grp
    host, published = router
    gid = os.getgid()
    extra = {}
    if group == "gid":
        extra["FeedbackFilesGroup"] = str(gid)
    elif group == "name":
        extra["FeedbackFilesGroup"] = grp.getgrgid(gid).gr_name
    svc = service(tmp_path, host, **extra)
    try:
        svc.accept(PNG, {"ConfigId": "l1", "ModelPrediction": DOC}, "r1")
        wait(lambda: "r1" in statuses(published))
        assert statuses(published)["r1"]["status"] == "success"
    finally:
        svc.close()
    found = modes(tmp_path / "samples")
    assert len(found) == 4  # the directory, cam/, the image and its sidecar
    dir_mode, file_mode = (0o700, 0o600) if group is None else (0o750, 0o640)
    for name, (mode, owner_group) in found.items():
        assert mode == (file_mode if name.endswith((".png", ".json")) else dir_mode), (name, oct(mode))
        assert group is None or owner_group == gid


def test_a_files_group_must_exist_and_include_this_user(tmp_path):
    with pytest.raises(ParameterError, match="FeedbackFilesGroup='no-such-group-here': no such group"):
        params(tmp_path, FeedbackFilesGroup="no-such-group-here")
    with pytest.raises(ParameterError, match="FeedbackFilesGroup.*does not match"):
        params(tmp_path, FeedbackFilesGroup="../x")


def test_a_files_group_this_user_is_not_in_is_refused(tmp_path):
    """The membership rule does not apply to root (it may give files to any group), so it is
    checked as an unprivileged user (uid and gid 65534, no other groups)."""
    root_group = grp.getgrgid(0).gr_name
    for text in ("0", root_group):
        assert as_nobody(lambda: fc.files_group(text)) == (
            "ParameterError: parameter FeedbackFilesGroup={!r}: this user (uid {}) is not a member of "
            "group 0, so it cannot give files to it".format(text, NOBODY))
    assert as_nobody(lambda: fc.files_group(str(NOBODY))) == "ok: {}".format(NOBODY)


@pytest.mark.parametrize("content_type, body, error", [
    ("image/jpeg", PNG, "ModelInput is not a JPEG image (it does not start with FF D8 FF), but config l1's "
                        "content-type is image/jpeg"),
    ("image/png", JPEG, "ModelInput is not a PNG image"),
    ("image/png", b"\x89PNG fake", "ModelInput is not a PNG image"),
    ("IMAGE/JPEG; q=1", b"GIF89a", "ModelInput is not a JPEG image"),
])
def test_a_body_that_is_not_the_declared_image_type_is_refused(tmp_path, router, content_type, body, error):
    host, published = router
    svc = service(tmp_path, host, local_config(tmp_path, **{"content-type": content_type}))
    try:
        with pytest.raises(InvalidFeedbackRequest) as refused:
            svc.accept(body, {"ConfigId": "l1", "ModelPrediction": DOC}, "r1")
        assert error in str(refused.value)
        assert len(svc.spool) == 0 and svc.counters["refused"] == 1
    finally:
        svc.close()


def test_other_content_types_are_stored_as_declared(tmp_path, router):
    host, published = router
    svc = service(tmp_path, host, local_config(tmp_path, **{"content-type": "application/octet-stream"}))
    try:
        svc.accept(b"anything at all", {"ConfigId": "l1", "ModelPrediction": DOC}, "r1")
        svc.accept(JPEG, {"ConfigId": "l1", "ModelPrediction": DOC}, "r2")
        wait(lambda: len(statuses(published)) == 2)
        assert {r["status"] for r in statuses(published).values()} == {"success"}
    finally:
        svc.close()


def disk_full(tmp_path, how):
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "feedback_disk_full.py"), how, str(tmp_path)],
                         cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if out.returncode == 77:
        pytest.skip(out.stdout.decode().strip())
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    return json.loads(out.stdout.decode().splitlines()[-1]), out.stderr.decode()


@pytest.mark.parametrize("how", ["fsize", "tmpfs"])
def test_a_full_disk_is_counted_logged_and_the_sample_waits_in_the_spool(tmp_path, how):
    """fsize: RLIMIT_FSIZE makes writes past a size fail with EFBIG (treated as ENOSPC);
    tmpfs: a real ENOSPC on a tiny tmpfs, in a private mount namespace (skipped where not allowed)."""
    result, log = disk_full(tmp_path, how)
    during = result["during"]
    assert during["disk_errors"] >= 1 and during["spooled"] == 1 and during["statuses"] == []
    assert during["delivered"] == 0 and during["failed"] == 0
    assert during["samples"] == [], "no half-written sample or temporary file is left"
    assert result["after"]["delivered"] == 1 and result["after"]["statuses"] == ["success"]
    assert result["after"]["spooled"] == 0 and len(result["after"]["samples"]) == 2
    assert log.count("the disk is full") == 1, log  # rate-limited: one line, not one per retry
    if how == "fsize":
        refused = result["accept_refused"]
        assert "EFBIG" in refused and "cannot write the sample to the spool" in refused
        assert result["accept_disk_errors"] == 1 and result["spool_files_after_refusal"] == 0


# -- operator settings -------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value, rule", [
    ("s3-prefix", "../../etc", "'..' segment"),
    ("s3-prefix", "../../../etc/cron.d", "'..' segment"),
    ("s3-prefix", "a/./b", "'.' or '..' segment"),
    ("s3-prefix", "a\\..\\b", "backslash"),
    ("s3-prefix", "cam\n1", "control character"),
    ("s3-prefix", "a//b", "without empty segments"),
    ("file-ext", "a/b", "must be a string matching"),
    ("file-ext", "..", "must be a string matching"),
    ("file-ext", "/png", "must be a string matching"),
    ("file-ext", "p\x00g", "must be a string matching"),
    ("file-ext", "x" * 17, "must be a string matching"),
    ("local-directory", "/var/lib/../../etc", "'..' segment"),
    ("local-directory", "/var/lib/samples\x1b", "control character"),
    ("local-directory", "relative", "must be an absolute path"),
    ("content-type", "image/png\r\nX-Evil: 1", "must be a string matching"),
    ("local-directory-max-bytes", 0, "must be a whole number >= 1"),
])
def test_operator_settings_that_escape_are_refused_at_start(tmp_path, key, value, rule):
    with pytest.raises(ParameterError) as refused:
        params(tmp_path, local_config(tmp_path, **{key: value}))
    message = str(refused.value)
    assert "'l1'" in message and repr(key) in message and rule in message and "\n" not in message


@pytest.mark.parametrize("prefix, ext, key", [("/samples/cam-1/", "png", "samples/cam-1/{}.png"),
                                              ("/etc/cron.d", ".jpg", "etc/cron.d/{}.jpg"),
                                              ("", "", "{}")])
def test_good_prefixes_and_extensions_keep_the_original_rules(tmp_path, router, prefix, ext, key):
    host, published = router
    svc = service(tmp_path, host, local_config(tmp_path, **{"s3-prefix": prefix, "file-ext": ext}))
    try:
        svc.accept(PNG, {"ConfigId": "l1", "ModelPrediction": DOC}, "r1")
        wait(lambda: "r1" in statuses(published))
        path = statuses(published)["r1"]["local_response"]["path"]
        sample = os.path.basename(path).split(".")[0]
        assert path == str(tmp_path / "samples" / key.format(sample))
    finally:
        svc.close()


@pytest.mark.parametrize("directory, rule", [("/tmp/../etc/spool", "'..' segment"),
                                             ("/tmp/sp\x1bool", "control character"),
                                             ("relative/spool", "must be an absolute path")])
def test_a_spool_directory_that_escapes_is_refused(tmp_path, directory, rule):
    with pytest.raises(ParameterError) as refused:
        params(tmp_path, FeedbackSpoolDirectory=directory)
    assert "FeedbackSpoolDirectory" in str(refused.value) and rule in str(refused.value)


# -- bounded caller documents ------------------------------------------------------------------------

def deep(levels):
    doc = [0.5]
    for _ in range(levels - 1):
        doc = [doc]
    return doc


@pytest.mark.parametrize("custom, error", [
    ({"Metadata": {"k{}".format(i): "v" for i in range(33)}},
     "Metadata has 33 keys; at most 32 are allowed"),
    ({"Metadata": {"camera": "x" * 2048}}, "at most 2048 are allowed (the S3 user-metadata"),
    ({"ModelPrediction": deep(17)}, "nested more than 16 levels deep"),
    ({"ModelPrediction": {"prediction": [[1, 0.5, 0, 0, 1, 1]] * 20000}}, "at most 262144 are allowed"),
    ({"ModelPrediction": [float("nan"), object()]}, "must be plain JSON"),
])
def test_oversized_caller_documents_are_refused_at_once(tmp_path, router, custom, error):
    host, published = router
    svc = service(tmp_path, host)
    try:
        request = dict({"ConfigId": "l1", "ModelPrediction": DOC}, **custom)
        with pytest.raises(InvalidFeedbackRequest) as refused:
            svc.accept(PNG, request, "r1")
        assert error in str(refused.value) and len(svc.spool) == 0
        svc.accept(PNG, {"ConfigId": "l1", "ModelPrediction": deep(16),
                         "Metadata": {"k": "v" * 2000}}, "r2")  # at the caps: accepted
    finally:
        svc.close()


def test_the_caps_are_the_documented_numbers():
    assert (fc.METADATA_MAX_KEYS, fc.METADATA_MAX_BYTES) == (32, 2048)
    assert (fc.PREDICTION_MAX_DEPTH, fc.PREDICTION_MAX_BYTES) == (16, 256 * 1024)
    assert fc.DEFAULT_LOCAL_MAX_BYTES == fc.DEFAULT_SPOOL_MAX_BYTES == 256 * 1024 * 1024


def test_the_sdk_caller_gets_the_cap_as_its_exception(tmp_path, router, monkeypatch):
    host, published = router
    svc = service(tmp_path, host)
    arn = "arn:aws:lambda:us-east-1:aws:function:MLFeedback"
    host.register_function(arn)
    stop = threading.Event()
    loop = threading.Thread(target=run_lambda, args=(arn, svc.handler, host.client(function_arn=arn)),
                            kwargs={"stop_event": stop}, daemon=True)
    loop.start()
    for k in ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "GG_DAEMON_PORT", "AWS_REGION", "MY_FUNCTION_ARN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", host.token)
    monkeypatch.setenv("GG_DAEMON_PORT", str(host.port))
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    try:
        sys.path.insert(0, str(ROOT / "ml_sdk"))
        import greengrass_machine_learning_sdk as ml
        with pytest.raises(ml.GreengrassFeedbackException, match="at most 32 are allowed"):
            ml.client("feedback").publish(ConfigId="l1", ModelInput=PNG, ModelPrediction=DOC,
                                          Metadata={"k{}".format(i): "v" for i in range(40)})
        with pytest.raises(ml.GreengrassFeedbackException, match="not a PNG image"):
            ml.client("feedback").publish(ConfigId="l1", ModelInput=JPEG, ModelPrediction=DOC)
        ml.client("feedback").publish(ConfigId="l1", ModelInput=PNG, ModelPrediction=DOC)
        wait(lambda: len(statuses(published)) == 1)
    finally:
        stop.set()
        loop.join(5)
        svc.close()


def test_a_request_id_that_could_name_a_path_is_replaced(tmp_path, router):
    host, published = router
    svc = service(tmp_path, host)
    try:
        svc.accept(PNG, {"ConfigId": "l1", "ModelPrediction": DOC}, "../../escape")
        wait(lambda: len(statuses(published)) == 1)
        (request_id, response), = statuses(published).items()
        assert response["status"] == "success" and uuid.UUID(request_id)
        assert not (tmp_path / "escape.json").exists()
    finally:
        svc.close()
