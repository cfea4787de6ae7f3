"""Prose captions: subject from cleaned metadata, no labels/stems/credits, the same clean-up for VLM output."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from captioning.captioner import CaptionerConfig, CaptionInput, extract_caption_metadata, load_captioner
from captioning.checks import caption_problems
from captioning.prose import (
    FIELD_LABEL_RE,
    character_clauses,
    class_label,
    clean_description,
    clean_vlm_caption,
    compose_grounded_caption,
    humanize_stem,
    is_file_stem,
    is_name,
    metadata_entities,
)
from captioning.visual_facts import VisualFacts, plain_background, visual_facts
from tests.captioning.conftest import solid

FACTS = VisualFacts(64, 64, "square", False, 0.5, None, (("light grey", 0.5), ("red", 0.3)))


def _caption(sidecar: dict, uri: str = "file:///drop/x.jpg", **kwargs) -> str:
    return compose_grounded_caption(FACTS, extract_caption_metadata({"sidecar": sidecar}, uri), [], uri,
                                    **kwargs).caption


def test_file_stems_class_labels_and_names():
    for stem in ("backpack_dog", "dog2", "cat2__02", "IMG_1234.JPG", "astronaut", "hubble_deep_field"):
        assert is_file_stem(stem), stem
    for title in ("Golden Pavilion", "Diner sign", "Sunset", "Lecture poster"):
        assert not is_file_stem(title), title
    assert is_file_stem("Chelsea", "file:///d/chelsea.jpg")  # equal to the file's stem
    assert humanize_stem("pink_sunglasses__00") == "pink sunglasses" and humanize_stem("dog2") == "dog"
    assert class_label("class: backpack") == "backpack" and class_label("Label = red car.") == "red car"
    assert class_label("A backpack on a bench") is None
    assert is_name("Golden Pavilion") and is_name("The Harvest") and is_name("Jean-François Millet")
    assert not is_name("Harbour at dusk") and not is_name("backpack_dog") and not is_name(None)


def test_descriptions_lose_boilerplate_credits_and_stems():
    assert clean_description("Color image of the astronaut Eileen Collins.") == "the astronaut Eileen Collins."
    assert clean_description("a photo of a dog (dog2__00)") == "a dog"
    assert clean_description('Gray-level "camera" image.') == "Gray-level 'camera' image."
    assert clean_description("A red fox in snow. Photo by Jane Doe. All rights reserved.") == "A red fox in snow."
    assert clean_description("Sunrise over Lisbon (credit: https://unsplash.com/@x) CC-BY 4.0") == (
        "Sunrise over Lisbon")
    assert clean_description("Title: Harbour at dusk") == "Harbour at dusk"
    for junk in ("class: dog", "https://example.org/p/1", "© 2020", "IMG_1234.JPG"):
        assert clean_description(junk) is None, junk


@pytest.mark.parametrize("sidecar, subject", [
    # the examples: a labelled title and description become one subject; stems and class labels go
    ({"title": "astronaut", "caption": "Color image of the astronaut Eileen Collins."},
     "The astronaut Eileen Collins."),
    ({"title": "backpack", "caption": "class: backpack"}, "A backpack."),
    ({"title": "backpack_dog", "caption": "class: backpack"}, "A backpack."),  # stem head 'dog' is not the class
    ({"title": "berry_bowl", "caption": "class: bowl"}, "A berry bowl."),  # stem refines the class
    ({"title": "pink_sunglasses", "caption": "class: glasses"}, "Pink sunglasses."),
    ({"title": "grass"}, "Grass."),
    ({"title": "Diner sign"}, "Diner sign."),
    ({"title": "Golden Pavilion", "alt": "A gold temple by a pond"}, "Golden Pavilion, a gold temple by a pond."),
    ({"title": "Harbour at dusk", "caption": "Boats at dusk.", "description": "Fishing boats in Honfleur."},
     "Boats at dusk. Fishing boats in Honfleur."),
    ({"caption": "Boats at dusk.", "description": "boats at dusk"}, "Boats at dusk."),  # nothing new: once
])
def test_subject_first_from_the_best_metadata_text(sidecar, subject):
    caption = _caption(sidecar)
    assert caption == f"{subject} A square colour image, mostly light grey with red.", caption
    assert not FIELD_LABEL_RE.search(caption) and "_" not in caption and "class" not in caption


def test_no_subject_no_stem_and_names_are_entities():
    assert _caption({"title": "hubble_deep_field"}) == "A square colour image, mostly light grey with red."
    meta = extract_caption_metadata({"sidecar": {"title": "Golden Pavilion", "caption": "Kinkaku-ji in autumn.",
                                                 "location": "Kyoto, Japan", "date": "2019-11-03",
                                                 "credit": "Jane Doe"}})
    composed = compose_grounded_caption(FACTS, meta, ["金閣寺"])
    assert composed.caption == ('Golden Pavilion, Kinkaku-ji in autumn. The visible text reads "金閣寺". '
                                "A square colour image, mostly light grey with red. "
                                "Made in Kyoto, Japan, on 3 November 2019.")
    assert composed.entities == ["Golden Pavilion", "Kyoto, Japan"]
    assert composed.facts == ["subject", "text", "format", "palette", "place", "date"]
    assert "creator" not in composed.used and "Jane" not in composed.caption  # credits stay in the metadata
    credited = compose_grounded_caption(FACTS, meta, [], credit=True)
    assert credited.caption.endswith(" Image by Jane Doe.") and credited.entities[-1] == "Jane Doe"
    url_credit = extract_caption_metadata({"sidecar": {"credit": "(credit: https://u.com/@a)"}})
    bare = compose_grounded_caption(FACTS, url_credit, [], credit=True)
    assert "credit" not in bare.caption.lower()  # a URL credit is never written out


def test_grounded_captioner_credit_is_configurable():
    inp = CaptionInput("a", solid(40, 40, (200, 30, 30)), [], {"sidecar": {"title": "Diner sign", "artist": "Jane Doe",
                                                                           "licence": "CC-BY-4.0"}})
    plain = load_captioner(CaptionerConfig()).caption_batch([inp])[0]
    assert plain.caption.startswith("Diner sign. A square colour image") and "Jane" not in plain.caption
    assert "CC-BY" not in plain.caption
    credited = load_captioner(CaptionerConfig(credit_in_caption=True)).caption_batch([inp])[0]
    assert credited.caption.endswith("Image by Jane Doe.") and "Jane Doe" in credited.inputs["entities"]


def test_vlm_captions_get_the_same_rules():
    raw = ('**The image shows** a diner at night. Title: "Diner". The neon sign reads "OPEN 24 HOURS". '
           "Photo by Jane Doe, licensed under CC-BY 4.0. Source: https://example.org/x. backpack_dog is visible.")
    cleaned = clean_vlm_caption(raw, ["OPEN 24 HOURS"])
    assert cleaned == ('A diner at night. Diner. The neon sign reads "OPEN 24 HOURS".')
    assert not FIELD_LABEL_RE.search(cleaned) and "Jane" not in cleaned and "http" not in cleaned
    # OCR text is never touched, even when it looks like a label, a credit or a file name
    assert clean_vlm_caption('The sign reads "Credit: IMG_01.jpg".', ["Credit: IMG_01.jpg"]) == (
        'The sign reads "Credit: IMG_01.jpg".')
    assert clean_vlm_caption("Credit: Jane Doe.") == ""
    assert clean_vlm_caption("A fox. Photo by Jane Doe.", credit=True) == "A fox. Photo by Jane Doe."
    assert metadata_entities("The Golden Pavilion in Kyoto.", {"title": "Golden Pavilion", "place": "Kyoto",
                                                               "creator": "Jane Doe"}) == ["Golden Pavilion", "Kyoto"]
    assert metadata_entities("A temple.", {"title": "Golden Pavilion"}) == []  # only names the caption holds


DIRTY_VLM_OUTPUTS = [
    ('Title: "backpack". Description: A red backpack on a bench. Credit: Jane Doe.',
     "Backpack. A red backpack on a bench."),
    ("**Caption:** A dog on grass.\n- Tags: dog, grass\n- License: CC BY-SA 4.0", "A dog on grass."),
    ("A photograph of a cat (photo by John Smith / Unsplash). The file name is cat__04.jpg.",
     "A photograph of a cat."),
    ("class: backpack. A backpack on a wooden floor.", "Backpack. A backpack on a wooden floor."),
    ("The image shows a clock. Image courtesy of the Met Museum. © 2020 Someone. All rights reserved.", "A clock."),
    ("Here is a caption: A teapot on a dark table, shot by @laurachouette, https://unsplash.com/photos/x.",
     "A teapot on a dark table."),
    ('A poster that reads "Photo by Jane", pinned to a wall. Photographer: Jane Doe.',
     'A poster that reads "Photo by Jane", pinned to a wall.'),
    ("Keywords: beach, sunset. A beach at sunset. Source: Flickr.", "A beach at sunset."),
    ("A bowl of berries IMG_1234 on a white cloth, label: bowl.", "A bowl of berries on a white cloth."),
    ("Untitled. A grey stone wall.", "A grey stone wall."),
]


@pytest.mark.parametrize(("raw", "expected"), DIRTY_VLM_OUTPUTS)
def test_vlm_clean_up_meets_the_caption_check(raw, expected):
    # the rules of the grounded prose, applied to what a VLM writes anyway: the same check the `captions` asset runs
    # finds nothing left, and the visible text (OCR) survives verbatim even when it reads like a credit
    ocr = ["Photo by Jane"] if "Photo by Jane" in raw else []
    cleaned = clean_vlm_caption(raw, ocr)
    assert cleaned == expected
    assert caption_problems(cleaned, ocr) == []
    assert caption_problems(raw, ocr) != []  # the check does fail on the raw output
    # with credits allowed, labels, stems and placeholders still go
    assert caption_problems(clean_vlm_caption(raw, ocr, credit=True), ocr, credit_allowed=True) == []


def test_plain_background_is_measured_not_guessed():
    img = Image.new("RGB", (80, 80), (255, 255, 255))
    img.paste((200, 20, 20), (20, 20, 60, 60))
    facts = visual_facts(img)
    assert facts.background == "white"
    assert compose_grounded_caption(facts, extract_caption_metadata({}), []).caption == (
        "A bright square colour image, mostly red, on a plain white background; warm tones, high contrast, red in the "
        "centre, smooth tones throughout.")  # white around the edges: already said by the background
    assert visual_facts(solid(80, 80, (255, 255, 255))).background is None  # all white: no figure, no background
    noisy = Image.effect_noise((80, 80), 120).convert("RGB")
    assert visual_facts(noisy).background is None
    assert plain_background(__import__("numpy").zeros((3, 3), dtype=int)) is None  # too small to tell


def test_light_colour_and_layout_are_measured_and_said_only_where_they_stand_out():
    halves = Image.new("RGB", (96, 64), (255, 255, 255))
    halves.paste((0, 0, 0), (0, 32, 96, 64))
    f = visual_facts(halves)
    assert (f.contrast_label, f.lighter_side, f.top_bottom, f.saturation_label, f.tones) == (
        "high", "top", ("white", "black"), None, None)  # black-and-white: no saturation or tones to name
    figure = Image.new("RGB", (80, 80), (10, 20, 90))
    figure.paste((220, 30, 30), (25, 25, 55, 55))
    f = visual_facts(figure)
    assert (f.background, f.centre_colour, f.saturation_label, f.tones) == ("dark blue", ("red", "dark blue"),
                                                                            "vivid", "cool")
    assert character_clauses(f) == ("Vivid colours, cool tones, red in the centre, smooth tones throughout.",
                                    ["saturation", "tones", "centre", "texture"])  # the edges: the background
    checker = np.where((np.indices((64, 64)).sum(0) % 2)[..., None], 140, 110).repeat(3, -1).astype(np.uint8)
    f = visual_facts(Image.fromarray(checker))
    assert (f.texture, f.contrast_label) == ("fine", "low")  # many small steps, little overall range
    assert visual_facts(solid(40, 40, (153, 140, 132))).saturation_label == "muted"
    side = Image.new("RGB", (96, 64), (250, 240, 60))
    side.paste((200, 30, 20), (48, 0, 96, 64))
    f = visual_facts(side)
    assert (f.lighter_side, f.tones, f.saturation_label) == ("left", "warm", "vivid")
    # an ordinary photo-like image with nothing extreme gets no character sentence at all: no filler
    plain = VisualFacts(64, 64, "square", False, 0.5, None, (("grey", 0.6),), contrast=0.2, saturation=0.3)
    assert character_clauses(plain) == ("", [])


def test_character_facts_follow_the_palette_in_the_caption():
    facts = VisualFacts(64, 48, "landscape", False, 0.8, "bright", (("white", 0.6), ("red", 0.3)), None, 0.3,
                        "high", "top", 0.6, "vivid", "warm", ("red", "white"), ("white", "red"), "fine")
    composed = compose_grounded_caption(facts, extract_caption_metadata({"sidecar": {"caption": "A barn."}}), [])
    assert composed.caption == (
        "A barn. A bright landscape colour image, mostly white with red; vivid colours, warm tones, high contrast, a "
        "lighter top half, red in the centre, white around the edges, white at the top, red at the bottom, fine "
        "texture throughout.")
    assert composed.facts == ["subject", "format", "palette", "saturation", "tones", "contrast", "lighter_side",
                              "centre", "edges", "top", "bottom", "texture"]
    assert caption_problems(composed.caption) == []
