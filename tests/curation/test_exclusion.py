"""One image in, every exclusion signal and at most one drop decision out."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from curation.exclusion import ExclusionConfig, assess, exclusion_schema
from curation.image_io import ProbeLimits, probe_image
from tests.conftest import encode
from tests.curation.test_provenance import pki  # noqa: F401 - a fixture used below

PHOTO = Path(__file__).resolve().parents[2] / "examples" / "corpus" / "photos" / "chelsea.jpg"
A1111 = "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512"


def run(data: bytes, nsfw: float = 0.01, config: ExclusionConfig | None = None):
    config = config or ExclusionConfig()
    facts = probe_image(data, ProbeLimits(min_side=1), with_metadata=True)
    return assess("id", "uri", data, facts.format, {"embedded": facts.metadata, "sidecar": {}}, nsfw, None, config)


def photo() -> Image.Image:
    return Image.open(PHOTO).convert("RGB")


def test_clean_photo_is_kept_with_every_signal_recorded():
    row, decision = run(PHOTO.read_bytes())
    assert decision is None and not row["excluded"] and row["ai_signals"] == []
    assert row["c2pa_present"] is False and row["watermark_bit_accuracy"] is not None
    assert row["eligible_256"] and set(exclusion_schema((256, 512, 1024)).names) <= set(row)


def test_generator_metadata_drops_with_the_signal_named():
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111)
    row, decision = run(encode(photo(), "PNG", pnginfo=info))
    assert row["ai_generated"] and decision.stage == "ai_image" and decision.reason == "ai_generated_metadata"
    assert decision.details["ai_signals"] == ["png_chunk:parameters(automatic1111)"]


def test_sdxl_watermark_drops():
    from imwatermark import WatermarkEncoder

    from curation.provenance import SDXL_WATERMARK_BITS

    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", SDXL_WATERMARK_BITS)
    bgr = np.asarray(photo().resize((512, 340)))[:, :, ::-1]
    marked = Image.fromarray(np.ascontiguousarray(encoder.encode(np.ascontiguousarray(bgr), "dwtDct")[:, :, ::-1]))
    row, decision = run(encode(marked, "PNG"))
    assert decision is not None and decision.reason == "ai_generated_watermark", row["watermark_bit_accuracy"]
    assert decision.score >= 0.85


def test_nsfw_score_at_threshold_drops_below_keeps():
    data = PHOTO.read_bytes()
    assert run(data, nsfw=0.95)[1].reason == "nsfw"
    assert run(data, nsfw=0.5)[1] is None
    assert run(data, nsfw=0.5, config=ExclusionConfig(nsfw_threshold=0.4))[1].stage == "nsfw"


def test_artifacts_drop_unless_disabled_and_every_reason_is_kept():
    canvas = Image.new("RGB", (800, 800), (0, 0, 0))
    canvas.paste(photo().resize((800, 450)), (0, 175))
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111)
    row, decision = run(encode(canvas, "PNG", pnginfo=info), nsfw=0.9)
    assert decision.stage == "ai_image"  # first reason wins the stage ...
    assert row["exclusion_reasons"] == ["ai_generated_metadata", "nsfw", "border"]  # ... all are recorded
    row, decision = run(encode(canvas, "PNG"), config=ExclusionConfig(drop_artifacts=False))
    assert decision is None and row["artifacts"] == ["border"]


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "CMYK"])
def test_odd_modes_do_not_crash(mode):
    img = photo().convert(mode)
    data = encode(img, "JPEG" if mode == "CMYK" else "PNG")
    row, _ = run(data)
    assert isinstance(row["ai_generated"], bool)
    buf = io.BytesIO(data)
    assert Image.open(buf).mode == mode


def test_c2pa_generation_drops_valid_and_tampered_apart(pki):  # noqa: F811 - the fixture of test_provenance
    from tests.curation.test_provenance import IPTC, sign

    data = sign(pki, PHOTO.read_bytes(), "image/jpeg", IPTC + "trainedAlgorithmicMedia")
    row, decision = run(data)
    assert row["c2pa_present"] and decision.reason == "ai_generated_c2pa"
    at = data.find(b"c2pa.created")
    tampered = data[:at] + b"c2pa.croated" + data[at + len(b"c2pa.created"):]
    row, decision = run(tampered)
    assert row["c2pa_validation"] == "Invalid" and decision.reason == "ai_generated_c2pa_invalid"
    untrained = sign(pki, PHOTO.read_bytes(), "image/jpeg", IPTC + "algorithmicMedia")
    assert run(untrained)[1] is None


def test_a_crashed_c2pa_reader_is_an_error_not_an_absent_manifest(monkeypatch):
    import curation.exclusion as exclusion

    def crash(data, mime):
        raise RuntimeError("reader exploded")

    monkeypatch.setattr(exclusion, "c2pa_signals", crash)
    row, decision = run(PHOTO.read_bytes())
    assert row["c2pa_present"] is None and "RuntimeError: reader exploded" in row["c2pa_error"]
    assert not row["excluded"]
    assert (decision.stage, decision.decision, decision.reason) == ("ai_image", "keep", "detector_error")
    assert decision.details == {"c2pa_error": row["c2pa_error"]}


def test_c2pa_reader_error_on_an_unsupported_container_is_recorded():
    row, decision = run(encode(photo(), "BMP"))
    assert row["c2pa_present"] is None and "unsupported" in row["c2pa_error"]
    assert decision.reason == "detector_error" and "c2pa_error" in decision.details


def test_a_crashed_watermark_decoder_is_an_error_and_rides_on_a_drop(monkeypatch):
    import curation.exclusion as exclusion

    def crash(rgb):
        raise MemoryError("decoder out of memory")

    monkeypatch.setattr(exclusion, "sdxl_watermark", crash)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111)
    row, decision = run(encode(photo(), "PNG", pnginfo=info))
    assert row["watermark_bit_accuracy"] is None and "MemoryError" in row["watermark_error"]
    assert decision.decision == "drop" and decision.reason == "ai_generated_metadata"
    assert decision.details["watermark_error"] == row["watermark_error"]


def test_watermark_decoder_that_cannot_run_says_why():
    row, decision = run(encode(photo().resize((240, 200)), "PNG"))  # below the transform's 256 x 256 pixels
    assert row["watermark_bit_accuracy"] is None and "too small for the watermark transform" in row["watermark_error"]
    assert decision is not None and decision.details["watermark_error"] == row["watermark_error"]


def test_clean_photo_has_no_detector_error():
    row, decision = run(PHOTO.read_bytes())
    assert decision is None and row["c2pa_error"] is None and row["watermark_error"] is None
    assert row["stealth_error"] is None
