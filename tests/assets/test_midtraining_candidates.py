"""`midtraining_candidates` and the `curate review` loop, on a tiny storage whose upstream tables are written directly
(real open-NSFW embeddings of 14 small images, so image exemplars given as files are comparable): no Ray, no
pipeline run."""

from __future__ import annotations

import datetime
import hashlib
import json
import shutil

import dagster as dg
import pyarrow as pa
import pytest
from PIL import Image

from assets.captions import CAPTIONS_SCHEMA
from assets.midtraining_candidates import cap_candidates, midtraining_candidates
from assets.rebalanced_images import SCHEMA as REBALANCED_SCHEMA
from orchestration import review
from orchestration.cli import main
from orchestration.resources import ModelSettings, StorageResource
from orchestration.storage import SUCCESS_MARKER, TableStore
from tests.conftest import encode, make_image

SOURCE = "drop-a"
# three families of images (the leaf clusters), with captions the text queries can find
FAMILIES = [
    ("sunset", (255, 120, 40), "an orange sunset over a calm sea"),
    ("forest", (30, 140, 50), "a green forest path in summer"),
    ("map", (60, 60, 200), "a hand-drawn map of an old city"),
]


def _image(family: int, k: int) -> bytes:
    img = make_image(72, 56, seed=10 * family + k)
    tint = Image.new("RGB", img.size, FAMILIES[family][1])
    return encode(Image.blend(img, tint, 0.6), "PNG")


@pytest.fixture(scope="module")
def base_storage(tmp_path_factory):
    """Upstream tables of 14 curated samples: 5 + 5 + 4 in three leaf clusters, 2 of them dropped by rebalancing."""
    from curation.features import FeatureConfig, FeatureExtractor

    root = tmp_path_factory.mktemp("midtraining")
    images, families = [], []
    for family, count in enumerate((5, 5, 4)):
        for k in range(count):
            images.append(_image(family, k))
            families.append(family)
    ids = [hashlib.sha256(b).hexdigest() for b in images]
    uris = [f"file:///drop/{FAMILIES[f][0]}_{i}.png" for i, f in enumerate(families)]
    (root / "exemplar.png").write_bytes(images[0])  # the first sunset, as an exemplar file
    store = TableStore(str(root / "storage"))
    n = len(ids)
    rows = pa.table({"sample_id": ids, "source": [SOURCE] * n, "source_uri": uris,
                     "width": pa.array([72] * n, pa.int32()), "height": pa.array([56] * n, pa.int32()),
                     "byte_size": [len(b) for b in images], "format": ["PNG"] * n, "image": images})
    store.write_parquet(store.part_path("source_images", SOURCE, 0),
                        rows.select(["sample_id", "source_uri", "image"]).append_column(
                            "metadata", pa.array(["{}"] * n)))
    features = FeatureExtractor(FeatureConfig()).process_batch(rows)
    store.write_parquet(store.part_path("deduplicated_images", None, 0), features)
    kept = [i not in (4, 9) for i in range(n)]  # the last sunset and the last forest were thinned out
    store.write_parquet(store.part_path("rebalanced_images", None, 0), pa.table({
        "sample_id": ids, "source": [SOURCE] * n, "source_uri": uris,
        "cluster_path": [[f, 0] for f in families], "concepts": [[] for _ in ids],
        "p_cluster": [1.0] * n, "p_concept": [1.0] * n, "keep_probability": [1.0] * n,
        "sample_weight": pa.array([1.0] * n, pa.float32()), "balanced_weight": pa.array([1.0] * n, pa.float32()),
        "kept": kept}, schema=REBALANCED_SCHEMA))
    store.write_json(f"{store.dir('rebalanced_images')}/{SUCCESS_MARKER}", {"input_id": "test"})
    caption_rows = [{"sample_id": sid, "source_uri": uri, "caption": f"{FAMILIES[f][2]}, view {i}",
                     "backend": "grounded", "model": "test", "prompt_version": "1", "inputs": "{}", "attempts": 1,
                     "failure": None, "failure_detail": None, "fallback_from": None, "quoted": [], "entities": []}
                    for i, (sid, uri, f, k) in enumerate(zip(ids, uris, families, kept, strict=True)) if k]
    store.write_parquet(store.part_path("captions", None, 0), pa.Table.from_pylist(caption_rows,
                                                                                     schema=CAPTIONS_SCHEMA))
    return {"root": root, "ids": ids, "families": families, "kept": kept}


@pytest.fixture
def corpus(base_storage, tmp_path):
    storage = tmp_path / "storage"
    shutil.copytree(base_storage["root"] / "storage", storage)
    return {**base_storage, "storage": str(storage), "store": TableStore(str(storage))}


def materialize(storage: str, **config):
    result = dg.materialize([midtraining_candidates], instance=dg.DagsterInstance.ephemeral(),
                            resources={"storage": StorageResource(root=storage), "models": ModelSettings()},
                            run_config={"ops": {"midtraining_candidates": {"config": config}}})
    assert result.success
    mat = result.get_asset_materialization_events()[0].event_specific_data.materialization
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    store = TableStore(storage)
    table = store.read_table(store.dir("midtraining_candidates"))
    return table, mat.metadata, checks


def _by_id(table: pa.Table) -> dict[str, dict]:
    return {r["sample_id"]: r for r in table.to_pylist()}


def test_coverage_of_every_cluster_from_kept_samples_only(corpus):
    table, meta, checks = materialize(corpus["storage"], per_cluster=2)
    assert checks == {"no_rejected_candidate": True, "accepted_included": True, "only_kept_samples": True}
    kept_ids = {sid for sid, k in zip(corpus["ids"], corpus["kept"], strict=True) if k}
    rows = _by_id(table)
    assert len(rows) == 6 and set(rows) <= kept_ids
    assert sorted(r["cluster"] for r in rows.values()) == [0, 0, 1, 1, 2, 2]
    assert all(r["reason"] == "coverage" and r["status"] == "pending" and r["source_uri"] for r in rows.values())
    assert all(r["caption"] for r in rows.values())
    assert meta["clusters_covered"].value == 3 and meta["reason_coverage"].value == 6
    assert meta["pending"].value == 6 and meta["accepted"].value == 0
    assert "data:image/png;base64," in meta["top_candidates"].value  # thumbnails
    marker = corpus["store"].read_json(f"{corpus['store'].dir('midtraining_candidates')}/{SUCCESS_MARKER}")
    assert marker["code_version"] == "midtraining-1" and marker["metadata"]["kept"] == 6


def test_review_loop_through_the_cli(corpus, capsys, monkeypatch):
    storage, ids = corpus["storage"], corpus["ids"]
    table, _, _ = materialize(storage, per_cluster=1)
    first = _by_id(table)
    rejected = next(sid for sid, r in first.items() if r["cluster"] == 0)
    # a kept sample of another cluster that no list picked
    accepted = next(sid for sid, k in zip(ids[::-1], corpus["kept"][::-1], strict=True) if k and sid not in first)
    assert main(["review", "reject", rejected[:12], "--storage", storage, "--reviewer", "alice",
                 "--note", "blurry"]) == 0
    assert main(["review", "accept", accepted, "--storage", storage, "--reviewer", "bob"]) == 0
    assert "curate run --select midtraining_candidates" in capsys.readouterr().out

    assert main(["review", "list", "--storage", storage, "--json"]) == 0
    listed = {r["sample_id"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert listed[rejected]["status"] == "rejected" and listed[rejected]["in_candidates"]
    assert listed[accepted]["status"] == "accepted" and not listed[accepted]["in_candidates"]
    assert main(["review", "list", "--storage", storage, "--status", "pending"]) == 0
    text = capsys.readouterr().out
    assert rejected[:16] not in text and "2 pending" in text

    table, meta, checks = materialize(storage, per_cluster=1)
    rows = _by_id(table)
    assert all(checks.values())
    assert rejected not in rows
    assert rows[accepted]["status"] == "accepted" and rows[accepted]["reviewer"] == "bob"
    assert rows[accepted]["reason"] == "accepted"
    replacement = [r for r in rows.values() if r["cluster"] == 0 and r["reason"] == "coverage"]
    assert len(replacement) == 1  # the rejected slot went to the next best of cluster 0
    assert meta["rejected_excluded"].value == 1 and meta["accepted"].value == 1

    log = review.read_log(corpus["store"]).to_pylist()
    assert [(v["sample_id"], v["verdict"], v["reviewer"], v["note"]) for v in log] == [
        (rejected, "reject", "alice", "blurry"), (accepted, "accept", "bob", None)]
    now = datetime.datetime.now(datetime.UTC)
    assert all(v["time"].tzinfo is not None and abs((now - v["time"]).total_seconds()) < 600 for v in log)

    # a later accept (reviewer from $USER) overrides the reject: the sample comes back
    monkeypatch.setenv("USER", "erin")
    assert main(["review", "accept", rejected[:10], "--storage", storage]) == 0
    table, _, checks = materialize(storage, per_cluster=1)
    back = _by_id(table)[rejected]
    assert back["status"] == "accepted" and back["reviewer"] == "erin" and all(checks.values())


def test_bad_ids_exit_nonzero_and_write_nothing(corpus, capsys, tmp_path):
    storage, ids = corpus["storage"], corpus["ids"]
    assert main(["review", "list", "--storage", str(tmp_path / "empty")]) == 1
    assert "materialize midtraining_candidates first" in capsys.readouterr().err
    materialize(storage, per_cluster=1)
    assert main(["review", "reject", "deadbeefdeadbeef", "--storage", storage, "--reviewer", "a"]) == 1
    assert "unknown sample id(s): deadbeefdeadbeef" in capsys.readouterr().err
    assert main(["review", "accept", ids[0][:3], "--storage", storage, "--reviewer", "a"]) == 1
    assert "shorter than" in capsys.readouterr().err
    dropped = ids[4]  # not kept by rebalancing: not reviewable
    assert main(["review", "accept", ids[1], dropped, "--storage", storage, "--reviewer", "a"]) == 1
    assert review.read_log(corpus["store"]).num_rows == 0  # all or nothing


def test_import_csv_through_the_cli(corpus, tmp_path, capsys):
    storage, ids = corpus["storage"], corpus["ids"]
    materialize(storage, per_cluster=1)
    good = tmp_path / "verdicts.csv"
    good.write_text(f"sample_id,verdict,note,reviewer\n{ids[0][:12]},reject,too dark,\n"
                    f"{ids[5]},accepted,,carol\n")
    assert main(["review", "import", str(good), "--storage", storage, "--reviewer", "dave"]) == 0
    assert "recorded 2 verdict(s)" in capsys.readouterr().out
    log = review.read_log(corpus["store"]).to_pylist()
    assert [(v["sample_id"], v["verdict"], v["reviewer"], v["note"]) for v in log] == [
        (ids[0], "reject", "dave", "too dark"), (ids[5], "accept", "carol", None)]
    bad = tmp_path / "bad.csv"
    bad.write_text(f"sample_id,verdict\n{ids[1]},maybe\nffffffffffff,reject\n")
    assert main(["review", "import", str(bad), "--storage", storage, "--reviewer", "dave"]) == 1
    err = capsys.readouterr().err
    assert "line 2" in err and "maybe" in err
    assert review.read_log(corpus["store"]).num_rows == 2


def test_text_queries_and_image_exemplars(corpus):
    ids = corpus["ids"]
    exemplar = str(corpus["root"] / "exemplar.png")
    table, meta, checks = materialize(corpus["storage"], per_cluster=1, per_query=2,
                                      text_queries=["a map drawn by hand"], min_text_similarity=0.3,
                                      image_exemplar_paths=[exemplar], image_exemplar_ids=[ids[5][:8]])
    assert all(checks.values())
    rows = _by_id(table)
    query = "text_query:a map drawn by hand"
    by_query = [sid for sid, r in rows.items() if query in r["reasons"]]
    assert len(by_query) == 2 and all(corpus["families"][ids.index(s)] == 2 for s in by_query)
    # exemplar 1, the file, holds the first sunset's bytes: it retrieves that very sample, at cosine ~1
    first = [r for r in rows.values() if "image_exemplar:1" in r["reasons"]]
    assert ids[0] in {r["sample_id"] for r in first}
    if rows[ids[0]]["reason"] == "image_exemplar:1":
        assert rows[ids[0]]["score"] > 0.99
    assert ids[5] in {s for s, r in rows.items() if "image_exemplar:0" in r["reasons"]}
    assert meta["image_exemplars"].value == {"0": f"sample {ids[5]}", "1": exemplar}


def test_cap_keeps_accepted_and_best_ranks():
    table = pa.table({"sample_id": list("abcde"), "status": ["pending", "pending", "accepted", "pending", "pending"],
                      "rank": [0, 1, None, 0, 2], "score": [0.5, 0.9, None, 0.7, 0.1]})
    assert cap_candidates(table, 3).column("sample_id").to_pylist() == ["a", "c", "d"]
    assert cap_candidates(table, None).num_rows == 5
    assert cap_candidates(table, 0).column("sample_id").to_pylist() == ["c"]


def test_runs_in_the_global_phase_after_captions():
    from orchestration.cli import plan_runs
    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    runs = plan_runs(graph, dg.AssetSelection.all().resolve(graph), ["d1"])
    phase = {key.to_user_string(): i for i, (_, keys) in enumerate(runs) for key in keys}
    assert phase["midtraining_candidates"] == phase["captions"] >= phase["rebalanced_images"]
    keys = [k.to_user_string() for k in runs[phase["captions"]][1]]
    assert keys.index("midtraining_candidates") > keys.index("captions")
    assert runs[phase["midtraining_candidates"]][0] is None  # one global run, not one per drop
