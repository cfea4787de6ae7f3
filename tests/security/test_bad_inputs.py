"""One bad input never takes down its drop: each becomes one ledger row with a named reason (or a kept row with a
note), and everything beside it is curated."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pyarrow as pa

from curation.ingest import IngestConfig, ingest_unit
from curation.sources import ReadLimits, plan_units, read_unit
from tests.conftest import encode, make_image
from tests.security.hostile import drops_by_name, ingest_drop

DEEP = b"[" * 100_000 + b"]" * 100_000


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def _tar(path, members):
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_deeply_nested_sidecars_and_jsonl_lines_are_ignored_with_a_note(tmp_path):
    (tmp_path / "a.jpg").write_bytes(encode(make_image(seed=1), "JPEG"))
    (tmp_path / "a.json").write_bytes(DEEP)
    (tmp_path / "b.jpg").write_bytes(encode(make_image(seed=2), "JPEG"))
    (tmp_path / "b.json").write_bytes(b'{"x": ' * 200 + b"1" + b"}" * 200)  # parses, but deeper than the limit
    (tmp_path / "c.jpg").write_bytes(encode(make_image(seed=3), "JPEG"))
    jsonl = b'{"file_name": "c.jpg", "alt": "fine"}\n{"file_name": "a.jpg", "x": ' + DEEP + b"}\n"
    (tmp_path / "metadata.jsonl").write_bytes(jsonl)
    _tar(tmp_path / "s.tar", [("000.jpg", encode(make_image(seed=4), "JPEG")), ("000.json", DEEP)])
    rows, decisions = ingest_drop(tmp_path)  # planning (on the driver) and reading both survive
    by_name = {r["source_uri"].rsplit("/", 1)[-1]: r for r in rows}
    assert set(by_name) == {"a.jpg", "b.jpg", "c.jpg", "s.tar#000.jpg"}
    for name in ("a.jpg", "b.jpg", "s.tar#000.jpg"):
        assert "sidecar_too_deep_ignored" in by_name[name]["notes"]
    assert json.loads(by_name["c.jpg"]["metadata"])["sidecar"]["alt"] == "fine"
    (problem,) = [d for d in decisions if d.decision == "drop"]
    assert problem.reason == "invalid_sidecar_lines" and "line 2: nested deeper than 64 levels" in \
        problem.details["problems"]


def test_non_utf8_names_are_stored_losslessly(tmp_path):
    root = os.fsencode(tmp_path)
    os.mkdir(root + b"/d\xff")
    jpg = encode(make_image(seed=5), "JPEG")
    for name in (b"/caf\xe9.jpg", b"/d\xff/x.jpg"):
        with open(root + name, "wb") as f:
            f.write(jpg)
    os.mkfifo(root + b"/fifo\xfe.jpg")
    # a GNU tar whose member name is in a legacy code page: read back, it is not UTF-8
    with tarfile.open(tmp_path / "s.tar", "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tf:
        for name in ("ok.jpg", "na\xefve.jpg"):
            info = tarfile.TarInfo(name)
            info.size = len(jpg)
            tf.addfile(info, io.BytesIO(jpg))
    rows, decisions = ingest_drop(tmp_path)
    pa.table({"u": [r["source_uri"] for r in rows] + [d.source_uri for d in decisions]})  # Arrow accepts them
    raw = {bytes.fromhex(json.loads(r["metadata"])["source_uri_bytes_hex"]) for r in rows
           if "source_uri_bytes_hex" in json.loads(r["metadata"])}
    assert {root + b"/caf\xe9.jpg", root + b"/d\xff/x.jpg", root + b"/s.tar#na\xefve.jpg"} <= raw
    shown = {r["source_uri"].rsplit("/", 1)[-1] for r in rows}
    assert shown == {"caf\\xe9.jpg", "x.jpg", "s.tar#ok.jpg", "s.tar#na\\xefve.jpg"}
    (fifo,) = [d for d in decisions if d.decision == "drop"]
    assert fifo.reason == "not_a_regular_file" and bytes.fromhex(fifo.details["source_uri_bytes_hex"]) == \
        root + b"/fifo\xfe.jpg"
    keeps = [d for d in decisions if d.decision == "keep" and "name_not_utf8" in d.details["notes"]]
    assert len(keeps) == 3


def test_second_metadata_record_for_a_file_is_ledgered_and_the_first_kept(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.jpg").write_bytes(encode(make_image(seed=6), "JPEG"))
    (tmp_path / "metadata.jsonl").write_text(
        json.dumps({"file_name": "sub/a.jpg", "alt": "first"}) + "\n" +
        json.dumps({"file_name": "sub/a.jpg", "alt": "second"}) + "\n")
    (tmp_path / "sub" / "metadata.jsonl").write_text(json.dumps({"file_name": "a.jpg", "alt": "third"}) + "\n")
    rows, decisions = ingest_drop(tmp_path)
    (row,) = rows
    assert json.loads(row["metadata"])["sidecar"]["alt"] == "first"
    dups = sorted(d.source_uri[len(str(tmp_path)) + 1:] for d in decisions if d.reason == "duplicate_metadata")
    assert dups == ["metadata.jsonl#line-2", "sub/metadata.jsonl#line-1"]
    assert all(d.details["kept"] == "metadata.jsonl#line-1" for d in decisions if d.reason == "duplicate_metadata")


def test_nan_and_infinity_are_stored_as_valid_json(tmp_path):
    (tmp_path / "a.jpg").write_bytes(encode(make_image(seed=7), "JPEG"))
    (tmp_path / "a.json").write_text('{"score": NaN, "hi": Infinity, "lo": -Infinity, "title": "\\ud800 lone"}')
    (tmp_path / "b.jpg").write_bytes(encode(make_image(seed=8), "JPEG"))
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "b.jpg", "aesthetic": NaN, "licence": "\\udcff-by"}\n')
    rows, _ = ingest_drop(tmp_path)
    pa.table({"m": [r["metadata"] for r in rows], "l": [r["licence"] for r in rows]})
    for row in rows:
        sidecar = _strict(row["metadata"])["sidecar"]
        assert None in sidecar.values()
    a = next(r for r in rows if r["source_uri"].endswith("a.jpg"))
    assert "sidecar_non_finite_number_as_null" in a["notes"]


def test_webdataset_memory_per_key_is_bounded(tmp_path):
    member = encode(make_image(seed=9), "PNG")
    n = len(member)
    members = [(f"000.{i}.png", member) for i in range(8)] + [("000.json", b'{"t": 1}'), ("001.png", member)]
    _tar(tmp_path / "s.tar", members)
    limits = ReadLimits(max_key_bytes=3 * n + 100)
    rows, decisions = ingest_drop(tmp_path / "s.tar", limits)
    kept = sorted(r["source_uri"].split("#")[1] for r in rows)
    assert kept == ["000.0.png", "000.1.png", "000.2.png", "001.png"]
    refused = sorted(d.source_uri.split("#")[1] for d in decisions if d.reason == "key_too_large")
    assert refused == [f"000.{i}.png" for i in range(3, 8)]
    assert all(d.details["max_key_bytes"] == limits.max_key_bytes for d in decisions if d.reason == "key_too_large")


def test_a_source_file_that_vanished_between_runs_is_ledgered(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(encode(make_image(seed=i), "JPEG"))
    _tar(tmp_path / "s.tar", [("000.jpg", encode(make_image(seed=10), "JPEG"))])
    rows, decisions = ingest_drop(tmp_path)
    previous = [r["source_uri"] for r in rows] + [d.source_uri for d in decisions]
    (tmp_path / "1.jpg").unlink()
    (tmp_path / "s.tar").unlink()
    rows, decisions = ingest_drop(tmp_path, previous=previous)
    assert sorted(r["source_uri"].rsplit("/", 1)[-1] for r in rows) == ["0.jpg", "2.jpg"]
    assert drops_by_name(decisions) == {"1.jpg": "source_removed", "s.tar": "source_removed"}
    # the ledger keeps saying so on later runs, and forgets it when the file comes back
    again = [r["source_uri"] for r in rows] + [d.source_uri for d in decisions]
    assert drops_by_name(ingest_drop(tmp_path, previous=again)[1]) == {"1.jpg": "source_removed",
                                                                       "s.tar": "source_removed"}
    (tmp_path / "1.jpg").write_bytes(encode(make_image(seed=1), "JPEG"))
    assert drops_by_name(ingest_drop(tmp_path, previous=again)[1]) == {"s.tar": "source_removed"}


def test_a_reader_that_breaks_on_one_file_costs_that_file_only(tmp_path, monkeypatch):
    import curation.sources as sources

    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.jpg").write_bytes(encode(make_image(seed=ord(name)), "JPEG"))
        (tmp_path / f"{name}.json").write_text(json.dumps({"n": name}))
    real = sources.parse_json_sidecar

    def flaky(raw, limits):
        if b'"b"' in raw:
            raise MemoryError("simulated")
        return real(raw, limits)

    monkeypatch.setattr(sources, "parse_json_sidecar", flaky)
    (unit,) = plan_units(str(tmp_path))
    result = ingest_unit(unit, "drop", IngestConfig())
    assert result.rows.num_rows == 2 and dict(result.counts.dropped) == {"read_error": 1}
    assert [i.reason for i in read_unit(unit)] == [None, "read_error", None]
