"""Perceptual hashes (pHash, dHash via imagehash) and their flip/rotation-canonical forms, as uint64.

The canonical form is the smallest hash over the 8 dihedral transforms (4 rotations x mirror) of the image, so a
flipped or rotated copy gets the same canonical hash as its original. Plain pHash misses flips entirely
(Hamming 28-36 between an image and its mirror, like unrelated images).
"""

from __future__ import annotations

import imagehash
import numpy as np
from PIL import Image

CANONICAL_THUMB = 128
"""The canonical forms hash a grayscale thumbnail of at most this side (8 transforms of it are cheap)."""

_DIHEDRAL = [
    (),
    (Image.Transpose.ROTATE_90,),
    (Image.Transpose.ROTATE_180,),
    (Image.Transpose.ROTATE_270,),
    (Image.Transpose.FLIP_LEFT_RIGHT,),
    (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.ROTATE_90),
    (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.ROTATE_180),
    (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.ROTATE_270),
]


def hash_to_int(h: imagehash.ImageHash) -> int:
    """A 64-bit imagehash as an unsigned integer (bit order: row-major, first bit most significant)."""
    bits = np.asarray(h.hash, dtype=bool).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def _dihedral(img: Image.Image) -> list[Image.Image]:
    out = []
    for ops in _DIHEDRAL:
        t = img
        for op in ops:
            t = t.transpose(op)
        out.append(t)
    return out


def perceptual_hashes(rgb: Image.Image) -> dict[str, int]:
    """pHash and dHash of an RGB image, plus their dihedral-canonical forms.

    Args:
        rgb: the normalised image (`curation.image_io.load_rgb`).

    Returns:
        `{"phash", "dhash", "phash_canonical", "dhash_canonical"}` as unsigned 64-bit integers.
    """
    gray = rgb.convert("L")
    out = {"phash": hash_to_int(imagehash.phash(gray)), "dhash": hash_to_int(imagehash.dhash(gray))}
    thumb = gray.copy()
    thumb.thumbnail((CANONICAL_THUMB, CANONICAL_THUMB), Image.Resampling.BILINEAR)
    variants = _dihedral(thumb)
    out["phash_canonical"] = min(hash_to_int(imagehash.phash(v)) for v in variants)
    out["dhash_canonical"] = min(hash_to_int(imagehash.dhash(v)) for v in variants)
    return out


def hamming(a: int, b: int) -> int:
    """Bits that differ between two 64-bit hashes."""
    return (int(a) ^ int(b)).bit_count()


def to_bytes(hashes: np.ndarray) -> np.ndarray:
    """uint64 hashes -> (n, 8) uint8 codes in big-endian order, the layout faiss binary indexes take."""
    return np.ascontiguousarray(np.asarray(hashes, dtype=np.uint64).astype(">u8")).view(np.uint8).reshape(-1, 8)
