"""Grounding checks and the grounded backend: deterministic, verbatim OCR, no invented entities, measured facts."""

from __future__ import annotations

import io
import json
import re

import pytest
from PIL import Image

from captioning import grounding
from captioning.captioner import (
    GROUNDED_MODEL,
    GROUNDED_VERSION,
    CaptionerConfig,
    CaptionInput,
    extract_caption_metadata,
    load_captioner,
)
from captioning.prose import FIELD_LABEL_RE
from captioning.visual_facts import classify_pixels, orientation_of, visual_facts
from curation.metadata import extract_metadata
from tests.captioning.conftest import solid, two_tone

# --- grounding checks -------------------------------------------------------------------------------------------


def test_required_ocr_lines_filters_by_score_normalises_and_dedups():
    lines, omitted = grounding.required_ocr_lines(
        [("OPEN", 0.98), ("  9 to   5 ", 0.9), ("xq#", 0.2), ("OPEN", 0.95), ("", 0.99), ("Sale", 0.5)], 0.5)
    assert lines == ["OPEN", "9 to 5", "Sale"] and omitted == []
    lines, omitted = grounding.required_ocr_lines([("a", 1.0), ("b", 1.0), ("c", 1.0)], 0.5, max_lines=2)
    assert lines == ["a", "b"] and omitted == ["c"]


@pytest.mark.parametrize("text", [
    "the cat sat on the mat and the cat sat on the mat and the cat sat on the mat and the cat sat on the mat.",
    "A red wall, a red wall, a red wall, a red wall.",
    "ab" * 200 + ".",
])
def test_repetitive_captions_are_detected(text):
    issue = grounding.check_caption(text)
    assert issue is not None and issue.reason == grounding.CAPTION_REPETITIVE


def test_ordinary_prose_and_repeated_ocr_text_are_not_repetitive():
    prose = ("A landscape photograph of a red brick wall under a pale sky, with a green door on the left and a "
             "bicycle leaning against it. The visible text reads \"OPEN\".")
    assert grounding.repetition(prose) is None
    poster = 'A poster whose text reads "grass grass grass grass grass grass".'
    assert grounding.repetition(poster) is not None  # without knowing the OCR text it is a loop ...
    assert grounding.check_caption(poster, ["grass grass grass grass grass grass"]) is None  # ... with it, quoted


@pytest.mark.parametrize("text", ["I'm sorry, but I can't help with identifying people in images.",
                                  "As an AI, I cannot see images.", "I am unable to describe this image."])
def test_refusals(text):
    assert grounding.check_caption(text).reason == grounding.CAPTION_REFUSAL


def test_content_filter_is_a_refusal():
    issue = grounding.check_caption("A photograph of", finish_reason="content_filter")
    assert issue.reason == grounding.CAPTION_REFUSAL


def test_refusal_words_inside_the_ocr_text_or_quotes_are_not_refusals():
    caption = 'A handwritten note that says "I\'m sorry I cannot come".'
    assert grounding.check_caption(caption, ["I'm sorry I cannot come"]) is None
    assert grounding.is_refusal('A banner reading "As an AI researcher".') is None


def test_truncated_and_empty():
    assert grounding.check_caption("A photograph of a dog running across a").reason == grounding.CAPTION_TRUNCATED
    assert grounding.check_caption("A dog.", finish_reason="length").reason == grounding.CAPTION_TRUNCATED
    assert grounding.check_caption('A sign reads "ST').reason == grounding.CAPTION_TRUNCATED
    assert grounding.check_caption('A sign that reads "STOP".') is None
    for empty in ("", "   ", None, "..."):
        assert grounding.check_caption(empty).reason == grounding.CAPTION_EMPTY


def test_missing_ocr_text_is_verbatim_and_case_sensitive():
    caption = 'A shop front with a sign that reads "Open" and opening hours "9 to  5".'
    issue = grounding.check_caption(caption, ["OPEN", "9 to 5"])
    assert issue.reason == grounding.CAPTION_MISSING_OCR_TEXT and issue.missing == ("OPEN",)
    assert grounding.check_caption(caption, ["OPEN", "9 to 5"], require_ocr=False) is None
    repaired = grounding.append_missing_ocr(caption, issue.missing)
    assert repaired.endswith('The visible text reads "OPEN".')
    assert grounding.missing_ocr_lines(repaired, ["OPEN", "9 to 5"]) == []


def test_check_order_prefers_repetition_over_truncation():
    looping = "a tree a tree a tree a tree a tree a tree"
    assert grounding.check_caption(looping, finish_reason="length").reason == grounding.CAPTION_REPETITIVE


# --- visual facts -----------------------------------------------------------------------------------------------


def test_orientation():
    assert orientation_of(120, 60) == "landscape"
    assert orientation_of(60, 120) == "portrait"
    assert orientation_of(100, 103) == "square"


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (80, 40), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: displayed as portrait
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    assert visual_facts(Image.open(io.BytesIO(buf.getvalue()))).orientation == "portrait"


@pytest.mark.parametrize("rgb,name", [
    ((220, 20, 20), "red"), ((34, 90, 34), "dark green"), ((40, 180, 40), "green"), ((120, 70, 30), "brown"),
    ((30, 60, 200), "blue"), ((10, 20, 90), "dark blue"), ((240, 220, 30), "yellow"), ((245, 140, 20), "orange"),
    ((250, 170, 190), "pink"), ((130, 40, 170), "purple"), ((250, 250, 250), "white"), ((128, 128, 128), "grey"),
    ((5, 5, 5), "black"), ((20, 160, 160), "teal"),
])
def test_colour_names(rgb, name):
    facts = visual_facts(solid(32, 32, rgb))
    assert facts.colours[0][0] == name and facts.colours[0][1] == pytest.approx(1.0)


def test_dominant_colours_greyscale_and_brightness():
    facts = visual_facts(two_tone(120, 60, (120, 70, 30), (34, 90, 34), 0.3))
    assert facts.orientation == "landscape" and not facts.greyscale
    assert [name for name, _ in facts.colours] == ["dark green", "brown"]
    assert facts.colours[0][1] == pytest.approx(0.7, abs=0.05)
    grey = visual_facts(solid(40, 90, (200, 200, 200), "L"))
    assert grey.greyscale and grey.orientation == "portrait" and grey.brightness_label == "bright"
    assert visual_facts(solid(50, 50, (10, 10, 40))).brightness_label == "dark"
    # a faintly tinted black-and-white scan is still black-and-white
    assert visual_facts(solid(50, 50, (128, 126, 130))).greyscale


def test_classify_pixels_is_vectorised():
    import numpy as np

    names = classify_pixels(np.zeros((4, 5, 3), dtype=np.float32))
    assert names.shape == (4, 5)


# --- the grounded backend ---------------------------------------------------------------------------------------


def _jpeg_with_metadata() -> Image.Image:
    img = two_tone(160, 90, (120, 70, 30), (34, 90, 34), 0.3)
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    exif[0x0110] = "Canon EOS R5"
    exif[0x010E] = "OLYMPUS DIGITAL CAMERA"  # a camera default, never a description
    exif.get_ifd(0x8769)[0x9003] = "2021:10:12 09:30:00"
    exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 24.0, 15.0), 3: "E", 4: (2.0, 42.0, 0.0)})
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif, quality=95)
    return Image.open(io.BytesIO(buf.getvalue()))


def _metadata(img: Image.Image, sidecar: dict) -> dict:
    # exactly what ingest stores in `source_images.metadata`
    return json.loads(json.dumps({"embedded": extract_metadata(img), "sidecar": sidecar}))


def test_grounded_caption_composes_facts_metadata_and_ocr():
    img = _jpeg_with_metadata()
    sidecar = {"title": "Forest path", "caption": "A path through the woods of Fontainebleau in autumn.",
               "tags": ["forest", "autumn"], "location": "Fontainebleau, France", "licence": "CC0"}
    inp = CaptionInput("s1", img, [("SENTIER", 0.97), ("blurry", 0.2)], _metadata(img, sidecar), "file:///d/a.jpg")
    captioner = load_captioner(CaptionerConfig())
    captioner.setup()
    [result] = captioner.caption_batch([inp])
    # subject, visible text, pixels, place and date: prose, no labels, no camera model, no licence
    assert result.caption == (
        'A path through the woods of Fontainebleau in autumn. The visible text reads "SENTIER". '
        "A landscape colour photograph, mostly dark green with brown; vivid colours, low contrast, smooth tones "
        "throughout. Taken in Fontainebleau, France, on 12 October 2021.")
    assert (result.backend, result.model, result.prompt_version, result.attempts, result.failure) == (
        "grounded", GROUNDED_MODEL, GROUNDED_VERSION, 1, None)
    assert result.inputs["ocr_lines"] == ["SENTIER"] and result.inputs["ocr_lines_below_min_score"] == 1
    assert result.inputs["metadata_fields"] == ["exif.DateTimeOriginal", "exif.Make", "exif.Model", "sidecar.caption",
                                                "sidecar.location"]
    assert result.inputs["entities"] == ["Fontainebleau, France"]
    assert result.inputs["facts"] == ["subject", "text", "format", "palette", "saturation", "contrast", "texture",
                                      "place", "date"]
    assert not FIELD_LABEL_RE.search(result.caption) and "Canon" not in result.caption
    assert result.inputs["visual_facts"]["orientation"] == "landscape"
    assert "blurry" not in result.caption and "OLYMPUS" not in result.caption
    assert grounding.check_caption(result.caption, result.inputs["ocr_lines"]) is None
    json.dumps(result.to_record())


def test_grounded_caption_is_deterministic_and_invents_no_entities():
    img = two_tone(64, 96, (250, 250, 250), (10, 20, 90), 0.5)
    inputs = [CaptionInput("a", img, [("Grand Opening", 0.9), ("Sat 10am", 0.8)], {}),
              CaptionInput("b", solid(30, 30, (128, 128, 128), "L"), [], {"sidecar": {}, "embedded": {}})]
    captioner = load_captioner(CaptionerConfig(backend="grounded"))
    first = captioner.caption_batch(inputs)
    assert [r.to_record() for r in first] == [r.to_record() for r in captioner.caption_batch(inputs)]
    # no subject in the metadata: the picture itself comes first, then its text
    assert first[0].caption == ("A portrait colour image, mostly white with dark blue; cool tones, high contrast, "
                                "a lighter left side, smooth tones throughout. "
                                'The visible text reads "Grand Opening" and "Sat 10am".')
    assert first[1].caption == "A square black-and-white image, mostly grey; low contrast, smooth tones throughout."
    # every capitalised word of a grounded caption comes from its fixed vocabulary, the OCR text or the metadata
    allowed = {"A", "An", "The", "Taken", "Made"}
    for result, inp in zip(first, inputs, strict=True):
        ocr_words = {w for text, _ in inp.ocr_lines for w in re.findall(r"\w+", text)}
        assert {w for w in re.findall(r"\b[A-Z]\w*", result.caption)} <= allowed | ocr_words
        assert result.inputs["metadata_fields"] == []


def test_grounded_skips_repetitive_sidecar_captions_and_camera_filenames():
    meta = extract_caption_metadata({"sidecar": {"title": "IMG_1234.JPG", "caption": "grass " * 300}},
                                    "file:///drop/IMG_1234.JPG")
    assert meta["title"] is None and meta["captions"] == []
    assert meta["skipped"] == {"sidecar.caption": "repetitive"}
    assert meta["source"] == "file:///drop/IMG_1234.JPG" and meta["fields"]["source"] == "source_uri"


def test_unreadable_image_is_a_recorded_failure_not_a_crash():
    class Broken:
        def getexif(self):
            raise OSError("image file is truncated")

    [result] = load_captioner(CaptionerConfig()).caption_batch([CaptionInput("x", Broken(), [], {})])  # type: ignore
    assert result.failure == grounding.CAPTION_BACKEND_ERROR and "truncated" in result.failure_detail
    assert result.caption == ""
