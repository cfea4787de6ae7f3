"""The deterministic rewriter: `tags`, `short` and `medium` made only of the caption's own words.
"""

from __future__ import annotations

import re
from typing import Any

from captioning.variant_config import (
    MIN_DISTINCT_FACTS,
    VariantConfig,
)
from captioning.variant_doc import (
    _bare,
    _Clause,
    _Doc,
    _facts,
    _informative,
    _restore,
    _Tok,
    _words_of,
)
from captioning.variant_rules import (
    _COLOURS,
    _COMMON_OPENERS,
    _DANGLING,
    _LEADING_CONJ,
    _ORIENTATION,
    _STOPWORDS,
    _TRAIL_PUNCT_RE,
    _WORD_RE,
    _free_entities,
    _minimal_quotes,
    _norm,
    _nwords,
    medium_floor,
    same_text,
    variant_limit,
)


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
                    if text[:1].isupper() and not t.spans and (text.lower() in _STOPWORDS
                                                             or _bare(t) in _COMMON_OPENERS):
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
    if len(facts) >= MIN_DISTINCT_FACTS:  # the caption fits: drop its least important facts so long stays distinct
        floor = medium_floor(total, config)
        droppable = [ci for ci in facts[1:] if not mandatory.intersection(doc.clauses[ci].toks)]
        drop: set[int] = set()
        words = total
        # one fact at least: the least important that leaves >= lo words if one does, else the least important
        # above the floor; then more, least important first, while above the target and staying >= lo
        first = sorted((ci for ci in droppable if total - _words_of(doc, doc.clauses[ci].toks) >= floor),
                       key=lambda ci: (total - _words_of(doc, doc.clauses[ci].toks) < lo, doc.clauses[ci].score, -ci))
        for ci in (first[:1] + sorted(droppable, key=lambda ci: (doc.clauses[ci].score, -ci))) if first else []:
            size = _words_of(doc, doc.clauses[ci].toks)
            if drop and words <= config.medium_target_words:
                break
            if not drop or (not drop.intersection(doc.clauses[ci].toks) and words - size >= max(floor, lo)):
                drop.update(doc.clauses[ci].toks)
                words -= size
        if drop:
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
_POSITIONS = frozenset({"centre", "center", "edges", "edge", "top", "bottom", "left", "right", "side", "half",
                        "middle", "corner", "corners"})


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
            if tag not in _POSITIONS:  # 'centre' alone says nothing; 'lighter top half' does
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
    return _with_notes(doc, {"tags": _tags(doc, config), "short": _short(doc, config, medium),
                             "medium": medium, "long": doc.long}, config)


def _with_notes(doc: _Doc, out: dict[str, Any], config: VariantConfig) -> dict[str, Any]:
    """Leave `long` empty, with a note, when `medium` already says all of it (a copy teaches nothing new), and say
    why when `medium` is shorter than its nominal bounds (the caption's facts do not fill one; no filler is added)."""
    out = {**out, "long_is_distinct": True, "long_note": None, "medium_note": None}
    facts = len(_facts(doc))
    plural = "s" if facts != 1 else ""
    if same_text(out["medium"], out["long"]):
        why = ("none of its facts can be dropped (each holds quoted text or a key entity, or is too long to lose)"
               if facts >= MIN_DISTINCT_FACTS else
               f"the caption states {facts} fact{plural} (a distinct long needs {MIN_DISTINCT_FACTS})")
        out.update(long="", long_is_distinct=False,
                   long_note=f"medium holds the whole caption ({_nwords(doc.long)} words): {why}")
    lo, hi = config.medium_bounds
    n, total = _nwords(out["medium"]), _nwords(doc.long)
    if n < lo:
        why = (f"the whole caption has {total} words ({facts} fact{plural})" if total < lo or not out["long"] else
               f"the caption states {facts} fact{plural} in {total} words, too few for a medium of {lo} or more "
               "that still differs from long")
        out["medium_note"] = f"medium has {n} words, under the {lo}-{hi} bounds: {why}"
    return out
