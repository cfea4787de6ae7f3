"""A caption as the deterministic rewriter sees it: tokens with protected quotes and entities, clauses, scores.

A clause (a sentence, or a comma-separated part of one) is the unit of a fact: the shorter variants keep or drop
whole clauses, and never cut a quote or an entity.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from captioning.variant_rules import (
    _ABBREVIATIONS,
    _COLOURS,
    _ORIENTATION,
    _PH_RE,
    _QUOTE_RE,
    _STOPWORDS,
    _entity_re,
    _free_entities,
    _has_entity,
    _minimal_quotes,
    _norm,
    _nwords,
    required_quotes,
)


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


