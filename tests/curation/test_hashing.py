"""Perceptual hashes: stable under re-encoding; the orientation search finds flips and rotations."""

from __future__ import annotations

import io
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageOps

from curation.hashing import hamming, hash_to_int, perceptual_hashes, to_bytes

PHOTO = Path(__file__).resolve().parents[2] / "examples" / "corpus" / "photos" / "chelsea.jpg"


def test_hash_to_int_matches_imagehash_bits():
    img = Image.open(PHOTO).convert("RGB")
    h = imagehash.phash(img)
    assert f"{hash_to_int(h):016x}" == str(h)


def test_orientation_search_finds_flips_and_rotations_plain_phash_does_not():
    img = Image.open(PHOTO).convert("RGB")
    base = perceptual_hashes(img)
    assert len(base["phash_orientations"]) == 8
    for variant in (ImageOps.mirror(img), img.rotate(90, expand=True), img.rotate(180), ImageOps.flip(img)):
        h = perceptual_hashes(variant)
        best = min(hamming(o, base["phash_orientations"][0]) for o in h["phash_orientations"])
        assert best <= 2
    assert hamming(base["phash"], perceptual_hashes(ImageOps.mirror(img))["phash"]) > 10


def test_reencode_keeps_hashes_close():
    img = Image.open(PHOTO).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=40)
    again = perceptual_hashes(Image.open(buf).convert("RGB"))
    base = perceptual_hashes(img)
    assert hamming(base["phash"], again["phash"]) <= 4


def test_to_bytes_is_big_endian_per_hash():
    codes = to_bytes(np.array([0x0102030405060708, 1], dtype=np.uint64))
    assert codes.shape == (2, 8) and codes[0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8] and codes[1, 7] == 1
