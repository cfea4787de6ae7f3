"""The variants' text rules: closed word lists, quotes and entities to keep, length limits and `check_variant`.

Shared by the deterministic rewriter, the LLM backend (its outputs pass the same checks) and the asset checks.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence

from captioning.variant_config import (
    VARIANT_KINDS,
    VariantConfig,
)

_STOPWORDS = frozenset("""
a an the this that these those there here it its it's their theirs them they his her hers him he she we our you your
i me my mine one ones some any each every all both either neither no not nor none other another such same own
and or but so yet if then than as while whereas although though because since until unless whether
of in on at by for from to into onto upon over under above below behind beside besides between among amid around
across along through throughout toward towards against about near within without beyond off out up down past via
with per like unlike inside outside underneath beneath atop
is are was were be been being am has have had having do does did doing done can could may might must shall should
will would
shows show showing shown depicts depicting depicted features featuring featured displays displaying displayed
appears appear appearing seen visible sits sit sitting stands stand standing lies lying hangs hanging rests resting
reads reading read says saying said written labeled labelled titled captioned bearing bears contains containing
includes including set placed located taken photographed captured framed
very quite rather slightly somewhat mostly partly nearly almost just only also too still even really fairly
which who whom whose what where when why how
image photo photograph picture scene view shot
""".split())
_COLOURS = frozenset("""
red orange yellow green blue purple violet pink brown black white grey gray gold golden silver beige teal turquoise
cyan magenta maroon navy cream ivory crimson scarlet amber bronze olive lavender indigo tan khaki charcoal
monochrome sepia pastel colorful colourful multicolored multicoloured
""".split())
_ORIENTATION = frozenset("""
vertical horizontal portrait landscape square panoramic panorama close-up closeup aerial overhead top-down
wide-angle macro low-angle high-angle bird's-eye silhouette silhouetted
""".split())
_COMMON_OPENERS = _COLOURS | _ORIENTATION | frozenset("""
muted vivid warm cool high low lighter darker fine smooth soft bright dark light pale deep
""".split())
"""Words that open the grounded captioner's sentences and are never names: lower-cased when a short prompt joins
their sentence to the previous one ('..., muted colours')."""
# Words a fragment must not end with (it would dangle once the clause is cut).
_DANGLING = frozenset("""
a an the this that these those its his her their our my your of in on at by for from to into onto over under above
below behind beside between among near with without and or but nor while whereas as which who whose than like
reads reading says saying labeled labelled titled captioned bearing is are was were be has have
""".split())
_LEADING_CONJ = frozenset("and or but nor while whereas which who".split())
_ABBREVIATIONS = frozenset("st mt dr mr mrs ms jr sr vs no ft ave blvd rd inc ltd co corp approx fig".split())

_QUOTE_RE = re.compile(r'"([^"\n]+)"|“([^”\n]+)”')
_PH_RE = re.compile("\ue000(\\d+)\ue001")
_WORD_RE = re.compile(r"\w+")
_TRAIL_PUNCT_RE = re.compile(r"[,;:.]+$")
_LABEL_RE = re.compile(r"^(?:short|medium|tags?|prompt|answer|rewritten|output)(?:\s+\w+)?\s*:\s*", re.IGNORECASE)


def _norm(text: str) -> str:
    return " ".join(str(text).split())


def _nwords(text: str) -> int:
    return len(text.split())


def same_text(a: str, b: str) -> bool:
    """Two variants say the same words (case, punctuation and spacing aside): a copy, not a variant."""
    return _WORD_RE.findall(str(a).casefold()) == _WORD_RE.findall(str(b).casefold())


def medium_floor(caption_words: int, config: VariantConfig) -> int:
    """Fewest words `medium` may have: the nominal lower bound, or half the caption when that is shorter (a short
    caption's medium drops a fact, it is not padded)."""
    return max(1, min(config.medium_bounds[0], caption_words // 2))


@functools.lru_cache(maxsize=4096)
def _entity_re(entity: str) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)" + re.escape(entity) + r"(?!\w)", re.IGNORECASE)


def _has_entity(text: str, entity: str) -> bool:
    return _entity_re(entity).search(text) is not None


def invented_words(text: str, *sources: str | Iterable[str]) -> set[str]:
    """Words of `text` (case-folded `\\w+` runs) that occur in none of `sources`.

    Args:
        text: a variant.
        *sources: strings or lists of strings (caption, quoted lines, entities).

    Returns:
        The set of words not found in any source (empty for every deterministic variant).
    """
    vocab: set[str] = set()
    for src in sources:
        for s in [src] if isinstance(src, str) else src:
            vocab.update(_WORD_RE.findall(s.casefold()))
    return {w for w in _WORD_RE.findall(text.casefold()) if w not in vocab}


def required_quotes(caption: str, quoted: Sequence[str] = ()) -> list[str]:
    """Quoted text every variant must keep: the given lines, then the caption's own `"..."` / `“...”` spans.

    Args:
        caption: the long caption.
        quoted: visible text lines (from OCR or metadata).

    Returns:
        Whitespace-normalised, de-duplicated, non-empty quote contents (without the quote marks).
    """
    out: list[str] = []
    for q in list(quoted) + [m.group(1) or m.group(2) for m in _QUOTE_RE.finditer(caption)]:
        q = _norm(q)
        if q and q not in out:
            out.append(q)
    return out


def _minimal_quotes(quotes: Sequence[str]) -> list[str]:
    """Quotes not contained in another quote (the others are kept by keeping their container)."""
    qs = [_norm(q) for q in quotes if _norm(q)]
    return [q for i, q in enumerate(qs) if not any(q in o and (q != o or j < i) for j, o in enumerate(qs) if j != i)]


def _free_entities(entities: Sequence[str], quotes: Sequence[str]) -> list[str]:
    """Entities not inside any quote (an entity inside a quote is kept by keeping the quote)."""
    out: list[str] = []
    for e in entities:
        e = _norm(e)
        if e and e.casefold() not in {x.casefold() for x in out} and not any(_has_entity(q, e) for q in quotes):
            out.append(e)
    return out


def split_tags(tags: str) -> list[str]:
    """Split a tag list on commas outside double quotes.

    Args:
        tags: `a, b, "HELLO, WORLD"`.

    Returns:
        The stripped tags, empty ones included (so a check can report them).
    """
    out, cur, inside, closer = [], [], False, ""
    for ch in tags:
        if not inside and ch in "\"“":
            inside, closer = True, ("”" if ch == "“" else '"')
        elif inside and ch == closer:
            inside = False
        if ch == "," and not inside:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur).strip())
    return out


def _is_quoted_tag(tag: str) -> bool:
    return len(tag) >= 2 and tag[0] in "\"“" and tag[-1] in "\"”"


# --------------------------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------------------------


def variant_limit(kind: str, quoted: Sequence[str], entities: Sequence[str], config: VariantConfig) -> int:
    """Upper bound of a variant under the documented rule (words; tags for `tags`; 0 = none for `long`).

    Args:
        kind: one of `VARIANT_KINDS`.
        quoted: required quote contents.
        entities: key entities.
        config: the variant config.

    Returns:
        `short`: max(short_max_words, words of the quoted text); `medium`: max(target + tolerance, words of the
        quoted text and of the entities outside quotes); `tags`: max(max_tags, quotes + entities outside quotes).
    """
    quotes = _minimal_quotes(quoted)
    free = _free_entities(entities, quotes)
    quote_words = sum(_nwords(q) for q in quotes)
    if kind == "short":
        return max(config.short_max_words, quote_words)
    if kind == "medium":
        return max(config.medium_bounds[1], quote_words + sum(_nwords(e) for e in free))
    if kind == "tags":
        return max(config.max_tags, len(quotes) + len(free))
    if kind == "long":
        return 0
    raise ValueError(f"unknown variant kind {kind!r}")


def check_variant(
    kind: str,
    text: str,
    quoted: Sequence[str],
    entities: Sequence[str],
    config: VariantConfig,
    *,
    caption: str | None = None,
) -> list[str]:
    """Problems of one variant: length bounds, quoted text kept verbatim, key entities kept.

    Args:
        kind: 'tags', 'short', 'medium' or 'long'.
        text: the variant.
        quoted: quoted text to keep (the visible text lines; see `required_quotes`).
        entities: key entities.
        config: bounds.
        caption: the long caption (`Variants.long`); when given, its own `"..."` spans join `quoted`, and
            `medium`'s lower bound shrinks to its length if it is shorter.

    Returns:
        Human-readable problems; empty when the variant passes.
    """
    if kind not in VARIANT_KINDS:
        raise ValueError(f"unknown variant kind {kind!r}")
    if caption is not None:
        quoted = required_quotes(_norm(caption), quoted)
    text = _norm(text)
    if not text:
        return [f"{kind} is empty"]
    problems: list[str] = []
    quotes = _minimal_quotes(quoted)
    free = _free_entities(entities, quotes)
    limit = variant_limit(kind, quoted, entities, config)
    n = _nwords(text)
    if kind == "short" and n > limit:
        problems.append(f"short has {n} words, limit {limit}")
    elif kind == "medium":
        lo = config.medium_bounds[0] if caption is None else medium_floor(_nwords(_norm(caption)), config)
        if n < lo or n > limit:
            problems.append(f"medium has {n} words, bounds {lo}-{limit}")
    elif kind == "tags":
        tags = split_tags(text)
        if any(not t for t in tags):
            problems.append("tags has an empty tag")
        if len(tags) > limit:
            problems.append(f"tags has {len(tags)} tags, limit {limit}")
        if len({t.casefold() for t in tags}) != len(tags):
            problems.append("tags has duplicate tags")
        upper = [t for t in tags if not _is_quoted_tag(t) and t != t.lower()]
        if upper:
            problems.append(f"tags not lowercase: {upper[:3]}")
    for q in _norm_all(quoted):
        if q not in text:
            problems.append(f"{kind} misses quoted text {q!r}")
    if kind in ("medium", "long"):
        for e in free:
            if not _has_entity(text, e):
                problems.append(f"{kind} misses key entity {e!r}")
    elif kind == "short" and free and not any(_has_entity(text, e) for e in free):
        room = limit - sum(_nwords(q) for q in quotes)
        if min(_nwords(e) for e in free) <= room:
            problems.append(f"short keeps none of the key entities {free}")
    return problems


def _norm_all(items: Iterable[str]) -> list[str]:
    return [x for x in (_norm(i) for i in items) if x]
