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


def test_the_cheap_bound_never_undercuts_the_agreement_it_skips(monkeypatch):
    # the bound decides when the residual maps are not computed: were it ever below the exact share of agreeing
    # cells, a copy could be rejected unseen. Measure both on every hypothesis of copies and of distinct pictures.
    import curation.dedup_verify as dv

    seen: list[tuple[float, float]] = []
    real_bound, real_agreement = dv._agreement_bound, dv._agreement
    last: dict[str, float] = {}

    def bound_spy(*args, **kwargs):
        last["bound"] = real_bound(*args, **kwargs)
        return 1.0  # never skip: the exact share is computed for comparison

    def agreement_spy(*args, **kwargs):
        last.clear()
        agree, structured, overlap = real_agreement(*args, **kwargs)
        if "bound" in last:
            seen.append((last["bound"], agree))
        return agree, structured, overlap

    monkeypatch.setattr(dv, "_agreement_bound", bound_spy)
    monkeypatch.setattr(dv, "_agreement", agreement_spy)
    items = list(generate(per_kind=1, seed=21, copies_per_original=len(COPY_KINDS)))
    originals = {it.group: picture(it.data) for it in items if it.copy == "original"}
    for it in items:
        if it.copy != "original":
            same_picture(originals[it.group], picture(it.data))
    for a, b in combinations(list(originals.values()), 2):
        same_picture(a, b)
    assert len(seen) > 50
    assert all(bound >= agree - 1e-9 for bound, agree in seen), [s for s in seen if s[0] < s[1]][:5]
    assert any(bound < 0.2 for bound, _ in seen)  # and it does skip work on distinct pairs
