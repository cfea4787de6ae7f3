"""Mutated images (flipped bytes, cuts, splices) only ever produce facts or an `ImageRejected` with a known reason."""

from __future__ import annotations

import numpy as np
import pytest

from curation.image_io import ImageRejected, ProbeLimits, probe_image
from tests.conftest import encode, make_image

REASONS = {"empty", "not_an_image", "unsupported_format", "decompression_bomb", "truncated", "undecodable",
           "too_small"}


def _mutants(data: bytes, rng: np.random.Generator, n: int):
    for _ in range(n):
        buf = bytearray(data)
        kind = rng.integers(0, 3)
        if kind == 0:  # flip a handful of bytes, often in the header
            for _ in range(int(rng.integers(1, 8))):
                pos = int(rng.integers(0, min(len(buf), 200) if rng.random() < 0.6 else len(buf)))
                buf[pos] = int(rng.integers(0, 256))
        elif kind == 1:  # cut
            buf = buf[: int(rng.integers(1, len(buf)))]
        else:  # splice random bytes into the middle
            pos = int(rng.integers(0, len(buf)))
            buf[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        yield bytes(buf)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"])
def test_mutated_images_never_escape_as_other_exceptions(fmt):
    rng = np.random.default_rng(sum(map(ord, fmt)))
    data = encode(make_image(48, 40, seed=5), fmt)
    outcomes = {"ok": 0}
    for mutant in _mutants(data, rng, 150):
        try:
            probe_image(mutant, ProbeLimits(min_side=8, max_pixels=10_000_000))
            outcomes["ok"] += 1
        except ImageRejected as rej:
            assert rej.reason in REASONS
            outcomes[rej.reason] = outcomes.get(rej.reason, 0) + 1
    assert sum(outcomes.values()) == 150
    assert len(outcomes) > 1  # the mutations did break some files
