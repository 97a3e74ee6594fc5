"""The durable spool: atomic entries, recovery after a crash, bounds and the full policies."""
import json
import os
import uuid

import pytest

from connector.feedback.spool import Spool, SpoolFull


def record(i, **extra):
    """A record as the service writes it (the spool checks every record it reads back)."""
    kept = extra.get("kept", True)
    r = {"id": "req-{}".format(i), "config-id": "c1", "kept": kept, "accepted": 1000.0 + i,
         "verdict": "kept" if kept else "sample_dropped_by_strategy", "prediction": [0.5, 0.5],
         "metadata": {}, "sample": str(uuid.UUID(int=i, version=4)) if kept else None}
    r.update(extra)
    return r


def spool(tmp_path, max_bytes=10 ** 6, max_items=100, max_age_s=3600, policy="reject-new"):
    return Spool(str(tmp_path / "spool"), max_bytes, max_items, max_age_s, policy)


def test_entries_survive_a_restart_in_order_with_their_progress(tmp_path):
    s = spool(tmp_path)
    e1, _ = s.add(record(1), b"image-1")
    s.add(record(2, kept=False), None)
    s.update(e1, s3_response={"ETag": "x"})
    again = spool(tmp_path)
    first = again.oldest()
    assert first.record["id"] == "req-1" and first.record["s3_response"] == {"ETag": "x"}
    assert first.read_image(10 ** 6) == b"image-1"
    assert len(again) == 2 and again.bytes_used == s.bytes_used
    again.remove(first)
    assert again.oldest().record["id"] == "req-2"
    e3, _ = again.add(record(3), b"3")
    assert e3.name > again.oldest().name  # sequence numbers go on after the old ones


def test_a_crash_mid_write_leaves_no_half_entry(tmp_path):
    s = spool(tmp_path)
    s.add(record(1), b"one")
    d = tmp_path / "spool"
    (d / "000000000009-req-9.bin").write_bytes(b"orphan image: the record was never written")
    (d / ".tmp-000000000010-req-10.json").write_text("{half")
    again = spool(tmp_path)
    assert [e.record["id"] for e in [again.oldest()]] == ["req-1"] and len(again) == 1
    assert sorted(os.listdir(d)) == ["000000000001-req-1.bin", "000000000001-req-1.json"]


def test_files_are_written_atomically_and_readable(tmp_path):
    s = spool(tmp_path)
    entry, _ = s.add(record(1, prediction={"prediction": []}), b"\xff\xd8data")
    assert json.loads(open(entry.record_path).read())["prediction"] == {"prediction": []}
    assert oct(os.stat(str(tmp_path / "spool")).st_mode & 0o777) == "0o700"


def test_reject_new_when_items_or_bytes_are_used_up(tmp_path):
    s = spool(tmp_path, max_items=2)
    s.add(record(1), b"x")
    s.add(record(2), b"x")
    with pytest.raises(SpoolFull, match="full.*reject-new"):
        s.add(record(3), b"x")
    assert len(s) == 2
    small = spool(tmp_path / "b", max_bytes=300)
    small.add(record(1), b"x" * 100)
    with pytest.raises(SpoolFull):
        small.add(record(2), b"x" * 150)
    with pytest.raises(SpoolFull, match="larger than the spool"):
        small.add(record(3), b"x" * 400)


def test_drop_oldest_evicts_and_returns_what_it_evicted(tmp_path):
    s = spool(tmp_path, max_items=2, policy="drop-oldest")
    s.add(record(1), b"x")
    s.add(record(2), b"x")
    _, evicted = s.add(record(3), b"x")
    assert [e.record["id"] for e in evicted] == ["req-1"]
    assert not os.path.exists(evicted[0].image_path)
    assert s.oldest().record["id"] == "req-2" and len(s) == 2


def test_expired_entries_are_taken_out(tmp_path):
    s = spool(tmp_path, max_age_s=100)
    s.add(record(1, accepted=1000.0), b"x")
    s.add(record(2, accepted=1150.0), b"x")
    assert s.take_expired(now=1100.0) == []  # exactly the age bound: not yet
    expired = s.take_expired(now=1101.0)
    assert [e.record["id"] for e in expired] == ["req-1"]
    assert len(s) == 1 and s.oldest().record["id"] == "req-2"


def test_the_entry_being_delivered_is_never_evicted(tmp_path):
    s = spool(tmp_path, max_items=2, policy="drop-oldest")
    s.add(record(1), b"x")
    s.add(record(2), b"x")
    busy = s.oldest()
    _, evicted = s.add(record(3), b"x")
    assert [e.record["id"] for e in evicted] == ["req-2"] and s.oldest() is busy
    single = spool(tmp_path / "one", max_items=1, policy="drop-oldest")
    single.add(record(1), b"x")
    single.oldest()
    with pytest.raises(SpoolFull, match="drop-oldest"):
        single.add(record(2), b"x")
    single.release()
    _, evicted = single.add(record(2), b"x")
    assert [e.record["id"] for e in evicted] == ["req-1"]
