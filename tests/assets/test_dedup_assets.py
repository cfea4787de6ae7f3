"""`image_features` and `deduplicated_images` through Dagster on local Ray: duplicates found, incremental runs."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pyarrow.compute as pc
import pytest
from PIL import Image, ImageOps

from assets import ALL_ASSETS
from assets.source_images import source_drops
from curation.sources import canonical_uri, drop_key
from orchestration.definitions import build_resources
from orchestration.storage import TableStore
from tests.conftest import encode

PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "corpus" / "photos"


def photo(name: str) -> Image.Image:
    """A real photo of the sample corpus (synthetic gradients all look alike to pHash)."""
    return Image.open(PHOTOS / name).convert("RGB")

pytestmark = pytest.mark.slow


def register(storage, instance, source) -> str:
    key = drop_key(str(source))
    TableStore(storage).register_source(key, canonical_uri(str(source)))
    instance.add_dynamic_partitions(source_drops.name, [key])
    return key


def run(storage, instance, selection, partition=None):
    result = dg.materialize(ALL_ASSETS, selection=selection, partition_key=partition, instance=instance,
                            resources=build_resources(storage_root=storage),
                            run_config={"ops": {"source_images": {"config": {"min_side": 32}}}}
                            if "source_images" in selection else None)
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    mats = {m.asset_key.to_user_string(): {k: getattr(v, "value", v) for k, v in m.metadata.items()}
            for m in (e.event_specific_data.materialization for e in result.get_asset_materialization_events())}
    return mats, checks


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def test_duplicates_are_removed_and_later_drops_are_checked_against_earlier_ones(ray_session, tmp_path, storage,
                                                                                instance):
    first = tmp_path / "first"
    first.mkdir()
    originals = [photo(n) for n in ("chelsea.jpg", "rocket.jpg", "coffee.jpg", "teapot__03.jpg")]
    for s, img in enumerate(originals):
        (first / f"orig{s}.png").write_bytes(encode(img, "PNG"))
    (first / "orig0_copy.png").write_bytes(encode(originals[0], "PNG"))  # exact
    (first / "orig1_q60.jpg").write_bytes(encode(originals[1], "JPEG", quality=60))  # re-encode
    (first / "orig2_flip.png").write_bytes(encode(ImageOps.mirror(originals[2]), "PNG"))  # flip
    key1 = register(storage, instance, first)
    mats, checks = run(storage, instance, ["source_images", "image_features", "exclusion_signals"], key1)
    assert mats["image_features"]["kept"] == 7 and all(checks.values())
    mats, checks = run(storage, instance, ["deduplicated_images"])
    assert all(checks.values()), checks
    dedup = mats["deduplicated_images"]
    assert dedup["total"] == 7 and dedup["kept"] == 4 and dedup["dropped"] == 3
    store = TableStore(storage)
    ledger = store.read_decisions("deduplicated_images").to_pylist()
    reasons = {row["source_uri"].rsplit("/", 1)[1]: row for row in ledger}
    assert reasons["orig0_copy.png"]["reason"] == "exact_duplicate" or reasons["orig0.png"]["reason"] == \
        "exact_duplicate"
    assert all(row["duplicate_of"] and row["threshold"] is not None for row in ledger)

    # nothing new: nothing changes, even after the upstream assets are materialized again (every part reused)
    run(storage, instance, ["source_images", "image_features", "exclusion_signals"], key1)
    mats, checks = run(storage, instance, ["deduplicated_images"])
    assert mats["deduplicated_images"]["total"] == 0 and all(checks.values())
    assert store.read_table(store.dir("deduplicated_images"), columns=["sample_id"]).num_rows == 4

    # a second drop: its duplicates of the first drop go, its new image stays, old features are not recomputed
    second = tmp_path / "second"
    second.mkdir()
    (second / "orig3_small.png").write_bytes(encode(originals[3].resize((192, 192)), "PNG"))
    (second / "new.png").write_bytes(encode(photo("astronaut.jpg"), "PNG"))
    key2 = register(storage, instance, second)
    run(storage, instance, ["source_images", "image_features", "exclusion_signals"], key2)
    mats, checks = run(storage, instance, ["deduplicated_images"])
    assert all(checks.values()), checks
    dedup = mats["deduplicated_images"]
    assert (dedup["total"], dedup["kept"], dedup["increment"]) == (2, 1, 1)
    assert dedup["index"] == "loaded"
    late = store.read_decisions("deduplicated_images").filter(pc.field("source_uri").isin(
        [str(second / "orig3_small.png")])).to_pylist()
    (row,) = late
    assert row["duplicate_of"] is not None and '"representative_curated_before": true' in row["details"]


def test_threshold_change_recomputes_from_scratch(ray_session, tmp_path, storage, instance):
    drop = tmp_path / "d"
    drop.mkdir()
    img = photo("rocket.jpg")
    (drop / "a.png").write_bytes(encode(img, "PNG"))
    (drop / "b.jpg").write_bytes(encode(img, "JPEG", quality=80))
    key = register(storage, instance, drop)
    run(storage, instance, ["source_images", "image_features", "exclusion_signals"], key)
    mats, _ = run(storage, instance, ["deduplicated_images"])
    assert mats["deduplicated_images"]["kept"] == 1
    result = dg.materialize(ALL_ASSETS, selection=["deduplicated_images"], instance=instance,
                            resources=build_resources(storage_root=storage),
                            run_config={"ops": {"deduplicated_images": {"config": {
                                "phash_threshold": -1, "semantic_threshold": 1.5}}}})
    meta = result.asset_materializations_for_node("deduplicated_images")[0].metadata
    assert meta["kept"].value == 2 and meta["increment"].value == 0
