import io
import math

import pytest
from PIL import Image

from curation.shards import ShardConfig, aspect_buckets, fit_to_bucket, nearest_bucket, prepare


@pytest.mark.parametrize("size", [32, 256, 1024])
def test_buckets_hold_about_the_stage_area_and_are_symmetric(size):
    multiple = ShardConfig(size=size).side_multiple()
    buckets = aspect_buckets(size, multiple)
    assert (size, size) in buckets
    for w, h in buckets:
        assert w % multiple == 0 and h % multiple == 0
        assert abs(w * h - size * size) <= 0.25 * size * size
        assert 1 / 4 <= w / h <= 4
        assert (h, w) in buckets


def test_nearest_bucket_follows_aspect():
    buckets = aspect_buckets(256, 16)
    w, h = nearest_bucket(1600, 900, buckets)
    assert abs(math.log(w / h) - math.log(16 / 9)) < 0.1
    assert nearest_bucket(500, 500, buckets) == (256, 256)


def test_fit_and_prepare():
    img = Image.new("RGB", (640, 480), (200, 10, 10))
    out, scale = fit_to_bucket(img, (288, 224))
    assert out.size == (288, 224) and scale == pytest.approx(0.4667, abs=1e-3)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    row, reason, details = prepare(buf.getvalue(), ShardConfig(size=256), aspect_buckets(256, 16))
    assert reason is None and row["bucket"] == details["bucket"]
    assert Image.open(io.BytesIO(row["image"])).size == (row["width"], row["height"])
    small, reason, details = prepare(buf.getvalue(), ShardConfig(size=1024), aspect_buckets(1024, 64))
    assert small is None and reason == "too_small_for_stage" and details["scale"] > 1.34


def test_ineligible_decision_carries_the_measure_and_the_bound():
    import json

    from curation.quality import stage_refusal
    from curation.shards import ineligible_decision

    refusal = json.dumps(stage_refusal(640, 480, 0.0, None, 1024))
    d = ineligible_decision("a" * 64, "file:///x.jpg", "1024px", refusal)
    assert (d.stage, d.decision, d.reason) == ("shard", "drop", "too_small_for_stage")
    assert d.score == 554.3 and d.threshold == 768.0
    assert d.details["stage"] == "1024px" and d.details["short_side"] == 480 and d.details["width"] == 640
    old = ineligible_decision("a" * 64, "file:///x.jpg", "1024px", None)  # signals written before refusals existed
    assert old.reason == "ineligible_for_stage" and old.score is None
