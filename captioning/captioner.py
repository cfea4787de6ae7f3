"""Captions built in steps: OCR text (step 1), metadata (step 2), then a captioner (step 3).

Three backends share one interface (`load_captioner(config)` -> `setup()` once per worker, then
`caption_batch(inputs) -> list[CaptionResult]`):

- `grounded` (the embedded default): composes measured visual facts (orientation, greyscale or colour,
  brightness, dominant colours), metadata and OCR text deterministically. It never names an entity that is not in
  the metadata or the OCR text, and always quotes every confident OCR line verbatim.
- `transformers`: Qwen2-VL / Qwen2.5-VL / Qwen3-VL from a local directory, batched generation with left padding.
- `openai`: any OpenAI-compatible chat-completions endpoint with image input (e.g. vLLM serving Qwen3-VL), through
  `captioning.openai_client.ChatClient`.

VLM captions go through `captioning.grounding.check_caption`. An empty, refusal-like, repetitive or truncated
caption is generated again once (sampling with a fixed seed, and a larger token budget after a truncation) and
otherwise becomes a failure with its reason. A caption that lacks a confident OCR line is, by default
(`missing_ocr="append"`), repaired by appending a sentence that quotes the missing lines verbatim (recorded in
`inputs["ocr_appended"]`): the OCR text is trusted input, a model that paraphrases or re-cases it would otherwise fail
most text-heavy images, and a retry costs a full generation. With `missing_ocr="retry"` it is retried like the
other failures and reported as `caption_missing_ocr_text`.
"""

from __future__ import annotations

import base64
import logging
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from PIL import Image, ImageOps

from captioning import grounding, prose
from captioning.grounding import CaptionIssue
from captioning.visual_facts import visual_facts

log = logging.getLogger(__name__)

PROMPT_VERSION = "vlm-caption-v2"
"""Version of the VLM prompt (`SYSTEM_PROMPT`, `INSTRUCTIONS`, `build_prompt`); change it when they change."""
GROUNDED_VERSION = "grounded-caption-v2"
"""Version of the grounded composition (recorded as `prompt_version` of grounded captions)."""
GROUNDED_MODEL = "atelier-grounded"
"""`model` recorded for grounded captions (there are no weights)."""
BACKENDS = ("grounded", "transformers", "openai")

SYSTEM_PROMPT = "You write accurate, detailed captions of images for a text-to-image training dataset."
INSTRUCTIONS = """Describe this image in one paragraph of plain prose.
- Start with the kind of image (photograph, painting, drawing, illustration, poster, screenshot, 3D render, ...) \
and its main subject, then the setting, composition, lighting, colours and style.
- Name the specific people, places, landmarks, buildings, artworks, artists, brands, species and art styles that \
you recognise with confidence. Do not guess names; describe what you cannot identify.
- Quote every piece of visible text exactly as written, in double quotes, keeping its spelling, capitalisation \
and punctuation.
- No lists, headings, field labels (such as "Title:") or preamble such as "The image shows"; no speculation \
about intent.
- Do not mention file names, photographers, credits, licences, sources or URLs: they are not visible content."""
CONTEXT_HEADER = "Context about this image (it may be incomplete or wrong; use it only where the image agrees):"

MAX_DESCRIPTION_CHARS = 600
"""Longest alt text / description / sidecar caption used (cut at a word boundary, marked with '...')."""
MAX_TITLE_CHARS = 200
"""Longest title used."""
MAX_TAGS = 20
"""Most tags used."""
MAX_DESCRIPTIONS = 3
"""Most descriptions (alt text and captions together) used."""


@dataclass(frozen=True)
class CaptionerConfig:
    """Everything that decides how captions are made."""

    backend: str = "grounded"
    """'grounded' (embedded default), 'transformers' (local VLM) or 'openai' (OpenAI-compatible endpoint)."""
    model_path: str | None = None
    """transformers: local directory with the model, processor and chat template (never downloaded)."""
    endpoint: str | None = None
    """openai: base URL such as `http://vllm:8000/v1` (or the full `/chat/completions` URL)."""
    model: str | None = None
    """openai: the served model name (required); transformers: name recorded (default: the directory name)."""
    api_key_env: str | None = None
    """openai: NAME of the environment variable holding the API key (None: no key is sent)."""
    max_new_tokens: int = 384
    """Generation budget per caption (tokens)."""
    temperature: float = 0.0
    """Sampling temperature of the first attempt (0: greedy)."""
    retry_temperature: float = 0.7
    """Sampling temperature of the retry after a failed caption (with top_p 0.9 and a fixed seed)."""
    retry_token_factor: float = 1.5
    """A retry after a truncated caption gets this many times `max_new_tokens`."""
    max_caption_attempts: int = 2
    """Attempts per caption for empty/refusal/repetitive/truncated captions (2 = retried once)."""
    missing_ocr: str = "append"
    """'append': quote missing OCR lines in an appended sentence; 'retry': treat as a failure and retry."""
    fallback_to_grounded: bool = False
    """When a VLM caption fails, return the grounded caption instead of '' (the failure is still reported)."""
    batch_size: int = 8
    """transformers: images per `generate` call."""
    concurrency: int = 8
    """openai: requests in flight at once per worker."""
    timeout_s: float = 120.0
    """openai: per-request socket timeout (seconds)."""
    max_retries: int = 4
    """openai: HTTP retries (429, 5xx, timeouts, connection errors, malformed bodies) per request."""
    backoff_s: float = 1.0
    """openai: first retry delay (doubled per retry, with jitter; `Retry-After` is honoured)."""
    device: str = "cpu"
    """transformers: 'cpu', 'cuda', 'cuda:1' or 'auto' (cuda when the worker has one)."""
    dtype: str = "auto"
    """transformers: 'auto' (bfloat16 on GPU, float32 on CPU), 'bfloat16', 'float16' or 'float32'."""
    num_threads: int | None = None
    """transformers: torch intra-op CPU threads, set in `setup()` (None: torch's default; 1 on a shared CPU)."""
    attn_implementation: str | None = None
    """transformers: e.g. 'sdpa' or 'flash_attention_2' (None: the library default)."""
    min_ocr_score: float = 0.5
    """OCR lines with a lower confidence are ignored: neither given to the model nor required in the caption."""
    max_ocr_lines: int = 40
    """Most OCR lines used per image (further confident lines are recorded as omitted)."""
    max_image_side: int = 1280
    """VLM backends: the image is downscaled so its longer side is at most this."""
    seed: int = 0
    """Seed of retry sampling (the retry of attempt k uses seed + k)."""
    credit_in_caption: bool = False
    """Credit the creator in the caption ('Photograph by Jane Doe.'); by default credits stay in the metadata."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown captioner backend {self.backend!r}; expected one of {BACKENDS}")
        if self.missing_ocr not in ("append", "retry"):
            raise ValueError(f"missing_ocr must be 'append' or 'retry', not {self.missing_ocr!r}")
        for name in ("max_new_tokens", "max_caption_attempts", "batch_size", "concurrency", "max_image_side"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_retries < 0 or self.timeout_s <= 0:
            raise ValueError("max_retries must be >= 0 and timeout_s > 0")


@dataclass
class CaptionInput:
    """One image to caption, with the outputs of the OCR step and the ingest metadata."""

    sample_id: str
    """The sample's id (hex SHA-256 of its bytes)."""
    image: Image.Image
    """The decoded image."""
    ocr_lines: list[tuple[str, float]] = field(default_factory=list)
    """(text, confidence) per OCR line, in reading order."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """The parsed `metadata` JSON of `source_images`: `{"embedded": {...}, "sidecar": {...}}`."""
    source_uri: str | None = None
    """Where the image came from (used as the metadata `source` when the sidecar names none)."""


@dataclass
class CaptionResult:
    """A caption and its lineage: which backend, model and prompt made it, from which inputs."""

    sample_id: str
    """The sample's id."""
    caption: str
    """The caption; '' when it failed (unless `fallback_to_grounded`)."""
    backend: str
    """Backend that wrote `caption` ('grounded' for a fallback caption)."""
    model: str
    """Model that wrote `caption` (a path's directory name, a served model name, or `GROUNDED_MODEL`)."""
    prompt_version: str
    """`PROMPT_VERSION` for VLM captions, `GROUNDED_VERSION` for grounded ones."""
    inputs: dict[str, Any]
    """What the caption was built from: `ocr_lines`, `metadata_fields`, `metadata`, and more per backend."""
    attempts: int
    """Generations it took (1, or 2 after a retry)."""
    failure: str | None = None
    """None, or one of `grounding.FAILURE_REASONS` (the `decisions.reason` of stage 'caption')."""
    failure_detail: str | None = None
    """Why it failed, for the ledger's `details`."""
    fallback_from: str | None = None
    """The VLM backend whose caption failed when `caption` is the grounded fallback."""

    def to_record(self) -> dict[str, Any]:
        """A flat JSON-safe dict (for a Parquet row or a `decisions` details payload)."""
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------
# Step 2: metadata


_JUNK_TEXT = {
    "olympus digital camera", "sony dsc", "digital camera", "default", "untitled", "no title", "image", "picture",
    "photo", "none", "null", "n/a", "na", "-", "dcim", "exif_jpeg_picture", "minolta digital camera",
    "samsung camera pictures", "lg electronics", "screenshot",
}
_CAMERA_NAME_RE = re.compile(
    r"^(?:img|dsc|dscn|dscf|dsc_|p|pxl|mvimg|gopr|dji|sam|wp|photo|image|screenshot)[\s_\-]*[\d_\-]+"
    r"(?:\.[a-z0-9]{2,5})?$|^[\d_\-\s]+$|\.(?:jpe?g|png|webp|gif|tiff?|heic|bmp)$", re.IGNORECASE)
_GENERATOR_HINT_RE = re.compile(r"(negative prompt|steps:\s*\d|sampler:|cfg scale)", re.IGNORECASE)
_XMP_NS = {
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "photoshop": "http://ns.adobe.com/photoshop/1.0/",
    "Iptc4xmpCore": "http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/",
    "exif": "http://ns.adobe.com/exif/1.0/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
}


def _clean(value: Any, limit: int = MAX_DESCRIPTION_CHARS) -> str | None:
    """A usable metadata string: decoded, whitespace-normalised, not a camera default, cut to `limit`."""
    if isinstance(value, dict) and isinstance(value.get("base64"), str):  # XP* tags are UTF-16LE bytes
        try:
            raw = base64.b64decode(value["base64"])
            value = raw.decode("utf-16-le", errors="strict") if len(raw) % 2 == 0 else raw.decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
    elif isinstance(value, list) and value and all(isinstance(v, int) and 0 <= v < 256 for v in value):
        try:
            value = bytes(value).decode("utf-16-le")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        return None
    text = grounding.normalize_space(str(value).replace("\x00", " "))
    if not text or text.lower() in _JUNK_TEXT or not any(ch.isalnum() for ch in text):
        return None
    if len(text) > limit:
        cut = text[:limit].rsplit(" ", 1)[0]
        text = cut.rstrip(",;:") + "..."
    return text


def _looks_like_prose(text: str) -> bool:
    """At least half of the words are plain words (no digits): rejects ids, hashes and encoder signatures."""
    tokens = [t.strip(".,;:!?()[]{}\"'") for t in text.split()]
    tokens = [t for t in tokens if t]
    words = [t for t in tokens if t[0].isalpha() and not any(ch.isdigit() for ch in t)]
    return bool(words) and len(words) >= len(tokens) / 2


def _sidecar_get(sidecar: dict[str, Any], *keys: str) -> tuple[str, Any] | None:
    lowered = {str(k).lower(): k for k in sidecar}
    for key in keys:
        if key in lowered and sidecar[lowered[key]] not in (None, "", [], {}):
            return lowered[key], sidecar[lowered[key]]
    return None


def _split_tags(value: Any) -> list[str]:
    if isinstance(value, str):
        parts = re.split(r"[;,|\n]", value)
    elif isinstance(value, list | tuple):
        parts = [p for v in value for p in (_split_tags(v) if isinstance(v, list | tuple) else [v])]
    else:
        parts = [value]
    out = []
    for part in parts:
        text = _clean(part, 60)
        if text:
            out.append(text)
    return out


def _parse_xmp(xmp: str) -> dict[str, Any]:
    """Title, description, alt text, subjects, creator, place and date from an XMP packet (element or attribute)."""
    start, end = xmp.find("<x:xmpmeta"), xmp.rfind("</x:xmpmeta>")
    if start < 0 or end < 0:
        start, end = xmp.find("<rdf:RDF"), xmp.rfind("</rdf:RDF>")
        end = end + len("</rdf:RDF>") if end >= 0 else -1
    else:
        end += len("</x:xmpmeta>")
    if start < 0 or end < 0:
        return {}
    try:
        root = ET.fromstring(xmp[start:end])
    except ET.ParseError as exc:
        log.debug("unparseable XMP: %s", exc)
        return {}
    out: dict[str, Any] = {}

    def qname(name: str) -> str:
        prefix, local = name.split(":")
        return f"{{{_XMP_NS[prefix]}}}{local}"

    def values(name: str) -> list[str]:
        found: list[str] = []
        for desc in root.iter(qname("rdf:Description")):
            if qname(name) in desc.attrib:
                found.append(desc.attrib[qname(name)])
        for elem in root.iter(qname(name)):
            items = list(elem.iter(qname("rdf:li")))
            default = [li for li in items if li.get("{http://www.w3.org/XML/1998/namespace}lang") == "x-default"]
            for li in default or items:
                if li.text:
                    found.append(li.text)
            if not items and elem.text and elem.text.strip():
                found.append(elem.text)
        return found

    for key, name in (("title", "dc:title"), ("description", "dc:description"), ("headline", "photoshop:Headline"),
                      ("alt_text", "Iptc4xmpCore:AltTextAccessibility"), ("creator", "dc:creator"),
                      ("city", "photoshop:City"), ("state", "photoshop:State"), ("country", "photoshop:Country"),
                      ("sublocation", "Iptc4xmpCore:Location"), ("date", "exif:DateTimeOriginal"),
                      ("date_created", "photoshop:DateCreated")):
        found = values(name)
        if found:
            out[key] = found[0]
    subjects = values("dc:subject")
    if subjects:
        out["subject"] = subjects
    return out


def _parse_date(value: Any) -> str | None:
    """An ISO date (YYYY-MM-DD, YYYY-MM or YYYY) from EXIF/IPTC/XMP/sidecar date strings, or None."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    match = re.match(r"^(\d{4})[:\-/.]?(\d{2})[:\-/.]?(\d{2})(?:$|[ T])", text)
    if match:
        year, month, day = (int(g) for g in match.groups())
        if 1826 <= year <= 2100 and 1 <= month <= 12 and 1 <= day <= 31:
            return f"{year:04d}-{month:02d}-{day:02d}"
        return None
    match = re.match(r"^(\d{4})-(\d{2})$", text)
    if match and 1 <= int(match.group(2)) <= 12 and 1826 <= int(match.group(1)) <= 2100:
        return text
    if re.match(r"^\d{4}$", text) and 1826 <= int(text) <= 2100:
        return text
    return None


def _gps(info: Any) -> dict[str, float] | None:
    if not isinstance(info, dict):
        return None

    def coord(key: str, ref_key: str, negative: str, bound: float) -> float | None:
        raw, ref = info.get(key), info.get(ref_key)
        if isinstance(raw, int | float):
            raw = [raw]
        if not isinstance(raw, list) or not raw or not all(isinstance(v, int | float) for v in raw):
            return None
        value = sum(float(v) / 60**i for i, v in enumerate(raw[:3]))
        if isinstance(ref, str) and ref.strip().upper().startswith(negative):
            value = -value
        return round(value, 5) if math.isfinite(value) and abs(value) <= bound else None

    lat = coord("GPSLatitude", "GPSLatitudeRef", "S", 90.0)
    lon = coord("GPSLongitude", "GPSLongitudeRef", "W", 180.0)
    if lat is None or lon is None or (lat == 0.0 and lon == 0.0):  # 0,0 is what a missing fix looks like
        return None
    return {"lat": lat, "lon": lon}


def _camera(make: Any, model: Any) -> str | None:
    make_s, model_s = _clean(make, 80), _clean(model, 80)
    if make_s and model_s:
        first = make_s.split()[0].lower()
        return model_s if model_s.lower().startswith(first) else f"{make_s} {model_s}"
    return model_s or make_s


def extract_caption_metadata(metadata: dict[str, Any] | None, source_uri: str | None = None) -> dict[str, Any]:
    """Pick what a caption may use from the ingest metadata: step 2 of captioning.

    Sidecar fields (written by the data's publisher) come first, then IPTC, XMP, EXIF and PNG text chunks.
    Camera-default strings ('OLYMPUS DIGITAL CAMERA', 'IMG_1234.JPG') and generator parameters are ignored.

    Args:
        metadata: `{"embedded": {"exif", "xmp", "iptc", "text", ...}, "sidecar": {...}}` as ingest stores it
            (None or {} for none).
        source_uri: the sample's `source_uri`, used as `source` when the sidecar names no URL or source.

    Returns:
        A dict with always the same keys: `title`, `alt_text` (str or None), `captions` (list of str),
        `tags` (list), `date` (ISO date or None), `camera`, `place` (str or None), `gps` ({lat, lon} or None),
        `creator`, `source` (str or None), and `fields`: for each key the metadata field(s) it came from,
        e.g. `{"title": "sidecar.title", "captions": ["sidecar.caption", "exif.ImageDescription"]}`.
    """
    metadata = metadata if isinstance(metadata, dict) else {}
    embedded = metadata.get("embedded") if isinstance(metadata.get("embedded"), dict) else {}
    sidecar = metadata.get("sidecar") if isinstance(metadata.get("sidecar"), dict) else {}
    exif = embedded.get("exif") if isinstance(embedded.get("exif"), dict) else {}
    iptc = embedded.get("iptc") if isinstance(embedded.get("iptc"), dict) else {}
    text = embedded.get("text") if isinstance(embedded.get("text"), dict) else {}
    xmp = _parse_xmp(embedded["xmp"]) if isinstance(embedded.get("xmp"), str) else {}
    text_ci = {str(k).lower(): (k, v) for k, v in text.items()}
    out: dict[str, Any] = {"title": None, "alt_text": None, "captions": [], "tags": [], "date": None, "camera": None,
                           "place": None, "gps": None, "creator": None, "source": None}
    fields: dict[str, Any] = {}

    def first(key: str, candidates: list[tuple[str, Any]], limit: int = MAX_DESCRIPTION_CHARS) -> None:
        for where, value in candidates:
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                value = value[0]
            cleaned = _clean(value, limit)
            if cleaned and not (key == "title" and _CAMERA_NAME_RE.search(cleaned)):
                out[key], fields[key] = cleaned, where
                return

    def side(*keys: str) -> list[tuple[str, Any]]:
        hit = _sidecar_get(sidecar, *keys)
        return [(f"sidecar.{hit[0]}", hit[1])] if hit else []

    def png(*keys: str) -> list[tuple[str, Any]]:
        return [(f"text.{text_ci[k][0]}", text_ci[k][1]) for k in keys if k in text_ci]

    first("title", side("title", "headline", "object_name") + [("iptc.ObjectName", iptc.get("ObjectName")),
          ("iptc.Headline", iptc.get("Headline")), ("xmp.dc:title", xmp.get("title")),
          ("xmp.photoshop:Headline", xmp.get("headline")), ("exif.XPTitle", exif.get("XPTitle"))] + png("title"),
          MAX_TITLE_CHARS)
    first("alt_text", side("alt", "alt_text", "alttext", "alt-text")
          + [("xmp.Iptc4xmpCore:AltTextAccessibility", xmp.get("alt_text"))])

    caption_candidates = side("caption", "caption_from_source") + side("txt") + side("description", "desc") + side(
        "text") + [
        ("iptc.Caption-Abstract", iptc.get("Caption-Abstract")), ("xmp.dc:description", xmp.get("description")),
        ("exif.ImageDescription", exif.get("ImageDescription")), ("exif.XPComment", exif.get("XPComment")),
        ("exif.XPSubject", exif.get("XPSubject"))] + png("description")  # JPEG/PNG comments: encoder signatures
    seen = {out["alt_text"].lower()} if out["alt_text"] else set()
    caption_fields: list[str] = []
    skipped: dict[str, str] = {}
    for where, value in caption_candidates:
        cleaned = _clean(value)
        if not cleaned:
            continue
        if _GENERATOR_HINT_RE.search(cleaned):
            skipped[where] = "generator_parameters"
            continue
        if not _looks_like_prose(cleaned):
            skipped[where] = "not_prose"
            continue
        if grounding.repetition(cleaned):
            skipped[where] = "repetitive"
            continue
        key = cleaned.lower().rstrip(".")
        if key in seen or (out["title"] and key == out["title"].lower()):
            continue
        seen.add(key)
        out["captions"].append(cleaned)
        caption_fields.append(where)
        if len(out["captions"]) + (out["alt_text"] is not None) >= MAX_DESCRIPTIONS:
            break
    if caption_fields:
        fields["captions"] = caption_fields

    tag_fields: list[str] = []
    tags: list[str] = []
    for where, value in side("tags", "keywords", "labels", "categories", "subjects") + [
            ("iptc.Keywords", iptc.get("Keywords")), ("xmp.dc:subject", xmp.get("subject")),
            ("exif.XPKeywords", exif.get("XPKeywords"))] + png("keywords"):
        if value in (None, "", []):
            continue
        values = _split_tags(_clean(value, 4000) if isinstance(value, dict) else value)
        new = [t for t in values if t.lower() not in {x.lower() for x in tags}]
        if new:
            tags.extend(new)
            tag_fields.append(where)
    out["tags"] = tags[:MAX_TAGS]
    if tag_fields:
        fields["tags"] = tag_fields

    for where, value in [("exif.DateTimeOriginal", exif.get("DateTimeOriginal")),
                         ("xmp.exif:DateTimeOriginal", xmp.get("date")), ("iptc.DateCreated", iptc.get("DateCreated")),
                         ("xmp.photoshop:DateCreated", xmp.get("date_created"))] + side(
                             "date_taken", "datetaken", "date", "date_created", "created"):
        parsed = _parse_date(value)
        if parsed:
            out["date"], fields["date"] = parsed, where
            break

    camera = _camera(exif.get("Make"), exif.get("Model"))
    if camera:
        out["camera"] = camera
        fields["camera"] = [f"exif.{k}" for k in ("Make", "Model") if _clean(exif.get(k), 80)]

    place_parts: list[str] = []
    place_fields: list[str] = []
    for group in ([("sidecar", side("location", "place"))],
                  [("sidecar", side("city")), ("sidecar", side("state", "region")), ("sidecar", side("country"))],
                  [("iptc", [("iptc.Sub-location", iptc.get("Sub-location"))]),
                   ("iptc", [("iptc.City", iptc.get("City"))]),
                   ("iptc", [("iptc.Province-State", iptc.get("Province-State"))]),
                   ("iptc", [("iptc.Country-PrimaryLocationName", iptc.get("Country-PrimaryLocationName"))])],
                  [("xmp", [("xmp.Iptc4xmpCore:Location", xmp.get("sublocation"))]),
                   ("xmp", [("xmp.photoshop:City", xmp.get("city"))]),
                   ("xmp", [("xmp.photoshop:State", xmp.get("state"))]),
                   ("xmp", [("xmp.photoshop:Country", xmp.get("country"))])]):
        for _, candidates in group:
            for where, value in candidates:
                cleaned = _clean(value, 120)
                if cleaned and cleaned.lower() not in {p.lower() for p in place_parts}:
                    place_parts.append(cleaned)
                    place_fields.append(where)
        if place_parts:
            break
    if place_parts:
        out["place"], fields["place"] = ", ".join(place_parts), place_fields
    gps = _gps(exif.get("GPSInfo"))
    if gps:
        out["gps"], fields["gps"] = gps, "exif.GPSInfo"

    first("creator", side("credit", "artist", "author", "creator", "photographer", "by")
          + [("iptc.By-line", iptc.get("By-line")), ("xmp.dc:creator", xmp.get("creator")),
             ("exif.Artist", exif.get("Artist")), ("exif.XPAuthor", exif.get("XPAuthor"))] + png("author"), 200)

    source = _sidecar_get(sidecar, "url", "source_url", "page_url", "source", "original")
    if source and _clean(source[1], 2000):
        out["source"], fields["source"] = _clean(source[1], 2000), f"sidecar.{source[0]}"
    elif source_uri:
        out["source"], fields["source"] = source_uri, "source_uri"
    out["fields"] = fields
    if skipped:
        out["skipped"] = skipped
    return out


def _field_list(meta: dict[str, Any], keys: Sequence[str]) -> list[str]:
    """Flat, sorted provenance of the metadata keys actually used."""
    used: list[str] = []
    for key in keys:
        where = meta.get("fields", {}).get(key)
        if where is None:
            continue
        used.extend(where if isinstance(where, list) else [where])
    return sorted(set(used))


def _is_web_url(value: str | None) -> bool:
    return bool(value) and re.match(r"^https?://", value or "", re.IGNORECASE) is not None


# ---------------------------------------------------------------------------------------------------------------
# Step 3a: the grounded caption


def _ocr_inputs(inp: CaptionInput, config: CaptionerConfig) -> tuple[list[str], dict[str, Any]]:
    lines, omitted = grounding.required_ocr_lines(inp.ocr_lines, config.min_ocr_score, config.max_ocr_lines)
    low = sum(1 for _, score in inp.ocr_lines if score is None or float(score) < config.min_ocr_score)
    record: dict[str, Any] = {"ocr_lines": lines, "ocr_lines_below_min_score": low}
    if omitted:
        record["ocr_lines_omitted"] = omitted
    return lines, record


class Captioner(Protocol):
    """What the pipeline calls: `setup()` once per worker, then `caption_batch` per batch."""

    config: CaptionerConfig

    def setup(self) -> None:
        """Load models and clients (once per worker)."""

    def caption_batch(self, inputs: Sequence[CaptionInput]) -> list[CaptionResult]:
        """One result per input, in order."""


class GroundedCaptioner:
    """The embedded default: OCR text + metadata + measured visual facts, composed deterministically."""

    def __init__(self, config: CaptionerConfig | None = None) -> None:
        self.config = config or CaptionerConfig()

    def setup(self) -> None:
        """Nothing to load."""

    def caption_one(self, inp: CaptionInput) -> CaptionResult:
        """Caption one image (raises on an unusable image; `caption_batch` records that as a failure)."""
        lines, inputs = _ocr_inputs(inp, self.config)
        meta = extract_caption_metadata(inp.metadata, inp.source_uri)
        facts = visual_facts(inp.image)
        composed = prose.compose_grounded_caption(facts, meta, lines, inp.source_uri, self.config.credit_in_caption)
        inputs["metadata_fields"] = _field_list(meta, composed.used)
        inputs["metadata"] = {key: meta[key] for key in composed.used}
        inputs["visual_facts"] = facts.to_dict()
        inputs["entities"] = composed.entities
        inputs["facts"] = composed.facts
        return CaptionResult(inp.sample_id, composed.caption, "grounded", GROUNDED_MODEL, GROUNDED_VERSION, inputs,
                             1)

    def caption_batch(self, inputs: Sequence[CaptionInput]) -> list[CaptionResult]:
        """Caption every input; an image that cannot be read becomes a `caption_backend_error` result."""
        results = []
        for inp in inputs:
            try:
                results.append(self.caption_one(inp))
            except Exception as exc:  # one broken image must not fail the batch; it is recorded, not hidden
                log.warning("grounded caption of %s failed: %s", inp.sample_id, exc, exc_info=True)
                results.append(CaptionResult(inp.sample_id, "", "grounded", GROUNDED_MODEL, GROUNDED_VERSION, {}, 1,
                                             grounding.CAPTION_BACKEND_ERROR, f"{type(exc).__name__}: {exc}"))
        return results


# ---------------------------------------------------------------------------------------------------------------
# Step 3b: VLM captions (shared retry and grounding logic)


def build_prompt(meta: dict[str, Any], ocr_lines: Sequence[str], credit: bool = False) -> tuple[str, list[str]]:
    """The user prompt of a VLM caption: instructions, then the OCR text and metadata as context.

    Args:
        meta: from `extract_caption_metadata`.
        ocr_lines: the confident OCR lines.
        credit: give the creator too (only when captions may credit them: `credit_in_caption`).

    Returns:
        (prompt, used): the prompt text and the `meta` keys it included.
    """
    context: list[str] = []
    used: list[str] = []
    if ocr_lines:
        context.append("- Text read by OCR (quote it exactly): " + "; ".join(f'"{line}"' for line in ocr_lines))
    labels = (("title", "Title"), ("alt_text", "Alt text"), ("captions", "Publisher's description"),
              ("tags", "Tags"), ("date", "Date taken"), ("place", "Place"), ("gps", "GPS position"),
              ("camera", "Camera"), ("creator", "Credit"), ("source", "Source"))
    for key, label in labels:
        value = meta.get(key)
        if not value or (key == "source" and not _is_web_url(value)) or (key == "creator" and not credit):
            continue
        if key == "captions":
            for caption in value:
                context.append(f'- {label}: "{caption}"')
        elif key == "tags":
            context.append(f"- {label}: {', '.join(value)}")
        elif key == "gps":
            context.append(f"- {label}: {value['lat']:.5f}, {value['lon']:.5f}")
        else:
            context.append(f'- {label}: "{value}"' if key in ("title", "alt_text") else f"- {label}: {value}")
        used.append(key)
    prompt = INSTRUCTIONS
    if context:
        prompt += "\n\n" + CONTEXT_HEADER + "\n" + "\n".join(context)
    return prompt, used


@dataclass
class _Prepared:
    inp: CaptionInput
    image: Image.Image
    prompt: str
    ocr_lines: list[str]
    inputs: dict[str, Any]


@dataclass(frozen=True)
class Generation:
    """One generated text (or the error that prevented it)."""

    text: str = ""
    finish_reason: str | None = None
    error: str | None = None


class _VLMCaptioner:
    """Shared flow of the VLM backends: prepare, generate, check, retry once, repair or fail, fall back."""

    backend = "vlm"

    def __init__(self, config: CaptionerConfig) -> None:
        self.config = config
        self._grounded = GroundedCaptioner(config)

    @property
    def model_name(self) -> str:
        raise NotImplementedError

    def _generate(self, items: Sequence[_Prepared], attempt: int, issues: Sequence[CaptionIssue | None]
                  ) -> list[Generation]:
        raise NotImplementedError

    def _prepare(self, inp: CaptionInput) -> _Prepared:
        lines, inputs = _ocr_inputs(inp, self.config)
        meta = extract_caption_metadata(inp.metadata, inp.source_uri)
        prompt, used = build_prompt(meta, lines, self.config.credit_in_caption)
        inputs["metadata_fields"] = _field_list(meta, used)
        inputs["metadata"] = {key: meta[key] for key in used}
        image = inp.image
        if image.getexif().get(0x0112, 1) != 1:
            image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        image = image.convert("RGB")
        if max(image.size) > self.config.max_image_side:
            image = image.copy()
            image.thumbnail((self.config.max_image_side, self.config.max_image_side), Image.Resampling.LANCZOS)
        return _Prepared(inp, image, prompt, lines, inputs)

    def retry_token_budget(self, issues: Sequence[CaptionIssue | None]) -> int:
        """`max_new_tokens`, raised by `retry_token_factor` when a caption of the retry group was truncated."""
        if any(issue is not None and issue.reason == grounding.CAPTION_TRUNCATED for issue in issues):
            return math.ceil(self.config.max_new_tokens * self.config.retry_token_factor)
        return self.config.max_new_tokens

    def caption_batch(self, inputs: Sequence[CaptionInput]) -> list[CaptionResult]:
        """Caption every input: generate, check, retry failures once (batched), repair or report."""
        results: list[CaptionResult | None] = [None] * len(inputs)
        prepared: list[_Prepared | None] = []
        for i, inp in enumerate(inputs):
            try:
                prepared.append(self._prepare(inp))
            except Exception as exc:  # an unreadable image is one failed sample, recorded
                log.warning("cannot prepare %s for captioning: %s", inp.sample_id, exc, exc_info=True)
                prepared.append(None)
                results[i] = self._fail(inp, {}, 0, CaptionIssue(grounding.CAPTION_BACKEND_ERROR,
                                                                  f"{type(exc).__name__}: {exc}"))
        pending = [i for i, p in enumerate(prepared) if p is not None]
        issues: dict[int, CaptionIssue] = {}
        require_ocr = self.config.missing_ocr == "retry"
        for attempt in range(1, self.config.max_caption_attempts + 1):
            if not pending:
                break
            items = [prepared[i] for i in pending]
            generations = self._generate(items, attempt, [issues.get(i) for i in pending])  # type: ignore[arg-type]
            retry: list[int] = []
            for i, gen in zip(pending, generations, strict=True):
                item = prepared[i]
                assert item is not None
                if gen.error is not None:  # the backend already retried transport errors; do not loop on them
                    results[i] = self._fail(item.inp, item.inputs, attempt,
                                            CaptionIssue(grounding.CAPTION_BACKEND_ERROR, gen.error))
                    continue
                issue = grounding.check_caption(gen.text, item.ocr_lines, gen.finish_reason, require_ocr)
                cleaned = ""
                if issue is None:  # checked raw (a cut-off caption must not be hidden by the clean-up), then cleaned
                    cleaned = prose.clean_vlm_caption(gen.text, item.ocr_lines, self.config.credit_in_caption)
                    if not cleaned:
                        issue = CaptionIssue(grounding.CAPTION_EMPTY,
                                             "nothing left after removing labels, credits and boilerplate")
                if issue is None:
                    results[i] = self._succeed(item, cleaned, attempt)
                elif attempt < self.config.max_caption_attempts:
                    log.info("caption of %s rejected (%s: %s); retrying", item.inp.sample_id, issue.reason,
                             issue.detail)
                    issues[i] = issue
                    retry.append(i)
                else:
                    results[i] = self._fail(item.inp, item.inputs, attempt, issue, gen.text)
            pending = retry
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _succeed(self, item: _Prepared, text: str, attempt: int) -> CaptionResult:
        caption = grounding.normalize_space(text)
        inputs = dict(item.inputs)
        missing = grounding.missing_ocr_lines(caption, item.ocr_lines)
        if missing:  # missing_ocr == 'append' (with 'retry' the check already failed the caption)
            caption = grounding.append_missing_ocr(caption, missing)
            inputs["ocr_appended"] = missing
        inputs["entities"] = prose.metadata_entities(caption, inputs.get("metadata") or {},
                                                     self.config.credit_in_caption)
        return CaptionResult(item.inp.sample_id, caption, self.backend, self.model_name, PROMPT_VERSION, inputs,
                             attempt)

    def _fail(self, inp: CaptionInput, inputs: dict[str, Any], attempts: int, issue: CaptionIssue,
              text: str | None = None) -> CaptionResult:
        detail = issue.detail
        if issue.missing:
            detail += ": " + grounding.quote_list(list(issue.missing))[:300]
        if text:
            detail += f" (last output: {grounding.normalize_space(text)[:200]!r})"
        log.info("caption of %s failed after %d attempt(s): %s: %s", inp.sample_id, attempts, issue.reason, detail)
        result = CaptionResult(inp.sample_id, "", self.backend, self.model_name, PROMPT_VERSION, dict(inputs),
                               attempts, issue.reason, detail)
        if not self.config.fallback_to_grounded:
            return result
        fallback = self._grounded.caption_batch([inp])[0]
        if fallback.failure is not None:
            return result
        return replace(fallback, attempts=attempts, failure=issue.reason, failure_detail=detail,
                       fallback_from=self.backend)


# ---------------------------------------------------------------------------------------------------------------
# Step 3c: transformers (Qwen-VL family from a local directory)

MODEL_CLASSES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
}
"""`config.model_type` -> the transformers class that generates captions for it."""


class TransformersCaptioner(_VLMCaptioner):
    """Qwen2-VL / Qwen2.5-VL / Qwen3-VL from a local directory: one model per worker, left-padded batches."""

    backend = "transformers"

    def __init__(self, config: CaptionerConfig) -> None:
        super().__init__(config)
        if not config.model_path:
            raise ValueError("the transformers captioner needs model_path (a local model directory)")
        self.model: Any = None
        self.processor: Any = None
        self._device: Any = None
        self._eos_ids: set[int] = set()

    @property
    def model_name(self) -> str:
        return self.config.model or Path(self.config.model_path or "").name

    def setup(self) -> None:
        """Load the processor and model from `model_path` (local files only) onto `device`.

        Raises:
            FileNotFoundError: the directory or its `config.json` does not exist.
            ValueError: the model type is not a supported Qwen-VL, or the processor has no chat template.
        """
        if self.model is not None:
            return
        import torch
        import transformers

        path = Path(self.config.model_path or "")
        if not path.is_dir():
            raise FileNotFoundError(f"captioner model directory {str(path)!r} does not exist (model_path); "
                                    "models are never downloaded: copy the weights there first")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"captioner model directory {str(path)!r} has no config.json")
        model_config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        class_name = MODEL_CLASSES.get(model_config.model_type)
        if class_name is None or not hasattr(transformers, class_name):
            raise ValueError(f"model type {model_config.model_type!r} in {str(path)!r} is not supported by the "
                             f"transformers captioner; expected one of {sorted(MODEL_CLASSES)}")
        if self.config.num_threads:
            torch.set_num_threads(self.config.num_threads)
        device = self.config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(device)
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(
            self.config.dtype, torch.bfloat16 if self._device.type == "cuda" else torch.float32)
        processor = transformers.AutoProcessor.from_pretrained(path, local_files_only=True)
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"  # decoder-only batched generation
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if not (getattr(processor, "chat_template", None) or getattr(tokenizer, "chat_template", None)):
            raise ValueError(f"the processor in {str(path)!r} has no chat template")
        kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
        if self.config.attn_implementation:
            kwargs["attn_implementation"] = self.config.attn_implementation
        model = getattr(transformers, class_name).from_pretrained(path, **kwargs)
        model.to(self._device).eval()
        eos = model.generation_config.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            self._eos_ids.add(tokenizer.eos_token_id)
        self.processor, self.model = processor, model
        log.info("loaded %s (%s) from %s on %s as %s", class_name, model_config.model_type, path, self._device, dtype)

    def _messages(self, prompt: str) -> list[dict[str, Any]]:
        return [{"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]

    def _generate(self, items: Sequence[_Prepared], attempt: int, issues: Sequence[CaptionIssue | None]
                  ) -> list[Generation]:
        if self.model is None:
            raise RuntimeError("call setup() before caption_batch()")
        out: list[Generation] = []
        size = self.config.batch_size
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            try:
                out.extend(self._generate_chunk(chunk, attempt, issues[start : start + size]))
            except Exception as exc:  # e.g. out of memory: try the images one by one, record the ones that fail
                if len(chunk) == 1:
                    log.warning("caption generation failed for %s: %s", chunk[0].inp.sample_id, exc, exc_info=True)
                    out.append(Generation(error=f"{type(exc).__name__}: {exc}"))
                    continue
                log.warning("batched caption generation failed (%s); retrying one image at a time", exc)
                for j, item in enumerate(chunk):
                    try:
                        out.extend(self._generate_chunk([item], attempt, [issues[start + j]]))
                    except Exception as one_exc:
                        log.warning("caption generation failed for %s: %s", item.inp.sample_id, one_exc,
                                    exc_info=True)
                        out.append(Generation(error=f"{type(one_exc).__name__}: {one_exc}"))
        return out

    def _generate_chunk(self, chunk: Sequence[_Prepared], attempt: int, issues: Sequence[CaptionIssue | None]
                        ) -> list[Generation]:
        import torch

        texts = [self.processor.apply_chat_template(self._messages(item.prompt), tokenize=False,
                                                    add_generation_prompt=True) for item in chunk]
        encoded = self.processor(text=texts, images=[item.image for item in chunk], padding=True,
                                 return_tensors="pt").to(self._device)
        max_new = self.config.max_new_tokens
        gen_kwargs: dict[str, Any] = {"max_new_tokens": max_new, "do_sample": False,
                                      "pad_token_id": self.processor.tokenizer.pad_token_id}
        seed: int | None = None
        if attempt > 1:
            gen_kwargs.update(max_new_tokens=self.retry_token_budget(issues), do_sample=True,
                              temperature=self.config.retry_temperature, top_p=0.9)
            seed = self.config.seed + attempt
        elif self.config.temperature > 0:
            gen_kwargs.update(do_sample=True, temperature=self.config.temperature)
            seed = self.config.seed
        devices = []
        if self._device.type == "cuda":
            devices = [self._device.index if self._device.index is not None else torch.cuda.current_device()]
        with torch.inference_mode(), torch.random.fork_rng(devices=devices):
            if seed is not None:
                torch.manual_seed(seed)
            output = self.model.generate(**encoded, **gen_kwargs)
        new_tokens = output[:, encoded["input_ids"].shape[1]:]
        decoded = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        gens = []
        for row, text in zip(new_tokens.tolist(), decoded, strict=True):
            stopped = any(token in self._eos_ids for token in row)
            gens.append(Generation(text.strip(), "stop" if stopped else "length"))
        return gens


# ---------------------------------------------------------------------------------------------------------------
# Step 3d: an OpenAI-compatible endpoint


class OpenAICaptioner(_VLMCaptioner):
    """Captions from an OpenAI-compatible chat-completions endpoint (e.g. vLLM serving Qwen3-VL)."""

    backend = "openai"

    def __init__(self, config: CaptionerConfig) -> None:
        super().__init__(config)
        if not config.endpoint or not config.model:
            raise ValueError("the openai captioner needs endpoint and model")
        self.client: Any = None

    @property
    def model_name(self) -> str:
        return self.config.model or ""

    def setup(self) -> None:
        """Build the HTTP client (reads the API key from the environment variable named by `api_key_env`)."""
        if self.client is not None:
            return
        from captioning.openai_client import ChatClient

        self.client = ChatClient(self.config.endpoint or "", self.config.model or "", self.config.api_key_env,
                                 timeout_s=self.config.timeout_s, max_retries=self.config.max_retries,
                                 backoff_s=self.config.backoff_s, concurrency=self.config.concurrency,
                                 seed=self.config.seed)

    def _generate(self, items: Sequence[_Prepared], attempt: int, issues: Sequence[CaptionIssue | None]
                  ) -> list[Generation]:
        from captioning.openai_client import ChatClientError, image_part

        if self.client is None:
            raise RuntimeError("call setup() before caption_batch()")
        params: dict[str, Any] = {"max_tokens": self.config.max_new_tokens, "temperature": self.config.temperature}
        if attempt > 1:
            params.update(max_tokens=self.retry_token_budget(issues), temperature=self.config.retry_temperature,
                          top_p=0.9, seed=self.config.seed + attempt)
        requests = []
        for item in items:
            messages = [{"role": "system", "content": SYSTEM_PROMPT},
                        {"role": "user", "content": [image_part(item.image), {"type": "text", "text": item.prompt}]}]
            requests.append((messages, params))
        out = []
        for response in self.client.create_many(requests):
            if isinstance(response, ChatClientError):
                out.append(Generation(error=f"{response.kind}: {response}"))
            else:
                out.append(Generation(response.text.strip(), response.finish_reason))
        return out


def load_captioner(config: CaptionerConfig) -> GroundedCaptioner | TransformersCaptioner | OpenAICaptioner:
    """Build the captioner a config names (cheap; call `setup()` in the worker before `caption_batch`).

    Args:
        config: the captioner settings.

    Returns:
        A captioner with `setup()` and `caption_batch(inputs) -> list[CaptionResult]`.
    """
    if config.backend == "grounded":
        return GroundedCaptioner(config)
    if config.backend == "transformers":
        return TransformersCaptioner(config)
    return OpenAICaptioner(config)

