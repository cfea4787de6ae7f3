"""Perceptual hashes (pHash, dHash via imagehash) and the pHashes of the 8 flips/rotations, as uint64.

Plain pHash misses flips entirely (Hamming 28-36 between an image and its mirror, like unrelated images). Flip- and
rotation-invariant matching compares the 8 orientation hashes of one image with the upright hash of the other
(`orientation search`). A single "canonical" hash (the minimum over the 8) was tried first and measured worse: a
small edit can change which orientation gives the minimum, and the minimum makes smooth images collide
(bench/BENCHMARKS.md).
"""

from __future__ import annotations

import imagehash
import numpy as np
from PIL import Image

ORIENTATION_THUMB = 128
"""The orientation hashes are taken from a grayscale thumbnail of at most this side (8 transforms of it are cheap)."""

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


def perceptual_hashes(rgb: Image.Image) -> dict:
    """pHash and dHash of an RGB image, and the pHashes of its 8 orientations.

    Args:
        rgb: the normalised image (`curation.image_io.load_rgb`).

    Returns:
        `{"phash", "dhash"}` as unsigned 64-bit integers and `"phash_orientations"`: 8 of them, upright first, then
        rotations by 90/180/270 degrees, then the mirror image and its rotations.
    """
    gray = rgb.convert("L")
    out: dict = {"phash": hash_to_int(imagehash.phash(gray)), "dhash": hash_to_int(imagehash.dhash(gray))}
    thumb = gray.copy()
    thumb.thumbnail((ORIENTATION_THUMB, ORIENTATION_THUMB), Image.Resampling.BILINEAR)
    out["phash_orientations"] = [hash_to_int(imagehash.phash(v)) for v in _dihedral(thumb)]
    return out


def hamming(a: int, b: int) -> int:
    """Bits that differ between two 64-bit hashes."""
    return (int(a) ^ int(b)).bit_count()


def to_bytes(hashes: np.ndarray) -> np.ndarray:
    """uint64 hashes -> (n, 8) uint8 codes in big-endian order, the layout faiss binary indexes take."""
    return np.ascontiguousarray(np.asarray(hashes, dtype=np.uint64).astype(">u8")).view(np.uint8).reshape(-1, 8)
