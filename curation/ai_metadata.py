"""AI-generation signals in metadata and in hidden pixel payloads (no model needed, all offline).

Signals are short strings `kind:detail`; any one of them is confident enough to exclude an image from pretraining
(Krea excluded every AI-generated image: "even a small amount can skew the model"). Real photos carry camera and
editor metadata, which none of these patterns match (measured on ../shared/data/ai_dev, see BENCHMARKS.md).
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

TRAINED_SOURCE_TYPES = ("trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia", "compositeSynthetic")
"""IPTC digital source types that mean a generative model made (part of) the image. `algorithmicMedia` alone
(procedural, not trained) is not one of them."""

# Generator names as they appear in Software / Make / CreatorTool / Artist fields. Matched as whole words,
# case-insensitively, so a camera's firmware string never matches by accident.
GENERATOR_NAMES = (
    "midjourney", "nijijourney", "dall-e", "dall·e", "dalle", "adobe firefly", "firefly", "imagen", "stable diffusion",
    "stablediffusion", "sdxl", "novelai", "comfyui", "automatic1111", "stable-diffusion-webui", "invokeai",
    "fooocus", "swarmui", "leonardo.ai", "ideogram", "dreamstudio", "nightcafe", "bing image creator",
    "gpt-4o", "chatgpt", "gemini", "flux.1", "black forest labs", "krea", "runway", "playground ai",
)
_GENERATOR_RE = re.compile(r"(?<![a-z0-9])(" + "|".join(re.escape(n) for n in GENERATOR_NAMES) + r")(?![a-z0-9])",
                           re.IGNORECASE)
_A1111_RE = re.compile(r"\bSteps: \d+, Sampler: ", re.IGNORECASE)
_SOFTWARE_FIELDS = ("Software", "Make", "Model", "Artist", "HostComputer", "ProcessingSoftware")
# PNG text chunk keys written by generators (key -> tool); the value is checked where a key is ambiguous.
_GENERATOR_CHUNKS = {
    "parameters": "automatic1111",
    "invokeai_metadata": "invokeai",
    "invokeai_graph": "invokeai",
    "sd-metadata": "invokeai",
    "dream": "invokeai",
    "fooocus_scheme": "fooocus",
    "sui_image_params": "swarmui",
    "generation_data": "generator",
    "prompt": "comfyui",
    "workflow": "comfyui",
}
STEALTH_SIGNATURES = ("stealth_pnginfo", "stealth_pngcomp", "stealth_rgbinfo", "stealth_rgbcomp")


def _looks_like_comfy(value: str) -> bool:
    try:
        data = json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return False
    if isinstance(data, dict):
        nodes = data.get("nodes") if "nodes" in data else data.values()
        return any(isinstance(n, dict) and ("class_type" in n or "type" in n) for n in nodes)
    return False


def _chunk_signals(text: dict[str, Any]) -> list[str]:
    signals = []
    lowered = {str(k).lower(): v for k, v in text.items()}
    for key, tool in _GENERATOR_CHUNKS.items():
        value = lowered.get(key)
        if not isinstance(value, str) or not value.strip():
            continue
        if key in ("prompt", "workflow") and not _looks_like_comfy(value):
            continue  # a plain "prompt" text field is not proof; ComfyUI writes a node graph
        if key == "parameters" and not (_A1111_RE.search(value) or "fooocus" in value.lower()
                                        or value.lstrip().startswith("{")):
            continue
        if key == "parameters" and "fooocus" in value.lower():
            tool = "fooocus"
        signals.append(f"png_chunk:{key}({tool})")
    software = lowered.get("software")
    if isinstance(software, str) and _GENERATOR_RE.search(software):
        signals.append(f"png_chunk:software({_GENERATOR_RE.search(software).group(1).lower()})")
    comment = lowered.get("comment")
    if isinstance(comment, str) and ("novelai" in str(lowered.get("software", "")).lower()
                                     or _A1111_RE.search(comment)):
        signals.append("png_chunk:comment(novelai)" if "novelai" in str(lowered.get("software", "")).lower()
                       else "png_chunk:comment(automatic1111)")
    for key in ("description", "title", "source"):
        value = lowered.get(key)
        if isinstance(value, str) and (_A1111_RE.search(value) or value.strip().lower() == "ai generated image"):
            signals.append(f"png_chunk:{key}(generator text)")
    return signals


def _exif_signals(exif: dict[str, Any]) -> list[str]:
    signals = []
    for field in ("UserComment", "ImageDescription", "XPComment"):
        value = exif.get(field)
        if not isinstance(value, str):
            continue
        if _A1111_RE.search(value):
            signals.append(f"exif:{field}(automatic1111)")
        elif _looks_like_comfy(value):
            signals.append(f"exif:{field}(comfyui)")
        elif "novelai" in value.lower() or "midjourney" in value.lower():
            signals.append(f"exif:{field}(generator text)")
    for field in _SOFTWARE_FIELDS:
        value = exif.get(field)
        if isinstance(value, str) and (match := _GENERATOR_RE.search(value)):
            signals.append(f"exif:{field}({match.group(1).lower()})")
    return signals


def _source_type_signals(where: str, text: str) -> list[str]:
    found = []
    for source_type in TRAINED_SOURCE_TYPES:
        if re.search(r"digitalsourcetype/" + source_type + r"\b|\b" + source_type + r"\b", text):
            found.append(f"{where}:DigitalSourceType={source_type}")
    return found


def metadata_signals(metadata: dict[str, Any]) -> list[str]:
    """AI-generation signals in a `source_images.metadata` document.

    Args:
        metadata: `{"embedded": {...}, "sidecar": {...}}` as ingest stores it (`text` = PNG chunks and other string
            info, `exif`, `xmp`, `iptc`).

    Returns:
        Signals such as `png_chunk:parameters(automatic1111)`, `exif:UserComment(automatic1111)`,
        `xmp:DigitalSourceType=trainedAlgorithmicMedia`, `exif:Software(midjourney)`; empty when there are none.
    """
    embedded = metadata.get("embedded") or {}
    signals = _chunk_signals(embedded.get("text") or {})
    signals += _exif_signals(embedded.get("exif") or {})
    xmp = embedded.get("xmp")
    if isinstance(xmp, str):
        signals += _source_type_signals("xmp", xmp)
        tool = re.search(r"CreatorTool(?:>|=\")([^<\"]+)", xmp)
        if tool and (match := _GENERATOR_RE.search(tool.group(1))):
            signals.append(f"xmp:CreatorTool({match.group(1).lower()})")
    iptc = embedded.get("iptc") or {}
    if iptc:
        signals += _source_type_signals("iptc", json.dumps(iptc))
    return sorted(set(signals))


def stealth_payload(img: Image.Image) -> tuple[str, str] | None:
    """The "stealth pnginfo" payload hidden in the least significant bits of the alpha (or RGB) channels.

    Format of the AUTOMATIC1111 stealth-pnginfo extension: pixels read column by column, one bit per alpha value
    (or three per RGB pixel), a 15-byte signature, a 32-bit payload length in bits, then the payload (gzip for the
    `...comp` signatures).

    Args:
        img: the image as decoded from its original bytes (mode RGBA or RGB), not normalised.

    Returns:
        (signature, payload text) or None when there is no payload.
    """
    if img.mode not in ("RGBA", "RGB"):
        return None
    arr = np.asarray(img)
    channels = [arr[..., 3]] if img.mode == "RGBA" else []
    channels.append(arr[..., :3])
    for plane in channels:
        # column-major order (x outer, y inner); RGB planes give three bits per pixel
        bits = (np.ascontiguousarray(plane.swapaxes(0, 1)).reshape(-1) & 1).astype(np.uint8)
        if len(bits) < 152:
            continue
        signature = np.packbits(bits[:120]).tobytes().decode("latin-1")
        if signature not in STEALTH_SIGNATURES:
            continue
        length = int("".join(map(str, bits[120:152].tolist())), 2)
        payload_bits = bits[152 : 152 + length]
        if length <= 0 or len(payload_bits) < length:
            return signature, ""
        raw = np.packbits(payload_bits).tobytes()
        try:
            text = gzip.decompress(raw).decode("utf-8", "replace") if signature.endswith("comp") else raw.decode(
                "utf-8", "replace")
        except (OSError, EOFError) as exc:
            log.debug("stealth payload under %s does not decompress: %s", signature, exc)
            text = ""
        return signature, text
    return None


def stealth_signals(img: Image.Image) -> list[str]:
    """`stealth:<signature>` when a stealth payload is present."""
    found = stealth_payload(img)
    return [f"stealth:{found[0]}"] if found else []
