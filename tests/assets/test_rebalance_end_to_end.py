"""Issue 6, end to end: `curate run --select '*rebalanced_images'` on a drop where one concept ("stock photo") is
several times more frequent than the rest halves its share, keeps nearly all rare content, and says why."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from orchestration.cli import checks_passed, load_config, run_pipeline
from orchestration.storage import TableStore

pytestmark = pytest.mark.slow
PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "corpus" / "photos"
RARE = ["lighthouse at dusk", "origami crane", "glass harmonica", "salt flat", "tide pool", "stained glass",
        "hot air balloon", "bonsai tree", "paper lantern", "sand dune", "ice cave", "street mural"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, ray_session):
    import os

    root = tmp_path_factory.mktemp("rebalance")
    drop = root / "drop"
    drop.mkdir()
    photos = sorted(p for p in PHOTOS.iterdir() if p.suffix == ".jpg")
    rows = []
    for i, photo in enumerate(photos):
        shutil.copy(photo, drop / photo.name)
        rare = i % 3 == 0 and i // 3 < len(RARE)  # one in three is rare; the rest share the head concept
        title = RARE[i // 3] if rare else "stock photo"
        rows.append({"file_name": photo.name, "title": title})
    (drop / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = root / "config.yaml"
    # a 36-image drop is far below the default t's floor (20): name the cap, as a user with a small drop would
    config.write_text(yaml.safe_dump({"assets": {"source_images": {"min_side": 32},
                                                 "rebalanced_images": {"concept_cap": 4}}}))
    storage = str(root / "storage")
    old_home = os.environ.pop("DAGSTER_HOME", None)
    # what `curate run --source DROP --config FILE --select '*rebalanced_images'` does, keeping the summaries
    summaries = run_pipeline([str(drop)], storage, load_config(str(config)), "*rebalanced_images")
    if old_home is not None:
        os.environ["DAGSTER_HOME"] = old_home
    else:
        os.environ.pop("DAGSTER_HOME", None)
    return summaries, storage, {r["file_name"]: r["title"] for r in rows}


def test_head_concept_halved_and_rare_content_kept(run):
    summaries, storage, titles = run
    assert checks_passed(summaries)
    store = TableStore(storage)
    table = store.read_table(store.dir("rebalanced_images")).to_pylist()
    head = {r["sample_id"] for r in table if titles[r["source_uri"].rsplit("/", 1)[-1]] == "stock photo"}
    kept = [r for r in table if r["kept"]]
    share_before = len(head) / len(table)
    share_after = sum(r["sample_id"] in head for r in kept) / len(kept)
    assert share_before >= 0.6 and share_after <= share_before / 2
    rare = [r for r in table if r["sample_id"] not in head]
    assert sum(r["kept"] for r in rare) >= 0.9 * len(rare)
    assert all(r["sample_weight"] > 0 for r in kept)


def test_why_is_in_the_ledger_and_the_plots(run):
    summaries, storage, _ = run
    store = TableStore(storage)
    table = store.read_table(store.dir("rebalanced_images")).to_pylist()
    dropped = {r["sample_id"] for r in table if not r["kept"]}
    ledger = [d for d in store.read_decisions("rebalanced_images").to_pylist() if d["stage"] == "rebalance"]
    assert dropped and {d["sample_id"] for d in ledger if d["decision"] == "drop"} == dropped
    for d in ledger:
        details = json.loads(d["details"])
        assert d["reason"] in ("over_represented_concept", "over_represented_cluster")
        assert 0 <= d["score"] < 1 and "p_concept" in details and "cluster_path" in details
        if d["reason"] == "over_represented_concept":
            assert "stock photo" in details["concepts"]
    meta = next(s["metadata"] for s in summaries if s.get("asset") == "rebalanced_images" and "metadata" in s)
    for plot in ("cluster_sizes", "concept_frequencies"):
        assert "data:image/png;base64," in meta[plot]
