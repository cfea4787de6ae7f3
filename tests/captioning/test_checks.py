"""The caption and variant checks fail on what issue 17 found in the demo and pass on what the code now writes."""

from __future__ import annotations

from captioning.checks import (
    caption_problems,
    check_caption_rows,
    check_variant_rows,
    summarize,
    text_problems,
    variant_problems,
)
from captioning.variants import VariantConfig, rewrite

OLD_CAPTION = ('A square colour image, mostly light grey, red and black. Title: "backpack_dog". '
               'Description: "class: backpack". Credit: Photos taken by Yuanzhen Li.')
NEW_CAPTION = "A backpack. A square colour image, mostly light grey with red and black."


def _categories(problems) -> set[str]:
    return {c for c, _ in problems}


def test_caption_checks_fail_on_the_old_labelled_captions():
    assert _categories(caption_problems(OLD_CAPTION)) >= {"field_label", "credit"}
    assert "file_stem" in _categories(caption_problems("A photo of backpack_dog."))
    assert "class_label" in _categories(caption_problems("A photo. class: backpack"))
    assert "placeholder" in _categories(caption_problems("Untitled. A square colour image."))
    assert "credit" in _categories(caption_problems("A fox. Licensed under CC-BY 4.0."))
    assert caption_problems("A fox. Photograph by Jane Doe.", credit_allowed=True) == []
    assert caption_problems(NEW_CAPTION) == []
    # visible text is exempt: a sign may well say "Title: IMG_0001.jpg"
    assert caption_problems('A sign. The visible text reads "Title: IMG_0001.jpg".', ["Title: IMG_0001.jpg"]) == []
    lost = caption_problems('A sign reading "0PEN".', ["OPEN"], ["Paris"])
    assert _categories(lost) == {"quoted_text_lost", "entity_lost"}
    assert caption_problems("") == []  # a failed caption is a decisions row, counted by the accounting check


def _row(v, quoted=(), entities=()) -> dict:
    return {"sample_id": "s" * 64, "tags": v.tags, "short": v.short, "medium": v.medium, "long": v.long,
            "long_is_distinct": v.long_is_distinct, "medium_note": v.medium_note, "quoted": list(quoted),
            "entities": list(entities)}


def test_variant_checks_fail_on_copies_labels_lengths_and_lost_text():
    caption = 'Diner sign. The visible text reads "OPEN 24 HOURS". A landscape colour image, mostly red with blue.'
    good = _row(rewrite(caption, ["OPEN 24 HOURS"]), ["OPEN 24 HOURS"])
    assert variant_problems(good) == []
    # the demo before issue 17: medium and long identical, a labelled short, sentence tags
    old = dict(good, medium=caption, long=caption)
    assert "identical" in _categories(variant_problems(old))
    labelled = dict(good, short='A square colour image, Title: "backpack"')
    assert {"field_label", "quoted_text_lost"} <= _categories(variant_problems(labelled))
    sentence_tags = dict(good, tags='"OPEN 24 HOURS", color image of the astronaut eileen collins')
    assert "tags_sentence" in _categories(variant_problems(sentence_tags))
    too_long = dict(good, short='Diner sign with "OPEN 24 HOURS" in red and blue neon letters over a landscape')
    assert "length" in _categories(variant_problems(too_long))
    lost = dict(good, medium="Diner sign in red and blue. A landscape colour image.")
    assert "quoted_text_lost" in _categories(variant_problems(lost))
    flag = dict(good, long="")
    assert "long_flag" in _categories(variant_problems(flag))


def test_a_caption_without_a_distinct_long_is_not_a_copy():
    v = rewrite("A black cat.")
    row = _row(v)
    assert not v.long_is_distinct and variant_problems(row) == []
    copy = dict(row, long=v.medium)
    assert "long_flag" in _categories(variant_problems(copy))


def test_row_checks_summarise_for_the_asset_check():
    caption_rows = [{"sample_id": "a" * 64, "caption": NEW_CAPTION, "quoted": [], "entities": []},
                    {"sample_id": "b" * 64, "caption": OLD_CAPTION, "quoted": [], "entities": []}]
    passed, meta = check_caption_rows(caption_rows)
    assert not passed and meta["rows"] == 2 and meta["failing_samples"] == 1
    assert meta["field_label"] >= 1 and meta["credit"] == 1 and meta["examples"].startswith("bbbbbbbbbbbb ")
    assert check_caption_rows(caption_rows[:1]) == (True, {"rows": 1, "failing_samples": 0, "examples": "-"})
    v = rewrite(NEW_CAPTION)
    passed, meta = check_variant_rows([_row(v)], VariantConfig())
    assert passed and meta["failing_samples"] == 0
    assert summarize([("x", [("length", "m")] * 9)], 1, examples=2)[1]["examples"].count("\n") == 1
    assert text_problems("plain words") == []
