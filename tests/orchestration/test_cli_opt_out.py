"""`curate opt-out add|list`: validated, deduplicated, atomic appends to `<storage>/_opt_out.csv` that
`load_opt_outs` reads; a preview of what the next run removes (from a hand-made storage, no pipeline run)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from curation.decisions import Decision, decisions_table
from curation.opt_out import opt_out_decision
from curation.schema import SOURCE_IMAGES_SCHEMA
from curation.shards import SHARD_SCHEMA
from orchestration import cli
from orchestration.opt_outs import load_opt_outs
from orchestration.storage import TableStore

SIGN = "a1" * 32
CAT = "b2" * 32
DOG = "c3" * 32


def _source_row(sid: str, uri: str, metadata: dict) -> dict:
    return {"sample_id": sid, "source": "drop-1", "source_uri": uri, "image": b"-", "byte_size": 1, "format": "PNG",
            "width": 64, "height": 64, "mode": "RGB", "is_animated": False, "n_frames": 1, "exif_orientation": None,
            "has_icc": False, "licence": None, "metadata": json.dumps(metadata, ensure_ascii=False), "notes": []}


def _shard_row(sid: str, uri: str, stage: str) -> dict:
    return {"sample_id": sid, "source_uri": uri, "license": None, "bucket": "32x32", "width": 32, "height": 32,
            "image": b"-", "caption_tags": "t", "caption_short": "s", "caption_medium": "m", "caption_long": "l",
            "sample_weight": 1.0, "caption_backend": "grounded", "stage": stage}


@pytest.fixture
def curated(storage) -> str:
    """source_images with three samples; two curated; the sign in the 256 and 512 shards, the cat in 256."""
    store = TableStore(storage)
    rows = [_source_row(SIGN, "/drops/1/sign.png", {"sidecar": {"artist": "Jane  Doe", "title": "Diner sign"}}),
            _source_row(CAT, "/drops/1/cat.jpg", {"sidecar": {"url": "https://img.Example.com/cats/1.jpg"}}),
            _source_row(DOG, "/drops/1/dog.jpg", {"embedded": {"exif": {"Artist": "Zoë Brandt"}}})]
    store.write_parquet(store.part_path("source_images", "drop-1", 0),
                        pa.Table.from_pylist(rows, schema=SOURCE_IMAGES_SCHEMA))
    store.write_parquet(store.part_path("rebalanced_images", None, 0),
                        pa.table({"sample_id": [SIGN, CAT, DOG], "kept": [True, True, False]}))
    for stage, ids in (("256", [SIGN, CAT]), ("512", [SIGN]), ("1024", [])):
        shard = [_shard_row(s, "/drops/1/x", stage) for s in ids]
        store.write_parquet(store.part_path("training_shards", stage, 0), pa.Table.from_pylist(shard, SHARD_SCHEMA))
    return storage


def _add(storage: str, *args: str) -> int:
    return cli.main(["opt-out", "add", "--storage", storage, "--added-by", "legal", *args])


def test_add_appends_a_row_load_opt_outs_reads_and_previews_the_next_run(curated, capsys):
    assert _add(curated, "--artist", "JANE doe", "--reason", "request  7") == 0
    out = capsys.readouterr().out
    assert "added to" in out and "artist 'jane doe'" in out and "reason: request 7" in out
    assert "it covers 1 ingested sample(s) now: 1 curated, 1 in training shards" in out
    assert f"{SIGN}  /drops/1/sign.png  (curated, in shards of stage 256, 512)" in out
    assert "next `curate run" in out and "rebalanced_images" in out and "training_shards" in out
    (entry,) = load_opt_outs(TableStore(curated)).entries
    assert (entry.kind, entry.value, entry.reason, entry.added_by) == ("artist", "jane doe", "request 7", "legal")
    assert entry.added_at.endswith("+00:00")
    text = (Path(curated) / "_opt_out.csv").read_text()
    assert text.splitlines()[0] == "kind,value,reason,added_by,added_at"


def test_each_kind_matches_what_the_pipeline_would(curated, capsys):
    assert _add(curated, "--domain", "https://www.example.com/some/page") == 0  # normalised to the host
    out = capsys.readouterr().out
    assert "domain 'example.com'" in out and f"{CAT}  /drops/1/cat.jpg  (curated, in shards of stage 256)" in out
    assert _add(curated, "--url", "https://img.Example.com/cats/1.jpg") == 0
    assert "it covers 1 ingested sample(s)" in capsys.readouterr().out
    assert _add(curated, "--sample-id", DOG.upper()) == 0
    out = capsys.readouterr().out
    assert f"sample_id '{DOG}'" in out and f"{DOG}  /drops/1/dog.jpg  (not curated)" in out
    assert _add(curated, "--artist", "zoë brandt") == 0  # non-ASCII metadata is stored unescaped
    assert "it covers 1 ingested sample(s) now: 0 curated" in capsys.readouterr().out
    assert _add(curated, "--domain", "nobody.org", "--no-preview") == 0
    assert "ingested sample" not in capsys.readouterr().out
    kinds = [(e.kind, e.value) for e in load_opt_outs(TableStore(curated)).entries]
    assert kinds == [("domain", "example.com"), ("url", "https://img.Example.com/cats/1.jpg"), ("sample_id", DOG),
                     ("artist", "zoë brandt"), ("domain", "nobody.org")]


def test_a_duplicate_is_not_appended(curated, capsys):
    assert _add(curated, "--artist", "Jane Doe", "--reason", "first") == 0
    before = (Path(curated) / "_opt_out.csv").read_bytes()
    capsys.readouterr()
    assert _add(curated, "--artist", "  jane   DOE ", "--reason", "second") == 0
    out = capsys.readouterr().out
    assert out.startswith("already listed: artist 'jane doe' (reason: first") and "unchanged" in out
    assert (Path(curated) / "_opt_out.csv").read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (["--sample-id", "abc"], "not a hex SHA-256"),
    (["--sample-id", "g" * 64], "not a hex SHA-256"),
    (["--url", "example.com/a.jpg"], "not an absolute URL"),
    (["--url", "https://example.com/a b.jpg"], "not an absolute URL"),
    (["--domain", "localhost"], "not a host name"),
    (["--domain", "example.com/path"], "not a host name"),
    (["--domain", "exa mple.com"], "not a host name"),
    (["--artist", "   "], "empty artist"),
    (["--artist", "Jane\x00Doe"], "control characters"),
])
def test_invalid_values_are_refused_and_nothing_is_written(storage, capsys, args, message):
    assert _add(storage, *args) == 2
    assert message in capsys.readouterr().err
    assert not (Path(storage) / "_opt_out.csv").exists()


def test_exactly_one_kind_is_required(storage, capsys):
    with pytest.raises(SystemExit):
        cli.main(["opt-out", "add", "--storage", storage])
    with pytest.raises(SystemExit):
        cli.main(["opt-out", "add", "--storage", storage, "--artist", "a", "--domain", "b.com"])
    capsys.readouterr()


def test_add_keeps_rows_written_by_hand_and_the_write_is_atomic(storage, capsys):
    path = Path(storage) / "_opt_out.csv"
    path.write_text("kind,value,reason,added_by,added_at\nurl,https://x.org/a.jpg,\"DMCA, 42\",legal,2025-01-01\n")
    assert _add(storage, "--domain", "example.org", "--no-preview") == 0
    entries = load_opt_outs(TableStore(storage)).entries
    assert [(e.kind, e.value, e.reason) for e in entries] == [("url", "https://x.org/a.jpg", "DMCA, 42"),
                                                             ("domain", "example.org", "")]
    assert sorted(p.name for p in Path(storage).iterdir() if not p.name.startswith("_locks")) == ["_opt_out.csv"]
    assert not list((Path(storage) / "_locks").iterdir())  # the lock is released


def test_a_malformed_list_is_an_error_not_silently_rewritten(storage, capsys):
    path = Path(storage) / "_opt_out.csv"
    path.write_text("kind,value\nplanet,mars\n")
    assert _add(storage, "--domain", "example.org") == 2
    assert "line 2" in capsys.readouterr().err
    assert path.read_text() == "kind,value\nplanet,mars\n"


def test_list_shows_every_request_and_what_it_removed(curated, capsys):
    assert cli.main(["opt-out", "list", "--storage", curated]) == 0
    assert "no opt-out requests" in capsys.readouterr().out
    _add(curated, "--artist", "Jane Doe", "--reason", "request 7", "--no-preview")
    _add(curated, "--domain", "example.com", "--no-preview")
    capsys.readouterr()
    store = TableStore(curated)
    request = load_opt_outs(store).entries[0]
    ledger = [opt_out_decision(SIGN, "/drops/1/sign.png", request),
              Decision(CAT, "/drops/1/cat.jpg", "dedup", "drop", "exact_duplicate")]
    store.write_parquet(store.part_path("decisions/rebalanced_images", None, 0), decisions_table(ledger, "r1", "v1"))
    assert cli.main(["opt-out", "list", "--storage", curated]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("artist     jane doe  [1 sample(s) removed so far]  reason: request 7  by legal")
    assert out[1].startswith("domain     example.com  [0 sample(s) removed so far]")
    assert out[2] == "2 request(s)"
    assert cli.main(["opt-out", "list", "--storage", curated, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["kind"], r["value"], r["samples_removed"]) for r in rows] == [("artist", "jane doe", 1),
                                                                              ("domain", "example.com", 0)]


def test_list_includes_files_named_by_the_environment(storage, tmp_path, monkeypatch, capsys):
    extra = tmp_path / "legal.csv"
    extra.write_text("kind,value,reason,added_by,added_at\ndomain,blocked.net,policy,,\n")
    monkeypatch.setenv("ATELIER_OPT_OUT", str(extra))
    assert cli.main(["opt-out", "list", "--storage", storage]) == 0
    assert "blocked.net" in capsys.readouterr().out
    assert _add(storage, "--domain", "blocked.net") == 0  # already honoured through the environment's file
    assert "already listed" in capsys.readouterr().out
    assert not (Path(storage) / "_opt_out.csv").exists()
