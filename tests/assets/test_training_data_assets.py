"""From curated images to training shards through Dagster and local Ray: rebalancing, OCR, captions, prompt variants,
shards, dataset card and audit; a retroactive opt-out; an idempotent rerun."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw, ImageFont

from curation.opt_out import make
from orchestration.cli import checks_passed, run_pipeline
from orchestration.opt_outs import add_opt_outs
from orchestration.storage import TableStore

pytestmark = pytest.mark.slow
PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "corpus" / "photos"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
CONFIG = {"assets": {"source_images": {"min_side": 32}, "exclusion_signals": {"stages": [32, 48, 64]},
                     "training_shards": {"stage_sizes": {"256": 32, "512": 48, "1024": 64}, "target_shard_mb": 0.002},
                     "dit_checkpoint": {"recipes": {"256": "demo-32", "512": "demo-48", "1024": "demo-64"},
                                        "steps": 16}}}


def _sign() -> Image.Image:
    img = Image.new("RGB", (480, 200), (250, 250, 245))
    draw = ImageDraw.Draw(img)
    draw.text((30, 60), "OPEN 24 HOURS", fill=(20, 20, 20), font=ImageFont.truetype(FONT, 44))
    return img


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, ray_session):
    import os

    root = tmp_path_factory.mktemp("chain")
    drop = root / "drop"
    drop.mkdir()
    for name in ("astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg", "teapot__03.jpg", "cat__04.jpg"):
        shutil.copy(PHOTOS / name, drop / name)
    _sign().save(drop / "sign.png")
    (drop / "sign.json").write_text(json.dumps({"title": "Diner sign", "artist": "Jane Doe",
                                                "licence": "CC-BY-4.0"}))
    storage = str(root / "storage")
    old_home = os.environ.get("DAGSTER_HOME")
    os.environ.pop("DAGSTER_HOME", None)
    first = run_pipeline([str(drop)], storage, CONFIG)
    yield storage, drop, first
    if old_home is not None:
        os.environ["DAGSTER_HOME"] = old_home
    else:
        os.environ.pop("DAGSTER_HOME", None)


def _meta(summaries, asset, partition=None):
    return next(s["metadata"] for s in summaries if s.get("asset") == asset and "metadata" in s
                and s["partition"] == partition)


def _rows(storage, asset, partition="_"):
    store = TableStore(storage)
    return store.read_table(store.dir(asset, partition))


def test_every_asset_and_check_of_the_chain(pipeline):
    storage, _, first = pipeline
    # warnings (a 7-image probe, a later stage's loss over 16 steps) are reported, not failures
    failed = [(s["asset"], s["check"], s["partition"]) for s in first
              if "check" in s and not s["passed"] and s["severity"] != "WARN"]
    assert not failed
    curated = _rows(storage, "rebalanced_images")
    kept = {r["sample_id"] for r in curated.to_pylist() if r["kept"]}
    assert len(kept) == 7
    ocr = {r["sample_id"]: r for r in _rows(storage, "ocr_annotations").to_pylist()}
    assert set(ocr) == kept
    sign_id = next(sid for sid, r in ocr.items() if "OPEN" in r["text"])
    captions = {r["sample_id"]: r for r in _rows(storage, "captions").to_pylist()}
    sign = captions[sign_id]
    assert "OPEN 24 HOURS" in sign["caption"] and "Diner sign" in sign["caption"]
    assert sign["backend"] == "grounded" and sign["prompt_version"] and "ocr_lines" in json.loads(sign["inputs"])
    variants = {r["sample_id"]: r for r in _rows(storage, "prompt_variants").to_pylist()}
    assert set(variants) == kept
    for kind in ("tags", "short", "medium", "long"):
        assert "OPEN 24 HOURS" in variants[sign_id][kind]
    assert len(variants[sign_id]["short"].split()) <= 12
    assert "Title:" not in sign["caption"] and "Jane Doe" not in sign["caption"]  # prose; credits stay metadata
    checks = {(s["asset"], s["check"]): s["passed"] for s in first if "check" in s}
    assert checks[("captions", "caption_text")] and checks[("prompt_variants", "variant_quality")]
    assert _rows(storage, "prompt_expansion_pairs").num_rows >= 1


def test_shards_per_stage_hold_bucketed_images_with_provenance(pipeline):
    storage, _, first = pipeline
    store = TableStore(storage)
    for stage, size in (("256", 32), ("512", 48), ("1024", 64)):
        parts = store.list_parts(store.dir("training_shards", stage))
        meta = _meta(first, "training_shards", stage)
        assert meta["total"] == 7 and meta["kept"] + meta["dropped"] == 7
        for part in parts:
            table = pq.read_table(part)
            for row in table.to_pylist():
                w, h = map(int, row["bucket"].split("x"))
                assert abs(w * h - size * size) <= 0.25 * size * size
                assert row["caption_medium"] and row["source_uri"] and row["sample_weight"] > 0
                assert row["caption_long"] != row["caption_medium"]  # a long is distinct or absent, never a copy
    assert len(store.list_parts(store.dir("training_shards", "256"))) >= 2  # shards of the target size
    card = json.loads((Path(storage) / "dataset_card" / "_" / "dataset_card.json").read_text())
    assert set(card["stages"]) == {"256", "512", "1024"} and card["curated"] == 7


def test_dit_checkpoint_per_stage_chains_the_curriculum(pipeline):
    import torch

    storage, _, first = pipeline
    store = TableStore(storage)
    previous = None
    for stage in ("256", "512", "1024"):
        meta = _meta(first, "dit_checkpoint", stage)
        assert meta["steps"] == 16 and meta["params"] > 0 and meta["samples_per_second"] > 0
        assert meta["init_from"] == (previous or "scratch")
        assert "data:image/png;base64," in meta["loss_curve"] and "data:image/png;base64," in meta["samples"]
        out = Path(store.dir("dit_checkpoint", stage))
        done = json.loads((out / "_SUCCESS.json").read_text())
        assert done["shards"] == store.list_parts(store.dir("training_shards", stage))
        ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
        assert ckpt["step"] == 16 and ckpt["train_config"]["stage_size"] == {"256": 32, "512": 48, "1024": 64}[stage]
        steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert steps == sorted(steps) and steps[-1] == 16
        previous = str(out / "checkpoint.pt")
    stage_256 = _meta(first, "dit_checkpoint", "256")
    assert stage_256["final_loss"] < stage_256["first_loss"]  # from scratch, the loss falls within 16 steps


def test_lineage_of_the_sign(pipeline):
    from tests.orchestration.test_lineage import assert_pipeline_lineage

    assert_pipeline_lineage(pipeline[0], pipeline[1])


def test_opt_out_removes_a_curated_sample_from_every_shard_on_recuration(pipeline):
    storage, _, _ = pipeline
    store = TableStore(storage)
    add_opt_outs(store, [make("artist", "jane doe", reason="request 7")])
    second = run_pipeline([], storage, CONFIG)
    assert checks_passed(second)
    ocr = {r["sample_id"]: r for r in _rows(storage, "ocr_annotations").to_pylist()}
    sign_id = next(sid for sid, r in ocr.items() if "OPEN" in r["text"])
    for stage in ("256", "512", "1024"):
        shard = _rows(storage, "training_shards", stage)
        assert shard.num_rows == 0 or sign_id not in set(shard.column("sample_id").to_pylist())
    ledger = store.read_decisions().to_pylist()
    assert any(d["sample_id"] == sign_id and d["reason"] == "opted_out" and d["stage"] == "opt_out" for d in ledger)
    audit = _meta(second, "dataset_audit")
    assert audit["opted_out_samples"] == 1
    changes = audit["changes"]
    assert changes["shards"]["1024"]["removed"] == 1  # the sign is too detailed for the smaller stages
    # a third run with nothing new computes nothing again
    third = run_pipeline([], storage, CONFIG)
    assert _meta(third, "ocr_annotations")["computed_now"] == 0
    assert _meta(third, "captions")["computed_now"] == 0
    assert _meta(third, "training_shards", "256")["parts_reused"] >= 1
