"""Captions built in steps: OCR text (step 1), metadata (step 2), then a captioner (step 3).

Three backends share one interface (`load_captioner(config)` -> `setup()` once per worker, then
`caption_batch(inputs) -> list[CaptionResult]`):

- `grounded` (the embedded default): composes measured visual facts (orientation, greyscale or colour,
  brightness, dominant colours), metadata and OCR text deterministically. It never names an entity that is not in
  the metadata or the OCR text, and always quotes every confident OCR line verbatim.
- `transformers`: Qwen2-VL / Qwen2.5-VL / Qwen3-VL from a local directory, batched generation with left padding.
- `openai`: any OpenAI-compatible chat-completions endpoint with image input (e.g. vLLM serving Qwen3-VL), through
  `captioning.openai_client.ChatClient`.

VLM captions go through `captioning.grounding.check_caption`. An empty, refusal-like, repetitive or truncated
caption is generated again once (sampling with a fixed seed, and a larger token budget after a truncation) and
otherwise becomes a failure with its reason. A caption that lacks a confident OCR line is, by default
(`missing_ocr="append"`), repaired by appending a sentence that quotes the missing lines verbatim (recorded in
`inputs["ocr_appended"]`): the OCR text is trusted input, a model that paraphrases or re-cases it would otherwise fail
most text-heavy images, and a retry costs a full generation. With `missing_ocr="retry"` it is retried like the
other failures and reported as `caption_missing_ocr_text`.

This module is the entry point (`load_captioner`, and every public name callers import from here); the code lives in
`caption_base` (config, input/result, grounded backend), `caption_metadata` (step 2) and `vlm_captioner` (the VLM
backends).
"""

from __future__ import annotations

from captioning.caption_base import (
    BACKENDS,
    GROUNDED_MODEL,
    GROUNDED_VERSION,
    PROMPT_VERSION,
    Captioner,
    CaptionerConfig,
    CaptionInput,
    CaptionResult,
    GroundedCaptioner,
)
from captioning.caption_metadata import (
    MAX_DESCRIPTION_CHARS,
    MAX_DESCRIPTIONS,
    MAX_TAGS,
    MAX_TITLE_CHARS,
    extract_caption_metadata,
)
from captioning.vlm_captioner import (
    CONTEXT_HEADER,
    INSTRUCTIONS,
    MODEL_CLASSES,
    SYSTEM_PROMPT,
    Generation,
    OpenAICaptioner,
    TransformersCaptioner,
    build_prompt,
)

__all__ = [
    "BACKENDS", "CONTEXT_HEADER", "GROUNDED_MODEL", "GROUNDED_VERSION", "INSTRUCTIONS", "MAX_DESCRIPTIONS",
    "MAX_DESCRIPTION_CHARS", "MAX_TAGS", "MAX_TITLE_CHARS", "MODEL_CLASSES", "PROMPT_VERSION", "SYSTEM_PROMPT",
    "Captioner", "CaptionInput", "CaptionResult", "CaptionerConfig", "Generation", "GroundedCaptioner",
    "OpenAICaptioner", "TransformersCaptioner", "build_prompt", "extract_caption_metadata", "load_captioner",
]


def load_captioner(config: CaptionerConfig) -> GroundedCaptioner | TransformersCaptioner | OpenAICaptioner:
    """Build the captioner a config names (cheap; call `setup()` in the worker before `caption_batch`).

    Args:
        config: the captioner settings.

    Returns:
        A captioner with `setup()` and `caption_batch(inputs) -> list[CaptionResult]`.
    """
    if config.backend == "grounded":
        return GroundedCaptioner(config)
    if config.backend == "transformers":
        return TransformersCaptioner(config)
    return OpenAICaptioner(config)


