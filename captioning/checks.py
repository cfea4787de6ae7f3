"""Checks on stored captions and prompt variants that can fail (what the `captions` / `prompt_variants` checks run).

Each problem is `(category, message)`; a category names what went wrong so the asset check can count them:

- `field_label`: 'Title:', 'Credit:', 'Description:' ... outside quoted text (no user types labelled prompts);
- `file_stem` / `class_label` / `placeholder`: 'backpack_dog', 'class: backpack', 'untitled', 'lorem ipsum';
- `credit`: attribution or licence text ('Photo by', 'CC-BY', URLs) when captions may not credit;
- `quoted_text_lost` / `entity_lost`: visible text not verbatim, a key name missing;
- `length`, `tags_sentence`, `identical`, `long_flag`, `medium_flag`: variant bounds, a tag that is a sentence, two
  variants with the same words (when the caption states >= `MIN_DISTINCT_FACTS` facts), `long` inconsistent with its
  flag, a `medium` under its nominal bounds without a `medium_note` saying why (or a note on one within them).

Quoted spans are excluded from the text checks: visible text is quoted as written, whatever it says.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from captioning import grounding
from captioning.text_rules import Problem, _outside_quotes, text_problems
from captioning.variants import (
    MIN_DISTINCT_FACTS,
    VARIANT_KINDS,
    VariantConfig,
    check_variant,
    fact_count,
    same_text,
    split_tags,
)

MAX_TAG_WORDS = 4
"""A tag (other than quoted text) with more words than this is a sentence, not a tag."""


def caption_problems(caption: str, quoted: Sequence[str] = (), entities: Sequence[str] = (),
                     credit_allowed: bool = False) -> list[Problem]:
    """Everything wrong with one stored caption (empty captions are failures counted elsewhere: none here).

    Args:
        caption: the caption.
        quoted: the OCR lines it must quote verbatim.
        entities: the names it must hold.
        credit_allowed: see `text_problems`.
    """
    if not caption:
        return []
    out = text_problems(caption, quoted, credit_allowed)
    for line in grounding.missing_ocr_lines(caption, quoted):
        out.append(("quoted_text_lost", f"visible text {line!r} not quoted verbatim"))
    folded = caption.casefold()
    for name in entities:
        if name and name.casefold() not in folded:
            out.append(("entity_lost", f"entity {name!r} missing"))
    return out


def _only_kept_text(text: str, quotes: Sequence[str], entities: Sequence[str]) -> bool:
    """The variant is nothing but the quoted text and names every variant must keep."""
    rest = _outside_quotes(text, quotes)
    for name in sorted(entities, key=len, reverse=True):
        rest = re.sub(re.escape(name), " ", rest, flags=re.IGNORECASE) if name else rest
    return not re.search(r"\w", rest)


def variant_problems(row: Mapping[str, Any], config: VariantConfig | None = None) -> list[Problem]:
    """Everything wrong with one `prompt_variants` row.

    Args:
        row: `tags`, `short`, `medium`, `long`, `long_is_distinct`, `medium_note`, `quoted`, `entities`.
        config: the bounds the variants were made with.
    """
    config = config or VariantConfig()
    quoted = list(row.get("quoted") or [])
    entities = list(row.get("entities") or [])
    distinct = row.get("long_is_distinct", True) is not False
    caption = (row.get("long") if distinct else row.get("medium")) or ""
    out: list[Problem] = []
    if distinct and not row.get("long"):
        out.append(("long_flag", "long is empty but long_is_distinct is true"))
    if not distinct and row.get("long"):
        out.append(("long_flag", "long is written although long_is_distinct is false (a copy)"))
    medium_words = len(str(row.get("medium") or "").split())
    if row.get("medium") and medium_words < config.medium_bounds[0] and not row.get("medium_note"):
        out.append(("medium_flag", f"medium has {medium_words} words, under {config.medium_bounds[0]}, and no "
                                   "medium_note says why"))
    if row.get("medium_note") and medium_words >= config.medium_bounds[0]:
        out.append(("medium_flag", "medium_note is set although medium is within its bounds"))
    kinds = [k for k in VARIANT_KINDS if k != "long" or distinct]
    for kind in kinds:
        text = str(row.get(kind) or "")
        for problem in check_variant(kind, text, quoted, entities, config, caption=caption or None):
            category = ("quoted_text_lost" if "quoted text" in problem else "entity_lost" if "entit" in problem
                        else "length")
            out.append((category, problem))
        out += [(c, f"{kind}: {m}") for c, m in text_problems(text, quoted, credit_allowed=True)
                if c != "credit"]  # credits are the caption check's business
    for tag in split_tags(str(row.get("tags") or "")):
        if tag and not tag.startswith(('"', "“")) and (len(tag.split()) > MAX_TAG_WORDS or re.search(r"[.!?]", tag)):
            out.append(("tags_sentence", f"tag {tag[:60]!r} is a sentence"))
    if caption and fact_count(caption, quoted, entities) >= MIN_DISTINCT_FACTS:
        present = [k for k in kinds if row.get(k)]
        for i, a in enumerate(present):
            for b in present[i + 1:]:
                if same_text(row[a], row[b]) and not (_only_kept_text(row[a], quoted, entities)
                                                      and _only_kept_text(row[b], quoted, entities)):
                    out.append(("identical", f"{a} and {b} say the same words"))
    return out


def summarize(problems: Iterable[tuple[str, Sequence[Problem]]], rows: int, examples: int = 5
              ) -> tuple[bool, dict[str, Any]]:
    """Pass/fail and check metadata from per-sample problems.

    Args:
        problems: `(sample_id, problems)` per checked sample.
        rows: samples checked.
        examples: most example messages kept.

    Returns:
        `(passed, metadata)`: passed when no sample has a problem; metadata holds `rows`, `failing_samples`, a count
        per category and example messages (`sample_id[:12] category: message`), all plain JSON values.
    """
    counts: Counter[str] = Counter()
    failing = 0
    shown: list[str] = []
    for sample_id, found in problems:
        if found:
            failing += 1
        for category, message in found:
            counts[category] += 1
            if len(shown) < examples:
                shown.append(f"{str(sample_id)[:12]} {category}: {message}")
    meta: dict[str, Any] = {"rows": rows, "failing_samples": failing, **{k: v for k, v in sorted(counts.items())}}
    meta["examples"] = "\n".join(shown) or "-"
    return failing == 0, meta


def check_caption_rows(rows: Iterable[Mapping[str, Any]], credit_allowed: bool = False) -> tuple[bool, dict]:
    """The `captions` asset check over stored rows (`sample_id`, `caption`, `quoted`, `entities`)."""
    rows = list(rows)
    return summarize(((r["sample_id"], caption_problems(r.get("caption") or "", r.get("quoted") or [],
                                                        r.get("entities") or [], credit_allowed)) for r in rows),
                     len(rows))


def check_variant_rows(rows: Iterable[Mapping[str, Any]], config: VariantConfig | None = None
                       ) -> tuple[bool, dict]:
    """The `prompt_variants` asset check over stored rows."""
    rows = list(rows)
    return summarize(((r["sample_id"], variant_problems(r, config)) for r in rows), len(rows))
