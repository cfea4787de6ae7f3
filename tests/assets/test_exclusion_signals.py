"""`exclusion_signals` through Dagster on local Ray: AI images dropped with their signal named, real photos kept."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image, PngImagePlugin

from assets import ALL_ASSETS
from assets.source_images import source_drops
from curation.sources import canonical_uri, drop_key
from orchestration.definitions import build_resources
from orchestration.storage import TableStore
from tests.conftest import encode

pytestmark = pytest.mark.slow
PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "corpus" / "photos"
AI_DEV = Path(__file__).resolve().parents[3] / "shared" / "data" / "ai_dev"


def test_ai_images_are_dropped_with_the_signal_named(ray_session, tmp_path, storage):
    drop = tmp_path / "drop"
    drop.mkdir()
    for name in ("chelsea.jpg", "rocket.jpg", "coffee.jpg"):
        shutil.copy(PHOTOS / name, drop / name)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 30, Sampler: DPM++ 2M, CFG scale: 6, Seed: 7")
    (drop / "generated.png").write_bytes(encode(Image.open(PHOTOS / "teapot__03.jpg"), "PNG", pnginfo=info))
    if AI_DEV.is_dir():  # real generator files: ComfyUI graphs in PNG chunks
        shutil.copy(AI_DEV / "ai" / "comfyui-examples" / "sdxlturbo_example.png", drop / "comfy.png")
    key = drop_key(str(drop))
    TableStore(storage).register_source(key, canonical_uri(str(drop)))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(source_drops.name, [key])
        result = dg.materialize(ALL_ASSETS, selection=["source_images", "image_features", "exclusion_signals"],
                                partition_key=key, instance=instance, resources=build_resources(storage_root=storage))
    assert all(c.passed for c in result.get_asset_check_evaluations())
    meta = result.asset_materializations_for_node("exclusion_signals")[0].metadata
    n_ai = 2 if AI_DEV.is_dir() else 1
    assert meta["dropped_ai_generated_metadata"].value == n_ai and meta["kept"].value == 3
    store = TableStore(storage)
    ledger = store.read_decisions("exclusion_signals").to_pylist()
    assert {Path(d["source_uri"]).name for d in ledger} == {"generated.png", "comfy.png"} if n_ai == 2 else \
        {"generated.png"}
    assert all(d["stage"] == "ai_image" and d["details"] for d in ledger)
    signals = store.read_table(store.dir("exclusion_signals", key)).to_pylist()
    by_name = {Path(r["source_uri"]).name: r for r in signals}
    assert by_name["generated.png"]["ai_signals"] == ["png_chunk:parameters(automatic1111)"]
    assert not by_name["chelsea.jpg"]["ai_generated"] and by_name["chelsea.jpg"]["eligible_256"]
