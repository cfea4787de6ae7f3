"""Captions as prose a user would type: the grounded composition and the clean-up of metadata and VLM text.

A caption teaches the DiT what prompts look like, so it must read like one. Field labels ('Title:', 'Credit:'),
file-stem titles ('backpack_dog'), dataset class labels ('class: backpack'), stock boilerplate ('Color image of',
'(credit: https://...)') and licences are what no user types; a model trained on them expects labelled prompts.

The grounded caption is built in the order a person describes a picture: the subject (the best metadata caption or
alt text, cleaned), the visible text in double quotes, what the pixels show (light, orientation, colour or
black-and-white, palette, plain background; then vivid or muted colours, warm or cool tones, contrast, the lighter
side, the colours of centre, edges, top and bottom, texture, where measured), then where and when (metadata place
and date). Credits stay in the
metadata unless `credit=True`. Double quotes in a caption mean visible text only: quotes inside metadata text become
single quotes, so the prompt variants never mistake a description for text to render.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from captioning import grounding
from captioning.visual_facts import VisualFacts

_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")

FIELD_LABEL_RE = re.compile(
    r"(?<![\w'])(?:title|alt[ -]?text|description|also described as|credits?|caption|keywords|tags|tagged|"
    r"licen[cs]e|source|copyright|photographer|author|date taken|place|camera|subject|filename|file name)\s*:",
    re.IGNORECASE)
"""A field label ('Title:', 'Credit:') anywhere outside a word."""
CLASS_LABEL_RE = re.compile(r"^\s*(?:class|label|category|object|concept)\s*[:=]\s*([^:=]+?)\s*\.?\s*$",
                            re.IGNORECASE)
"""A dataset class label as a whole description ('class: backpack')."""
FILE_STEM_TOKEN_RE = re.compile(
    r"(?<![\w'\"])(?:[\w\-]+\.(?:jpe?g|png|webp|gif|tiff?|heic|bmp)|[A-Za-z]+[0-9]*_+[A-Za-z0-9_]*"
    r"|(?:img|dsc|dscn|dscf|pxl|mvimg|gopr)[_\-]?\d{3,})(?![\w'\"])", re.IGNORECASE)
"""A token that is a file name or file stem ('backpack_dog', 'dog2__00', 'IMG_1234', 'a.jpg')."""
CREDIT_RE = re.compile(
    r"(?:\b(?:photo|image|picture|photograph)s?\s+(?:taken\s+)?(?:by|courtesy of|credit)\b|\bcourtesy of\b|"
    r"\bcredits?\s*:|©|\(c\)\s|\bcopyright\b|\ball rights reserved\b|\blicen[cs]ed under\b|\blicen[cs]e\s*:|"
    r"\bcc[- ]?by(?:[- ](?:sa|nd|nc))*(?:[- ]\d\.\d)?\b|\bcc0\b|\bpublic domain\b|\broyalty[- ]free\b|"
    r"\bstock (?:photo|image)\b|https?://\S+|\bwww\.\S+|\bunsplash\b|\b(?:shot|photographed) by\b|"
    r"(?<![\w.@])@[A-Za-z0-9_]{3,}\b)", re.IGNORECASE)
"""Attribution, licence and stock boilerplate: metadata, never visible content."""
_PREFIX_RE = re.compile(
    r"^(?:(?:this|here) (?:is|shows)\s+)?(?:an?\s+|the\s+)?"
    r"(?:(?:colou?r(?:ed)?|black[- ]and[- ]white|b&w|gr[ae]y[- ]?(?:level|scale)|digital|stock|high[- ]resolution|"
    r"hd|close[- ]up)\s+)*(?:image|photo|photograph|picture|pic|snapshot|shot)\s+(?:of|showing|depicting)\s+",
    re.IGNORECASE)
_PREAMBLE_RE = re.compile(
    r"^(?:(?:the|this) (?:image|photo|photograph|picture) (?:shows|depicts|features|captures|is of)\s+|"
    r"in (?:the|this) (?:image|photo|photograph|picture),?\s+|"
    r"here(?: is|'s) (?:a|the|your) (?:detailed )?(?:caption|description)(?: of (?:the|this) image)?\s*:\s*|"
    r"here is\s+|(?:sure|certainly)[,!.]\s+)",
    re.IGNORECASE)
_PAREN_RE = re.compile(r"\s*\(([^()]*)\)")
_MARKDOWN_RE = re.compile(r"(\*\*|__|^#+\s*|^\s*[-*•]\s+|`)", re.MULTILINE)
_PLURALIA = frozenset("glasses sunglasses eyeglasses scissors trousers jeans pants shorts binoculars headphones "
                      "pliers tongs goggles".split())
_NAME_STOP = frozenset("a an the of and or in on at by for to de la le du von van der".split())


@dataclass(frozen=True)
class Composition:
    """A grounded caption and what it was built from."""

    caption: str
    """The prose caption."""
    used: list[str]
    """Keys of the extracted metadata that the caption uses."""
    entities: list[str]
    """Names from the metadata that the caption contains verbatim (titles that are names, places, credited people):
    the prompt variants must keep them."""
    facts: list[str] = field(default_factory=list)
    """The kinds of fact stated, in order ('subject', 'text', 'format', 'palette', 'background', 'place', ...)."""


def normalize_quotes(text: str) -> str:
    """Double quotes inside metadata text become single quotes: double quotes mark visible text only."""
    return text.replace('"', "'").replace("“", "'").replace("”", "'")


def is_file_stem(text: str | None, source_uri: str | None = None) -> bool:
    """True for a title that is a file name or stem ('backpack_dog', 'dog2', 'astronaut') rather than words a person
    wrote: one token with an underscore, a digit or a file extension, a lowercase single word, or the file's stem."""
    if not text:
        return False
    t = text.strip()
    if not t or re.search(r"\s", t):
        return False
    if source_uri:
        stem = re.split(r"[/\\]", source_uri.rstrip("/"))[-1].rsplit(".", 1)[0]
        if stem and stem.casefold() in (t.casefold(), t.rsplit(".", 1)[0].casefold()):
            return True
    if re.fullmatch(r"[\w\-.]+", t) and (re.search(r"[_\d]", t) or re.search(r"\.[a-z0-9]{2,5}$", t, re.I)):
        return True
    return t.islower()


def humanize_stem(stem: str) -> str:
    """'pink_sunglasses__00' -> 'pink sunglasses', 'dog2' -> 'dog': the words of a file stem."""
    base = stem.rsplit(".", 1)[0] if re.search(r"\.[a-z0-9]{2,5}$", stem, re.I) else stem
    words = [re.sub(r"\d+$", "", w) for w in re.split(r"[_\-\s.]+", base)]
    return " ".join(w for w in words if w and not w.isdigit())


def class_label(text: str | None) -> str | None:
    """The label of a dataset class-label description ('class: backpack' -> 'backpack'), else None."""
    match = CLASS_LABEL_RE.match(text or "")
    return grounding.normalize_space(match.group(1)) if match else None


def is_name(text: str | None) -> bool:
    """A proper name or title ('Golden Pavilion', 'The Harvest'): every word but small ones is capitalised."""
    if not text or is_file_stem(text):
        return False
    words = [w for w in re.findall(r"[\w'’\-]+", text) if w.lower() not in _NAME_STOP]
    return bool(words) and len(words) <= 8 and all(w[0].isupper() or w[0].isdigit() for w in words)


_INLINE_LICENCE_RE = re.compile(
    r"https?://\S+|\bwww\.\S+|\bcc[- ]?by(?:[- ](?:sa|nd|nc))*(?:[- ]\d\.\d)?\b|\bcc0(?:[- ]1\.0)?\b",
    re.IGNORECASE)


def _strip_credit_parts(text: str) -> str:
    """Drop parentheticals and sentences that are attribution, licence or stock boilerplate (a bare licence code
    or URL is cut out of the sentence that carries it)."""
    text = _PAREN_RE.sub(lambda m: "" if CREDIT_RE.search(m.group(1)) or FILE_STEM_TOKEN_RE.fullmatch(
        m.group(1).strip()) else m.group(0), text)
    text = grounding.normalize_space(_INLINE_LICENCE_RE.sub(" ", text))
    kept = []
    for s in re.split(r"(?<=[.!?])\s+", text):
        if not CREDIT_RE.search(s):
            kept.append(s)
            continue
        clauses = re.split(r",\s+", s)  # 'A teapot on a table, shot by @someone.': the description survives
        if not CREDIT_RE.search(clauses[0]):
            rest = ", ".join(c for c in clauses if not CREDIT_RE.search(c)).rstrip(" ,;:")
            kept.append(rest if rest.endswith(grounding.TERMINAL) else rest + ".")
    return " ".join(kept)


def clean_description(text: str | None) -> str | None:
    """A metadata caption or alt text as the subject of a prose caption, or None when nothing usable is left.

    Drops attribution/licence/stock boilerplate, file-stem tokens and field labels, the 'Color image of' / 'a photo
    of' prefix, and turns double quotes into single ones. Class labels are not descriptions (see `class_label`).
    """
    if not text or class_label(text):
        return None
    text = _strip_credit_parts(grounding.normalize_space(text))
    text = FIELD_LABEL_RE.sub(" ", text)
    text = FILE_STEM_TOKEN_RE.sub(" ", text)
    text = grounding.normalize_space(re.sub(r"\(\s*\)", " ", text))
    text = _PREFIX_RE.sub("", text)
    text = normalize_quotes(text).strip(" ,;:-")
    if not re.search(r"[^\W\d_]{2,}", text):
        return None
    return text


def with_article(noun_phrase: str) -> str:
    """'backpack' -> 'a backpack', 'glasses' -> 'glasses' (plurals and names take none)."""
    head = noun_phrase.split()[-1].lower()
    if head in _PLURALIA or (head.endswith("s") and not head.endswith(("ss", "us", "is"))) or noun_phrase[0].isupper():
        return noun_phrase
    return ("an " if noun_phrase[0].lower() in "aeiou" else "a ") + noun_phrase


def sentence(text: str) -> str:
    """Capitalised, with final punctuation."""
    text = text.strip()
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text.endswith(grounding.TERMINAL) else text + "."


def _content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[^\W\d_]{3,}", text.casefold())}


def subject_phrases(meta: dict[str, Any], source_uri: str | None = None) -> tuple[list[str], list[str], list[str]]:
    """The subject sentences of a caption from metadata, the keys they used, and the names they contain.

    Order of preference: alt text, then the captions (each cleaned); a title that is a name is put in front when the
    description does not already hold it; a title that is plain words is the subject only without a description; a
    class label ('class: bowl') is the subject without either, refined by the file stem when the stem ends with the
    label ('berry_bowl' -> 'a berry bowl'); a one-word lowercase title ('grass') is the subject only without all of
    these; any other file stem is never used.
    """
    used: list[str] = []
    entities: list[str] = []
    descriptions: list[str] = []
    for key, values in (("alt_text", [meta.get("alt_text")]), ("captions", meta.get("captions") or [])):
        for value in values:
            cleaned = clean_description(value)
            if not cleaned:
                continue
            said = set().union(*(_content_words(d) for d in descriptions)) if descriptions else set()
            if descriptions and _content_words(cleaned) <= said:
                continue  # says nothing new
            descriptions.append(cleaned)
            if key not in used:
                used.append(key)
    title = meta.get("title")
    stem_title = title if is_file_stem(title, source_uri) else None
    plain_title = normalize_quotes(title).strip() if title and not stem_title and clean_description(title) else None
    out = [sentence(d) for d in descriptions]
    if plain_title and is_name(plain_title):
        if not out:
            out = [sentence(plain_title)]
            used.append("title")
        elif plain_title.casefold() not in " ".join(out).casefold():
            first = out[0] if _starts_with_name(out[0]) else out[0][0].lower() + out[0][1:]
            out[0] = f"{plain_title}, {first}"  # 'Golden Pavilion, a gold temple by a pond.'
            used.insert(0, "title")
        entities.append(plain_title)
    elif plain_title and not out:
        out = [sentence(plain_title)]
        used.append("title")
    if not out:
        labels = [class_label(c) for c in [meta.get("alt_text"), *(meta.get("captions") or [])]]
        label = next((lbl for lbl in labels if lbl), None)
        if label:
            noun = label
            words = humanize_stem(stem_title).split() if stem_title else []
            if words and words[-1].lower().endswith(label.split()[-1].lower()) and len(words) <= 4:
                noun = " ".join(words)  # 'pink_sunglasses' + 'class: glasses' -> 'pink sunglasses'
                used.append("title")
            out = [sentence(with_article(noun))]
            used.append("captions")
        elif stem_title and re.fullmatch(r"[a-z]{3,}", stem_title):
            out = [sentence(stem_title)]  # a one-word title ('grass'): the only words about the subject there are
            used.append("title")
    return out, used, entities


def _starts_with_name(text: str) -> bool:
    first = text.split()[0] if text.split() else ""
    return first[:1].isupper() and first.lower() not in _NAME_STOP and first.lower() not in ("this", "these")


def _join_words(words: Sequence[str]) -> str:
    if len(words) <= 2:
        return " and ".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def human_date(iso: str) -> str:
    """'2021-10-12' -> 'on 12 October 2021', '2021-10' -> 'in October 2021', '2021' -> 'in 2021'."""
    parts = iso.split("-")
    if len(parts) == 3:
        return f"on {int(parts[2])} {_MONTHS[int(parts[1]) - 1]} {parts[0]}"
    if len(parts) == 2:
        return f"in {_MONTHS[int(parts[1]) - 1]} {parts[0]}"
    return f"in {parts[0]}"


def visual_clauses(facts: VisualFacts, photograph: bool) -> tuple[str, list[str]]:
    """'A dark landscape colour photograph, mostly dark green with brown, on a plain white background.'

    One clause per fact (format, palette, background) so a shorter prompt can keep the first and drop the others;
    the palette has no inner comma for the same reason. Only measured facts are stated.
    """
    words = [w for w in (facts.brightness_label, facts.orientation) if w]
    words.append("black-and-white" if facts.greyscale else "colour")
    words.append("photograph" if photograph else "image")
    head = " ".join(words)
    parts = [("An " if head[0] in "aeiou" else "A ") + head]
    kinds = ["format"]
    colours = [name for name, _ in facts.colours if name != facts.background]
    if colours:
        palette = colours[0] if len(colours) == 1 else f"{colours[0]} with {' and '.join(colours[1:])}"
        parts.append(f"mostly {palette}")
        kinds.append("palette")
    if facts.background:
        parts.append(f"on a plain {facts.background} background")
        kinds.append("background")
    return ", ".join(parts) + ".", kinds


def character_clauses(facts: VisualFacts) -> tuple[str, list[str]]:
    """'Vivid colours, warm tones, high contrast, a lighter top half, red in the centre, white around the edges.'

    The colour, light and layout facts `visual_facts` measured beyond the palette, as clauses (the caption appends
    them to the palette's sentence after a semicolon): each clause is one fact, true on its own, so a shorter prompt
    drops whole clauses. Nothing is said where no measure
    passed its threshold, so a plain image gets no filler ('' and no kinds).
    """
    clauses: list[tuple[str, str]] = []
    if facts.saturation_label:
        clauses.append((f"{facts.saturation_label} colours", "saturation"))
    if facts.tones:
        clauses.append((f"{facts.tones} tones", "tones"))
    if facts.contrast_label:
        clauses.append((f"{facts.contrast_label} contrast", "contrast"))
    if facts.lighter_side:
        part = "half" if facts.lighter_side in ("top", "bottom") else "side"
        clauses.append((f"a lighter {facts.lighter_side} {part}", "lighter_side"))
    if facts.centre_colour:
        inner, outer = facts.centre_colour
        clauses.append((f"{inner} in the centre", "centre"))
        if outer != facts.background:  # the plain background already says what surrounds it
            clauses.append((f"{outer} around the edges", "edges"))
    if facts.top_bottom:
        clauses += [(f"{facts.top_bottom[0]} at the top", "top"), (f"{facts.top_bottom[1]} at the bottom", "bottom")]
    if facts.texture:
        clauses.append(("fine texture throughout" if facts.texture == "fine" else "smooth tones throughout",
                        "texture"))
    if not clauses:
        return "", []
    return sentence(", ".join(text for text, _ in clauses)), [kind for _, kind in clauses]


def compose_grounded_caption(facts: VisualFacts, meta: dict[str, Any], ocr_lines: Sequence[str],
                             source_uri: str | None = None, credit: bool = False) -> Composition:
    """Compose the grounded caption: subject, visible text, what the pixels show, place and date (and credit).

    Args:
        facts: from `visual_facts`.
        meta: from `captioner.extract_caption_metadata`.
        ocr_lines: the confident OCR lines (quoted verbatim).
        source_uri: the sample's URI (a title equal to its file stem is not a subject).
        credit: also credit the creator ('Photograph by Jane Doe.'); by default credits stay in the metadata.

    Returns:
        The caption with the metadata keys it used, the names it contains and the kinds of fact it states.
    """
    photograph = meta.get("camera") is not None
    sentences, used, entities = subject_phrases(meta, source_uri)
    if photograph:
        used.append("camera")  # a camera model makes it a photograph; the model itself is not content
    kinds = ["subject"] * len(sentences)
    visual, visual_kinds = visual_clauses(facts, photograph)
    character, character_kinds = character_clauses(facts)
    if character:  # one sentence with the palette, so a shorter prompt weighs them clause against clause
        visual = visual[:-1] + "; " + character[0].lower() + character[1:]
        visual_kinds = visual_kinds + character_kinds
    text = [grounding.ocr_sentence(ocr_lines)] if ocr_lines else []
    if sentences:  # subject first; without one, the picture itself is the subject and the text follows it
        sentences += text + [visual]
        kinds += ["text"] * len(text) + visual_kinds
    else:
        sentences = [visual] + text
        kinds = visual_kinds + ["text"] * len(text)
    when_where: list[str] = []
    if meta.get("place"):
        place = normalize_quotes(meta["place"])
        # 'in Paris, France, on 1 May 2020' but 'in Paris on 1 May 2020'
        when_where.append(f"in {place}" + ("," if "," in place and meta.get("date") else ""))
        used.append("place")
        entities.append(place)
        kinds.append("place")
    if meta.get("date"):
        when_where.append(human_date(meta["date"]))
        used.append("date")
        kinds.append("date")
    if when_where:
        sentences.append(f"{'Taken' if photograph else 'Made'} {' '.join(when_where)}.")
    creator = meta.get("creator")
    if credit and creator and not CREDIT_RE.search(creator) and "://" not in creator:
        name = normalize_quotes(creator).rstrip(".")
        sentences.append(f"{'Photograph' if photograph else 'Image'} by {name}.")
        used.append("creator")
        entities.append(name)
        kinds.append("credit")
    return Composition(" ".join(sentences), list(dict.fromkeys(used)), list(dict.fromkeys(entities)), kinds)


_METADATA_LABEL_RE = re.compile(r"(?i)(credits?|licen[cs]e|source|copyright|photographer|author|camera|filename|"
                                r"file name|keywords|tags|tagged|date taken)\b")
"""Labels whose whole sentence is metadata, never content ('Credit: ...', 'Keywords: ...')."""
_FILE_NAME_TALK_RE = re.compile(r"(?i)\bfile ?names?\b|\bfilename\b")
_CLASS_CLAUSE_RE = re.compile(r"(?i),\s*(?:class|label|category)\s*[:=][^,.;!?]*")
_CLASS_PREFIX_RE = re.compile(r"(?i)^\s*(?:class|label|category)\s*[:=]\s*")
_LONE_QUOTE_RE = re.compile(r'^["“]([^"”]+)["”]\s*(?=[.!?]?$)')
_SUBJECTLESS_RE = re.compile(r"(?i)^(?:is|are|was|were|appears?|can|could|shows?|sits?|stands?|lies|hangs|rests?)\b")
"""What a sentence starts with when its subject was a file stem that got removed."""
PLACEHOLDER_WORD_RE = re.compile(r"(?i)\b(?:untitled|no title|no caption|no description|placeholder|lorem ipsum)\b")
"""A stand-in for a missing title or caption: dropped when it is (nearly) the whole sentence."""


def clean_vlm_caption(text: str, ocr_lines: Sequence[str] = (), credit: bool = False) -> str:
    """The same rules for a VLM's caption: no markdown, preamble, field labels, file stems, credits or licences.

    Labelled sentences of metadata kinds ('Credit: ...', 'Source: ...', 'License: ...') are dropped, other labels
    ('Title:', 'Description:') lose the label; quotes that are not OCR text are kept (a VLM quotes what it reads).

    Args:
        text: the generated caption.
        ocr_lines: the OCR lines (never altered, even when they look like a label or a file name).
        credit: keep credit sentences ('Photograph by ...').

    Returns:
        The cleaned caption (possibly empty; the grounding checks reject it then).
    """
    protected: dict[str, str] = {}
    for i, line in enumerate(sorted(set(ocr_lines), key=len, reverse=True)):
        if line and line in text:
            key = f"\ue010{i}\ue011"
            protected[key] = line
            text = text.replace(line, key)
    text = _MARKDOWN_RE.sub("", text)
    text = re.sub(r"(?<![.!?:;,])[ \t]*\n+\s*", ". ", text.strip())  # a list item or line is a sentence of its own
    text = grounding.normalize_space(text)
    text = _PREAMBLE_RE.sub("", text)
    kept = []
    for s in re.split(r"(?<=[.!?])\s+", text):
        label = FIELD_LABEL_RE.match(s.strip())
        if label and _METADATA_LABEL_RE.match(label.group(0)):
            continue
        if _FILE_NAME_TALK_RE.search(s) and not any(k in s for k in protected):
            continue  # 'The file name is cat__04.jpg.': metadata, whatever is left of it
        if not credit and CREDIT_RE.search(s) and not any(k in s for k in protected):
            s = _strip_credit_parts(s)
            if not s.strip():
                continue
        s = _CLASS_CLAUSE_RE.sub("", s)  # ', label: bowl' adds nothing a description has not said
        s = _CLASS_PREFIX_RE.sub("", s)  # 'class: backpack.' -> 'backpack.'
        s = FIELD_LABEL_RE.sub("", s)
        stemless = FILE_STEM_TOKEN_RE.sub("", s)
        if stemless != s and _SUBJECTLESS_RE.match(stemless.strip()):
            continue  # 'backpack_dog is visible.': the file stem was the sentence's subject, nothing is left
        s = stemless
        if label or _CLASS_PREFIX_RE.match(s):
            s = _LONE_QUOTE_RE.sub(r"\1", s.strip())  # 'Title: "backpack"': a title, not visible text
        s = grounding.normalize_space(s).strip(" ,;:")
        if len(s.split()) <= 3 and PLACEHOLDER_WORD_RE.search(s) and not any(k in s for k in protected):
            continue  # 'Untitled.'
        kept.append(s)
    out = " ".join(sentence(s) for s in kept if s)
    for key, line in protected.items():
        out = out.replace(key, line)
    return grounding.normalize_space(out)


def metadata_entities(caption: str, metadata: dict[str, Any], credit: bool = False) -> list[str]:
    """Names from the metadata a (VLM) caption contains: a title that is a name, the place, a credited creator.

    Only names the caption holds count: they are what its prompt variants must keep.
    """
    candidates = []
    if is_name(metadata.get("title")):
        candidates.append(metadata["title"])
    if isinstance(metadata.get("place"), str):
        candidates.append(metadata["place"])
    if credit and isinstance(metadata.get("creator"), str):
        candidates.append(metadata["creator"])
    folded = caption.casefold()
    return [c for c in dict.fromkeys(normalize_quotes(c).strip() for c in candidates) if c and c.casefold() in folded]
