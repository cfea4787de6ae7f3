"""AI-generation signals from metadata and stealth payloads; fixtures for each tool are built here."""

from __future__ import annotations

import gzip
import io
import json

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from curation.ai_metadata import metadata_signals, stealth_payload, stealth_signals
from curation.image_io import ProbeLimits, probe_image
from tests.conftest import encode, make_image

A1111 = ("a castle on a hill\nNegative prompt: blurry\n"
         "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512")
COMFY = json.dumps({"3": {"class_type": "KSampler", "inputs": {"seed": 1}}})


def signals_of(data: bytes) -> list[str]:
    facts = probe_image(data, ProbeLimits(min_side=1), with_metadata=True)
    return metadata_signals({"embedded": facts.metadata, "sidecar": {}})


def png_with(**chunks: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key.replace("__", "-"), value)
    return encode(make_image(), "PNG", pnginfo=info)


@pytest.mark.parametrize("chunks,expected", [
    ({"parameters": A1111}, "png_chunk:parameters(automatic1111)"),
    ({"prompt": COMFY, "workflow": json.dumps({"nodes": [{"type": "KSampler"}]})}, "png_chunk:prompt(comfyui)"),
    ({"invokeai_metadata": json.dumps({"positive_prompt": "x"})}, "png_chunk:invokeai_metadata(invokeai)"),
    ({"sd__metadata": json.dumps({"model": "stable diffusion"})}, "png_chunk:sd-metadata(invokeai)"),
    ({"Dream": '"a cat" -s 50 -S 42'}, "png_chunk:dream(invokeai)"),
    ({"Software": "NovelAI", "Comment": json.dumps({"steps": 28})}, "png_chunk:comment(novelai)"),
    ({"parameters": json.dumps({"prompt": "x", "fooocus_v2": True}), "fooocus_scheme": "fooocus"},
     "png_chunk:fooocus_scheme(fooocus)"),
    ({"sui_image_params": json.dumps({"prompt": "x"})}, "png_chunk:sui_image_params(swarmui)"),
    ({"parameters": A1111 + ", Civitai resources: []"}, "png_chunk:parameters(automatic1111)"),
])
def test_generator_png_chunks(chunks, expected):
    assert expected in signals_of(png_with(**chunks))


def test_plain_text_chunks_are_not_signals():
    assert signals_of(png_with(prompt="a note about this photo", Description="Holiday, 2019", Software="GIMP 2.10")) \
        == []


def _exif_jpeg_or_webp(fmt: str, **fields) -> bytes:
    exif = Image.Exif()
    for tag, value in fields.items():
        if tag == "UserComment":
            exif.get_ifd(0x8769)[0x9286] = value
        else:
            exif[{"Software": 0x0131, "ImageDescription": 0x010E, "Make": 0x010F}[tag]] = value
    return encode(make_image(), fmt, exif=exif.tobytes())


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_exif_user_comment_from_a1111(fmt):
    data = _exif_jpeg_or_webp(fmt, UserComment=b"UNICODE\0" + A1111.encode("utf-16-be"))
    assert "exif:UserComment(automatic1111)" in signals_of(data)


@pytest.mark.parametrize("software,expected", [
    ("Midjourney", "midjourney"), ("DALL-E 3", "dall-e"), ("Adobe Firefly", "adobe firefly"),
    ("Stable Diffusion XL", "stable diffusion"),
])
def test_generator_names_in_software_fields(software, expected):
    assert f"exif:Software({expected})" in signals_of(_exif_jpeg_or_webp("JPEG", Software=software))


def test_camera_software_is_not_a_signal():
    data = _exif_jpeg_or_webp("JPEG", Software="Adobe Photoshop Lightroom 13.0", Make="NIKON",
                              ImageDescription="Sunset over the lake")
    assert signals_of(data) == []


def _xmp_jpeg(source_type: str) -> bytes:
    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           '<rdf:Description xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
           f'Iptc4xmpExt:DigitalSourceType="http://cv.iptc.org/newscodes/digitalsourcetype/{source_type}"/>'
           '</rdf:RDF></x:xmpmeta>')
    buf = io.BytesIO()
    make_image().save(buf, "JPEG", xmp=xmp.encode())
    return buf.getvalue()


def test_xmp_digital_source_type():
    assert signals_of(_xmp_jpeg("trainedAlgorithmicMedia")) == ["xmp:DigitalSourceType=trainedAlgorithmicMedia"]
    assert "xmp:DigitalSourceType=compositeWithTrainedAlgorithmicMedia" in signals_of(
        _xmp_jpeg("compositeWithTrainedAlgorithmicMedia"))
    assert signals_of(_xmp_jpeg("algorithmicMedia")) == []  # procedural, not a trained model
    assert signals_of(_xmp_jpeg("digitalCapture")) == []


def _hide(img: Image.Image, signature: str, payload: bytes) -> Image.Image:
    """Write a stealth-pnginfo payload into the alpha LSBs, column by column, as the A1111 extension does."""
    bits = np.unpackbits(np.frombuffer(signature.encode() + len(payload * 8).to_bytes(4, "big") + payload, np.uint8))
    rgba = np.array(img.convert("RGBA"))
    alpha = np.ascontiguousarray(rgba[..., 3].T).reshape(-1)
    alpha[: len(bits)] = (alpha[: len(bits)] & 0xFE) | bits
    rgba[..., 3] = alpha.reshape(rgba.shape[1], rgba.shape[0]).T
    return Image.fromarray(rgba, "RGBA")


@pytest.mark.parametrize("compressed", [False, True])
def test_stealth_payload_in_alpha(compressed):
    payload = gzip.compress(A1111.encode()) if compressed else A1111.encode()
    img = _hide(make_image(128, 96), "stealth_pngcomp" if compressed else "stealth_pnginfo", payload)
    decoded = Image.open(io.BytesIO(encode(img, "PNG")))
    signature, text = stealth_payload(decoded)
    assert signature.startswith("stealth_png") and "Steps: 20" in text
    assert stealth_signals(decoded) == [f"stealth:{signature}"]


def test_no_stealth_payload_in_ordinary_images():
    assert stealth_signals(make_image(64, 64).convert("RGBA")) == []
    assert stealth_signals(make_image(64, 64)) == []
    assert stealth_signals(make_image(4, 4).convert("RGBA")) == []
