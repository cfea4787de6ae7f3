"""Nothing outside a source root is read: manifest paths, sidecars and files that resolve elsewhere are ledgered
`outside_source` (or `symlink_outside_root` when the listing already shows it), and no byte of them is stored."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from curation.sources import ReadLimits, plan_units, read_unit
from tests.conftest import encode, make_image
from tests.security.hostile import drops_by_name, ingest_drop, stored_bytes

SECRET = b"root:x:0:0:SECRET-LINE:/root:/bin/bash\n"


def _outside_world(tmp_path):
    """A drop beside files it must never read: a secret text file and a valid secret image."""
    drop = tmp_path / "drop"
    (drop / "imgs").mkdir(parents=True)
    (tmp_path / "passwd").write_bytes(SECRET)
    secret_img = encode(make_image(seed=77), "PNG")
    (tmp_path / "secret.png").write_bytes(secret_img)
    inside = encode(make_image(seed=1), "JPEG")
    (drop / "imgs" / "ok.jpg").write_bytes(inside)
    return drop, secret_img, inside


def test_manifest_paths_that_leave_the_drop_are_refused_unread(tmp_path):
    drop, secret_img, inside = _outside_world(tmp_path)
    os.symlink(tmp_path / "secret.png", drop / "imgs" / "alias.png")  # a symlink inside the drop, pointing out
    paths = ["imgs/ok.jpg", str(tmp_path / "secret.png"), f"file://{tmp_path / 'passwd'}", "../passwd",
             "imgs/../../secret.png", "/proc/self/environ", "/dev/zero", "file://otherhost/etc/passwd",
             "imgs/alias.png", "/etc/passwd"]
    pq.write_table(pa.table({"path": paths, "caption": [f"c{i}" for i in range(len(paths))]}),
                   drop / "manifest.parquet")
    rows, decisions = ingest_drop(drop)
    kept = sorted(r["source_uri"].rsplit("/", 1)[1] for r in rows)
    assert kept == ["manifest.parquet#0", "ok.jpg"] and all(r["image"] == inside for r in rows)
    reasons = {d.source_uri.rsplit("/", 1)[1]: d.reason for d in decisions if d.decision == "drop"}
    assert reasons == {"alias.png": "symlink_outside_root",  # the listing itself refuses the symlink
                       **{f"manifest.parquet#{i}": "outside_source" for i in range(1, len(paths))}}
    blob = stored_bytes(rows, decisions)
    assert b"SECRET-LINE" not in blob and secret_img not in blob
    assert b"PATH=" not in blob  # nothing of /proc/self/environ either


def test_allowed_roots_admit_a_mounted_store_and_nothing_beside_it(tmp_path):
    drop, secret_img, _ = _outside_world(tmp_path)
    store = tmp_path / "store"
    store.mkdir()
    stored = encode(make_image(seed=3), "PNG")
    (store / "a.png").write_bytes(stored)
    paths = [str(store / "a.png"), f"file://{store / 'a.png'}", str(store / ".." / "secret.png")]
    pq.write_table(pa.table({"path": paths}), drop / "m.parquet")
    rows, decisions = ingest_drop(drop, ReadLimits(allowed_roots=(str(store),)))
    from_manifest = [r for r in rows if "#" in r["source_uri"]]
    assert sorted(r["source_uri"].split("#")[1] for r in from_manifest) == ["0", "1"]
    assert all(r["image"] == stored for r in from_manifest)
    assert [d.reason for d in decisions if d.decision == "drop"] == ["outside_source"]
    assert secret_img not in stored_bytes(rows, decisions)


def test_a_file_swapped_for_an_escaping_symlink_after_planning_is_refused(tmp_path):
    drop, secret_img, _ = _outside_world(tmp_path)
    (drop / "late.png").write_bytes(encode(make_image(seed=5), "PNG"))
    (drop / "late.json").write_text('{"title": "fine"}')
    units = plan_units(str(drop))
    for name, target in (("late.png", "secret.png"), ("late.json", "passwd")):
        (drop / name).unlink()
        os.symlink(tmp_path / target, drop / name)
    items = {i.source_uri.rsplit("/", 1)[-1]: i for u in units for i in read_unit(u)}
    assert items["late.png"].reason == "outside_source" and items["late.png"].data is None
    assert items["ok.jpg"].reason is None
    assert all(b"SECRET" not in repr(i.sidecar).encode() for i in items.values())


def test_sidecar_symlinks_and_directory_symlinks_leaving_the_drop_are_ledgered(tmp_path):
    drop, _, _ = _outside_world(tmp_path)
    (drop / "pic.jpg").write_bytes(encode(make_image(seed=8), "JPEG"))
    os.symlink(tmp_path / "passwd", drop / "pic.txt")  # would be pic.jpg's caption
    os.symlink(tmp_path, drop / "up")
    rows, decisions = ingest_drop(drop)
    by_uri = {r["source_uri"].rsplit("/", 1)[-1]: r for r in rows}
    assert set(by_uri) == {"ok.jpg", "pic.jpg"} and "SECRET" not in by_uri["pic.jpg"]["metadata"]
    assert drops_by_name(decisions) == {"pic.txt": "symlink_outside_root", "up": "symlink_outside_root"}
    assert b"SECRET-LINE" not in stored_bytes(rows, decisions)
