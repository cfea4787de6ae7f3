"""AI-generation signals in metadata and in hidden pixel payloads (no model needed, all offline).

Signals are short strings `kind:detail`; any one of them is confident enough to exclude an image from pretraining
(Krea excluded every AI-generated image: "even a small amount can skew the model"). Real photos carry camera and
editor metadata, which none of these patterns match (measured on ../shared/data/ai_dev, see BENCHMARKS.md).
"""

from __future__ import annotations

import gzip
import html
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
    "gpt-4o", "chatgpt", "gemini", "flux.1", "black forest labs", "krea", "runway", "playground ai", "draw things",
    "sd.next",
)
_GENERATOR_RE = re.compile(r"(?<![a-z0-9])(" + "|".join(re.escape(n) for n in GENERATOR_NAMES) + r")(?![a-z0-9])",
                           re.IGNORECASE)
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


_INFOTEXT_STEPS = re.compile(r"(?:^|[\n,]\s*)Steps: \d+", re.IGNORECASE)
_INFOTEXT_KEYS = re.compile(r"(?:^|[\n,]\s*)(Sampler|Seed|CFG scale|Size|Model hash|Model|Schedule type|"
                            r"Denoising strength|Clip skip|Version|App): ", re.IGNORECASE)
_JSON_PREFIX = re.compile(r"^\s*(prompt|workflow|parameters|sui_image_params)\s*:\s*(?=[{\[])", re.IGNORECASE)


def _json(value: str) -> Any:
    """The JSON inside a metadata string, also after a ComfyUI save node's "prompt:" / "Workflow: " prefix."""
    text = _JSON_PREFIX.sub("", value, count=1).strip()
    if not text.startswith(("{", "[")):
        return None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError, ValueError):
        return None


def _looks_like_comfy(value: str | Any) -> bool:
    data = _json(value) if isinstance(value, str) else value
    if isinstance(data, dict):
        nodes = data.get("nodes") if "nodes" in data else list(data.values())
        return isinstance(nodes, list) and any(isinstance(n, dict) and ("class_type" in n or "type" in n)
                                               for n in nodes)
    return False


def infotext_tool(value: str) -> str | None:
    """The tool of an AUTOMATIC1111-style parameters text ("Steps: 20, Sampler: ..., Seed: ..."), None if it is not
    one. The key order differs between tools (SD.Next writes Seed before Sampler), so a `Steps: N` line with two
    more known keys is enough; `App: SD.Next`, `Fooocus` or `Forge` name the tool."""
    if not _INFOTEXT_STEPS.search(value) or len({m.lower() for m in _INFOTEXT_KEYS.findall(value)}) < 2:
        return None
    lowered = value.lower()
    if "app: sd.next" in lowered:
        return "sdnext"
    if "fooocus" in lowered:
        return "fooocus"
    if re.search(r"version: f\d", lowered):
        return "forge"
    return "automatic1111"


def text_tool(value: str) -> str | None:
    """Which generator wrote a metadata string, from its content alone: parameters text, a ComfyUI graph (API
    prompt or UI workflow, with or without a "prompt:" / "Workflow:" prefix), SwarmUI's `sui_image_params` JSON, a
    Fooocus or generic generation-parameters JSON; None for anything else (captions, camera strings)."""
    if not isinstance(value, str) or len(value) < 8:
        return None
    data = _json(value)
    if isinstance(data, dict):
        if "sui_image_params" in data:
            return "swarmui"
        if _looks_like_comfy(data):
            return "comfyui"
        keys = {str(k).lower() for k in data}
        if str(data.get("version", "")).lower().startswith("fooocus") or "fooocus_v2" in keys:
            return "fooocus"
        if {"prompt", "positive_prompt"} & keys and len(keys & {"steps", "seed", "sampler", "cfg", "cfg_scale",
                                                                "scale", "cfgscale", "guidance_scale"}) >= 2:
            return "generator json"
        return None
    return infotext_tool(value)


def _chunk_signals(text: dict[str, Any]) -> list[str]:
    signals = []
    lowered = {str(k).lower(): v for k, v in text.items()}
    handled = set()
    for key, tool in _GENERATOR_CHUNKS.items():
        value = lowered.get(key)
        if not isinstance(value, str) or not value.strip():
            continue
        found = text_tool(value)
        if key in ("prompt", "workflow") and found != "comfyui":
            continue  # a plain "prompt" text field is not proof; ComfyUI writes a node graph
        if key == "parameters":
            if found is None and "fooocus" in value.lower():
                found = "fooocus"
            if found is None and not value.lstrip().startswith("{"):
                continue
            tool = found or "generator json"
        handled.add(key)
        signals.append(f"png_chunk:{key}({tool})")
    software = lowered.get("software")
    if isinstance(software, str) and _GENERATOR_RE.search(software):
        signals.append(f"png_chunk:software({_GENERATOR_RE.search(software).group(1).lower()})")
    comment = lowered.get("comment")
    if isinstance(comment, str) and "novelai" in str(lowered.get("software", "")).lower():
        signals.append("png_chunk:comment(novelai)")
        handled.add("comment")
    for key, value in lowered.items():
        if key in handled or not isinstance(value, str):
            continue
        if found := text_tool(value):
            signals.append(f"png_chunk:{key}({found})")
        elif key in ("description", "title", "source") and value.strip().lower() == "ai generated image":
            signals.append(f"png_chunk:{key}(generator text)")
    return signals


def _exif_signals(exif: dict[str, Any]) -> list[str]:
    signals = []
    for field, value in exif.items():
        if not isinstance(value, str):
            continue
        if tool := text_tool(value):
            signals.append(f"exif:{field}({tool})")
        elif field.rsplit(".", 1)[-1] in ("UserComment", "ImageDescription", "XPComment") and (
                "novelai" in value.lower() or "midjourney" in value.lower()):
            signals.append(f"exif:{field}(generator text)")
    for field in _SOFTWARE_FIELDS:
        value = exif.get(field)
        if isinstance(value, str) and (match := _GENERATOR_RE.search(value)):
            signals.append(f"exif:{field}({match.group(1).lower()})")
    return signals


_XMP_TEXT = re.compile(r">([^<]{8,})<|=\"([^\"]{8,})\"")


def _xmp_signals(xmp: str) -> list[str]:
    """Generator data inside XMP: a source type, a CreatorTool, or parameters text / a workflow in any element or
    attribute (Draw Things and others put the infotext in exif:UserComment)."""
    signals = _source_type_signals("xmp", xmp)
    tool = re.search(r"CreatorTool(?:>|=\")([^<\"]+)", xmp)
    if tool and (match := _GENERATOR_RE.search(tool.group(1))):
        signals.append(f"xmp:CreatorTool({match.group(1).lower()})")
    for element, attribute in _XMP_TEXT.findall(xmp):
        if found := text_tool(html.unescape(element or attribute)):
            signals.append(f"xmp:text({found})")
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
        signals += _xmp_signals(xmp)
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
