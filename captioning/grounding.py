"""Checks that a generated caption is usable and grounded in the OCR text, with a reason when it is not.

A caption fails with one of the `FAILURE_REASONS`; the captioner retries a failed caption once and otherwise
reports the reason so the pipeline writes a `decisions` row (stage 'caption'). The checks run in this order and
the first that fires is the reason: empty, refusal, repetitive, truncated, missing OCR text. Repetition comes before
truncation because a loop usually also runs into the token limit, and "repetitive" says more.

Text that the OCR read is excluded from the refusal and repetition checks (a sign that says "I'm sorry", or a
poster repeating a word, is quoted, not a model failure).
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

CAPTION_EMPTY = "caption_empty"
CAPTION_TRUNCATED = "caption_truncated"
CAPTION_REPETITIVE = "caption_repetitive"
CAPTION_REFUSAL = "caption_refusal"
CAPTION_MISSING_OCR_TEXT = "caption_missing_ocr_text"
CAPTION_BACKEND_ERROR = "caption_backend_error"
FAILURE_REASONS = (CAPTION_EMPTY, CAPTION_TRUNCATED, CAPTION_REPETITIVE, CAPTION_REFUSAL, CAPTION_MISSING_OCR_TEXT,
                   CAPTION_BACKEND_ERROR)
"""Every `CaptionResult.failure` value (also the `decisions.reason` of stage 'caption')."""

NGRAM = 3
"""Word n-gram size of the loop check."""
MAX_NGRAM_REPEATS = 4
"""A caption in which one word n-gram occurs this many times or more is repetitive."""
MIN_COMPRESSION_CHARS = 120
"""Shortest text (in characters) the compression-ratio check applies to."""
MAX_COMPRESSION_RATIO = 3.2
"""Repetitive when len(text) / len(zlib(text)) exceeds this: ordinary prose compresses about 1.5-2.5x."""
TERMINAL = ('.', '!', '?', '"', "'", ')', ']', '»', '”', '’', '。', '！', '？', '」', '』', '…')
"""Characters a finished caption may end with."""

_REFUSAL_RE = re.compile(
    r"\b(i'?m sorry|i am sorry|i apologi[sz]e|i cannot|i can ?not|i can't|i can’t|i'm unable|i’m unable|i am unable|"
    r"i'm not able|i am not able|i won't|as an ai\b|as a language model|as an ai language model|"
    r"i do not feel comfortable|i don't feel comfortable|unable to (?:help|assist|provide|describe|identify)|"
    r"can(?:no|')t (?:help|assist) with)",
    re.IGNORECASE,
)
_WORD_RE = re.compile(r"\w+", re.UNICODE)
_WS_RE = re.compile(r"\s+")
_QUOTED_RE = re.compile(r"\"[^\"]*\"|“[^”]*”")


@dataclass(frozen=True)
class CaptionIssue:
    """Why a caption is not usable."""

    reason: str
    """One of `FAILURE_REASONS`."""
    detail: str
    """A short human-readable explanation (safe to store in the ledger)."""
    missing: tuple[str, ...] = ()
    """For `caption_missing_ocr_text`: the OCR lines not found in the caption."""


def normalize_space(text: str) -> str:
    """Collapse runs of whitespace to one space and strip the ends."""
    return _WS_RE.sub(" ", text).strip()


def required_ocr_lines(ocr_lines: Iterable[tuple[str, float]], min_score: float,
                       max_lines: int | None = None) -> tuple[list[str], list[str]]:
    """The OCR lines a caption must quote: confident, non-empty, whitespace-normalised, de-duplicated, in order.

    Args:
        ocr_lines: (text, confidence) pairs from the OCR stage, in reading order.
        min_score: lines with a lower confidence are ignored.
        max_lines: keep at most this many (None: all); the rest are returned as omitted.

    Returns:
        (required, omitted): the lines to quote, and confident lines left out because of `max_lines`.
    """
    seen: set[str] = set()
    lines: list[str] = []
    for text, score in ocr_lines:
        line = normalize_space(str(text))
        if not line or score is None or float(score) < min_score or line in seen:
            continue
        seen.add(line)
        lines.append(line)
    if max_lines is not None and len(lines) > max_lines:
        return lines[:max_lines], lines[max_lines:]
    return lines, []


def missing_ocr_lines(caption: str, lines: Sequence[str]) -> list[str]:
    """OCR lines that do not appear verbatim (case and punctuation kept, whitespace collapsed) in the caption."""
    text = normalize_space(caption)
    return [line for line in lines if normalize_space(line) not in text]


def _without(text: str, lines: Sequence[str]) -> str:
    """The caption with quoted OCR text removed, so the OCR'd words do not trigger the refusal/loop checks."""
    for line in sorted(lines, key=len, reverse=True):
        text = text.replace(line, " ")
    return normalize_space(text)


def is_refusal(caption: str, ocr_lines: Sequence[str] = ()) -> str | None:
    """The refusal phrase found in the caption (outside quotes and OCR text), or None."""
    text = _QUOTED_RE.sub(" ", _without(normalize_space(caption), ocr_lines))
    match = _REFUSAL_RE.search(text)
    return match.group(0) if match else None


def repetition(caption: str, ocr_lines: Sequence[str] = (), n: int = NGRAM,
               max_repeats: int = MAX_NGRAM_REPEATS) -> str | None:
    """Describe the loop in a caption, or None when it is not repetitive.

    Two heuristics: a word n-gram occurring `max_repeats` times or more, and, for texts without word structure
    (byte soup, scripts without spaces), a zlib compression ratio above `MAX_COMPRESSION_RATIO`.

    Args:
        caption: generated text.
        ocr_lines: text read by OCR, excluded from the check.
        n: word n-gram size.
        max_repeats: occurrences that make a loop.
    """
    text = _without(normalize_space(caption), ocr_lines)
    words = [w.lower() for w in _WORD_RE.findall(text)]
    if len(words) >= n:
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        gram, count = grams.most_common(1)[0]
        if count >= max_repeats:
            return f"{' '.join(gram)!r} occurs {count} times"
    if len(text) >= MIN_COMPRESSION_CHARS:
        raw = text.encode("utf-8")
        ratio = len(raw) / len(zlib.compress(raw, 9))
        if ratio > MAX_COMPRESSION_RATIO:
            return f"compression ratio {ratio:.1f} > {MAX_COMPRESSION_RATIO}"
    return None


def is_truncated(caption: str, finish_reason: str | None = None) -> str | None:
    """Why the caption looks cut off (the token limit was hit, or it ends mid-sentence), or None."""
    if finish_reason == "length":
        return "generation stopped at the token limit"
    text = caption.rstrip()
    if text and not text.endswith(TERMINAL):
        return f"ends without terminal punctuation: {text[-24:]!r}"
    return None


def check_caption(caption: str | None, ocr_lines: Sequence[str] = (), finish_reason: str | None = None,
                  require_ocr: bool = True) -> CaptionIssue | None:
    """Run every check on a generated caption.

    Args:
        caption: generated text (None counts as empty).
        ocr_lines: the required OCR lines (from `required_ocr_lines`).
        finish_reason: the backend's finish reason ('stop', 'length', ...), when known.
        require_ocr: also fail when an OCR line is missing (False: the caller repairs it instead).

    Returns:
        The first issue found, or None for a usable caption.
    """
    text = normalize_space(caption or "")
    if not text or not _WORD_RE.search(text):
        return CaptionIssue(CAPTION_EMPTY, "the caption is empty")
    if finish_reason == "content_filter":
        return CaptionIssue(CAPTION_REFUSAL, "the endpoint's content filter stopped the caption")
    refusal = is_refusal(text, ocr_lines)
    if refusal:
        return CaptionIssue(CAPTION_REFUSAL, f"refusal-like phrase {refusal!r}")
    loop = repetition(text, ocr_lines)
    if loop:
        return CaptionIssue(CAPTION_REPETITIVE, f"repetitive: {loop}")
    cut = is_truncated(text, finish_reason)
    if cut:
        return CaptionIssue(CAPTION_TRUNCATED, cut)
    if require_ocr:
        missing = missing_ocr_lines(text, ocr_lines)
        if missing:
            return CaptionIssue(CAPTION_MISSING_OCR_TEXT, f"{len(missing)} of {len(ocr_lines)} OCR lines not quoted",
                                tuple(missing))
    return None


def quote_list(items: Sequence[str]) -> str:
    """'"a"', '"a" and "b"', '"a", "b" and "c"'."""
    quoted = [f'"{item}"' for item in items]
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + " and " + quoted[-1]


def ocr_sentence(lines: Sequence[str]) -> str:
    """The sentence that quotes OCR lines verbatim, e.g. 'The visible text reads "OPEN" and "9 to 5".'."""
    if not lines:
        return ""
    return f"The visible text reads {quote_list(lines)}."


def append_missing_ocr(caption: str, missing: Sequence[str]) -> str:
    """Repair a caption by appending a sentence quoting the OCR lines it lacks (the caption is kept as written)."""
    if not missing:
        return caption
    text = caption.rstrip()
    return f"{text} {ocr_sentence(missing)}" if text else ocr_sentence(missing)
