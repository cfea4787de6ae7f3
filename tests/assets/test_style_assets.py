"""`curate run` over a drop whose metadata.jsonl names an artist per image builds the style embeddings, the
style-reference pairs and the creator index; `curate attribute` then prints shares for new images."""

from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from PIL import Image, ImageFilter, ImageOps

from orchestration.storage import TableStore

pytestmark = pytest.mark.slow
PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "corpus" / "photos"


def _mosaic(img: Image.Image) -> Image.Image:
    small = img.resize((max(1, img.width // 16), max(1, img.height // 16)), Image.Resampling.BOX)
    return small.resize(img.size, Image.Resampling.NEAREST)


def _ink(img: Image.Image) -> Image.Image:
    return ImageOps.posterize(ImageOps.grayscale(img), 1).filter(ImageFilter.MaxFilter(3)).convert("RGB")


def _soft(img: Image.Image) -> Image.Image:
    return ImageOps.autocontrast(img.filter(ImageFilter.GaussianBlur(5)))


def _emboss(img: Image.Image) -> Image.Image:
    return ImageOps.grayscale(img).filter(ImageFilter.EMBOSS).convert("RGB")


ARTISTS = {"Mosaic Studio": _mosaic, "© 2024 Ink Works": _ink, "Soft Focus": _soft, "Opted Person": _ink}


def test_style_assets_and_attribute(ray_session, tmp_path):
    from orchestration.cli import main, run_pipeline

    photos = sorted(p for p in PHOTOS.iterdir() if p.suffix == ".jpg")
    drop = tmp_path / "styled"
    drop.mkdir()
    rows = []
    for i, name in enumerate(list(ARTISTS) * 6):  # each artist renders different photos (no duplicates)
        if name == "Opted Person" and i >= 8:
            continue
        out = drop / f"img{i:02d}.jpg"
        ARTISTS[name](Image.open(photos[i]).convert("RGB")).save(out, "JPEG", quality=92)
        rows.append({"file_name": out.name, "artist": name})
    held_out = photos[len(rows) + 2:len(rows) + 4]
    (drop / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    storage = tmp_path / "storage"
    storage.mkdir()
    (storage / "_opt_out.csv").write_text("kind,value,reason,added_by,added_at\nartist,opted person,t-1,test,\n")
    config = {"assets": {"source_images": {"min_side": 32}, "rebalanced_images": {"mode": "weight"},
                         "style_reference_pairs": {"targets_per_cluster": 4, "clusters": 3}}}
    saved = os.environ.pop("DAGSTER_HOME", None)
    try:
        summaries = run_pipeline([str(drop)], str(storage), config, "+group:style")
    finally:
        os.environ.pop("DAGSTER_HOME", None)
        if saved is not None:
            os.environ["DAGSTER_HOME"] = saved
    checks = [s for s in summaries if "check" in s]
    failed = [c for c in checks if not c["passed"] and c["severity"] == "ERROR"]
    assert not failed, failed
    assert {(c["asset"], c["check"]) for c in checks} >= {
        ("style_embeddings", "accounting"), ("style_reference_pairs", "accounting"),
        ("style_reference_pairs", "eligible_only"), ("style_reference_pairs", "content_bound"),
        ("creator_style_index", "accounting"), ("creator_style_index", "eligible_only")}
    store = TableStore(str(storage))
    sources = store.read_table(store.dir("source_images", store.list_partitions("source_images")[0]),
                               columns=["sample_id", "metadata"]).to_pylist()
    opted = {r["sample_id"] for r in sources if "Opted Person" in r["metadata"]}
    assert not opted  # refused at ingest
    rebalanced = store.read_table(store.dir("rebalanced_images")).to_pylist()
    curated = {r["sample_id"] for r in rebalanced if r["kept"]}
    style_rows = store.read_table(store.dir("style_embeddings", store.list_partitions("style_embeddings")[0]))
    assert style_rows.num_rows == len(sources)
    pairs = store.read_table(store.dir("style_reference_pairs")).to_pylist()
    assert pairs and {p["kind"] for p in pairs} >= {"same_creator", "same_style_cluster"}
    assert all({p["target_id"], *p["reference_ids"]} <= curated for p in pairs)
    assert all(p["content_similarity"] < 0.8 and 0 <= p["strength"] <= 1 for p in pairs)
    clusters = store.read_table(store.dir("style_clusters")).to_pylist()
    assert {c["sample_id"] for c in clusters} == curated
    creators = {r["creator"]: r for r in store.read_table(store.dir("creator_style_index")).to_pylist()}
    assert set(creators) <= {"mosaic studio", "ink works", "soft focus"} and len(creators) == 3
    assert store.exists(f"{store.base}/style_index/index.faiss")
    from orchestration.lineage import find_lineage, format_lineage

    target = pairs[0]["target_id"]
    report = find_lineage(str(storage), target)
    assert report["style_cluster"][0]["sample_id"] == target
    assert any(p["pair_id"] == pairs[0]["pair_id"] and p["role"] == "target" for p in report["style_pairs"])
    assert report["creator_entry"][0]["creator"] in creators
    assert "style cluster" in format_lineage(report)

    queries = tmp_path / "queries"
    queries.mkdir()
    _mosaic(Image.open(held_out[0]).convert("RGB")).save(queries / "a_mosaic.jpg", quality=92)
    _emboss(Image.open(held_out[1]).convert("RGB")).save(queries / "b_emboss.jpg", quality=92)
    outputs = []
    for _ in range(2):
        buf = io.StringIO()
        with redirect_stdout(buf):
            assert main(["attribute", str(queries), "--storage", str(storage), "--top", "3", "--json"]) == 0
        outputs.append(buf.getvalue())
    assert outputs[0] == outputs[1]  # deterministic for the same index
    lines = [json.loads(line) for line in outputs[0].splitlines()]
    assert [Path(r["path"]).name for r in lines] == ["a_mosaic.jpg", "b_emboss.jpg"]
    for r in lines:
        assert sum(c["share"] for c in r["creators"]) + r["unattributed"] == pytest.approx(1.0, abs=1e-6)
        assert r["index_version"] and len(r["creators"]) == 3
    mosaic, emboss = lines
    assert mosaic["creators"][0]["creator"] == "Mosaic Studio"
    assert emboss["unattributed"] > mosaic["unattributed"]
