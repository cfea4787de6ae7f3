"""Decoding untrusted bytes: every bad input gets a specific reason, every odd mode is normalised with a note."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from curation.image_io import ImageRejected, ProbeLimits, extension_matches, load_rgb, probe_image, sniff_format
from tests.conftest import encode, make_image

LIMITS = ProbeLimits(min_side=8)


def reason_of(data: bytes, limits: ProbeLimits = LIMITS) -> str:
    with pytest.raises(ImageRejected) as info:
        probe_image(data, limits)
    return info.value.reason


@pytest.mark.parametrize("fmt,kw,name", [("JPEG", {}, "JPEG"), ("PNG", {}, "PNG"), ("GIF", {}, "GIF"),
                                         ("WEBP", {}, "WEBP"), ("BMP", {}, "BMP"), ("TIFF", {}, "TIFF")])
def test_sniff_format_from_magic_bytes(fmt, kw, name):
    assert sniff_format(encode(make_image(), fmt, **kw)) == name


def test_sniff_unknown_and_containers():
    assert sniff_format(b"hello world") is None
    assert sniff_format(b"PAR1" + b"\0" * 40) == "PARQUET"
    assert sniff_format(b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>') == "SVG"


def test_probe_plain_jpeg(jpeg_bytes):
    facts = probe_image(jpeg_bytes, LIMITS, with_metadata=True)
    assert (facts.format, facts.width, facts.height, facts.mode) == ("JPEG", 96, 64, "RGB")
    assert facts.notes == [] and not facts.is_animated and facts.n_frames == 1
    assert facts.rgb.size == (96, 64) and facts.rgb.mode == "RGB"
    assert isinstance(facts.metadata, dict)


def test_zero_bytes():
    assert reason_of(b"") == "empty"


def test_non_image_bytes():
    assert reason_of(b"just some text, definitely not pixels\n" * 3) == "not_an_image"


def test_svg_is_unsupported_not_unknown():
    assert reason_of(b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"></svg>') == "unsupported_format"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(fmt):
    data = encode(make_image(200, 150, seed=3), fmt)
    assert reason_of(data[: len(data) // 2]) == "truncated"


def test_corrupt_header_is_undecodable():
    data = bytearray(encode(make_image(), "PNG"))
    data[16:24] = b"\xff" * 8  # IHDR width/height garbage, CRC now wrong
    assert reason_of(bytes(data)) in {"undecodable", "decompression_bomb"}


def _bomb_png(width: int, height: int) -> bytes:
    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def test_decompression_bomb_is_refused_from_the_header():
    assert reason_of(_bomb_png(50_000, 50_000)) == "decompression_bomb"


def test_pixel_limit_is_configurable():
    data = encode(make_image(100, 100), "PNG")
    assert reason_of(data, ProbeLimits(max_pixels=5_000, min_side=8)) == "decompression_bomb"
    assert probe_image(data, ProbeLimits(max_pixels=10_000, min_side=8)).width == 100


def test_too_small_is_configurable():
    data = encode(make_image(16, 16), "PNG")
    assert reason_of(data, ProbeLimits(min_side=32)) == "too_small"
    assert probe_image(data, ProbeLimits(min_side=16)).width == 16


def test_cmyk_is_converted_with_a_note():
    facts = probe_image(encode(make_image().convert("CMYK"), "JPEG"), LIMITS)
    assert facts.mode == "CMYK" and "cmyk_converted_to_rgb" in facts.notes and facts.rgb.mode == "RGB"


def test_16bit_is_scaled_not_clipped():
    arr = np.full((20, 30), 40000, dtype=np.uint16)
    facts = probe_image(encode(Image.fromarray(arr), "PNG"), LIMITS)
    assert facts.mode.startswith("I") and "high_bit_depth_scaled_to_8bit" in facts.notes
    value = np.asarray(facts.rgb)[0, 0, 0]
    assert abs(int(value) - round(40000 / 257)) <= 1  # clipping would give 255


def test_palette_transparency_is_composited_on_white():
    img = Image.new("P", (20, 20), 0)
    img.putpalette([0, 0, 0] + [200, 10, 10] * 255)
    img.paste(1, (10, 0, 20, 20))
    facts = probe_image(encode(img, "PNG", transparency=0), LIMITS)
    assert "palette_transparency_composited_on_white" in facts.notes
    rgb = np.asarray(facts.rgb)
    assert tuple(rgb[0, 0]) == (255, 255, 255) and tuple(rgb[0, 15]) == (200, 10, 10)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_first_frame_with_frame_count(fmt):
    frames = [make_image(seed=s) for s in range(3)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)
    facts = probe_image(data, LIMITS)
    assert facts.is_animated and facts.n_frames == 3 and "animated_first_frame_used" in facts.notes


def test_too_many_frames_is_a_bomb():
    frames = [make_image(seed=s) for s in range(4)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert reason_of(data, ProbeLimits(min_side=8, max_frames=3)) == "decompression_bomb"


def test_exif_orientation_is_applied_to_size_and_pixels():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(make_image(96, 64), "JPEG", exif=exif.tobytes())
    facts = probe_image(data, LIMITS)
    assert facts.exif_orientation == 6 and (facts.width, facts.height) == (64, 96)
    assert "exif_orientation_6_applied" in facts.notes


def test_extension_check():
    assert extension_matches("JPEG", "a/b/photo.JPG")
    assert not extension_matches("PNG", "photo.jpg")
    assert extension_matches("PNG", "no_extension")


def test_load_rgb_round_trip(jpeg_bytes):
    img = load_rgb(jpeg_bytes)
    assert img.mode == "RGB" and img.size == (96, 64)


def test_reduced_decode_reads_a_large_jpeg_at_a_fraction_of_its_pixels_same_picture():
    import io

    import numpy as np
    from PIL import Image

    from curation.hashing import perceptual_hashes
    from curation.image_io import load_rgb, load_rgb_reduced

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    big = Image.fromarray(small).resize((4000, 3000), Image.Resampling.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: displayed 3000 x 4000
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=90, exif=exif)
    data = buf.getvalue()
    full, reduced = load_rgb(data), load_rgb_reduced(data, 512)
    assert full.size == (3000, 4000)
    assert reduced.size == (750, 1000)  # DCT scale 1/4: the smallest that keeps the short side >= 512
    a = perceptual_hashes(full.resize((375, 500)))["phash"]
    b = perceptual_hashes(reduced.resize((375, 500)))["phash"]
    assert bin(int(a) ^ int(b)).count("1") <= 2
    png = io.BytesIO()
    Image.fromarray(small).save(png, "PNG")
    assert load_rgb_reduced(png.getvalue(), 16).size == (40, 30)  # other formats decode whole
