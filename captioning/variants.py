"""Prompt-length variants of a caption: `tags`, `short`, `medium` and `long`, plus (short -> long) expansion pairs.

Krea 2 trains on captions "rewritten into several prompt lengths" so the model follows a three-word prompt as well as
a paragraph. Every caption becomes four variants that differ:

- `long`: the full caption (whitespace normalised). If a required quoted line or key entity is missing from the
  caption, it is appended at the end (`... "OPEN", Paris.`) so that every variant can keep it.
- `medium`: about `medium_target_words` words (bounds `medium_target_words +- medium_tolerance`). When the whole
  caption fits and states at least `MIN_DISTINCT_FACTS` facts (informative clauses), medium drops the least
  important one; with fewer facts medium is the whole caption and `long` is left empty with
  `long_is_distinct=False` and a `long_note` (a copy would only double that caption's weight).
- `short`: at most `short_max_words` words, and fewer than `medium` when the caption states two facts or more.
- `tags`: a comma-separated lowercase tag list, no sentences; quoted text is one tag, verbatim in double quotes.

Preservation rules, enforced by `check_variant` for every backend:

- Quoted text (the `quoted` lines from OCR plus every `"..."` / `“...”` span of the caption) appears verbatim in every
  variant, and is never cut: a quote is an atomic token for the deterministic rewriter.
- Key entities appear (case-insensitively) in `medium` and `long`; `short` keeps at least one of them whenever the
  shortest one fits in the words the quoted text leaves free.
- Length bounds yield only to quoted text and entities. `short` may exceed `short_max_words` only by the quoted
  text: its limit is `max(short_max_words, words of the quoted text)`, so a 20-word banner gives a 20-word short
  prompt made of the banner alone. Likewise `medium`'s upper limit is `max(target + tolerance, words of the quoted
  text and entities)`, its lower limit shrinks to half the caption's length when that is shorter, and `tags`
  may hold more than `max_tags` tags only to fit every quoted text and entity.

Backends: the deterministic default (sentence split, clause scoring, quote-aware trimming; it only ever reuses words
of its inputs), or an LLM behind any callable `generate(prompts: list[str]) -> list[str]` (a local transformers model
via `TransformersTextGenerator`, an OpenAI-compatible endpoint via `chat_generator`). LLM outputs go through the same
checks; a failing variant is retried once with the problems spelled out, then replaced by the deterministic variant
and the reason recorded in `Variants.fallback_reason`. `long` is never rewritten by the LLM.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

VARIANT_KINDS = ("tags", "short", "medium", "long")
"""Variant names, in the order `sample_length` walks the distribution."""
LLM_KINDS = ("tags", "short", "medium")
"""Variants an LLM backend rewrites (`long` is the caption itself)."""
BACKENDS = ("deterministic", "transformers", "openai")
DETERMINISTIC_VERSION = "deterministic-v2"
"""Recorded as `Variants.prompt_version` for rule-based variants; bump when the rules change."""
DEFAULT_DISTRIBUTION = {"tags": 0.1, "short": 0.3, "medium": 0.3, "long": 0.3}
MIN_DISTINCT_FACTS = 3
"""A caption stating at least this many facts (clauses with content) gets four distinct variants: `medium` drops
its least important fact when the whole caption would fit in `medium`, `short` holds fewer words than `medium`."""

Generator = Callable[[list[str]], list[str]]


# --------------------------------------------------------------------------------------------------------------------
# Config and results
# --------------------------------------------------------------------------------------------------------------------


def validate_distribution(distribution: Mapping[str, float]) -> dict[str, float]:
    """Check a length distribution and return it with every kind present.

    Args:
        distribution: probability per variant kind; kinds left out get 0.

    Returns:
        A dict over `VARIANT_KINDS`, in that order.

    Raises:
        ValueError: on an unknown kind, a negative or non-finite weight, or weights that do not sum to 1.
    """
    unknown = set(distribution) - set(VARIANT_KINDS)
    if unknown:
        raise ValueError(f"unknown variant kinds in length distribution: {sorted(unknown)} (known: {VARIANT_KINDS})")
    out = {}
    for kind in VARIANT_KINDS:
        p = float(distribution.get(kind, 0.0))
        if not math.isfinite(p) or p < 0:
            raise ValueError(f"length distribution weight for {kind!r} must be a non-negative number, got {p}")
        out[kind] = p
    total = sum(out.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"length distribution must sum to 1, got {total:.6f}: {out}")
    return out


@dataclass(frozen=True)
class VariantConfig:
    """How captions are rewritten into prompt-length variants, and how the loader samples them."""

    backend: str = "deterministic"
    """'deterministic' (rule-based, no model), 'transformers' (local causal LM) or 'openai' (injected endpoint)."""
    model_path: str | None = None
    """Local model directory for 'transformers'; the model name for 'openai' (recorded in `Variants.model`)."""
    short_max_words: int = 12
    """Word limit of `short` (exceeded only by quoted text longer than this)."""
    medium_target_words: int = 30
    """Aim of `medium`, in words."""
    medium_tolerance: int = 10
    """Allowed deviation from `medium_target_words` (20-40 words by default)."""
    max_tags: int = 16
    """Tag limit of `tags` (exceeded only to fit every quoted text and entity)."""
    length_distribution: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_DISTRIBUTION))
    """Probability that the training loader picks each variant kind; non-negative, sums to 1."""
    prompt_version: str = "v1"
    """Version of the LLM rewrite prompts (a key of `PROMPTS`), recorded with every LLM variant."""
    max_new_tokens: int = 96
    """Generation budget per variant for the transformers backend."""
    device: str = "cpu"
    """Torch device of the transformers backend (declared, never probed)."""
    batch_size: int = 8
    """Prompts per `generate` batch of the transformers backend."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.short_max_words < 1:
            raise ValueError("short_max_words must be >= 1")
        if self.medium_tolerance < 0 or self.medium_target_words - self.medium_tolerance < 1:
            raise ValueError("medium_target_words - medium_tolerance must be >= 1 and medium_tolerance >= 0")
        if self.max_tags < 1:
            raise ValueError("max_tags must be >= 1")
        if self.prompt_version not in PROMPTS:
            raise ValueError(f"unknown prompt_version {self.prompt_version!r} (known: {sorted(PROMPTS)})")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")
        validate_distribution(self.length_distribution)

    @property
    def medium_bounds(self) -> tuple[int, int]:
        """Nominal (min, max) words of `medium`."""
        return self.medium_target_words - self.medium_tolerance, self.medium_target_words + self.medium_tolerance


@dataclass(frozen=True)
class Variants:
    """The four prompt lengths of one caption and where they came from."""

    tags: str
    """Comma-separated lowercase tags; quoted text verbatim in double quotes."""
    short: str
    """At most `short_max_words` words (or the quoted text alone when that is longer)."""
    medium: str
    """About `medium_target_words` words."""
    long: str
    """The full caption (plus any required quote or entity it lacked)."""
    backend: str
    """Backend that was asked: 'deterministic', 'transformers' or 'openai'."""
    model: str
    """Model path or name of the LLM backend; empty for the deterministic one."""
    prompt_version: str
    """LLM prompt version, or `DETERMINISTIC_VERSION` for rule-based variants."""
    fallback_reason: str | None = None
    """Why some LLM variants were replaced by deterministic ones (kind: problems; ...), None if none was."""
    long_is_distinct: bool = True
    """False when the caption's facts do not support a long variant distinct from `medium`: `long` is then ''
    (the loader falls back to `medium`) rather than a copy, and `long_note` says why."""
    long_note: str | None = None
    """Why there is no distinct `long` (None when there is one)."""


# --------------------------------------------------------------------------------------------------------------------
# Word lists (closed-class words; nothing here is ever added to an output)
# --------------------------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------------------------
# Deterministic rewriting
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Tok:
    text: str  # surface with placeholders for protected spans
    words: int  # words of the restored surface (`str.split`)
    spans: tuple[int, ...]  # protected span ids inside
    sent: int = 0
    clause: int = 0


@dataclass
class _Clause:
    toks: list[int]  # token indices, contiguous
    sent: int
    first_in_sent: bool
    score: float = 0.0


@dataclass
class _Doc:
    long: str
    quotes: list[str]  # all required quote contents
    entities: list[str]  # normalised key entities
    surfaces: list[str]  # protected span id -> surface text
    toks: list[_Tok]
    clauses: list[_Clause]
    quote_toks: list[int]  # tokens holding the quotes that must be kept
    entity_tok: dict[str, int]  # entity -> token of its first occurrence (entities kept by a quote are absent)


def _split_plain(segments: list[tuple[str, int | None]], pattern: re.Pattern[str], surfaces: list[str],
                 kinds: list[str], kind: str, first_only: bool) -> bool:
    """Protect matches of `pattern` in plain segments (in place). Returns whether anything matched."""
    out: list[tuple[str, int | None]] = []
    found = False
    for text, sid in segments:
        if sid is not None or (found and first_only):
            out.append((text, sid))
            continue
        pos = 0
        for m in pattern.finditer(text):
            out.append((text[pos:m.start()], None))
            surfaces.append(m.group(0))
            kinds.append(kind)
            out.append((m.group(0), len(surfaces) - 1))
            pos = m.end()
            found = True
            if first_only:
                break
        out.append((text[pos:], None))
    segments[:] = [s for s in out if s[0]]
    return found


def _prepare(caption: str, quoted: Sequence[str], entities: Sequence[str]) -> _Doc:
    caption = _norm(caption.replace("\ue000", "").replace("\ue001", ""))  # the placeholder delimiters
    quotes = required_quotes(caption, quoted)
    ents: list[str] = []
    for e in entities:
        e = _norm(e)
        if e and e.casefold() not in {x.casefold() for x in ents}:
            ents.append(e)
    if not caption and not quotes and not ents:
        raise ValueError("cannot rewrite an empty caption")

    surfaces: list[str] = []  # protected span id -> surface
    kinds: list[str] = []  # protected span id -> 'quote' | 'entity'
    segments: list[tuple[str, int | None]] = []
    pos = 0
    for m in _QUOTE_RE.finditer(caption):  # the caption's own quotes, content whitespace-normalised
        content = _norm(m.group(1) or m.group(2))
        if not content:
            continue
        segments.append((caption[pos:m.start()], None))
        open_, close = ('"', '"') if m.group(1) is not None else ("“", "”")
        surfaces.append(open_ + content + close)
        kinds.append("quote")
        segments.append((surfaces[-1], len(surfaces) - 1))
        pos = m.end()
    segments.append((caption[pos:], None))
    segments = [s for s in segments if s[0]]

    missing: list[tuple[str, str]] = []  # (kind, surface) to append to the caption
    for q in quotes:  # given lines: covered by a quote span, found as plain text, or appended
        if any(sid is not None and q in text for text, sid in segments):
            continue
        pattern = re.compile((r"(?<!\w)" if q[0].isalnum() else "") + re.escape(q) + (r"(?!\w)" if q[-1].isalnum()
                                                                                        else ""))
        if not _split_plain(segments, pattern, surfaces, kinds, "quote", first_only=True):
            missing.append(("quote", f'"{q}"'))
    for e in sorted(ents, key=len, reverse=True):  # longest first, so "Paris Opera" wins over "Paris"
        if any(sid is not None and _has_entity(text, e) for text, sid in segments):
            continue
        if not _split_plain(segments, _entity_re(e), surfaces, kinds, "entity", first_only=False):
            missing.append(("entity", e))
    if missing:  # quotes first, then entities in the caller's order
        missing.sort(key=lambda m: -1 if m[0] == "quote" else ents.index(m[1]))
        if segments and segments[-1][0].rstrip()[-1:] not in ".!?":
            segments.append((".", None))
        if segments:
            segments.append((" ", None))
        for i, (kind, item) in enumerate(missing):
            surfaces.append(item)
            kinds.append(kind)
            segments.append((item, len(surfaces) - 1))
            segments.append(("." if i == len(missing) - 1 else ", ", None))

    long = _norm("".join(text for text, _ in segments))
    ph_text = "".join(text if sid is None else f"\ue000{sid}\ue001" for text, sid in segments)
    toks = []
    for raw in ph_text.split():
        ids = tuple(int(i) for i in _PH_RE.findall(raw))
        toks.append(_Tok(raw, _nwords(_restore(raw, surfaces)), ids))
    clauses = _clauses(toks, surfaces)

    span_tok = {}
    for i, t in enumerate(toks):
        for sid in t.spans:
            span_tok.setdefault(sid, i)
    quote_toks: list[int] = []
    for q in _minimal_quotes(quotes):
        sid = next(i for i, s in enumerate(surfaces) if kinds[i] == "quote" and q in s)
        if span_tok[sid] not in quote_toks:
            quote_toks.append(span_tok[sid])
    entity_tok = {}
    for e in _free_entities(ents, quotes):
        sid = next((i for i, s in enumerate(surfaces) if kinds[i] == "entity" and _has_entity(s, e)), None)
        if sid is not None:  # None: kept by a quote (entity within a quoted line the caption quotes elsewhere)
            entity_tok[e] = span_tok[sid]
    doc = _Doc(long, quotes, ents, surfaces, toks, clauses, sorted(quote_toks), entity_tok)
    _score(doc)
    return doc


def _restore(text: str, surfaces: list[str]) -> str:
    return _PH_RE.sub(lambda m: surfaces[int(m.group(1))], text)


def _clauses(toks: list[_Tok], surfaces: list[str]) -> list[_Clause]:
    clauses: list[_Clause] = []
    cur: list[int] = []
    sent, first = 0, True
    for i, t in enumerate(toks):
        cur.append(i)
        t.sent, t.clause = sent, len(clauses)
        tail = t.text.rstrip(")]}'’")
        end_sent = end_clause = False
        if tail.endswith("\ue001"):  # a token ending in a quote: "Hello." Then ... ends a sentence
            nxt = toks[i + 1].text if i + 1 < len(toks) else ""
            inner = surfaces[t.spans[-1]].rstrip("\"”")
            end_sent = inner[-1:] in ".!?" and nxt[:1].isupper()
        elif tail[-1:] in ",;:" or t.text in ("—", "–", "-", "--"):
            end_clause = True
        elif tail[-1:] in ".!?":  # "St." and initials ("J.", "U.S.") do not end a sentence
            word = tail.rstrip(".").lower()
            end_sent = tail[-1] != "." or not (word in _ABBREVIATIONS or re.fullmatch(r"([a-z]\.)*[a-z]", word))
        if end_sent or end_clause or i == len(toks) - 1:
            clauses.append(_Clause(cur, sent, first))
            cur = []
            first = end_sent
            if end_sent:
                sent += 1
    return clauses


def _bare(tok: _Tok) -> str:
    return tok.text.strip(".,;:!?()[]{}\"'“”‘’").lower()


def _score(doc: _Doc) -> None:
    entity_toks = set(doc.entity_tok.values())
    quote_toks = set(doc.quote_toks)
    for ci, c in enumerate(doc.clauses):
        words = [_bare(doc.toks[i]) for i in c.toks if not doc.toks[i].spans]
        content = sum(1 for w in words if w and w not in _STOPWORDS)
        visual = sum(1 for w in words if w in _COLOURS or w in _ORIENTATION)
        s = 0.0
        if quote_toks.intersection(c.toks):
            s += 100
        if entity_toks.intersection(c.toks):
            s += 50
        if ci == 0:
            s += 20
        if c.first_in_sent:
            s += 4
        s += 2 * content / max(len(c.toks), 1) + min(visual, 2) - 0.5 * c.sent - 0.05 * ci
        c.score = s


def _has_word(tok: _Tok) -> bool:
    return bool(tok.spans) or any(ch.isalnum() for ch in tok.text)


def _fit(doc: _Doc, clause: _Clause, mandatory: set[int], budget: int) -> list[int]:
    """Tokens of `clause` within `budget` words: a window around its mandatory tokens, growing left, then right.

    Falls back to the mandatory tokens alone when they are too far apart to fit in one window.
    """
    toks, idx = doc.toks, clause.toks
    must = [i for i in idx if i in mandatory]
    if must:
        lo, hi = idx.index(must[0]), idx.index(must[-1])
        used = sum(toks[i].words for i in idx[lo:hi + 1])
        if used > budget:
            return must
    else:
        lo, hi, used = 0, -1, 0
    possessive = bool(must) and toks[must[-1]].text.rstrip(",;:.").endswith(("'s", "’s"))
    for side in ("right", "left", "right") if possessive else ("left", "right"):  # "Lisbon's" wants its noun
        while side == "left" and lo > 0 and used + toks[idx[lo - 1]].words <= budget:
            lo -= 1
            used += toks[idx[lo]].words
        while side == "right" and hi + 1 < len(idx) and used + toks[idx[hi + 1]].words <= budget:
            hi += 1
            used += toks[idx[hi]].words
            if possessive and hi == idx.index(must[-1]) + 1:
                break  # one noun after the possessive, then the left context
    window = idx[lo:hi + 1]
    last_must = window.index(must[-1]) if must else -1
    while len(window) - 1 > last_must and (_bare(toks[window[-1]]) in _DANGLING or not _has_word(toks[window[-1]])):
        window.pop()
    first_must = window.index(must[0]) if must else len(window)
    while first_must > 0 and window and (_bare(toks[window[0]]) in _LEADING_CONJ or not _has_word(toks[window[0]])):
        window.pop(0)
        first_must -= 1
    return window


def _plan(doc: _Doc, mandatory: set[int], target: int, low: int) -> list[int]:
    """Token indices of a variant: mandatory clauses trimmed around their quotes/entities, then the best others."""
    toks, clauses = doc.toks, doc.clauses
    ranked = sorted(range(len(clauses)), key=lambda ci: (-clauses[ci].score, ci))
    must_words = {ci: sum(toks[i].words for i in clauses[ci].toks if i in mandatory) for ci in ranked}
    must_cls = [ci for ci in ranked if any(i in mandatory for i in clauses[ci].toks)]
    left = max(target - sum(must_words[ci] for ci in must_cls), 0)
    alloc = {ci: must_words[ci] for ci in must_cls}
    for cap in (3, None):  # first a little context for each, then the rest by score
        for ci in must_cls:
            room = sum(toks[i].words for i in clauses[ci].toks) - alloc[ci]
            extra = min(room, left) if cap is None else min(room, left, cap)
            alloc[ci] += extra
            left -= extra
    chosen: dict[int, list[int]] = {ci: _fit(doc, clauses[ci], mandatory, alloc[ci]) for ci in must_cls}

    def total() -> int:
        return sum(toks[i].words for w in chosen.values() for i in w)

    if 0 not in chosen and clauses:  # the opening clause names the subject: keep what fits of it
        room = target - total()
        if room >= min(3, sum(toks[i].words for i in clauses[0].toks)):
            chosen[0] = _fit(doc, clauses[0], set(), room)

    def informative(ci: int) -> bool:
        return _informative(doc, ci)

    for ci in ranked:  # then whole clauses, best first
        words = sum(toks[i].words for i in clauses[ci].toks)
        if ci not in chosen and informative(ci) and total() + words <= target:
            chosen[ci] = list(clauses[ci].toks)
    for ci in ranked:  # still too short: prefixes of the best remaining clauses
        if total() >= low:
            break
        if ci not in chosen and informative(ci) and target - total() > 0:
            chosen[ci] = _fit(doc, clauses[ci], set(), target - total())
    ids = {i for w in chosen.values() for i in w}
    if total() < low:  # mandatory tokens far apart in one long clause: add their neighbours, nearest first
        near = sorted((min(abs(i - j) for j in ids) if ids else 0, i) for i in range(len(toks)) if i not in ids)
        used = total()
        for _, i in near:
            if used >= low:
                break
            if used + toks[i].words <= target:
                ids.add(i)
                used += toks[i].words
    return sorted(ids)


def _render(doc: _Doc, tok_ids: list[int], mode: str) -> str:
    """Join tokens into text: sentences closed and capitalised ('medium') or comma-joined fragments ('short')."""
    toks = doc.toks
    out: list[str] = []
    cap_next = True
    prev: int | None = None
    for i in tok_ids:
        t = toks[i]
        text = t.text
        if prev is not None:
            p = toks[prev]
            if mode == "short":
                if i != prev + 1 or p.sent != t.sent:
                    if out[-1][-1:] in ".":
                        out[-1] = out[-1][:-1]
                    if out[-1][-1:] not in ",;:!?":
                        out[-1] += ","
                    if text[:1].isupper() and not t.spans and text.lower() in _STOPWORDS:
                        text = text.lower()  # "..., the sign reads" (case only: still the caption's word)
            elif p.sent != t.sent:
                out[-1] = _close(out[-1])
                cap_next = True
            elif i != prev + 1 and out[-1][-1:] not in ",;:":
                out[-1] += ","
        if cap_next and text[:1].islower():
            text = text[0].upper() + text[1:]
        cap_next = False
        out.append(text)
        prev = i
    if not out:
        return ""
    if mode == "short":
        out[-1] = _TRAIL_PUNCT_RE.sub("", out[-1]) or out[-1]
    else:
        out[-1] = _close(out[-1])
    return _norm(_restore(" ".join(out), doc.surfaces))


def _close(text: str) -> str:
    if text[-1:] in ".!?":
        return text
    stripped = _TRAIL_PUNCT_RE.sub("", text)
    return (stripped or text) + "."


def _informative(doc: _Doc, ci: int) -> bool:
    """A clause that states something ("behind them," alone says nothing; the opening clause names the subject,
    even one made of closed-class words such as 'A can.')."""
    toks = [doc.toks[i] for i in doc.clauses[ci].toks]
    if ci == 0:
        return any(t.spans or any(ch.isalnum() for ch in t.text) for t in toks)
    return any(_bare(t) not in _STOPWORDS or t.spans for t in toks)


def _facts(doc: _Doc) -> list[int]:
    return [ci for ci in range(len(doc.clauses)) if _informative(doc, ci)]


def fact_count(caption: str, quoted: Sequence[str] = (), entities: Sequence[str] = ()) -> int:
    """Facts a caption states: its clauses with content (a sentence, or a comma-separated part of one).

    Args:
        caption: the caption.
        quoted: visible text lines (kept whole: a quote never splits into clauses).
        entities: key entities (kept whole too).

    Returns:
        The number of informative clauses (0 for an empty caption).
    """
    if not _norm(caption) and not quoted and not entities:
        return 0
    return len(_facts(_prepare(caption, quoted, entities)))


def _words_of(doc: _Doc, ids: Iterable[int]) -> int:
    return sum(doc.toks[i].words for i in ids)


def _short(doc: _Doc, config: VariantConfig, medium: str | None = None) -> str:
    limit = variant_limit("short", doc.quotes, doc.entities, config)
    mandatory = set(doc.quote_toks)
    room = limit - _words_of(doc, mandatory)
    for e in doc.entities:  # the most important entity (caller's order) that still fits
        i = doc.entity_tok.get(e)
        if i is not None and doc.toks[i].words <= room:
            mandatory.add(i)
            break
    target = limit
    distinct = medium is not None and len(_facts(doc)) >= 2
    if distinct:  # fewer words than medium, so short is never a copy of it
        target = max(min(limit, _nwords(medium) - 1), _words_of(doc, mandatory), 1)
    total = sum(t.words for t in doc.toks)
    ids = list(range(len(doc.toks))) if total <= target else _plan(doc, mandatory, target, 1)
    text = _render(doc, ids, "short")
    while distinct and same_text(text, medium or "") and target > max(_words_of(doc, mandatory), 1):
        target -= 1  # same words as medium once punctuation is ignored ('—' counts as a word above)
        text = _render(doc, _plan(doc, mandatory, target, 1), "short")
    return text


def _medium(doc: _Doc, config: VariantConfig) -> str:
    lo, hi = config.medium_bounds
    total = sum(t.words for t in doc.toks)
    mandatory = set(doc.quote_toks) | set(doc.entity_tok.values())
    if total > hi:
        return _render(doc, _plan(doc, mandatory, config.medium_target_words, lo), "medium")
    facts = _facts(doc)
    if len(facts) >= MIN_DISTINCT_FACTS:  # the caption fits: drop its least important fact so long stays distinct
        floor = medium_floor(total, config)
        droppable = [ci for ci in facts[1:] if not mandatory.intersection(doc.clauses[ci].toks)
                     and total - _words_of(doc, doc.clauses[ci].toks) >= floor]
        if droppable:
            drop = set(doc.clauses[min(droppable, key=lambda ci: (doc.clauses[ci].score, -ci))].toks)
            return _render(doc, [i for i in range(len(doc.toks)) if i not in drop], "medium")
        # every fact holds a quote or an entity: trim the words around them instead (a quarter of the caption)
        target = total - max(2, total // 4)
        if target >= max(floor, _words_of(doc, mandatory)):
            ids = _plan(doc, mandatory, target, floor)
            if floor <= _words_of(doc, ids) < total:
                return _render(doc, ids, "medium")
    return _render(doc, list(range(len(doc.toks))), "medium")


# The grounded captioner's field labels ('Title: "..."', 'Tagged ...', 'Taken in ...'): structure, not content.
_LABEL_WORDS = frozenset({"title", "alt", "description", "described", "tagged", "taken", "made", "credit"})
_SHADES = frozenset({"light", "dark", "pale", "deep", "bright"})


def _tags(doc: _Doc, config: VariantConfig) -> str:
    """Quotes, entities, then the caption's content phrases in order: runs of up to three content words ('brick
    wall', 'motion blurred clock'), colours ('light grey') and orientation words as tags of their own."""
    quotes = _minimal_quotes(doc.quotes)
    free = _free_entities(doc.entities, doc.quotes)
    tags: list[str] = [f'"{q}"' for q in quotes] + [e.lower() for e in free]
    seen = {t.casefold() for t in tags}
    entity_words = {w for e in doc.entities for w in _WORD_RE.findall(e.casefold())}
    phrases: list[str] = []
    run: list[str] = []

    def add(tag: str) -> None:
        if tag not in seen:
            seen.add(tag)
            phrases.append(tag)

    def flush() -> None:
        for tag in [" ".join(run)] if len(run) <= 3 else list(run):
            add(tag)
        run.clear()

    toks = doc.toks
    n = 0
    while n < len(toks):
        t = toks[n]
        n += 1
        if t.spans:
            flush()
            continue
        w = _bare(t)
        if w.endswith("'s") or w.endswith("’s"):
            w = w[:-2]
        ends = not t.text[-1:].isalnum()
        nxt = _bare(toks[n]) if n < len(toks) and not toks[n].spans else ""
        if w in _SHADES and nxt in _COLOURS and not ends:  # 'light grey' is one colour, not 'light' and 'grey'
            flush()
            add(f"{w} {nxt}")
            n += 1
            continue
        if (len(w) < 3 or w in _STOPWORDS or w in _LABEL_WORDS or w.endswith("ly") or w in entity_words
                or not any(ch.isalpha() for ch in w) or not re.fullmatch(r"[\w'’-]+", w)):
            flush()
            continue
        if w in _COLOURS or w in _ORIENTATION or w in ("dark", "bright"):
            flush()
            add(w)
        else:
            run.append(w)
        if ends:
            flush()
    flush()
    limit = max(config.max_tags, len(tags))
    tags += [p for p in phrases if p][: max(limit - len(tags), 0)]
    if not tags:  # a caption of stopwords only: keep its first word rather than nothing
        tags = [_bare(doc.toks[0]) or doc.toks[0].text.lower()]
    return ", ".join(tags)


def _deterministic(doc: _Doc, config: VariantConfig) -> dict[str, Any]:
    medium = _medium(doc, config)
    return _distinct(doc, {"tags": _tags(doc, config), "short": _short(doc, config, medium),
                           "medium": medium, "long": doc.long})


def _distinct(doc: _Doc, out: dict[str, Any]) -> dict[str, Any]:
    """Leave `long` empty, with a note, when `medium` already says all of it: a copy teaches nothing new."""
    out = {**out, "long_is_distinct": True, "long_note": None}
    if same_text(out["medium"], out["long"]):
        facts = len(_facts(doc))
        why = ("none of its facts can be dropped (each holds quoted text or a key entity, or is too long to lose)"
               if facts >= MIN_DISTINCT_FACTS else
               f"the caption states {facts} fact{'s' if facts != 1 else ''} "
               f"(a distinct long needs {MIN_DISTINCT_FACTS})")
        out.update(long="", long_is_distinct=False,
                   long_note=f"medium holds the whole caption ({_nwords(doc.long)} words): {why}")
    return out


# --------------------------------------------------------------------------------------------------------------------
# LLM backend
# --------------------------------------------------------------------------------------------------------------------

_PROMPT_V1 = """You rewrite image captions into text-to-image prompts.
Rewrite the caption below as {task}.
Rules:
- {bounds}
- Keep every quoted text exactly as written, letter for letter, inside double quotes: {quotes}
- {entity_rule}
- Use only what the caption states. Add nothing.
- Answer with the rewritten text only, on one line.

Caption: {caption}"""

PROMPTS: dict[str, dict[str, str]] = {
    "v1": {
        "template": _PROMPT_V1,
        "tags": "a comma-separated list of lowercase tags (objects, colours, style, place names)",
        "short": "a short prompt",
        "medium": "a prompt of about {target} words",
        "retry": "\nYour previous answer was rejected: {problems}. Answer again, following every rule.",
    },
}
"""Rewrite prompt templates by version; `VariantConfig.prompt_version` picks one and is recorded with the output."""


def build_prompt(kind: str, caption: str, quoted: Sequence[str], entities: Sequence[str], config: VariantConfig,
                 problems: Sequence[str] = ()) -> str:
    """The versioned LLM prompt that rewrites `caption` into one variant.

    Args:
        kind: 'tags', 'short' or 'medium'.
        caption: the long caption (as in `Variants.long`).
        quoted: required quote contents.
        entities: key entities.
        config: bounds and `prompt_version`.
        problems: problems of a rejected previous answer (a retry prompt names them).

    Returns:
        The prompt text.
    """
    if kind not in LLM_KINDS:
        raise ValueError(f"the LLM rewrites only {LLM_KINDS}, not {kind!r}")
    p = PROMPTS[config.prompt_version]
    limit = variant_limit(kind, quoted, entities, config)
    lo = min(config.medium_bounds[0], _nwords(caption))
    bounds = {
        "tags": f"At most {limit} tags; each quoted text is one tag, in double quotes.",
        "short": f"At most {limit} words.",
        "medium": f"Between {lo} and {limit} words.",
    }[kind]
    free = _free_entities(entities, quoted)
    if not free:
        entity_rule = "Keep every name, title and place the caption mentions."
    elif kind == "short":
        entity_rule = "Keep at least the first of these names: " + "; ".join(free)
    else:
        entity_rule = "Keep each of these names: " + "; ".join(free)
    quotes = " ".join(f'"{q}"' for q in _minimal_quotes(quoted)) or "(none)"
    prompt = p["template"].format(task=p[kind].format(target=config.medium_target_words), bounds=bounds,
                                  quotes=quotes, entity_rule=entity_rule, caption=caption)
    if problems:
        prompt += p["retry"].format(problems="; ".join(problems))
    return prompt


def clean_output(kind: str, text: str) -> str:
    """Normalise an LLM answer: one line, no leading label, tags lowercased (quoted tags untouched) and de-duplicated.

    Args:
        kind: the variant kind.
        text: raw generated text.

    Returns:
        The cleaned variant (possibly empty; the checks reject it then).
    """
    text = _LABEL_RE.sub("", _norm(text))
    if kind != "tags":
        return text
    out: list[str] = []
    for t in split_tags(text):
        t = t if _is_quoted_tag(t) else t.lower()
        if t and t.casefold() not in {x.casefold() for x in out}:
            out.append(t)
    return ", ".join(out)


class ChatComplete(Protocol):
    """`ChatClient.complete`-like callable (OpenAI-compatible chat endpoint)."""

    def __call__(self, messages: list[dict[str, str]], **params: Any) -> str: ...


def chat_generator(complete: ChatComplete, **params: Any) -> Generator:
    """Adapt a chat-completion callable (e.g. `ChatClient.complete`) to the `generate(prompts)` interface.

    Args:
        complete: `complete(messages, **params) -> str`.
        **params: passed to every call (model, temperature=0, max_tokens, ...).

    Returns:
        A callable sending one user message per prompt, in order.
    """

    def generate(prompts: list[str]) -> list[str]:
        return [complete([{"role": "user", "content": p}], **params) for p in prompts]

    generate.model_name = str(params.get("model", ""))  # type: ignore[attr-defined]
    return generate


class TransformersTextGenerator:
    """Greedy, batched, left-padded generation with a local causal LM (chat template used when the tokenizer has one).

    Args:
        model_path: directory holding the tokenizer and model (`save_pretrained` layout).
        max_new_tokens: generation budget per prompt.
        device: torch device.
        batch_size: prompts per forward batch.

    Raises:
        FileNotFoundError: when `model_path` is not a directory.
    """

    def __init__(self, model_path: str | Path, max_new_tokens: int = 96, device: str = "cpu", batch_size: int = 8):
        path = Path(model_path)
        if not path.is_dir():
            raise FileNotFoundError(f"prompt-rewrite model directory not found: {path} (the transformers backend "
                                    "loads local weights only; set VariantConfig.model_path to a saved model dir)")
        self.model_path = str(path)
        self.model_name = self.model_path
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.batch_size = batch_size
        self.tokenizer: Any = None
        self.model: Any = None

    def setup(self) -> None:
        """Load tokenizer and model once (called lazily by the first generation)."""
        if self.model is not None:
            return
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self.model_path)
        tok.padding_side = "left"
        if tok.pad_token is None:
            if tok.eos_token is None:
                raise ValueError(f"tokenizer in {self.model_path} has neither a pad nor an eos token")
            tok.pad_token = tok.eos_token
        model = AutoModelForCausalLM.from_pretrained(self.model_path)
        model.to(self.device).eval()
        self.tokenizer, self.model = tok, model
        log.info("loaded prompt-rewrite model %s on %s", self.model_path, self.device)

    def __call__(self, prompts: list[str]) -> list[str]:
        import torch

        self.setup()
        tok = self.tokenizer
        chat = bool(getattr(tok, "chat_template", None))
        out: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start:start + self.batch_size]
            if chat:
                batch = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                 add_generation_prompt=True) for p in batch]
            enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=not chat).to(self.device)
            with torch.inference_mode():
                gen = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                          pad_token_id=tok.pad_token_id)
            out.extend(tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
        return out


# --------------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------------


def _item(item: Mapping[str, Any] | Sequence[Any]) -> tuple[str, list[str], list[str]]:
    if isinstance(item, Mapping):
        return str(item["caption"]), list(item.get("quoted") or []), list(item.get("entities") or [])
    caption, quoted, entities = item
    return str(caption), list(quoted or []), list(entities or [])


def _generator_for(config: VariantConfig, generator: Generator | None) -> Generator:
    if generator is not None:
        return generator
    if config.backend == "transformers":
        if not config.model_path:
            raise ValueError("backend 'transformers' needs VariantConfig.model_path (a local model directory)")
        return TransformersTextGenerator(config.model_path, config.max_new_tokens, config.device, config.batch_size)
    raise ValueError("backend 'openai' needs generator=... (e.g. chat_generator(ChatClient(...).complete, model=...))")


def _call(generate: Generator, prompts: list[str]) -> list[str]:
    if not prompts:
        return []
    outs = list(generate(prompts))
    if len(outs) != len(prompts):
        raise ValueError(f"generator returned {len(outs)} outputs for {len(prompts)} prompts")
    return [str(o) for o in outs]


def rewrite_batch(
    items: Iterable[Mapping[str, Any] | Sequence[Any]],
    config: VariantConfig,
    generator: Generator | None = None,
) -> list[Variants]:
    """Rewrite many captions; an LLM backend sees all prompts of a round in one `generate` call.

    Args:
        items: mappings with `caption` and optional `quoted`, `entities` (or `(caption, quoted, entities)` tuples).
        config: backend, bounds, prompt version.
        generator: `generate(prompts) -> texts` for the LLM backends; None builds a `TransformersTextGenerator`
            from `config.model_path` for 'transformers' (required for 'openai'); ignored for 'deterministic'.

    Returns:
        One `Variants` per item, in order.

    Raises:
        ValueError: on an empty caption (no caption, quote or entity), or a generator returning a wrong count.
        FileNotFoundError: when the transformers backend's `model_path` is not a directory.
        Exception: whatever the generator raises (an unreachable endpoint is an error, not a fallback).
    """
    docs = []
    for item in items:
        caption, quoted, entities = _item(item)
        docs.append(_prepare(caption, quoted, entities))
    base = [_deterministic(d, config) for d in docs]
    if config.backend == "deterministic":
        return [Variants(**b, backend="deterministic", model="", prompt_version=DETERMINISTIC_VERSION) for b in base]

    generate = _generator_for(config, generator)
    model = str(getattr(generate, "model_name", "") or config.model_path or "")
    results: list[dict[str, str]] = [{"long": d.long} for d in docs]
    pending = [(n, kind, ()) for n in range(len(docs)) for kind in LLM_KINDS]
    failures: dict[int, list[str]] = {}
    for attempt in range(2):  # first answer, then one retry naming the problems
        prompts = [build_prompt(kind, docs[n].long, docs[n].quotes, docs[n].entities, config, probs)
                   for n, kind, probs in pending]
        retry = []
        for (n, kind, _), raw in zip(pending, _call(generate, prompts), strict=True):
            text = clean_output(kind, raw)
            problems = check_variant(kind, text, docs[n].quotes, docs[n].entities, config, caption=docs[n].long)
            if base[n]["long_is_distinct"] and same_text(text, docs[n].long):
                problems.append(f"{kind} repeats the caption")  # the facts allow a shorter one
            if not problems:
                results[n][kind] = text
            elif attempt == 0:
                retry.append((n, kind, tuple(problems)))
            else:
                results[n][kind] = base[n][kind]
                failures.setdefault(n, []).append(f"{kind}: {', '.join(problems)}")
        pending = retry
        if not pending:
            break
    out = []
    for n, r in enumerate(results):
        reason = "; ".join(failures[n]) + " (after 1 retry; deterministic variant used)" if n in failures else None
        out.append(Variants(**_distinct(docs[n], r), backend=config.backend, model=model,
                            prompt_version=config.prompt_version, fallback_reason=reason))
    if failures:
        log.info("prompt rewrite: %d of %d captions fell back to deterministic variants", len(failures), len(docs))
    return out


def rewrite(
    caption: str,
    quoted: Sequence[str] = (),
    entities: Sequence[str] = (),
    config: VariantConfig | None = None,
    generator: Generator | None = None,
) -> Variants:
    """Rewrite one caption into `tags`, `short`, `medium` and `long`.

    Args:
        caption: the long caption.
        quoted: visible text lines that must be kept verbatim (the caption's own `"..."` spans are added).
        entities: key entities (titles, place names, named entities from metadata), most important first.
        config: defaults to `VariantConfig()` (deterministic).
        generator: see `rewrite_batch`.

    Returns:
        The variants, with backend, model, prompt version and any fallback reason.
    """
    config = config or VariantConfig()
    return rewrite_batch([{"caption": caption, "quoted": quoted, "entities": entities}], config, generator)[0]


def sample_length(distribution: Mapping[str, float], rng: Any) -> str:
    """Draw a variant kind from a length distribution (what the training loader does per sample).

    Args:
        distribution: probability per kind (validated by `validate_distribution`).
        rng: anything with `.random() -> float in [0, 1)` (`random.Random`, `numpy.random.Generator`).

    Returns:
        One of `VARIANT_KINDS`.
    """
    dist = validate_distribution(distribution)
    u = float(rng.random())
    acc = 0.0
    last = next(k for k in reversed(VARIANT_KINDS) if dist[k] > 0)
    for kind in VARIANT_KINDS:
        acc += dist[kind]
        if dist[kind] > 0 and u < acc:
            return kind
    return last  # u within rounding of 1


def select_prompt(
    variants: Variants | Mapping[str, Any], distribution: Mapping[str, float], rng: Any
) -> tuple[str, str]:
    """Pick the training prompt of one sample: a kind drawn by `sample_length`, and that variant's text.

    Args:
        variants: a `Variants` or a row with `tags`, `short`, `medium`, `long` columns.
        distribution: probability per kind.
        rng: see `sample_length`.

    Returns:
        `(kind, text)`.
    """
    kind = sample_length(distribution, rng)
    text = getattr(variants, kind) if isinstance(variants, Variants) else variants[kind]
    return kind, str(text)


def _same(a: str, b: str) -> bool:
    return _TRAIL_PUNCT_RE.sub("", _norm(a)).casefold() == _TRAIL_PUNCT_RE.sub("", _norm(b)).casefold()


def expansion_pairs(variants_rows: Iterable[Mapping[str, Any] | Any]) -> list[dict[str, str]]:
    """(short -> long) pairs, the training data of a prompt expander.

    Args:
        variants_rows: rows (mappings or objects) with `sample_id`, `short`, `long` and (for rows without a
            distinct long) `medium`.

    Returns:
        `{"short", "long", "sample_id"}` dicts (the long side is `medium` where `long` is empty), skipping rows whose
        short or long side is empty or whose short equals it (ignoring case, whitespace and final punctuation).
    """
    pairs = []
    for row in variants_rows:
        get = row.get if isinstance(row, Mapping) else lambda k, r=row: getattr(r, k, None)
        short, long = _norm(get("short") or ""), _norm(get("long") or get("medium") or "")
        if not short or not long or _same(short, long):
            continue
        pairs.append({"short": short, "long": long, "sample_id": str(get("sample_id") or "")})
    return pairs
