"""Same-picture verification on thumbnails: every kind of near-copy is the same picture, distinct pictures that
share a kind (and the features that fool an embedding: flat colour, one chrome, one font) are not."""

from __future__ import annotations

import io
from itertools import combinations

from PIL import Image, ImageOps

from curation.dedup_verify import Picture, encode_thumbnail, same_picture
from tests.curation.art_devset import COPY_KINDS, KINDS, generate


def picture(data: bytes) -> Picture:
    with Image.open(io.BytesIO(data)) as img:
        return Picture(encode_thumbnail(img.convert("RGB")))


def test_every_copy_kind_of_every_picture_kind_verifies():
    items = list(generate(per_kind=2, seed=11, copies_per_original=len(COPY_KINDS)))
    originals = {it.group: picture(it.data) for it in items if it.copy == "original"}
    missed = [it.name for it in items if it.copy != "original"
              and not same_picture(originals[it.group], picture(it.data)).same]
    assert not missed
    assert {it.kind for it in items} == set(KINDS)


def test_distinct_pictures_of_one_kind_are_not_the_same():
    items = [it for it in generate(per_kind=5, seed=12) if it.copy == "original"]
    pics = [(it.kind, picture(it.data)) for it in items]
    same = [(a, b) for (ka, a), (kb, b) in combinations(pics, 2) if ka == kb and same_picture(a, b).same]
    assert not same


def test_a_verdict_carries_its_evidence_and_flips_are_found():
    item = next(it for it in generate(per_kind=1, seed=13) if it.kind == "ui")
    with Image.open(io.BytesIO(item.data)) as img:
        flipped = ImageOps.mirror(img.convert("RGB"))
    buf = io.BytesIO()
    flipped.save(buf, "PNG")
    verdict = same_picture(picture(item.data), picture(buf.getvalue()))
    assert verdict.same and verdict.mirrored
    details = verdict.details()
    assert details["agreement"] >= 0.8 and "same" not in details and details["method"] != "none"
