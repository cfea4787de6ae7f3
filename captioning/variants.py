"""Prompt-length variants of a caption: `tags`, `short`, `medium` and `long`, plus (short -> long) expansion pairs.

Krea 2 trains on captions "rewritten into several prompt lengths" so the model follows a three-word prompt as well as
a paragraph. Every caption becomes four variants that differ:

- `long`: the full caption (whitespace normalised). If a required quoted line or key entity is missing from the
  caption, it is appended at the end (`... "OPEN", Paris.`) so that every variant can keep it.
- `medium`: about `medium_target_words` words (bounds `medium_target_words +- medium_tolerance`). When the whole
  caption fits and states at least `MIN_DISTINCT_FACTS` facts (informative clauses), medium drops its least
  important fact, then further ones while it is longer than the target and stays within the bounds; with fewer
  facts medium is the whole caption and `long` is left empty with `long_is_distinct=False` and a `long_note` (a copy
  would only double that caption's weight). A medium under the lower bound (the caption's facts do not fill one
  that still differs from long) carries a `medium_note` saying so: no filler is ever added.
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

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from captioning.text_rules import text_problems
from captioning.variant_config import (
    BACKENDS,
    DEFAULT_DISTRIBUTION,
    DETERMINISTIC_VERSION,
    LLM_KINDS,
    MIN_DISTINCT_FACTS,
    PROMPTS,
    VARIANT_KINDS,
    Generator,
    VariantConfig,
    Variants,
    validate_distribution,
)
from captioning.variant_doc import (
    _prepare,
    fact_count,
)
from captioning.variant_llm import (
    ChatComplete,
    TransformersTextGenerator,
    _call,
    _generator_for,
    build_prompt,
    chat_generator,
    clean_output,
)
from captioning.variant_rewrite import _deterministic, _with_notes
from captioning.variant_rules import (
    _TRAIL_PUNCT_RE,
    _norm,
    check_variant,
    invented_words,
    medium_floor,
    required_quotes,
    same_text,
    split_tags,
    variant_limit,
)

log = logging.getLogger(__name__)

__all__ = [
    "BACKENDS", "ChatComplete", "DEFAULT_DISTRIBUTION", "DETERMINISTIC_VERSION", "Generator", "LLM_KINDS",
    "MIN_DISTINCT_FACTS", "PROMPTS", "TransformersTextGenerator", "VARIANT_KINDS", "VariantConfig", "Variants",
    "build_prompt", "chat_generator", "check_variant", "clean_output", "expansion_pairs", "fact_count",
    "invented_words", "medium_floor", "required_quotes", "rewrite", "rewrite_batch", "same_text", "sample_length",
    "select_prompt", "split_tags", "validate_distribution", "variant_limit",
]


def _item(item: Mapping[str, Any] | Sequence[Any]) -> tuple[str, list[str], list[str]]:
    if isinstance(item, Mapping):
        return str(item["caption"]), list(item.get("quoted") or []), list(item.get("entities") or [])
    caption, quoted, entities = item
    return str(caption), list(quoted or []), list(entities or [])



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
            # the caption rules hold for the rewrite too: no field labels, class labels, file stems or placeholders
            problems += [m for _, m in text_problems(text, docs[n].quotes, credit_allowed=True)]
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
        out.append(Variants(**_with_notes(docs[n], r, config), backend=config.backend, model=model,
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

