"""Offline AI-generation signals from provenance: C2PA Content Credentials and the SDXL invisible watermark.

Both are pure functions over one sample and return JSON-safe dicts; a failure is reported in an `error` field, never
raised and never turned into a silent "nothing found". The exclusion stage (`ai_image`) turns them into reasons.

- `c2pa_signals` reads the manifest store embedded in the image bytes with c2pa-python (c2pa-rs), fully offline:
  remote manifests and OCSP are never fetched.
- `sdxl_watermark` decodes the 48-bit `dwtDct` mark that Stable Diffusion XL (diffusers, Stability's
  generative-models) embeds in every output, and compares it bit by bit with SDXL's message.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import re
from typing import Any

import c2pa
import cv2
import numpy as np
from imwatermark import WatermarkDecoder
from PIL import Image

log = logging.getLogger(__name__)

TRAINED_SOURCE_TYPES = frozenset(
    {"trainedalgorithmicmedia", "compositewithtrainedalgorithmicmedia", "trainedalgorithmicdata"}
)
"""Digital source type terms (lower-cased last URI segment) that declare output of a trained model.

The IPTC terms `trainedAlgorithmicMedia` and `compositeWithTrainedAlgorithmicMedia` (inpainting, outpainting), plus
C2PA's own `http://c2pa.org/digitalsourcetype/trainedAlgorithmicData` (a trained model's output as data). Not in it:
`algorithmicMedia` (made by an algorithm *without* sampled training data, e.g. a fractal) and `compositeSynthetic`
(IPTC: a composite with at least one synthetic element, where synthetic includes untrained algorithmic and virtual
content), since neither says a trained model was involved.
"""

SDXL_WATERMARK_MESSAGE = 0b101100111110110010010000011110111011000110011110
"""The 48-bit message Stable Diffusion XL embeds (generative-models `WATERMARK_MESSAGE`, copied by diffusers)."""
SDXL_WATERMARK_BITS: tuple[int, ...] = tuple(int(b) for b in bin(SDXL_WATERMARK_MESSAGE)[2:])

WATERMARK_MIN_BIT_ACCURACY = 41 / 48
"""Fraction of SDXL's 48 bits that must match for `detected` (~0.854), chosen by `bench/watermark_fpr.py`.

On 47 unmarked real photos the accuracy was 0.465 +- 0.059, at most 30/48, so any threshold >= 31/48 had no false
positive there. The margin: low-chroma photos decode to a constant word (21/48 or 27/48), colourful ones to noise,
and 41/48 is the first bit count that 48 fair coin flips reach with probability <= 1e-6 (3.1e-7; also above
mean + 5 std = 0.76). At it, 36/47 watermarked copies are detected losslessly (11 photos do not round-trip through
imwatermark's `dwtDct`) and 34/47 after JPEG q90 with 4:4:4 chroma; JPEG's 4:2:0 chroma subsampling erases the mark.
"""

WATERMARK_MIN_PIXELS = 256 * 256
"""`imwatermark` refuses images with fewer pixels (width x height, not each side) than this."""
WATERMARK_MIN_SIDE = 8
"""Below this side the half-resolution Haar band has no full 4x4 block row, so no bit can be read."""

_SDXL_BITS = np.array(SDXL_WATERMARK_BITS, dtype=bool)
# The decoder only holds the message length; every decode builds its own transform, so one instance is reusable.
_DECODER = WatermarkDecoder("bits", len(SDXL_WATERMARK_BITS))

_READER_SETTINGS: dict[str, Any] = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
"""c2pa-rs fetches a remote manifest (and OCSP responses) over HTTP by default; a curation worker must not."""


def _empty_c2pa(error: str | None = None) -> dict[str, Any]:
    return {
        "present": False,
        "validation_state": None,
        "validation_errors": [],
        "claim_generator": None,
        "digital_source_types": [],
        "trained_algorithmic": False,
        "error": error,
    }


@functools.lru_cache(maxsize=1)
def _supported_formats() -> frozenset[str]:
    return frozenset(c2pa.Reader.get_supported_mime_types())


def _c2pa_format(mime: str | None) -> str | None:
    """The format hint for `c2pa.Reader`, or None for detection from the bytes.

    c2pa-rs accepts MIME types (`image/jpeg`) and short names (`jpeg`, `png`, `webp`), so Pillow format names work
    lower-cased. It overrides a wrong hint with the container it finds in the bytes; a hint it does not know is
    dropped here so that, when it finds none, it does not take the bytes for a sidecar of that format.
    """
    if not mime:
        return None
    fmt = mime.strip().lower()
    if fmt not in _supported_formats():
        log.debug("c2pa has no format %r; detecting it from the bytes", mime)
        return None
    return fmt


def _reader_context(trust_anchors_pem: str | None) -> c2pa.Context:
    # c2pa refuses a Context inherited through fork() (its handle belongs to the parent): one per process.
    return _context_for(os.getpid(), trust_anchors_pem)


@functools.lru_cache(maxsize=8)
def _context_for(pid: int, trust_anchors_pem: str | None) -> c2pa.Context:
    settings: dict[str, Any] = dict(_READER_SETTINGS)
    if trust_anchors_pem:
        settings["trust"] = {"user_anchors": trust_anchors_pem}
    return c2pa.Context.from_dict(settings)


def _is_trained(source_type: str) -> bool:
    # Accept the IPTC URI, its QCode (`digsrctype:trainedAlgorithmicMedia`) and the bare term alike.
    term = re.split(r"[/:#]", source_type.strip().rstrip("/"))[-1]
    return term.lower() in TRAINED_SOURCE_TYPES


def _source_types(node: Any, found: dict[str, None]) -> None:
    """Collect every digitalSourceType value under `node` (actions, action templates, IPTC/XMP-style assertions).

    Keys match case-insensitively after any namespace prefix, so `Iptc4xmpExt:DigitalSourceType` counts too.
    """
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and key.rsplit(":", 1)[-1].lower() == "digitalsourcetype":
                values = value if isinstance(value, list) else [value]
                for v in values:
                    if isinstance(v, str) and v.strip():
                        found.setdefault(v.strip(), None)
                    elif isinstance(v, dict) and isinstance(v.get("@id"), str):
                        found.setdefault(v["@id"].strip(), None)
            else:
                _source_types(value, found)
    elif isinstance(node, list):
        for item in node:
            _source_types(item, found)


def _claim_generator(manifest: dict[str, Any]) -> str | None:
    # C2PA 1.x claims carry a `claim_generator` string; 2.x claims only `claim_generator_info` entries.
    legacy = manifest.get("claim_generator")
    if isinstance(legacy, str) and legacy:
        return legacy
    parts = []
    for info in manifest.get("claim_generator_info") or []:
        if isinstance(info, dict) and info.get("name"):
            parts.append(f"{info['name']}/{info['version']}" if info.get("version") else str(info["name"]))
    return " ".join(parts) or None


def _validation_errors(store: dict[str, Any]) -> list[str]:
    found: dict[str, None] = {}
    results = store.get("validation_results")
    if isinstance(results, dict):
        statuses = list((results.get("activeManifest") or {}).get("failure") or [])
        for delta in results.get("ingredientDeltas") or []:
            statuses += (delta.get("validationDeltas") or {}).get("failure") or []
    else:
        # Stores read by older c2pa-rs only have the flat list, which holds failures only.
        statuses = store.get("validation_status") or []
    for status in statuses:
        if isinstance(status, dict) and status.get("code"):
            found.setdefault(str(status["code"]), None)
    return list(found)


def c2pa_manifest_store(data: bytes, mime: str | None = None, *,
                        trust_anchors_pem: str | None = None) -> tuple[dict[str, Any] | None, bool, str | None]:
    """The embedded C2PA manifest store as c2pa-rs reports it (offline), for every reader of manifests.

    Returns:
        (store JSON or None, present, error): no store and no error when the file has no C2PA data; `present` with
        an error when a store was found but is unreadable; an error alone when the container could not be read
        (unsupported, unparsable, or the manifest lives only at a remote URL, which is not fetched).
    """
    fmt = _c2pa_format(mime)
    try:
        reader = c2pa.Reader.try_create(fmt, io.BytesIO(data), context=_reader_context(trust_anchors_pem))
    except c2pa.C2paError as exc:
        log.debug("c2pa could not read the asset: %s", exc)
        return None, False, str(exc) or type(exc).__name__
    if reader is None:
        return None, False, None
    try:
        with reader:
            return json.loads(reader.json()), True, None
    except (c2pa.C2paError, ValueError) as exc:
        log.warning("c2pa manifest store unreadable: %s", exc)
        return None, True, f"manifest store unreadable: {exc}"


def c2pa_signals(data: bytes, mime: str | None = None, *, trust_anchors_pem: str | None = None) -> dict[str, Any]:
    """Read and validate the C2PA manifest store embedded in image bytes, offline.

    Every manifest of the store counts, not only the active one: an edit of a generated image keeps the generator's
    `c2pa.created` action in its ingredient's manifest while the editor's own manifest may only say "opened".

    Validation states are c2pa-rs's: `Invalid` (a hash, signature or structure check failed: tampered or broken),
    `Valid` (intact, but the signer is not on a trust list; `signingCredential.untrusted` is then among the errors)
    and `Trusted` (intact and the chain ends in a trust anchor). No trust list is configured by default, so genuine
    credentials read as `Valid` unless `trust_anchors_pem` holds their roots.

    Args:
        data: the encoded image (JPEG, PNG, WebP, TIFF, AVIF, HEIF, GIF, ... as c2pa-rs supports).
        mime: a format hint, MIME type (`image/jpeg`) or Pillow format name (`JPEG`); None detects it.
        trust_anchors_pem: PEM root certificates to trust, for a `Trusted` state.

    Returns:
        `present` (a manifest store was read), `validation_state`, `validation_errors` (failure codes of the active
        manifest and its ingredients, e.g. `assertion.dataHash.mismatch`), `claim_generator`,
        `digital_source_types` (all distinct digitalSourceType values found), `trained_algorithmic` (one of them is
        in `TRAINED_SOURCE_TYPES`, whatever the validation state) and `error` (why the store could not be read; a
        file without C2PA data is not an error).
    """
    store, present, error = c2pa_manifest_store(data, mime, trust_anchors_pem=trust_anchors_pem)
    if store is None:
        out = _empty_c2pa(error)
        out["present"] = present
        return out

    manifests = store.get("manifests") or {}
    active = manifests.get(store.get("active_manifest")) or {}
    found: dict[str, None] = {}
    _source_types(list(manifests.values()), found)
    source_types = list(found)
    state = store.get("validation_state")
    return {
        "present": True,
        "validation_state": str(state) if state is not None else None,
        "validation_errors": _validation_errors(store),
        "claim_generator": _claim_generator(active),
        "digital_source_types": source_types,
        "trained_algorithmic": any(_is_trained(t) for t in source_types),
        "error": None,
    }


def sdxl_watermark(rgb: Image.Image) -> dict[str, Any]:
    """Decode the Stable Diffusion XL invisible watermark (48 bits, `dwtDct`) and score it against SDXL's message.

    The mark lives in the U chroma plane at the generated resolution: resizing destroys it and so does JPEG's 4:2:0
    chroma subsampling (4:4:4 JPEG at q90 mostly keeps it). Decoding costs 55-95 ms per megapixel on one core.

    Args:
        rgb: the normalised 8-bit RGB image (`curation.image_io.load_rgb`); other modes are converted to RGB.

    Returns:
        `bit_accuracy` (fraction of the 48 bits equal to SDXL's message; ~0.5 on unmarked images), `detected`
        (`bit_accuracy >= WATERMARK_MIN_BIT_ACCURACY`) and `error`. Images below the transform's minimum size
        (`WATERMARK_MIN_PIXELS`, `WATERMARK_MIN_SIDE`) give `bit_accuracy` None, `detected` False and an error.
    """
    width, height = rgb.size
    if width * height < WATERMARK_MIN_PIXELS or min(width, height) < WATERMARK_MIN_SIDE:
        return {
            "bit_accuracy": None,
            "detected": False,
            "error": f"too small for the watermark transform: {width}x{height} (needs >= {WATERMARK_MIN_PIXELS} "
            f"pixels and sides >= {WATERMARK_MIN_SIDE})",
        }
    if rgb.mode != "RGB":
        rgb = rgb.convert("RGB")
    # SDXL embeds into an RGB->BGR flipped array (generative-models, diffusers >= 0.19); OpenCV's order is BGR.
    bgr = cv2.cvtColor(np.asarray(rgb), cv2.COLOR_RGB2BGR)
    try:
        bits = np.asarray(_DECODER.decode(bgr, "dwtDct"), dtype=bool)
    except (RuntimeError, ValueError, cv2.error) as exc:
        log.warning("SDXL watermark decode failed on a %dx%d image: %s", width, height, exc)
        return {"bit_accuracy": None, "detected": False, "error": f"watermark decode failed: {exc}"}
    accuracy = float(np.mean(bits == _SDXL_BITS))
    return {"bit_accuracy": accuracy, "detected": accuracy >= WATERMARK_MIN_BIT_ACCURACY, "error": None}


__all__ = [
    "SDXL_WATERMARK_BITS",
    "SDXL_WATERMARK_MESSAGE",
    "TRAINED_SOURCE_TYPES",
    "WATERMARK_MIN_BIT_ACCURACY",
    "WATERMARK_MIN_PIXELS",
    "WATERMARK_MIN_SIDE",
    "c2pa_manifest_store",
    "c2pa_signals",
    "sdxl_watermark",
]
