"""Step 2 of captioning: what a caption may use from the ingest metadata (sidecar, IPTC, XMP, EXIF, PNG text).

Camera defaults, file names, generator parameters and non-prose strings are dropped here, so neither the grounded
composition nor a VLM prompt ever sees them; every value keeps the field it came from (`fields`) for the lineage.
"""

from __future__ import annotations

import base64
import logging
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

from captioning import grounding

log = logging.getLogger(__name__)

MAX_DESCRIPTION_CHARS = 600
"""Longest alt text / description / sidecar caption used (cut at a word boundary, marked with '...')."""
MAX_TITLE_CHARS = 200
"""Longest title used."""
MAX_TAGS = 20
"""Most tags used."""
MAX_DESCRIPTIONS = 3
"""Most descriptions (alt text and captions together) used."""


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

