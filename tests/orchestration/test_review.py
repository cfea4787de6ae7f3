"""The review log and id resolution of `curate review` (no Dagster: tables written directly)."""

from __future__ import annotations

import datetime
import hashlib

import pyarrow as pa
import pytest

from curation.midtraining import Verdict
from orchestration import review
from orchestration.storage import TableStore

T0 = datetime.datetime(2026, 11, 1, 12, tzinfo=datetime.UTC)
IDS = sorted(hashlib.sha256(str(i).encode()).hexdigest() for i in range(8))


@pytest.fixture
def store(storage) -> TableStore:
    """Four candidates, eight rebalanced samples of which seven are kept."""
    s = TableStore(storage)
    s.write_parquet(s.part_path("rebalanced_images", None, 0),
                    pa.table({"sample_id": IDS, "kept": [i != 7 for i in range(8)]}))
    s.write_parquet(s.part_path("midtraining_candidates", None, 0), pa.table({
        "sample_id": IDS[:4], "source_uri": [f"file:///x/{i}.jpg" for i in range(4)],
        "reason": ["coverage", "coverage", "text_query:map", "coverage"],
        "reasons": [["coverage"], ["coverage"], ["text_query:map"], ["coverage"]],
        "score": [0.9, 0.8, 0.7, None], "rank": [0, 1, 0, 0], "cluster": [0, 0, 1, 2],
        "caption": ["a", "b", "a map", None]}))
    return s


def test_resolve_ids_exact_prefix_ambiguous_short_unknown():
    known = ["abcdef01", "abcdef02", "abc999ff", "123456aa"]
    known.sort()
    assert review.resolve_ids(["abcdef01", "ABC999", " 123456 "], known) == ["abcdef01", "abc999ff", "123456aa"]
    with pytest.raises(review.ReviewError) as exc:
        review.resolve_ids(["abcdef", "abc", "ffffff"], known)
    message = str(exc.value)
    assert "unknown sample id(s): ffffff" in message
    assert "ambiguous prefix(es): abcdef (matches abcdef01, abcdef02" in message
    assert "shorter than 6 characters: abc" in message


def test_record_appends_parts_and_latest_verdict_wins(store):
    first = review.record(store, [IDS[0][:8], IDS[1]], "reject", reviewer="alice", note="dup", time=T0)
    assert [v.sample_id for v in first] == IDS[:2] and all(v.time == T0 for v in first)
    review.record(store, [IDS[0], IDS[0][:10]], "accepted", reviewer="bob", time=T0 + datetime.timedelta(hours=1))
    parts = store.list_parts(store.dir(review.REVIEW_LOG))
    assert [p.rsplit("/", 1)[1] for p in parts] == ["part-00000.parquet", "part-00001.parquet"]
    log = review.read_log(store)
    assert log.num_rows == 3  # the repeated id in one command is one verdict
    latest = review.latest(store)
    assert latest[IDS[0]].verdict == "accept" and latest[IDS[0]].reviewer == "bob"
    assert latest[IDS[1]].verdict == "reject" and latest[IDS[1]].note == "dup"
    assert review.log_fingerprint(store) == ["part-00000.parquet", "part-00001.parquet"]


def test_record_refuses_bad_input_and_writes_nothing(store):
    with pytest.raises(review.ReviewError, match="accept' or 'reject"):
        review.record(store, [IDS[0]], "maybe", reviewer="a")
    with pytest.raises(review.ReviewError, match="unknown"):
        review.record(store, [IDS[0], IDS[7]], "accept", reviewer="a")  # IDS[7] was not kept
    with pytest.raises(review.ReviewError, match="no sample ids"):
        review.record(store, [], "accept", reviewer="a")
    assert review.read_log(store).num_rows == 0


def test_record_needs_something_materialized(storage):
    with pytest.raises(review.ReviewError, match="materialize midtraining_candidates first"):
        review.record(TableStore(storage), ["abcdef"], "accept", reviewer="a")


def test_default_reviewer_from_user(monkeypatch, store):
    monkeypatch.setenv("USER", "zoe")
    (v,) = review.record(store, [IDS[2]], "accept")
    assert v.reviewer == "zoe" and v.time.tzinfo is not None


def test_read_csv_columns_reviewers_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("USER", "fallback")
    good = tmp_path / "ok.csv"
    good.write_text("\ufeffSample_ID,Verdict,note,reviewer,time\n"
                    "abcdef01,Rejected,bad crop,,\n"
                    "\n"
                    "abcdef02,accept,,carol,2026-10-01T08:00:00+00:00\n")
    rows = review.read_csv(good, reviewer="dave", time=T0)
    assert [(line, raw, v.verdict, v.reviewer, v.note, v.time) for line, raw, v in rows] == [
        (2, "abcdef01", "reject", "dave", "bad crop", T0),
        (4, "abcdef02", "accept", "carol", None, datetime.datetime(2026, 10, 1, 8, tzinfo=datetime.UTC))]
    assert review.read_csv(good, time=T0)[0][2].reviewer == "fallback"
    bad = tmp_path / "bad.csv"
    bad.write_text("sample_id,verdict\nabcdef01,perhaps\n,accept\nabcdef03,reject\n")
    with pytest.raises(review.ReviewError) as exc:
        review.read_csv(bad, reviewer="d")
    assert "line 2: verdict 'perhaps'" in str(exc.value) and "line 3: empty sample_id" in str(exc.value)
    missing = tmp_path / "missing.csv"
    missing.write_text("id,verdict\nabcdef01,accept\n")
    with pytest.raises(review.ReviewError, match="missing column"):
        review.read_csv(missing, reviewer="d")
    with pytest.raises(review.ReviewError, match="cannot read"):
        review.read_csv(tmp_path / "nope.csv", reviewer="d")
    empty = tmp_path / "empty.csv"
    empty.write_text("sample_id,verdict\n")
    with pytest.raises(review.ReviewError, match="no verdicts"):
        review.read_csv(empty, reviewer="d")


def test_import_csv_resolves_prefixes_all_or_nothing(store, tmp_path):
    path = tmp_path / "v.csv"
    path.write_text(f"sample_id,verdict\n{IDS[0][:8]},reject\n{IDS[5]},accept\n")
    verdicts = review.import_csv(store, path, reviewer="ann", time=T0)
    assert [(v.sample_id, v.verdict) for v in verdicts] == [(IDS[0], "reject"), (IDS[5], "accept")]
    path.write_text(f"sample_id,verdict\n{IDS[1]},reject\n{IDS[7]},accept\n")
    with pytest.raises(review.ReviewError, match="line 3: unknown"):
        review.import_csv(store, path, reviewer="ann")
    assert review.read_log(store).num_rows == 2


def test_review_rows_statuses_and_listing(store):
    review.append(store, [Verdict(IDS[1], "reject", "alice", T0, "blurry"), Verdict(IDS[5], "accept", "bob", T0)])
    rows = {r["sample_id"]: r for r in review.review_rows(store)}
    assert len(rows) == 5
    assert rows[IDS[0]]["status"] == "pending" and rows[IDS[0]]["reason"] == "coverage"
    assert rows[IDS[1]]["status"] == "rejected" and rows[IDS[1]]["note"] == "blurry"
    assert rows[IDS[1]]["reviewed_at"] == "2026-11-01T12:00:00+00:00"
    assert rows[IDS[5]]["status"] == "accepted" and not rows[IDS[5]]["in_candidates"]
    assert [r["sample_id"] for r in review.review_rows(store, "pending")] == [IDS[0], IDS[2], IDS[3]]
    assert [r["sample_id"] for r in review.review_rows(store, "rejected")] == [IDS[1]]
    text = review.format_rows(review.review_rows(store))
    assert IDS[5][:16] in text and "(not a candidate)" in text and "5 rows: 3 pending, 1 accepted, 1 rejected" in text
    with pytest.raises(review.ReviewError, match="status must be"):
        review.review_rows(store, "maybe")


def test_append_nothing_writes_nothing(store):
    assert review.append(store, []) is None
    assert review.read_log(store).num_rows == 0


def test_append_waits_for_the_lock_then_names_the_holder(store, monkeypatch):
    monkeypatch.setattr(review, "LOCK_ATTEMPTS", 2)
    with store.lock(review.REVIEW_LOG, owner="another reviewer"):
        with pytest.raises(review.ReviewError, match="another reviewer"):
            review.append(store, [Verdict(IDS[0], "accept", "a", T0)])
    assert review.append(store, [Verdict(IDS[0], "accept", "a", T0)]).endswith("part-00000.parquet")
