"""Readers: directory trees with sidecars, WebDataset tars, Parquet manifests; hostile paths never escape."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq

from curation.sources import (
    ReadLimits,
    canonical_uri,
    drop_key,
    parse_json_sidecar,
    parse_text_sidecar,
    plan_units,
    read_unit,
    unsafe_member_path,
)
from tests.conftest import encode, make_image


def items_of(source, limits=None):
    limits = limits or ReadLimits()
    return [item for unit in plan_units(str(source), limits) for item in read_unit(unit, limits)]


def by_name(items):
    return {item.source_uri.rsplit("/", 1)[-1].split("#")[-1]: item for item in items}


def test_directory_with_json_txt_and_jsonl_sidecars(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.jpg").write_bytes(encode(make_image(seed=1), "JPEG"))
    (tmp_path / "a.json").write_text(json.dumps({"title": "A", "licence": "CC0"}))
    (tmp_path / "a.txt").write_text("a caption\n")
    (tmp_path / "sub" / "b.png").write_bytes(encode(make_image(seed=2), "PNG"))
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "sub/b.png", "alt": "B alt"}) + "\n")
    items = by_name(items_of(tmp_path))
    assert set(items) == {"a.jpg", "b.png"}  # sidecars and the jsonl are consumed, not inputs
    assert items["a.jpg"].sidecar == {"title": "A", "licence": "CC0", "caption": "a caption"}
    assert items["b.png"].sidecar["alt"] == "B alt"
    assert items["a.jpg"].source_uri == str(tmp_path / "a.jpg")


def test_bad_jsonl_lines_are_a_ledger_entry_not_a_crash(tmp_path):
    (tmp_path / "a.jpg").write_bytes(encode(make_image(), "JPEG"))
    lines = b'{"file_name": "a.jpg", "alt": "ok"}\nnot json\n{"file_name": "gone.jpg"}\n'
    (tmp_path / "metadata.jsonl").write_bytes(lines)
    items = by_name(items_of(tmp_path))
    assert items["a.jpg"].sidecar["alt"] == "ok"
    problems = items["metadata.jsonl"]
    assert problems.reason == "invalid_sidecar_lines"
    assert any("invalid JSON" in p for p in problems.details["problems"])
    assert any("gone.jpg" in p for p in problems.details["problems"])


def test_oversized_and_non_utf8_sidecars_are_kept_with_notes(tmp_path):
    (tmp_path / "a.jpg").write_bytes(encode(make_image(), "JPEG"))
    (tmp_path / "a.json").write_text(json.dumps({"caption": "x" * 5000}))
    (tmp_path / "b.jpg").write_bytes(encode(make_image(seed=4), "JPEG"))
    (tmp_path / "b.txt").write_bytes("café crème".encode("latin-1"))
    items = by_name(items_of(tmp_path, ReadLimits(max_sidecar_bytes=1000)))
    assert "sidecar_too_large_ignored" in items["a.jpg"].notes and items["a.jpg"].sidecar == {}
    assert items["b.jpg"].sidecar["caption"] == "café crème"
    assert items["b.jpg"].notes == ["sidecar_not_utf8_read_as_cp1252"]


def test_sidecar_parsers_never_fail():
    fields, notes = parse_json_sidecar(b'{"broken": ', ReadLimits())
    assert notes == ["sidecar_invalid_json"] and fields["sidecar_raw"] == '{"broken": '
    fields, notes = parse_json_sidecar(b"[1, 2]", ReadLimits())
    assert fields == {"value": [1, 2]} and notes == []
    assert parse_text_sidecar(b"\xef\xbb\xbfhello", ReadLimits()) == ("hello", [])


def test_orphan_sidecar_and_non_image_files_are_inputs(tmp_path):
    (tmp_path / "lonely.json").write_text("{}")
    (tmp_path / "README.md").write_text("hello")
    items = by_name(items_of(tmp_path))
    assert items["lonely.json"].reason == "orphan_sidecar"
    assert items["README.md"].reason is None and items["README.md"].data == b"hello"  # the probe will refuse it


def test_symlinks_outside_the_root_are_refused(tmp_path):
    root = tmp_path / "drop"
    root.mkdir()
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(encode(make_image(), "JPEG"))
    (root / "inside.jpg").write_bytes(encode(make_image(seed=5), "JPEG"))
    os.symlink(secret, root / "leak.jpg")
    os.symlink(root / "inside.jpg", root / "alias.jpg")
    os.symlink(tmp_path, root / "leakdir")
    items = by_name(items_of(root))
    assert items["leak.jpg"].reason == "symlink_outside_root" and items["leak.jpg"].data is None
    assert items["leakdir"].reason == "symlink_outside_root"
    assert items["alias.jpg"].reason is None and items["alias.jpg"].data == (root / "inside.jpg").read_bytes()


def test_oversized_file_is_refused_without_reading(tmp_path):
    (tmp_path / "big.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 5000)
    items = by_name(items_of(tmp_path, ReadLimits(max_file_bytes=1000)))
    assert items["big.jpg"].reason == "file_too_large" and items["big.jpg"].data is None


def _tar(path, members):
    with tarfile.open(path, "w") as tf:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def test_webdataset_tar_groups_by_key_and_refuses_hostile_members(tmp_path):
    jpg = encode(make_image(), "JPEG")
    _tar(tmp_path / "shard.tar", [
        ("000.jpg", jpg, tarfile.REGTYPE),
        ("000.json", json.dumps({"url": "http://x/0.jpg"}).encode(), tarfile.REGTYPE),
        ("000.txt", b"caption zero", tarfile.REGTYPE),
        ("001.png", encode(make_image(seed=1), "PNG"), tarfile.REGTYPE),
        ("../../etc/cron.jpg", jpg, tarfile.REGTYPE),
        ("/abs.jpg", jpg, tarfile.REGTYPE),
        ("link.jpg", b"", tarfile.SYMTYPE),
        ("002.json", b"{}", tarfile.REGTYPE),
    ])
    items = items_of(tmp_path / "shard.tar")
    named = {i.source_uri.split("#", 1)[1]: i for i in items}
    assert named["000.jpg"].sidecar == {"url": "http://x/0.jpg", "caption": "caption zero"}
    assert named["001.png"].reason is None
    assert named["../../etc/cron.jpg"].reason == "unsafe_member_path"
    assert named["/abs.jpg"].reason == "unsafe_member_path"
    assert named["link.jpg"].reason == "unsupported_member_type"
    assert named["002.json"].reason == "orphan_sidecar"
    assert named["000.jpg"].source_uri == f"{tmp_path / 'shard.tar'}#000.jpg"


def test_truncated_tar_keeps_what_was_read(tmp_path):
    members = [(f"{i:03d}.jpg", encode(make_image(200, 200, seed=i), "PNG"), tarfile.REGTYPE) for i in range(4)]
    _tar(tmp_path / "shard.tar", members)
    data = (tmp_path / "shard.tar").read_bytes()
    (tmp_path / "shard.tar").write_bytes(data[: len(data) * 6 // 10])
    items = items_of(tmp_path / "shard.tar")
    reasons = [i.reason for i in items]
    assert reasons.count(None) >= 1
    assert reasons[-1] == "truncated_archive"


def test_tar_detected_by_magic_even_with_wrong_extension(tmp_path):
    _tar(tmp_path / "shard.bin", [("000.jpg", encode(make_image(), "JPEG"), tarfile.REGTYPE)])
    units = plan_units(str(tmp_path))
    assert [u.kind for u in units] == ["tar"]


def test_unsafe_member_path_rules():
    assert unsafe_member_path("a/b.jpg") is None
    assert unsafe_member_path("a/../../b.jpg") == "parent-directory component"
    assert unsafe_member_path("/b.jpg") == "absolute path"
    assert unsafe_member_path("C:\\x.jpg") == "drive-letter path"
    assert unsafe_member_path("a\\..\\b.jpg") == "parent-directory component"


def test_parquet_manifest_bytes_paths_and_failures(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "p.jpg").write_bytes(encode(make_image(seed=9), "JPEG"))
    table = pa.table({
        "image": [encode(make_image(seed=1), "JPEG"), None, None, None, None],
        "path": [None, "imgs/p.jpg", "imgs/missing.jpg", "https://example.org/x.jpg", None],
        "caption": ["one", "two", "three", "four", "five"],
    })
    pq.write_table(table, tmp_path / "manifest.parquet", row_group_size=2)
    items = items_of(tmp_path / "manifest.parquet", ReadLimits(rows_per_unit=2))
    assert [i.source_uri.split("#")[1] for i in items] == ["0", "1", "2", "3", "4"]
    assert [i.reason for i in items] == [None, None, "missing_file", "remote_path_not_fetched", "no_image_in_row"]
    assert items[0].sidecar["caption"] == "one" and items[1].data == (tmp_path / "imgs" / "p.jpg").read_bytes()


def test_parquet_manifest_with_hf_image_struct(tmp_path):
    img = {"bytes": encode(make_image(), "PNG"), "path": "x.png"}
    pq.write_table(pa.table({"image": [img], "text": ["hi"]}), tmp_path / "hf.parquet")
    (item,) = items_of(tmp_path / "hf.parquet")
    assert item.reason is None and item.data == img["bytes"] and item.sidecar == {"text": "hi"}


def test_broken_manifest_is_one_refused_input(tmp_path):
    (tmp_path / "m.parquet").write_bytes(b"PAR1" + b"garbage" * 10)
    (item,) = items_of(tmp_path)
    assert item.reason == "corrupt_manifest"


def test_plan_is_deterministic_and_fingerprints_change_with_content(tmp_path):
    for i in range(5):
        (tmp_path / f"{i}.jpg").write_bytes(encode(make_image(seed=i), "JPEG"))
    limits = ReadLimits(files_per_unit=2)
    first = plan_units(str(tmp_path), limits)
    assert [len(u.files) for u in first] == [2, 2, 1]
    assert [u.fingerprint for u in plan_units(str(tmp_path), limits)] == [u.fingerprint for u in first]
    (tmp_path / "4.jpg").write_bytes(encode(make_image(seed=99), "JPEG"))
    os.utime(tmp_path / "4.jpg", ns=(1, 1))
    second = plan_units(str(tmp_path), limits)
    assert [u.fingerprint for u in second][:2] == [u.fingerprint for u in first][:2]
    assert second[2].fingerprint != first[2].fingerprint


def test_drop_key_is_stable_and_distinguishes_same_names(tmp_path):
    (tmp_path / "a" / "photos").mkdir(parents=True)
    (tmp_path / "b" / "photos").mkdir(parents=True)
    ka, kb = drop_key(str(tmp_path / "a" / "photos")), drop_key(str(tmp_path / "b" / "photos"))
    assert ka.startswith("photos-") and kb.startswith("photos-") and ka != kb
    assert drop_key(str(tmp_path / "a" / "photos") + "/") == ka
    assert canonical_uri("s3://bucket/drop/") == "s3://bucket/drop"
