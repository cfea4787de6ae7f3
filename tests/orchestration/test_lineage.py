"""`curate lineage` downstream of ingest: rebalancing, OCR, caption provenance, prompt variants, the shard file and row
of each curriculum stage, and the checkpoint trained on that shard. A hand-made storage written with the assets' own
schemas (fast); missing assets are left out; shard-path matching and row location as units."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from assets.captions import CAPTIONS_SCHEMA
from assets.ocr_annotations import OCR_SCHEMA
from assets.prompt_variants import VARIANTS_SCHEMA
from assets.rebalanced_images import SCHEMA as REBALANCED_SCHEMA
from curation.decisions import Decision, decisions_table
from curation.schema import SOURCE_IMAGES_SCHEMA
from curation.shards import SHARD_SCHEMA
from orchestration import cli
from orchestration.lineage import find_lineage, format_lineage, locate_in_part, trained_on
from orchestration.storage import TableStore

SIGN = "5a" * 32
CAT = "c4" * 32
BEFORE = [f"{i:064x}" for i in range(1, 251)]  # ids that sort before SIGN and CAT: shards with many row groups
AFTER = [f"f{i:063x}" for i in range(49)]  # ids that sort after both


def _source(sid: str, name: str) -> dict:
    return {"sample_id": sid, "source": "drop-1", "source_uri": f"/drops/1/{name}", "image": b"-", "byte_size": 1,
            "format": "PNG", "width": 480, "height": 200, "mode": "RGB", "is_animated": False, "n_frames": 1,
            "exif_orientation": None, "has_icc": False, "licence": "CC-BY-4.0",
            "metadata": json.dumps({"sidecar": {"title": "Diner sign"}}), "notes": []}


def _shard(sid: str, stage: str) -> dict:
    return {"sample_id": sid, "source_uri": "/drops/1/x.png", "license": None, "bucket": "48x20", "width": 48,
            "height": 20, "image": b"-", "caption_tags": "t", "caption_short": "s", "caption_medium": "m",
            "caption_long": "l", "sample_weight": 0.5 if sid == SIGN else 1.0, "caption_backend": "grounded",
            "stage": stage}


def _write(store: TableStore, asset: str, partition: str | None, index: int, rows: list[dict], schema: pa.Schema,
           row_group_size: int = 256) -> str:
    path = store.part_path(asset, partition, index)
    store.write_parquet(path, pa.Table.from_pylist(rows, schema=schema), {"unit": index},
                        row_group_size=row_group_size)
    return path


@pytest.fixture
def chain(storage) -> tuple[str, dict[str, list[str]]]:
    """A storage that holds SIGN through every asset: shards 256 (two parts, sign in the second at row 50, many row
    groups), 512 (sign at row 0), 1024 (no sign); DiT markers for 256 (absolute paths), 512 (relative, plain
    `_SUCCESS`) and 1024."""
    store = TableStore(storage)
    _write(store, "source_images", "drop-1", 0, [_source(SIGN, "sign.png"), _source(CAT, "cat.jpg")],
           SOURCE_IMAGES_SCHEMA)
    ledger = [Decision(SIGN, "/drops/1/sign.png", "caption", "keep", "fallback_after_caption_empty")]
    store.write_parquet(store.part_path("decisions/captions", None, 0), decisions_table(ledger, "run-c", "cap-1"))
    rebalanced = [{"sample_id": sid, "source": "drop-1", "source_uri": f"/drops/1/{n}", "cluster_path": [7, 2, 0],
                   "concepts": ["sign", "diner"] if sid == SIGN else [], "p_cluster": 1.0, "p_concept": 0.8,
                   "keep_probability": 0.8, "sample_weight": 0.5, "balanced_weight": 0.93, "kept": True}
                  for sid, n in ((SIGN, "sign.png"), (CAT, "cat.jpg"))]
    _write(store, "rebalanced_images", None, 0, rebalanced, REBALANCED_SCHEMA)
    lines = [{"text": "OPEN 24 HOURS", "score": 0.99, "box": [[30, 60], [400, 60], [400, 110], [30, 110]],
              "language": "latin"},
             {"text": "since 1952", "score": 0.91, "box": [[30, 120], [200, 120], [200, 150], [30, 150]],
              "language": "latin"}]
    ocr = [{"sample_id": SIGN, "source_uri": "/drops/1/sign.png", "text": "OPEN 24 HOURS\nsince 1952", "lines": lines,
            "dropped_low_confidence": 1, "backend": "rapidocr", "error": None},
           {"sample_id": CAT, "source_uri": "/drops/1/cat.jpg", "text": "", "lines": [], "dropped_low_confidence": 0,
            "backend": "rapidocr", "error": None}]
    _write(store, "ocr_annotations", None, 0, ocr, OCR_SCHEMA)
    inputs = {"ocr_lines": ["OPEN 24 HOURS", "since 1952"], "metadata_fields": ["title"],
              "metadata": {"title": "Diner sign"}, "visual_facts": {"orientation": "landscape"}}
    caption = {"sample_id": SIGN, "source_uri": "/drops/1/sign.png",
               "caption": 'Diner sign. A landscape image with the text "OPEN 24 HOURS" and "since 1952".',
               "backend": "grounded", "model": "grounded-v1", "prompt_version": "p3", "inputs": json.dumps(inputs),
               "attempts": 1, "failure": None, "failure_detail": None, "fallback_from": None,
               "quoted": ["OPEN 24 HOURS", "since 1952"], "entities": ["Diner sign"]}
    _write(store, "captions", None, 0, [caption], CAPTIONS_SCHEMA)
    variants = {"sample_id": SIGN, "tags": 'diner sign, "OPEN 24 HOURS"', "short": 'Diner sign "OPEN 24 HOURS"',
                "medium": 'A diner sign reading "OPEN 24 HOURS" and "since 1952".', "long": caption["caption"],
                "backend": "deterministic", "model": "", "prompt_version": "v2", "fallback_reason": None,
                "long_is_distinct": True, "long_note": None,
                "medium_note": "medium has 9 words, under the 20-40 bounds: the caption carries 3 facts",
                "caption_backend": "grounded", "quoted": ["OPEN 24 HOURS"], "entities": ["Diner sign"]}
    _write(store, "prompt_variants", None, 0, [variants], VARIANTS_SCHEMA)

    parts: dict[str, list[str]] = {}
    first, second = BEFORE[:200], BEFORE[200:] + [SIGN] + AFTER  # sorted, as training_shards writes them
    assert second.index(SIGN) == 50
    parts["256"] = [_write(store, "training_shards", "256", 0, [_shard(s, "256") for s in first], SHARD_SCHEMA, 16),
                    _write(store, "training_shards", "256", 1, [_shard(s, "256") for s in second], SHARD_SCHEMA, 16)]
    parts["512"] = [_write(store, "training_shards", "512", 0, [_shard(s, "512") for s in [SIGN, CAT]], SHARD_SCHEMA)]
    parts["1024"] = [_write(store, "training_shards", "1024", 0, [_shard(CAT, "1024")], SHARD_SCHEMA)]
    for stage, name, shards in (("256", "_SUCCESS.json", parts["256"]),
                                ("512", "_SUCCESS", [os.path.relpath(p, storage) for p in parts["512"]]),
                                ("1024", "_SUCCESS.json", parts["1024"])):
        marker = Path(storage) / "dit_checkpoint" / stage / name
        marker.parent.mkdir(parents=True)
        checkpoint = str(marker.parent / "checkpoint.pt")
        if stage == "512":
            checkpoint = f"dit_checkpoint/{stage}/checkpoint.pt"  # storage-relative
        marker.write_text(json.dumps({"stage": stage, "checkpoint": checkpoint, "shards": shards, "steps": 16,
                                      "final_loss": 0.4321, "run_id": f"run-{stage}"}))
    old = os.path.getmtime(Path(storage) / "dit_checkpoint" / "256" / "_SUCCESS.json") - 60
    for p in parts["256"] + parts["512"]:
        os.utime(p, (old, old))  # shards written before training
    return storage, parts


def test_json_holds_every_downstream_section(chain, capsys):
    storage, parts = chain
    assert cli.main(["lineage", SIGN, "--storage", storage, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (rebalancing,) = report["rebalancing"]
    assert rebalancing["sample_weight"] == 0.5 and rebalancing["concepts"] == ["sign", "diner"]
    assert rebalancing["cluster_path"] == [7, 2, 0] and rebalancing["kept"] is True
    (ocr,) = report["ocr"]
    assert ocr["text"] == "OPEN 24 HOURS\nsince 1952" and ocr["backend"] == "rapidocr"
    assert [line["text"] for line in ocr["lines"]] == ["OPEN 24 HOURS", "since 1952"]
    assert ocr["lines"][0]["box"][1] == [400.0, 60.0] and ocr["dropped_low_confidence"] == 1
    (caption,) = report["captions"]
    assert (caption["backend"], caption["model"], caption["prompt_version"]) == ("grounded", "grounded-v1", "p3")
    assert caption["inputs"]["metadata"] == {"title": "Diner sign"}  # parsed, not a JSON string
    (variants,) = report["prompt_variants"]
    assert variants["short"] == 'Diner sign "OPEN 24 HOURS"' and variants["caption_backend"] == "grounded"
    shards = report["shards"]
    assert [(s["stage"], s["shard"], s["row"]) for s in shards] == [("256", parts["256"][1], 50),
                                                                    ("512", parts["512"][0], 0)]
    assert shards[0]["bucket"] == "48x20" and shards[0]["sample_weight"] == 0.5
    first, second = (s["checkpoint"] for s in shards)
    assert first["checkpoint"] == str(Path(storage) / "dit_checkpoint" / "256" / "checkpoint.pt")
    assert (first["steps"], first["final_loss"], first["run_id"]) == (16, 0.4321, "run-256")
    assert first["shard_rewritten_after_training"] is False
    # the 512 marker names storage-relative shard paths and a storage-relative checkpoint
    assert second["checkpoint"] == str(Path(storage) / "dit_checkpoint" / "512" / "checkpoint.pt")
    assert second["run_id"] == "run-512"
    assert [d["reason"] for d in report["decisions"]] == ["fallback_after_caption_empty"]


def test_text_shows_each_section_compactly(chain, capsys):
    storage, parts = chain
    assert cli.main(["lineage", SIGN, "--storage", storage]) == 0
    text = capsys.readouterr().out
    assert "  rebalancing: kept, sample_weight 0.5 (balanced 0.93, keep p 0.8), cluster 7/2/0, concepts: sign, diner" \
        in text
    assert "  ocr [rapidocr]: 2 line(s), 1 dropped below the threshold" in text
    assert '    "OPEN 24 HOURS"  0.990  latin' in text
    assert "  caption [grounded / grounded-v1 / prompt p3, 1 attempt(s)]:" in text
    assert '    Diner sign. A landscape image with the text "OPEN 24 HOURS" and "since 1952".' in text
    assert "    inputs: 2 OCR line(s); metadata title; visual facts" in text
    assert "  prompt variants [deterministic / - / prompt v2]:" in text
    assert '    short:  Diner sign "OPEN 24 HOURS"' in text and "    tags:   diner sign" in text
    assert "    note:   medium has 9 words, under the 20-40 bounds" in text
    assert f"    [256] {parts['256'][1]} row 50  bucket 48x20  weight 0.5" in text
    assert f"    [512] {parts['512'][0]} row 0  bucket 48x20  weight 0.5" in text
    assert "checkpoint " + str(Path(storage) / "dit_checkpoint" / "256" / "checkpoint.pt") + \
        " (16 steps, final loss 0.4321, run run-256)" in text
    assert "[1024]" not in text


def test_a_shard_rewritten_after_training_is_flagged(chain):
    storage, parts = chain
    future = os.path.getmtime(Path(storage) / "dit_checkpoint" / "512" / "_SUCCESS") + 60
    os.utime(parts["512"][0], (future, future))
    report = find_lineage(storage, SIGN)
    flags = {s["stage"]: s["checkpoint"]["shard_rewritten_after_training"] for s in report["shards"]}
    assert flags == {"256": False, "512": True}
    assert "the shard was rewritten after training" in format_lineage(report)


def test_missing_assets_and_checkpoints_are_left_out(chain):
    storage, _ = chain
    for asset in ("captions", "prompt_variants"):
        TableStore(storage).delete_dir(str(Path(storage) / asset))
    (Path(storage) / "dit_checkpoint" / "512" / "_SUCCESS").unlink()
    report = find_lineage(storage, SIGN)
    assert "captions" not in report and "prompt_variants" not in report and "ocr" in report
    assert [("checkpoint" in s) for s in report["shards"]] == [True, False]
    text = format_lineage(report)
    assert "caption [" not in text and "prompt variants" not in text


def test_a_sample_no_longer_curated_says_its_ocr_and_caption_are_cached(chain):
    storage, _ = chain
    store = TableStore(storage)
    table = store.read_table(store.dir("rebalanced_images")).filter(pc.field("sample_id") != SIGN)
    store.write_parquet(store.part_path("rebalanced_images", None, 0), table)  # as after an opt-out
    report = find_lineage(storage, SIGN)
    assert report["curated"] is False and "rebalancing" not in report and report["captions"]
    assert ("  not in the curated set now (see the decisions); ocr, captions, prompt_variants below are cached from "
            "an earlier run") in format_lineage(report)
    assert find_lineage(storage, CAT)["curated"] is True


def test_only_ingest_known(storage):
    store = TableStore(storage)
    _write(store, "source_images", "drop-1", 0, [_source(SIGN, "sign.png")], SOURCE_IMAGES_SCHEMA)
    report = find_lineage(storage, SIGN)
    assert set(report) == {"query", "sample_ids", "records", "decisions", "representative", "duplicates"}
    assert "shards:" not in format_lineage(report)


def test_locate_in_part_gives_row_positions_across_row_groups(storage):
    store = TableStore(storage)
    ids = sorted(f"{i:064x}" for i in range(1000))
    path = _write(store, "training_shards", "256", 0, [_shard(s, "256") for s in ids], SHARD_SCHEMA, 64)
    wanted = {ids[0], ids[63], ids[64], ids[777], "f" * 64}
    hits = locate_in_part(store, path, wanted, ["bucket"])
    assert [(h["sample_id"], h["row"], h["bucket"]) for h in hits] == [(ids[i], i, "48x20") for i in (0, 63, 64, 777)]
    assert locate_in_part(store, path, {"0" * 63 + "g"}) == []


@pytest.mark.parametrize("listed, shard, expected", [
    (["/data/s/training_shards/256/part-00001.parquet"], "/data/s/training_shards/256/part-00001.parquet", True),
    (["training_shards/256/part-00001.parquet"], "/data/s/training_shards/256/part-00001.parquet", True),
    (["/mnt/other/training_shards/256/part-00001.parquet"], "/data/s/training_shards/256/part-00001.parquet", True),
    (["s3://bucket/s/training_shards/256/part-00001.parquet"], "bucket/s/training_shards/256/part-00001.parquet",
     True),
    (["part-00001.parquet"], "/data/s/training_shards/256/part-00001.parquet", True),
    (["/data/s/training_shards/256/part-00002.parquet"], "/data/s/training_shards/256/part-00001.parquet", False),
    (["/data/s/training_shards/512/part-00001.parquet"], "/data/s/training_shards/256/part-00001.parquet", False),
    ([], "/data/s/training_shards/256/part-00001.parquet", False),
])
def test_trained_on_matches_shard_paths_written_differently(listed, shard, expected):
    assert trained_on({"shards": listed, "checkpoint": "x"}, shard) is expected


def assert_pipeline_lineage(storage: str, drop: Path) -> None:
    """Lineage of the diner sign on a storage where the whole chain ran (tests/assets/test_training_data_assets.py's
    `pipeline`, before its opt-out test): called from there, so the pipeline is not run a second time."""
    report = find_lineage(storage, str(drop / "sign.png"))
    (sid,) = report["sample_ids"]
    assert report["curated"] is True and report["rebalancing"][0]["kept"]
    assert "OPEN 24 HOURS" in report["ocr"][0]["text"]
    (caption,) = report["captions"]
    assert caption["backend"] == "grounded" and caption["model"] and caption["prompt_version"]
    assert "OPEN 24 HOURS" in caption["inputs"]["ocr_lines"]
    assert all("OPEN 24 HOURS" in report["prompt_variants"][0][k] for k in ("tags", "short", "medium", "long"))
    store = TableStore(storage)
    assert report["shards"]
    for entry in report["shards"]:
        rows = store.read_part(entry["shard"], ["sample_id"]).column("sample_id").to_pylist()
        assert rows[entry["row"]] == sid
        done = store.read_json(f"{store.dir('dit_checkpoint', entry['stage'])}/_SUCCESS.json")
        if done is not None:
            assert entry["checkpoint"]["checkpoint"] == done["checkpoint"] and entry["checkpoint"]["steps"] > 0
    text = format_lineage(report)
    assert "  ocr [rapidocr]" in text and "  caption [grounded" in text and "  shards:" in text
