"""Issue 14 item 3: generator metadata is found in every encoding the tools use, through PNG, JPEG and WebP
(`tests/curation/ai_metadata_devset.py` builds the files), and camera/editor metadata is not mistaken for it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from curation.ai_metadata import metadata_signals, stealth_signals
from curation.image_io import ProbeLimits, probe_image
from tests.curation.ai_metadata_devset import A1111, A1111_JA, cases, negatives, real_payloads

AI_DEV = Path(__file__).resolve().parents[3] / "shared" / "data" / "ai_dev"
LABEL = {"automatic1111": "(automatic1111)", "sdnext": "(sdnext)", "comfyui": "(comfyui)", "swarmui": "(swarmui)",
         "fooocus": "(fooocus)", "invokeai": "(invokeai)", "novelai": "(novelai)", "xmp": "xmp:",
         "stealth": "stealth:"}


def detect(data: bytes) -> tuple[list[str], dict]:
    facts = probe_image(data, ProbeLimits(min_side=1), with_metadata=True)
    found = metadata_signals({"embedded": facts.metadata or {}, "sidecar": {}})
    img = Image.open(io.BytesIO(data))
    img.load()
    if img.mode in ("RGB", "RGBA"):
        found += stealth_signals(img)
    return found, facts.metadata or {}


@pytest.fixture(scope="module")
def dev():
    return cases()


def test_every_encoding_through_every_format_is_found_and_named(dev):
    assert len(dev) >= 130 and {c.fmt for c in dev} == {"PNG", "JPEG", "WEBP"}
    missed = []
    for c in dev:
        found = detect(c.data)[0]
        if not any(LABEL[c.tool] in s for s in found):
            missed.append((c.tool, c.encoding, c.fmt, found))
    assert missed == []


def test_user_comment_text_is_decoded_exactly_in_every_charset_ifd_and_byte_order(dev):
    for case in dev:
        if not case.encoding.startswith("exif:UserComment[") or case.tool != "automatic1111":
            continue
        _, metadata = detect(case.data)
        want = A1111_JA if "japanese" in case.encoding else A1111
        if "[ascii" in case.encoding:
            want = want.encode("ascii", "replace").decode()
        comments = [v for k, v in metadata["exif"].items() if k.endswith("UserComment")]
        assert want in comments, (case.encoding, case.fmt, comments)


def test_camera_and_editor_metadata_are_not_generators():
    for case in negatives():
        found, _ = detect(case.data)
        assert found == [], (case.encoding, case.fmt, found)


def test_same_tag_in_ifd0_and_exif_ifd_keeps_both():
    from tests.curation.ai_metadata_devset import UNDEFINED, USER_COMMENT, base_image, exif_block, save, user_comment

    block = exif_block({USER_COMMENT: (UNDEFINED, user_comment("holiday", "ascii"))},
                       {USER_COMMENT: (UNDEFINED, user_comment(A1111, "unicode-be"))})
    found, metadata = detect(save(base_image(), "JPEG", exif=block))
    assert metadata["exif"]["UserComment"] == "holiday" and metadata["exif"]["ExifIFD.UserComment"] == A1111
    assert "exif:ExifIFD.UserComment(automatic1111)" in found


@pytest.mark.skipif(not AI_DEV.is_dir(), reason="../shared/data/ai_dev is not present")
def test_real_generator_payloads_through_every_encoding():
    payloads = real_payloads(AI_DEV)
    assert payloads is not None
    missed = [(c.tool, c.encoding, c.fmt) for c in cases(payloads) if not detect(c.data)[0]]
    assert missed == []
