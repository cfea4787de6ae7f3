"""Embedded image metadata to JSON-safe dicts: EXIF (with UserComment decoded), GPS, XMP, IPTC, PNG text chunks.

Nothing is interpreted here (the AI-image detector and the captioner do that); everything is kept so they can.
"""

from __future__ import annotations

import base64
import logging
import math
import unicodedata
from typing import Any

from PIL import ExifTags, Image, IptcImagePlugin, TiffImagePlugin

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 1 << 20
"""Longest metadata string kept whole; longer values are cut and the cut is recorded in `_truncated`."""
MAX_BINARY_BYTES = 256
"""Binary blobs up to this size are kept as base64; larger ones (MakerNote, thumbnails) only by their length."""

_IPTC_NAMES = {
    (2, 5): "ObjectName",
    (2, 15): "Category",
    (2, 25): "Keywords",
    (2, 40): "SpecialInstructions",
    (2, 55): "DateCreated",
    (2, 80): "By-line",
    (2, 85): "By-lineTitle",
    (2, 90): "City",
    (2, 95): "Province-State",
    (2, 101): "Country-PrimaryLocationName",
    (2, 105): "Headline",
    (2, 110): "Credit",
    (2, 115): "Source",
    (2, 116): "CopyrightNotice",
    (2, 120): "Caption-Abstract",
    (2, 122): "Writer-Editor",
    (2, 228): "DigitalSourceType",
}
# Keys of `Image.info` that hold binary payloads we record elsewhere or only by presence.
_INFO_SKIP = {"exif", "icc_profile", "xmp", "XML:com.adobe.xmp", "photoshop", "iptc", "adobe", "adobe_transform"}


def _utf16_score(text: str) -> int:
    """Plausibility of a UTF-16 decoding: the wrong byte order turns ASCII into CJK-looking code points and other
    text into unassigned, private or replacement characters."""
    score = 0
    for ch in text:
        if ch.isascii():
            score += 2 if ch.isprintable() or ch in "\r\n\t" else -2
        elif ch == "\ufffd" or unicodedata.category(ch) in ("Cn", "Co", "Cs"):
            score -= 4
    return score


def decode_utf16_unknown_order(body: bytes, big_endian: bool = False) -> str:
    """UTF-16 text whose byte order is unknown: a BOM decides, else the more plausible of both orders (the EXIF
    block's own order first, for ties). piexif writes big-endian whatever the block's order; others native."""
    if body[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return body.decode("utf-16", errors="replace")
    order = ["utf-16-be", "utf-16-le"] if big_endian else ["utf-16-le", "utf-16-be"]
    decoded = [body[: len(body) // 2 * 2].decode(c, errors="replace") for c in order]
    return max(decoded, key=_utf16_score)


def _decode_jis(body: bytes) -> str:
    # EXIF names JIS X 0208 but writers put ISO-2022-JP (escape sequences), Shift_JIS or EUC-JP there
    for codec in (("iso2022_jp",) if b"\x1b" in body else ()) + ("shift_jis", "euc_jp"):
        try:
            return body.decode(codec)
        except UnicodeDecodeError:
            continue
    return body.decode("shift_jis", errors="replace")


def _decode_undefined(body: bytes, big_endian: bool) -> str:
    # "undefined" charset: UTF-8 by convention; UTF-16 shows as NULs between ASCII bytes
    if body.count(b"\x00") > len(body) // 4:
        return decode_utf16_unknown_order(body, big_endian)
    return body.decode("utf-8", errors="replace")


def decode_user_comment(raw: bytes, big_endian: bool = False) -> str:
    """Decode an EXIF UserComment (8-byte charset prefix, then the text) to a string.

    Every charset the standard names: `ASCII`, `UNICODE` (UTF-16 in either byte order, with or without BOM:
    AUTOMATIC1111 and other generators write their parameters here through piexif, big-endian in a little-endian
    block), `JIS` (ISO-2022-JP, Shift_JIS or EUC-JP) and undefined (8 NULs; UTF-8, or UTF-16 when it looks like it),
    plus a comment with no prefix at all.

    Args:
        raw: the tag's raw bytes.
        big_endian: byte order of the EXIF block.

    Returns:
        The decoded text, without trailing NULs.
    """
    prefix, body = raw[:8], raw[8:]
    if prefix.startswith(b"UNICODE"):
        text = decode_utf16_unknown_order(body, big_endian)
    elif prefix.startswith(b"ASCII"):
        text = body.decode("ascii", errors="replace")
    elif prefix.startswith(b"JIS"):
        text = _decode_jis(body)
    elif prefix == b"\x00" * 8:
        text = _decode_undefined(body, big_endian)
    else:
        text = _decode_undefined(raw.lstrip(b"\x00"), big_endian)
    return text.rstrip("\x00").strip()


_XP_TAGS = {0x9C9B, 0x9C9C, 0x9C9D, 0x9C9E, 0x9C9F}
"""Windows XPTitle, XPComment, XPAuthor, XPKeywords, XPSubject: UTF-16LE in BYTE arrays."""


def utf8_text(text: str) -> str:
    """`text` itself when it is valid Unicode; else lone surrogates (from a JSON `\\udXXX` escape or a
    surrogate-escaped file name) written as `\\xNN` byte escapes, since Arrow and UTF-8 JSON cannot hold them."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")  # a name's undecodable bytes come back as themselves
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


def jsonable(value: Any, truncated: list[str], key: str = "") -> Any:
    """Convert a metadata value (bytes, IFDRational, tuples, nested dicts) into something `json.dumps` accepts."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        if len(value) > MAX_TEXT_CHARS:
            truncated.append(key)
            value = value[:MAX_TEXT_CHARS]
        return utf8_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, TiffImagePlugin.IFDRational):
        return float(value) if value.denominator else None
    if isinstance(value, bytes | bytearray):
        raw = bytes(value).rstrip(b"\x00")
        try:
            text = raw.decode("utf-8")
            if text.isprintable() or all(ch.isprintable() or ch in "\r\n\t" for ch in text):
                return jsonable(text, truncated, key)
        except UnicodeDecodeError:
            pass
        if len(value) <= MAX_BINARY_BYTES:
            return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
        return {"binary_bytes": len(value)}
    if isinstance(value, dict):
        return {utf8_text(str(k)): jsonable(v, truncated, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v, truncated, key) for v in value]
    return jsonable(str(value), truncated, key)


def _exif_dict(img: Image.Image, truncated: list[str]) -> dict[str, Any]:
    exif = img.getexif()
    if not exif:
        return {}
    big_endian = getattr(exif, "endian", "<") == ">"
    out: dict[str, Any] = {}

    def add(tags: dict[int, Any], names: dict[int, str], prefix: str = "", label: str = "") -> None:
        for tag, value in tags.items():
            name = names.get(tag, f"0x{tag:04x}")
            if name == "UserComment" and isinstance(value, bytes):
                value = decode_user_comment(value, big_endian)
            elif tag in _XP_TAGS and isinstance(value, bytes | tuple):
                value = bytes(value).decode("utf-16-le", errors="replace").rstrip("\x00")
            key = prefix + name
            if key in out and label:  # the same tag in IFD0 and the Exif IFD (writers misplace): keep both
                key = f"{label}.{name}"
            out[key] = jsonable(value, truncated, key)

    add({k: v for k, v in exif.items() if k not in (0x8769, 0x8825, 0xA005)}, ExifTags.TAGS)
    for ifd_tag, prefix, label in ((0x8769, "", "ExifIFD"), (0xA005, "Interop.", "")):
        try:
            add(dict(exif.get_ifd(ifd_tag)), ExifTags.TAGS, prefix, label)
        except Exception as exc:  # a corrupt sub-IFD loses that sub-IFD, recorded, not the image
            out[f"_error_ifd_0x{ifd_tag:04x}"] = str(exc)
    try:
        gps = dict(exif.get_ifd(0x8825))
        if gps:
            out["GPSInfo"] = {ExifTags.GPSTAGS.get(k, f"0x{k:04x}"): jsonable(v, truncated, "GPSInfo") for k, v in
                              gps.items()}
    except Exception as exc:
        out["_error_gps"] = str(exc)
    return out


def _iptc_dict(img: Image.Image, truncated: list[str]) -> dict[str, Any]:
    try:
        info = IptcImagePlugin.getiptcinfo(img)
    except Exception as exc:
        return {"_error": str(exc)}
    if not info:
        return {}
    out: dict[str, Any] = {}
    for key, value in info.items():
        name = _IPTC_NAMES.get(key, f"{key[0]}:{key[1]}")
        values = value if isinstance(value, list) else [value]
        decoded = [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v for v in values]
        out[name] = jsonable(decoded if len(decoded) > 1 or name == "Keywords" else decoded[0], truncated, name)
    return out


def _xmp_text(img: Image.Image) -> str | None:
    raw = img.info.get("xmp") or img.info.get("XML:com.adobe.xmp")
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    return raw.strip("\x00").strip() or None


def extract_metadata(img: Image.Image) -> dict[str, Any]:
    """Collect every metadata block of an opened image as a JSON-safe dict.

    Args:
        img: a Pillow image opened from the original bytes (not converted).

    Returns:
        A dict with `exif`, `xmp`, `iptc`, `text` (PNG tEXt/iTXt/zTXt chunks and other string info) and `info`
        (remaining scalar info such as dpi or duration) where present, plus `_truncated` naming cut values.
    """
    truncated: list[str] = []
    out: dict[str, Any] = {}
    try:
        exif = _exif_dict(img, truncated)
    except Exception as exc:
        log.debug("unreadable EXIF: %s", exc)
        exif = {"_error": f"{type(exc).__name__}: {exc}"}
    if exif:
        out["exif"] = exif
    xmp = _xmp_text(img)
    if xmp:
        out["xmp"] = jsonable(xmp, truncated, "xmp")
    iptc = _iptc_dict(img, truncated)
    if iptc:
        out["iptc"] = iptc
    text_chunks = getattr(img, "text", None) if img.format == "PNG" else None
    text: dict[str, Any] = {}
    info: dict[str, Any] = {}
    for key, value in img.info.items():
        if key in _INFO_SKIP:
            continue
        if isinstance(value, str) or (text_chunks and key in text_chunks):
            text[key] = jsonable(value, truncated, f"text.{key}")
        elif key == "comment":
            text[key] = jsonable(value, truncated, "text.comment")
        else:
            info[key] = jsonable(value, truncated, f"info.{key}")
    if text:
        out["text"] = text
    if info:
        out["info"] = info
    if truncated:
        out["_truncated"] = truncated
    return out
