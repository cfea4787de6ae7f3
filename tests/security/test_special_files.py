"""Only regular files are read, with the size cap enforced while reading: a FIFO never hangs a reader, a device
never grows one. Each hostile case runs in a subprocess with a timeout (and an address-space cap where memory is
the risk), so a regression fails the test instead of hanging the suite."""

from __future__ import annotations

import json
import os

import pytest

from curation.source_access import NotRegular, TooLarge, read_source_file
from curation.sources import plan_units, read_unit
from tests.conftest import encode, make_image
from tests.security.hostile import run_isolated

INGEST = """
    import json, sys
    from tests.security.hostile import ingest_drop
    from curation.sources import ReadLimits
    __CAP__()
    rows, decisions = ingest_drop(sys.argv[1] if len(sys.argv) > 1 else {source!r}, ReadLimits(**{limits}))
    print(json.dumps({{"kept": sorted(r["source_uri"].rsplit("/", 1)[-1] for r in rows),
                      "drops": sorted([d.source_uri.rsplit("/", 1)[-1], d.reason, d.details] for d in decisions
                                      if d.decision == "drop"),
                      "growth_mb": __GROWTH_MB__()}}))
"""


def _ingest_isolated(source, limits=None, timeout=60, max_memory_mb=None):
    proc = run_isolated(INGEST.format(source=str(source), limits=repr(limits or {})), timeout, max_memory_mb)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_fifos_in_a_drop_are_refused_without_hanging(tmp_path):
    (tmp_path / "ok.jpg").write_bytes(encode(make_image(), "JPEG"))
    for name in ("hang.jpg", "metadata.jsonl", "shard.tar", "noext", "ok.json"):
        os.mkfifo(tmp_path / name)
    out = _ingest_isolated(tmp_path, timeout=60)
    assert out["kept"] == ["ok.jpg"]
    assert [(name, reason) for name, reason, _ in out["drops"]] == [
        ("hang.jpg", "not_a_regular_file"), ("metadata.jsonl", "not_a_regular_file"),
        ("noext", "not_a_regular_file"), ("ok.json", "not_a_regular_file"), ("shard.tar", "not_a_regular_file")]
    assert all(details["type"] == "fifo" for _, _, details in out["drops"])


def test_a_fifo_swapped_in_after_planning_is_refused_by_the_reader(tmp_path):
    (tmp_path / "a.jpg").write_bytes(encode(make_image(), "JPEG"))
    (tmp_path / "a.txt").write_text("caption")
    units = plan_units(str(tmp_path))
    for name in ("a.jpg", "a.txt"):
        (tmp_path / name).unlink()
        os.mkfifo(tmp_path / name)
    # A blocking open of a FIFO with no writer would hang right here; the reader opens non-blocking and refuses.
    (item,) = [i for u in units for i in read_unit(u)]
    assert item.reason == "not_a_regular_file" and item.details == {"type": "fifo"}


def test_a_fifo_or_device_as_the_source_itself_is_one_refusal(tmp_path):
    os.mkfifo(tmp_path / "drop.tar")
    for source in (tmp_path / "drop.tar", "/dev/zero"):
        (unit,) = plan_units(str(source))
        (item,) = list(read_unit(unit))
        assert item.reason == "not_a_regular_file"


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_dev_zero_as_a_manifest_path_does_not_grow_memory(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.symlink("/dev/zero", tmp_path / "zero.jpg")
    pq.write_table(pa.table({"path": ["/dev/zero", "/dev/urandom", "zero.jpg"]}), tmp_path / "m.parquet")
    # /dev is an allowed root here, so containment passes and only the regular-file rule stands between the reader
    # and an endless read (the address-space cap stops a regression at a few GB instead of the machine's memory).
    out = _ingest_isolated(tmp_path, {"allowed_roots": ("/dev",)}, max_memory_mb=3072)
    assert out["kept"] == [] and out["growth_mb"] < 100  # reading up to the 256 MB cap would show
    assert [(n, r) for n, r, _ in out["drops"]] == [
        ("m.parquet#0", "not_a_regular_file"), ("m.parquet#1", "not_a_regular_file"),
        ("m.parquet#2", "not_a_regular_file"), ("zero.jpg", "symlink_outside_root")]


def test_the_cap_holds_while_reading_whatever_the_size_claims(tmp_path):
    # /proc files are regular with st_size 0 but hold more: only a bounded read notices.
    with pytest.raises(TooLarge) as caught:
        read_source_file("/proc/self/maps", 64, ("/proc",))
    assert caught.value.size == 65  # read cap + 1 bytes, then stopped
    (tmp_path / "big.bin").write_bytes(b"x" * 1000)
    with pytest.raises(TooLarge):
        read_source_file(str(tmp_path / "big.bin"), 999, (str(tmp_path),))
    assert read_source_file(str(tmp_path / "big.bin"), 1000, (str(tmp_path),)) == b"x" * 1000
    with pytest.raises(NotRegular):
        read_source_file("/dev/null", 10, ("/dev",))
