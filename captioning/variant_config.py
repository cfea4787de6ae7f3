"""Configuration and result types of the prompt-length variants, and the versioned LLM prompts."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

VARIANT_KINDS = ("tags", "short", "medium", "long")
"""Variant names, in the order `sample_length` walks the distribution."""
LLM_KINDS = ("tags", "short", "medium")
"""Variants an LLM backend rewrites (`long` is the caption itself)."""
BACKENDS = ("deterministic", "transformers", "openai")
DETERMINISTIC_VERSION = "deterministic-v3"
"""Recorded as `Variants.prompt_version` for rule-based variants; bump when the rules change."""
DEFAULT_DISTRIBUTION = {"tags": 0.1, "short": 0.3, "medium": 0.3, "long": 0.3}
MIN_DISTINCT_FACTS = 3
"""A caption stating at least this many facts (clauses with content) gets four distinct variants: `medium` drops
its least important fact when the whole caption would fit in `medium`, `short` holds fewer words than `medium`."""

Generator = Callable[[list[str]], list[str]]


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
    medium_note: str | None = None
    """Why `medium` is shorter than `medium_target_words - medium_tolerance` (None when it is not): the caption's facts
    do not fill a medium that still differs from `long`, and no filler is added."""


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
