"""Embedded metadata is kept whole and JSON-safe: PNG text chunks, EXIF (UserComment decoded), XMP, binary blobs."""

from __future__ import annotations

import io
import json

from PIL import Image, PngImagePlugin

from curation.image_io import ProbeLimits, probe_image
from curation.metadata import decode_user_comment, jsonable
from tests.conftest import encode, make_image


def test_png_text_chunks_including_compressed_and_international():
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat, Steps: 20, Sampler: Euler a")
    info.add_text("prompt", '{"3": {"class_type": "KSampler"}}', zip=True)
    info.add_itxt("Description", "Ünïcödé caption", lang="en")
    data = encode(make_image(), "PNG", pnginfo=info)
    meta = probe_image(data, ProbeLimits(min_side=8), with_metadata=True).metadata
    assert meta["text"]["parameters"].startswith("a cat")
    assert json.loads(meta["text"]["prompt"])["3"]["class_type"] == "KSampler"
    assert meta["text"]["Description"] == "Ünïcödé caption"
    json.dumps(meta)


def test_exif_user_comment_unicode_both_byte_orders():
    text = "photo of a duck\nSteps: 15, Sampler: UniPC"
    assert decode_user_comment(b"UNICODE\0" + text.encode("utf-16-be"), big_endian=False) == text
    assert decode_user_comment(b"UNICODE\0" + text.encode("utf-16-le"), big_endian=True) == text
    assert decode_user_comment(b"ASCII\0\0\0hello\0") == "hello"


def test_exif_in_jpeg_with_user_comment_and_software():
    exif = Image.Exif()
    exif[0x0131] = "Midjourney v6"  # Software
    exif[0x010F] = "ExampleCam"  # Make
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + "a lighthouse at dusk".encode("utf-16-be")  # UserComment
    data = encode(make_image(), "JPEG", exif=exif.tobytes())
    meta = probe_image(data, ProbeLimits(min_side=8), with_metadata=True).metadata
    assert meta["exif"]["Software"] == "Midjourney v6"
    assert meta["exif"]["Make"] == "ExampleCam"
    assert meta["exif"]["UserComment"] == "a lighthouse at dusk"


def test_xmp_is_kept_as_text():
    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           '<rdf:Description xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
           'Iptc4xmpExt:DigitalSourceType="http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"/>'
           '</rdf:RDF></x:xmpmeta>')
    buf = io.BytesIO()
    make_image().save(buf, "JPEG", xmp=xmp.encode())
    meta = probe_image(buf.getvalue(), ProbeLimits(min_side=8), with_metadata=True).metadata
    assert "trainedAlgorithmicMedia" in meta["xmp"]


def test_jsonable_binary_and_long_values():
    truncated: list[str] = []
    assert jsonable(b"\x00\x01\x02", truncated) == {"base64": "AAEC"}
    assert jsonable(b"\xff" * 1000, truncated) == {"binary_bytes": 1000}
    assert jsonable(float("nan"), truncated) is None
    assert jsonable((1, "a", b"text"), truncated) == [1, "a", "text"]
