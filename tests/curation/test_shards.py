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


def test_prepare_decodes_a_large_jpeg_reduced_and_oriented_like_a_full_decode():
    import numpy as np

    from curation.image_io import load_rgb, oriented_size
    from tests.conftest import make_image

    img = make_image(2400, 1600, seed=3)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the stored 2400x1600 is shown as 1600x2400
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92, exif=exif)
    data = buf.getvalue()
    assert oriented_size(data) == (1600, 2400)
    buckets = aspect_buckets(256, 16)
    row, reason, details = prepare(data, ShardConfig(size=256), buckets)
    assert reason is None and details["source_size"] == [1600, 2400] and row["height"] > row["width"]
    reference, _ = fit_to_bucket(load_rgb(data), (row["width"], row["height"]))
    got = np.asarray(Image.open(io.BytesIO(row["image"])).convert("RGB"), np.float32)
    assert np.abs(got - np.asarray(reference, np.float32)).mean() < 4.0


def test_prepare_refuses_from_the_header_and_reports_corrupt_bytes():
    from curation.image_io import ImageRejected

    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 20, 30)).save(buf, "JPEG")
    data = buf.getvalue()
    small, reason, details = prepare(data, ShardConfig(size=1024), aspect_buckets(1024, 64))
    assert small is None and reason == "too_small_for_stage" and details["source_size"] == [300, 200]
    with pytest.raises(ImageRejected):
        prepare(b"\xff\xd8\xff" + b"\0" * 64, ShardConfig(size=256), aspect_buckets(256, 16))
