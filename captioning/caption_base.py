"""What every captioner shares: the config, one input and one result, and the embedded grounded backend.

The VLM backends (`captioning.vlm_captioner`) fall back to `GroundedCaptioner`, so it lives here rather than next to
`load_captioner` (`captioning.captioner`), which imports them all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from PIL import Image

from captioning import grounding, prose
from captioning.caption_metadata import _field_list, extract_caption_metadata
from captioning.visual_facts import visual_facts

log = logging.getLogger(__name__)

PROMPT_VERSION = "vlm-caption-v2"
"""Version of the VLM prompt (`SYSTEM_PROMPT`, `INSTRUCTIONS`, `build_prompt`); change it when they change."""
GROUNDED_VERSION = "grounded-caption-v3"
"""Version of the grounded composition (recorded as `prompt_version` of grounded captions)."""
GROUNDED_MODEL = "atelier-grounded"
"""`model` recorded for grounded captions (there are no weights)."""
BACKENDS = ("grounded", "transformers", "openai")


@dataclass(frozen=True)
class CaptionerConfig:
    """Everything that decides how captions are made."""

    backend: str = "grounded"
    """'grounded' (embedded default), 'transformers' (local VLM) or 'openai' (OpenAI-compatible endpoint)."""
    model_path: str | None = None
    """transformers: local directory with the model, processor and chat template (never downloaded)."""
    endpoint: str | None = None
    """openai: base URL such as `http://vllm:8000/v1` (or the full `/chat/completions` URL)."""
    model: str | None = None
    """openai: the served model name (required); transformers: name recorded (default: the directory name)."""
    api_key_env: str | None = None
    """openai: NAME of the environment variable holding the API key (None: no key is sent)."""
    max_new_tokens: int = 384
    """Generation budget per caption (tokens)."""
    temperature: float = 0.0
    """Sampling temperature of the first attempt (0: greedy)."""
    retry_temperature: float = 0.7
    """Sampling temperature of the retry after a failed caption (with top_p 0.9 and a fixed seed)."""
    retry_token_factor: float = 1.5
    """A retry after a truncated caption gets this many times `max_new_tokens`."""
    max_caption_attempts: int = 2
    """Attempts per caption for empty/refusal/repetitive/truncated captions (2 = retried once)."""
    missing_ocr: str = "append"
    """'append': quote missing OCR lines in an appended sentence; 'retry': treat as a failure and retry."""
    fallback_to_grounded: bool = False
    """When a VLM caption fails, return the grounded caption instead of '' (the failure is still reported)."""
    batch_size: int = 8
    """transformers: images per `generate` call."""
    concurrency: int = 8
    """openai: requests in flight at once per worker."""
    timeout_s: float = 120.0
    """openai: per-request socket timeout (seconds)."""
    max_retries: int = 4
    """openai: HTTP retries (429, 5xx, timeouts, connection errors, malformed bodies) per request."""
    backoff_s: float = 1.0
    """openai: first retry delay (doubled per retry, with jitter; `Retry-After` is honoured)."""
    device: str = "cpu"
    """transformers: 'cpu', 'cuda', 'cuda:1' or 'auto' (cuda when the worker has one)."""
    dtype: str = "auto"
    """transformers: 'auto' (bfloat16 on GPU, float32 on CPU), 'bfloat16', 'float16' or 'float32'."""
    num_threads: int | None = None
    """transformers: torch intra-op CPU threads, set in `setup()` (None: torch's default; 1 on a shared CPU)."""
    attn_implementation: str | None = None
    """transformers: e.g. 'sdpa' or 'flash_attention_2' (None: the library default)."""
    min_ocr_score: float = 0.5
    """OCR lines with a lower confidence are ignored: neither given to the model nor required in the caption."""
    max_ocr_lines: int = 40
    """Most OCR lines used per image (further confident lines are recorded as omitted)."""
    max_image_side: int = 1280
    """VLM backends: the image is downscaled so its longer side is at most this."""
    seed: int = 0
    """Seed of retry sampling (the retry of attempt k uses seed + k)."""
    credit_in_caption: bool = False
    """Credit the creator in the caption ('Photograph by Jane Doe.'); by default credits stay in the metadata."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown captioner backend {self.backend!r}; expected one of {BACKENDS}")
        if self.missing_ocr not in ("append", "retry"):
            raise ValueError(f"missing_ocr must be 'append' or 'retry', not {self.missing_ocr!r}")
        for name in ("max_new_tokens", "max_caption_attempts", "batch_size", "concurrency", "max_image_side"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_retries < 0 or self.timeout_s <= 0:
            raise ValueError("max_retries must be >= 0 and timeout_s > 0")


@dataclass
class CaptionInput:
    """One image to caption, with the outputs of the OCR step and the ingest metadata."""

    sample_id: str
    """The sample's id (hex SHA-256 of its bytes)."""
    image: Image.Image
    """The decoded image."""
    ocr_lines: list[tuple[str, float]] = field(default_factory=list)
    """(text, confidence) per OCR line, in reading order."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """The parsed `metadata` JSON of `source_images`: `{"embedded": {...}, "sidecar": {...}}`."""
    source_uri: str | None = None
    """Where the image came from (used as the metadata `source` when the sidecar names none)."""


@dataclass
class CaptionResult:
    """A caption and its lineage: which backend, model and prompt made it, from which inputs."""

    sample_id: str
    """The sample's id."""
    caption: str
    """The caption; '' when it failed (unless `fallback_to_grounded`)."""
    backend: str
    """Backend that wrote `caption` ('grounded' for a fallback caption)."""
    model: str
    """Model that wrote `caption` (a path's directory name, a served model name, or `GROUNDED_MODEL`)."""
    prompt_version: str
    """`PROMPT_VERSION` for VLM captions, `GROUNDED_VERSION` for grounded ones."""
    inputs: dict[str, Any]
    """What the caption was built from: `ocr_lines`, `metadata_fields`, `metadata`, and more per backend."""
    attempts: int
    """Generations it took (1, or 2 after a retry)."""
    failure: str | None = None
    """None, or one of `grounding.FAILURE_REASONS` (the `decisions.reason` of stage 'caption')."""
    failure_detail: str | None = None
    """Why it failed, for the ledger's `details`."""
    fallback_from: str | None = None
    """The VLM backend whose caption failed when `caption` is the grounded fallback."""

    def to_record(self) -> dict[str, Any]:
        """A flat JSON-safe dict (for a Parquet row or a `decisions` details payload)."""
        return asdict(self)




def _ocr_inputs(inp: CaptionInput, config: CaptionerConfig) -> tuple[list[str], dict[str, Any]]:
    lines, omitted = grounding.required_ocr_lines(inp.ocr_lines, config.min_ocr_score, config.max_ocr_lines)
    low = sum(1 for _, score in inp.ocr_lines if score is None or float(score) < config.min_ocr_score)
    record: dict[str, Any] = {"ocr_lines": lines, "ocr_lines_below_min_score": low}
    if omitted:
        record["ocr_lines_omitted"] = omitted
    return lines, record


class Captioner(Protocol):
    """What the pipeline calls: `setup()` once per worker, then `caption_batch` per batch."""

    config: CaptionerConfig

    def setup(self) -> None:
        """Load models and clients (once per worker)."""

    def caption_batch(self, inputs: Sequence[CaptionInput]) -> list[CaptionResult]:
        """One result per input, in order."""


class GroundedCaptioner:
    """The embedded default: OCR text + metadata + measured visual facts, composed deterministically."""

    def __init__(self, config: CaptionerConfig | None = None) -> None:
        self.config = config or CaptionerConfig()

    def setup(self) -> None:
        """Nothing to load."""

    def caption_one(self, inp: CaptionInput) -> CaptionResult:
        """Caption one image (raises on an unusable image; `caption_batch` records that as a failure)."""
        lines, inputs = _ocr_inputs(inp, self.config)
        meta = extract_caption_metadata(inp.metadata, inp.source_uri)
        facts = visual_facts(inp.image)
        composed = prose.compose_grounded_caption(facts, meta, lines, inp.source_uri, self.config.credit_in_caption)
        inputs["metadata_fields"] = _field_list(meta, composed.used)
        inputs["metadata"] = {key: meta[key] for key in composed.used}
        inputs["visual_facts"] = facts.to_dict()
        inputs["entities"] = composed.entities
        inputs["facts"] = composed.facts
        return CaptionResult(inp.sample_id, composed.caption, "grounded", GROUNDED_MODEL, GROUNDED_VERSION, inputs,
                             1)

    def caption_batch(self, inputs: Sequence[CaptionInput]) -> list[CaptionResult]:
        """Caption every input; an image that cannot be read becomes a `caption_backend_error` result."""
        results = []
        for inp in inputs:
            try:
                results.append(self.caption_one(inp))
            except Exception as exc:  # one broken image must not fail the batch; it is recorded, not hidden
                log.warning("grounded caption of %s failed: %s", inp.sample_id, exc, exc_info=True)
                results.append(CaptionResult(inp.sample_id, "", "grounded", GROUNDED_MODEL, GROUNDED_VERSION, {}, 1,
                                             grounding.CAPTION_BACKEND_ERROR, f"{type(exc).__name__}: {exc}"))
        return results


