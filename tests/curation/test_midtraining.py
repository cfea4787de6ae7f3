"""Midtraining candidates: coverage per cluster, retrieval by text query and image exemplar, the review loop."""

from __future__ import annotations

import datetime

import numpy as np
import pyarrow as pa
import pytest

from curation.midtraining import (
    MidtrainingConfig,
    Verdict,
    append_verdicts,
    coverage_ranking,
    latest_verdicts,
    read_verdicts_csv,
    select_candidates,
    verdicts_table,
)

T0 = datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)


class KeywordEncoder:
    """A fake text encoder: one dimension per keyword (tests the plumbing, not MiniLM)."""

    words = ("map", "dog", "car", "cake")

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.full((len(texts), len(self.words) + 1), 0.01, np.float32)
        for i, t in enumerate(texts):
            for j, w in enumerate(self.words):
                out[i, j] += t.lower().count(w)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def corpus(n_clusters: int = 4, per: int = 10, dim: int = 16):
    rng = np.random.default_rng(0)
    centres = np.eye(dim, dtype=np.float32)[:n_clusters]
    emb = np.repeat(centres, per, axis=0) + 0.1 * rng.normal(size=(n_clusters * per, dim)).astype(np.float32)
    labels = np.repeat(np.arange(n_clusters), per)
    ids = [f"s{i:02d}" for i in range(len(emb))]
    words = ["a hand drawn map", "a dog in a park", "a red car", "a birthday cake"]
    captions = [f"{words[c]} number {i}" for i, c in enumerate(labels)]
    return ids, emb, captions, labels


def test_coverage_nearest_and_spread():
    ids, emb, captions, labels = corpus()
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    members = np.flatnonzero(labels == 0)
    excluded = np.zeros(len(ids), bool)
    nearest = coverage_ranking(x, members, 3, "nearest", excluded)
    spread = coverage_ranking(x, members, 3, "spread", excluded)
    assert nearest[0] == spread[0]  # both start at the most central sample
    assert [s for _, s in nearest] == sorted((s for _, s in nearest), reverse=True)
    assert len({r for r, _ in spread}) == 3 and all(r in members for r, _ in spread)
    # spread's picks are farther apart than nearest's
    def min_pair_distance(rows):
        v = x[[r for r, _ in rows]]
        sims = v @ v.T
        return 1 - sims[~np.eye(len(v), dtype=bool)].max()
    assert min_pair_distance(spread) >= min_pair_distance(nearest)

    table = select_candidates(ids, emb, captions, labels, MidtrainingConfig(per_cluster=2))
    assert table.num_rows == 8 and set(table.column("reason").to_pylist()) == {"coverage"}
    assert sorted(table.column("cluster").to_pylist()) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_retrieval_by_text_query_and_image_exemplar():
    ids, emb, captions, labels = corpus()
    config = MidtrainingConfig(per_cluster=0, per_query=3)
    table = select_candidates(ids, emb, captions, labels, config, text_queries=["old map"],
                              image_exemplars=emb[[25]], text_encoder=KeywordEncoder())
    rows = table.to_pylist()
    by_reason: dict[str, list[dict]] = {}
    for r in rows:
        for reason in r["reasons"]:
            by_reason.setdefault(reason, []).append(r)
    assert len(by_reason["text_query:old map"]) == 3
    assert all("map" in r["caption"] for r in by_reason["text_query:old map"])
    exemplar = by_reason["image_exemplar:0"]
    assert len(exemplar) == 3 and all(r["cluster"] == 2 for r in exemplar)
    assert "s25" in {r["sample_id"] for r in exemplar}
    assert all(r["score"] > 0.5 for r in rows)


def test_rejected_replaced_and_accepted_kept():
    ids, emb, captions, labels = corpus()
    config = MidtrainingConfig(per_cluster=2, per_query=2)
    first = select_candidates(ids, emb, captions, labels, config, image_exemplars=emb[[5]])
    first_ids = first.column("sample_id").to_pylist()
    exemplar_ids = [r["sample_id"] for r in first.to_pylist() if "image_exemplar:0" in r["reasons"]]
    coverage_ids = [r["sample_id"] for r in first.to_pylist() if "coverage" in r["reasons"]]
    rejected = {exemplar_ids[0], coverage_ids[-1]}
    outside = next(s for s in ids if s not in first_ids)
    verdicts = {s: Verdict(s, "reject", "ann", T0) for s in rejected}
    verdicts[outside] = Verdict(outside, "accept", "bob", T0)
    second = select_candidates(ids, emb, captions, labels, config, image_exemplars=emb[[5]], verdicts=verdicts)
    rows = {r["sample_id"]: r for r in second.to_pylist()}
    assert not rejected & set(rows)
    assert sum("coverage" in r["reasons"] for r in rows.values()) == 8  # the quota is refilled
    assert sum("image_exemplar:0" in r["reasons"] for r in rows.values()) == 2
    assert rows[outside]["reason"] == "accepted" and rows[outside]["verdict"] == "accept"
    assert rows[outside]["reviewer"] == "bob"
    # plain dict verdicts work too
    third = select_candidates(ids, emb, captions, labels, config,
                              verdicts={s: {"verdict": "reject", "reviewer": "ann"} for s in rejected})
    assert not rejected & set(third.column("sample_id").to_pylist())


def test_verdicts_csv_log_and_latest_wins(tmp_path):
    path = tmp_path / "review.csv"
    path.write_text("sample_id,verdict,reviewer,note\ns01,accept,ann,nice\ns02, Reject ,ann,\n", encoding="utf-8")
    verdicts = read_verdicts_csv(path, time=T0)
    assert [(v.sample_id, v.verdict, v.note) for v in verdicts] == [("s01", "accept", "nice"), ("s02", "reject",
                                                                                                 None)]
    log = append_verdicts(None, verdicts)
    later = [Verdict("s01", "reject", "bob", T0 + datetime.timedelta(hours=1))]
    log = append_verdicts(log, later)
    assert log.num_rows == 3 and log.schema == verdicts_table([]).schema
    latest = latest_verdicts(log)
    assert latest["s01"].verdict == "reject" and latest["s01"].reviewer == "bob"
    assert latest["s02"].verdict == "reject"
    # an older entry appended afterwards does not override a newer one; equal times: the later row wins
    log = append_verdicts(log, [Verdict("s01", "accept", "cy", T0)])
    assert latest_verdicts(log)["s01"].reviewer == "bob"
    log = append_verdicts(log, [Verdict("s02", "accept", "cy", T0)])
    assert latest_verdicts(log)["s02"].verdict == "accept"
    assert isinstance(log, pa.Table)

    bad = tmp_path / "bad.csv"
    bad.write_text("sample_id,verdict,reviewer\ns01,maybe,ann\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        read_verdicts_csv(bad)
    missing = tmp_path / "missing.csv"
    missing.write_text("sample_id,verdict\ns01,accept\n", encoding="utf-8")
    with pytest.raises(ValueError, match="reviewer"):
        read_verdicts_csv(missing)
