"""Artifact measures and stage eligibility (borders, aspect, size, blocking, detail loss); softness is not punished."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageFilter

from curation.quality import QualityConfig, quality_signals

PHOTO = Path(__file__).resolve().parents[2] / "examples" / "corpus" / "photos" / "chelsea.jpg"


def photo(size=(1024, 680)) -> Image.Image:
    return Image.open(PHOTO).convert("RGB").resize(size, Image.Resampling.LANCZOS)


def test_clean_photo_has_no_artifact_and_is_eligible_where_large_enough():
    q = quality_signals(photo())
    assert q["artifacts"] == []
    assert q["eligible_256"] and q["eligible_512"] and q["eligible_1024"]
    small = quality_signals(photo((400, 266)))
    assert small["eligible_256"] and not small["eligible_512"] and not small["eligible_1024"]
    # the refusal says why, with the measure and the bound: sqrt(400 x 266) = 326.2 < 0.75 x 512
    assert small["refusal_256"] is None
    refusal = small["refusal_512"]
    assert refusal["reason"] == "too_small_for_stage" and refusal["score"] == 326.2 and refusal["threshold"] == 384
    assert refusal["details"]["short_side"] == 266 and small["refusal_1024"]["threshold"] == 768


def test_letterbox_bars_are_a_border_artifact():
    img = photo((800, 450))
    canvas = Image.new("RGB", (800, 800), (0, 0, 0))
    canvas.paste(img, (0, 175))
    q = quality_signals(canvas)
    assert q["border_fraction"] > 0.4 and "border" in q["artifacts"]


def test_extreme_aspect_and_too_small():
    assert "extreme_aspect" in quality_signals(photo((1200, 200)))["artifacts"]
    assert "too_small_for_256" in quality_signals(photo((150, 100)))["artifacts"]


def test_heavy_jpeg_blocking_is_detected_light_compression_is_not():
    img = photo()
    for quality, blocky in ((10, True), (90, False)):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        q = quality_signals(Image.open(buf).convert("RGB"))
        assert ("blocking" in q["artifacts"]) is blocky, (quality, q["blockiness"])


def test_soft_painterly_image_is_kept_and_eligible_everywhere():
    soft = photo((1280, 850)).filter(ImageFilter.GaussianBlur(6)).filter(ImageFilter.ModeFilter(5))
    q = quality_signals(soft)
    assert q["artifacts"] == []
    assert q["eligible_256"] and q["eligible_512"] and q["eligible_1024"]
    assert q["detail_loss_256"] < 0.02


def test_dense_fine_detail_is_too_complex_for_256_only():
    import numpy as np

    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (1024, 1024), dtype=np.uint8), "L").convert("RGB")
    q = quality_signals(noise, QualityConfig())
    assert q["detail_loss_256"] > QualityConfig().max_detail_loss
    assert not q["eligible_256"] and q["eligible_1024"]
    refusal = q["refusal_256"]
    assert refusal["reason"] == "detail_lost_at_stage" and refusal["threshold"] == QualityConfig().max_detail_loss
    assert refusal["score"] == round(q["detail_loss_256"], 4) and q["refusal_1024"] is None


def test_text_on_a_plain_background_is_not_a_border():
    from PIL import ImageDraw, ImageFont

    poster = Image.new("RGB", (768, 512), (15, 30, 80))
    draw = ImageDraw.Draw(poster)
    font = ImageFont.load_default(size=48)
    for i, line in enumerate(["Public Lecture", "The Hubble Deep Field", "Tuesday 7 pm"]):
        draw.text((60, 120 + 90 * i), line, fill=(255, 255, 255), font=font)
    q = quality_signals(poster)
    assert "border" not in q["artifacts"], q["border_fraction"]


def test_soft_image_at_high_jpeg_quality_is_not_blocky():
    soft = photo().filter(ImageFilter.GaussianBlur(4))
    buf = io.BytesIO()
    soft.save(buf, "JPEG", quality=85)
    q = quality_signals(Image.open(buf).convert("RGB"))
    assert "blocking" not in q["artifacts"], (q["blockiness"], q["blocking_excess"])


def _dense_receipt(width: int = 1600, height: int = 1200) -> Image.Image:
    from PIL import ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), (245, 245, 240))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=22)
    for row in range(38):
        draw.text((40, 20 + 30 * row), f"ITEM {row:02d}  ORGANIC OAT MILK 1L ........ 2.49 EUR  x{row % 3 + 1}",
                  fill=(20, 20, 20), font=font)
    return img


def test_dense_small_text_is_too_complex_for_256_but_not_for_512():
    from curation.text_density import text_lines

    receipt = _dense_receipt()
    lines = text_lines(receipt)
    assert len(lines) >= 20
    q = quality_signals(receipt, QualityConfig(), lines)
    assert q["small_text_256"] > QualityConfig().max_small_text
    assert not q["eligible_256"] and q["eligible_512"] and q["eligible_1024"]
    refusal = q["refusal_256"]
    assert refusal["reason"] == "text_illegible_at_stage" and refusal["score"] == round(q["small_text_256"], 4)
    assert refusal["threshold"] == QualityConfig().max_small_text


def test_large_text_and_photos_stay_eligible_at_256():
    from curation.text_density import text_lines

    poster = Image.new("RGB", (768, 512), (15, 30, 80))
    from PIL import ImageDraw, ImageFont

    ImageDraw.Draw(poster).text((40, 200), "OPEN 24 HOURS", fill=(255, 255, 255), font=ImageFont.load_default(size=72))
    for img in (poster, photo()):
        q = quality_signals(img, QualityConfig(), text_lines(img))
        assert q["eligible_256"] and q["small_text_256"] <= 0.005


def test_stage_refusal_orders_reasons_and_lists_every_failed_check():
    from curation.quality import stage_refusal

    config = QualityConfig()
    assert stage_refusal(2000, 1500, 0.1, 0.0, 256, config) is None
    both = stage_refusal(300, 200, 0.9, 0.2, 512, config)  # too small, illegible text and lost detail at once
    assert both["reason"] == "too_small_for_stage"
    assert [f["reason"] for f in both["details"]["failed"]] == ["too_small_for_stage", "text_illegible_at_stage",
                                                                "detail_lost_at_stage"]
    text_and_detail = stage_refusal(2000, 1500, 0.9, 0.2, 256, config)
    assert text_and_detail["reason"] == "text_illegible_at_stage" and text_and_detail["score"] == 0.2
    # the largest stage takes any complexity, but not a small image
    assert stage_refusal(2000, 1500, 0.9, 0.2, 1024, config) is None
    assert stage_refusal(700, 700, 0.0, None, 1024, config)["reason"] == "too_small_for_stage"
