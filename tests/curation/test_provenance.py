"""C2PA manifests signed in the test with a throwaway ES256 chain, and the SDXL watermark on a real photo."""

from __future__ import annotations

import datetime
import io
import json
from pathlib import Path

import c2pa
import cv2
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from imwatermark import WatermarkEncoder
from PIL import Image

from curation.provenance import (
    SDXL_WATERMARK_BITS,
    WATERMARK_MIN_BIT_ACCURACY,
    _is_trained,
    c2pa_signals,
    sdxl_watermark,
)
from tests.conftest import encode, make_image

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
PHOTO = Path(__file__).resolve().parents[2] / "examples" / "corpus" / "photos" / "astronaut.jpg"


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                         encipher_only=False, decipher_only=False)


def _cert(subject: str, key, issuer: str, issuer_key, ca: bool, path_length: int | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject),
                                 x509.NameAttribute(NameOID.ORGANIZATION_NAME, "atelier tests")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer),
                                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "atelier tests")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(_key_usage(ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if not ca:
        # c2pa-rs's certificate profile wants an end-entity cert with an allowed extended key usage.
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki() -> dict[str, bytes]:
    """Root CA -> intermediate CA -> ES256 signer; the signer PEM chain excludes the root, as C2PA expects."""
    root_key, inter_key, signer_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _cert("test root", root_key, "test root", root_key, ca=True, path_length=1)
    inter = _cert("test intermediate", inter_key, "test root", root_key, ca=True, path_length=0)
    signer = _cert("test signer", signer_key, "test intermediate", inter_key, ca=False)
    pem = serialization.Encoding.PEM
    return {
        "chain": signer.public_bytes(pem) + inter.public_bytes(pem),
        "key": signer_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        "root": root.public_bytes(pem),
    }


def sign(pki: dict[str, bytes], source: bytes, mime: str, source_type: str, remote_url: str | None = None) -> bytes:
    """`source` with a manifest whose `c2pa.created` action declares `source_type`, embedded or only referenced."""
    manifest = {
        "claim_generator_info": [{"name": "atelier-test", "version": "0.1"}],
        "title": "generated",
        "assertions": [{"label": "c2pa.actions",
                        "data": {"actions": [{"action": "c2pa.created", "digitalSourceType": source_type}]}}],
    }
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, pki["chain"], pki["key"], None))
    # No thumbnail: it would make the manifest ~60x larger than these 64 px images.
    context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})
    builder = c2pa.Builder(manifest, context=context)
    if remote_url:
        builder.set_no_embed()
        builder.set_remote_url(remote_url)
    out = io.BytesIO()
    builder.sign(signer, mime, io.BytesIO(source), out)
    return out.getvalue()


@pytest.fixture(scope="module")
def generated_jpeg(pki) -> bytes:
    return sign(pki, encode(make_image(64, 64), "JPEG", quality=90), "image/jpeg", IPTC + "trainedAlgorithmicMedia")


def test_signed_generated_jpeg_is_trained_algorithmic(generated_jpeg):
    out = c2pa_signals(generated_jpeg, "image/jpeg")
    assert out["present"] and out["trained_algorithmic"] and out["error"] is None
    assert out["digital_source_types"] == [IPTC + "trainedAlgorithmicMedia"]
    assert out["claim_generator"] == "atelier-test/0.1"
    # Intact, but the throwaway root is on no trust list: c2pa-rs says Valid and lists the untrusted credential.
    assert out["validation_state"] == "Valid"
    assert out["validation_errors"] == ["signingCredential.untrusted"]
    json.dumps(out)


def test_trust_anchor_makes_it_trusted(generated_jpeg, pki):
    out = c2pa_signals(generated_jpeg, "image/jpeg", trust_anchors_pem=pki["root"].decode())
    assert out["validation_state"] == "Trusted" and out["validation_errors"] == [] and out["trained_algorithmic"]


@pytest.mark.parametrize("hint", [None, "JPEG", "image/png", "application/x-unknown"])
def test_format_hint_is_only_a_hint(generated_jpeg, hint):
    out = c2pa_signals(generated_jpeg, hint)
    assert out["present"] and out["trained_algorithmic"] and out["error"] is None


@pytest.mark.parametrize(("fmt", "mime"), [("PNG", "image/png"), ("WEBP", "image/webp")])
def test_png_and_webp_manifests(pki, fmt, mime):
    data = sign(pki, encode(make_image(64, 64), fmt), mime, IPTC + "compositeWithTrainedAlgorithmicMedia")
    out = c2pa_signals(data, mime)
    assert out["present"] and out["trained_algorithmic"] and out["validation_state"] == "Valid"


@pytest.mark.parametrize("term", ["algorithmicMedia", "compositeSynthetic", "digitalCapture"])
def test_untrained_source_types_are_not_trained_algorithmic(pki, term):
    data = sign(pki, encode(make_image(64, 64), "JPEG"), "image/jpeg", IPTC + term)
    out = c2pa_signals(data, "image/jpeg")
    assert out["present"] and out["digital_source_types"] == [IPTC + term]
    assert out["trained_algorithmic"] is False


def test_tampered_pixels_still_report_generation_but_invalid(generated_jpeg):
    data = bytearray(generated_jpeg)
    start = data.rfind(b"\xff\xda") + 20  # inside the entropy-coded scan, after the manifest's APP11 segments
    changed = 0
    for i in range(start, len(data) - 2):
        if changed == 16:
            break
        # Leave 0xFF and the byte after it alone so no JPEG marker appears or disappears.
        if data[i] != 0xFF and data[i - 1] != 0xFF:
            data[i] = 0x00 if data[i] else 0x11
            changed += 1
    out = c2pa_signals(bytes(data), "image/jpeg")
    assert out["present"] and out["trained_algorithmic"]
    assert out["validation_state"] == "Invalid"
    assert "assertion.dataHash.mismatch" in out["validation_errors"]


def test_tampered_manifest_still_reports_generation_but_invalid(generated_jpeg):
    at = generated_jpeg.find(b"c2pa.created")
    assert at > 0
    data = generated_jpeg[:at] + b"c2pa.croated" + generated_jpeg[at + len(b"c2pa.created"):]
    out = c2pa_signals(data, "image/jpeg")
    assert out["present"] and out["trained_algorithmic"]
    assert out["validation_state"] == "Invalid"
    assert "assertion.hashedURI.mismatch" in out["validation_errors"]


def test_unsigned_jpeg_has_no_manifest_and_no_error():
    out = c2pa_signals(encode(make_image(), "JPEG"), "image/jpeg")
    assert out == {"present": False, "validation_state": None, "validation_errors": [], "claim_generator": None,
                   "digital_source_types": [], "trained_algorithmic": False, "error": None}


def test_unreadable_bytes_are_an_explicit_error():
    out = c2pa_signals(b"not an image at all" * 4)
    assert out["present"] is False and out["trained_algorithmic"] is False
    assert out["error"] and "unsupported" in out["error"].lower()


def test_remote_manifest_is_not_fetched(pki):
    source = encode(make_image(64, 64), "JPEG")
    data = sign(pki, source, "image/jpeg", IPTC + "trainedAlgorithmicMedia", remote_url="http://127.0.0.1:9/m.c2pa")
    out = c2pa_signals(data, "image/jpeg")
    assert out["present"] is False and out["trained_algorithmic"] is False
    assert "must fetch remote manifests" in out["error"]


@pytest.mark.parametrize(
    ("value", "trained"),
    [
        (IPTC + "trainedAlgorithmicMedia", True),
        (IPTC + "compositeWithTrainedAlgorithmicMedia", True),
        ("digsrctype:trainedAlgorithmicMedia", True),
        ("trainedAlgorithmicMedia", True),
        ("http://c2pa.org/digitalsourcetype/trainedAlgorithmicData", True),
        (IPTC + "algorithmicMedia", False),
        (IPTC + "compositeSynthetic", False),
        (IPTC + "algorithmicallyEnhanced", False),
    ],
)
def test_trained_source_type_forms(value, trained):
    assert _is_trained(value) is trained


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.open(PHOTO).convert("RGB")


def test_sdxl_watermark_detected_on_marked_photo(photo):
    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", list(SDXL_WATERMARK_BITS))
    bgr = encoder.encode(cv2.cvtColor(np.asarray(photo), cv2.COLOR_RGB2BGR), "dwtDct")
    marked = Image.open(io.BytesIO(encode(Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), "PNG")))
    out = sdxl_watermark(marked)
    assert out["detected"] is True and out["error"] is None
    assert out["bit_accuracy"] >= WATERMARK_MIN_BIT_ACCURACY


def test_sdxl_watermark_absent_on_unmarked_photo(photo):
    out = sdxl_watermark(photo)
    assert out["detected"] is False and out["error"] is None
    assert 0.0 <= out["bit_accuracy"] < WATERMARK_MIN_BIT_ACCURACY


@pytest.mark.parametrize("size", [(32, 32), (255, 255), (4, 20000)])
def test_sdxl_watermark_too_small_is_reported_not_raised(size):
    out = sdxl_watermark(Image.new("RGB", size, "gray"))
    assert out["bit_accuracy"] is None and out["detected"] is False
    assert "too small" in out["error"]


def test_sdxl_watermark_converts_other_modes():
    out = sdxl_watermark(make_image(320, 256, mode="L"))
    assert out["error"] is None and out["detected"] is False
