"""Step 3b-d: VLM captions (Qwen-VL from a local directory, or an OpenAI-compatible endpoint) and their checks.

The shared flow (`_VLMCaptioner`): prepare the image and the prompt, generate, check the raw text
(`grounding.check_caption`), clean it with the same rules as the grounded prose (`prose.clean_vlm_caption`: no field
labels, file stems, credits or licences), retry once, repair a missing OCR line or fail, and fall back to the grounded
caption when configured.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from captioning import grounding, prose
from captioning.caption_base import (
    PROMPT_VERSION,
    CaptionerConfig,
    CaptionInput,
    CaptionResult,
    GroundedCaptioner,
    _ocr_inputs,
)
from captioning.caption_metadata import _field_list, _is_web_url, extract_caption_metadata
from captioning.grounding import CaptionIssue

log = logging.getLogger(__name__)

SYSTEM_PROMPT = "You write accurate, detailed captions of images for a text-to-image training dataset."
INSTRUCTIONS = """Describe this image in one paragraph of plain prose.
- Start with the kind of image (photograph, painting, drawing, illustration, poster, screenshot, 3D render, ...) \
and its main subject, then the setting, composition, lighting, colours and style.
- Name the specific people, places, landmarks, buildings, artworks, artists, brands, species and art styles that \
you recognise with confidence. Do not guess names; describe what you cannot identify.
- Quote every piece of visible text exactly as written, in double quotes, keeping its spelling, capitalisation \
and punctuation.
- No lists, headings, field labels (such as "Title:") or preamble such as "The image shows"; no speculation \
about intent.
- Do not mention file names, photographers, credits, licences, sources or URLs: they are not visible content."""
CONTEXT_HEADER = "Context about this image (it may be incomplete or wrong; use it only where the image agrees):"



def build_prompt(meta: dict[str, Any], ocr_lines: Sequence[str], credit: bool = False) -> tuple[str, list[str]]:
    """The user prompt of a VLM caption: instructions, then the OCR text and metadata as context.

    Args:
        meta: from `extract_caption_metadata`.
        ocr_lines: the confident OCR lines.
        credit: give the creator too (only when captions may credit them: `credit_in_caption`).

    Returns:
        (prompt, used): the prompt text and the `meta` keys it included.
    """
    context: list[str] = []
    used: list[str] = []
    if ocr_lines:
        context.append("- Text read by OCR (quote it exactly): " + "; ".join(f'"{line}"' for line in ocr_lines))
    labels = (("title", "Title"), ("alt_text", "Alt text"), ("captions", "Publisher's description"),
              ("tags", "Tags"), ("date", "Date taken"), ("place", "Place"), ("gps", "GPS position"),
              ("camera", "Camera"), ("creator", "Credit"), ("source", "Source"))
    for key, label in labels:
        value = meta.get(key)
        if not value or (key == "source" and not _is_web_url(value)) or (key == "creator" and not credit):
            continue
        if key == "captions":
            for caption in value:
                context.append(f'- {label}: "{caption}"')
        elif key == "tags":
            context.append(f"- {label}: {', '.join(value)}")
        elif key == "gps":
            context.append(f"- {label}: {value['lat']:.5f}, {value['lon']:.5f}")
        else:
            context.append(f'- {label}: "{value}"' if key in ("title", "alt_text") else f"- {label}: {value}")
        used.append(key)
    prompt = INSTRUCTIONS
    if context:
        prompt += "\n\n" + CONTEXT_HEADER + "\n" + "\n".join(context)
    return prompt, used


@dataclass
class _Prepared:
    inp: CaptionInput
    image: Image.Image
    prompt: str
    ocr_lines: list[str]
    inputs: dict[str, Any]


@dataclass(frozen=True)
class Generation:
    """One generated text (or the error that prevented it)."""

    text: str = ""
    finish_reason: str | None = None
    error: str | None = None


class _VLMCaptioner:
    """Shared flow of the VLM backends: prepare, generate, check, retry once, repair or fail, fall back."""

    backend = "vlm"

    def __init__(self, config: CaptionerConfig) -> None:
        self.config = config
        self._grounded = GroundedCaptioner(config)

    @property
    def model_name(self) -> str:
        raise NotImplementedError

    def _generate(self, items: Sequence[_Prepared], attempt: int, issues: Sequence[CaptionIssue | None]
                  ) -> list[Generation]:
        raise NotImplementedError

    def _prepare(self, inp: CaptionInput) -> _Prepared:
        lines, inputs = _ocr_inputs(inp, self.config)
        meta = extract_caption_metadata(inp.metadata, inp.source_uri)
        prompt, used = build_prompt(meta, lines, self.config.credit_in_caption)
        inputs["metadata_fields"] = _field_list(meta, used)
        inputs["metadata"] = {key: meta[key] for key in used}
        image = inp.image
        if image.getexif().get(0x0112, 1) != 1:
            image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        image = image.convert("RGB")
        if max(image.size) > self.config.max_image_side:
            image = image.copy()
            image.thumbnail((self.config.max_image_side, self.config.max_image_side), Image.Resampling.LANCZOS)
        return _Prepared(inp, image, prompt, lines, inputs)

    def retry_token_budget(self, issues: Sequence[CaptionIssue | None]) -> int:
        """`max_new_tokens`, raised by `retry_token_factor` when a caption of the retry group was truncated."""
        if any(issue is not None and issue.reason == grounding.CAPTION_TRUNCATED for issue in issues):
            return math.ceil(self.config.max_new_tokens * self.config.retry_token_factor)
        return self.config.max_new_tokens

    def caption_batch(self, inputs: Sequence[CaptionInput]) -> list[CaptionResult]:
        """Caption every input: generate, check, retry failures once (batched), repair or report."""
        results: list[CaptionResult | None] = [None] * len(inputs)
        prepared: list[_Prepared | None] = []
        for i, inp in enumerate(inputs):
            try:
                prepared.append(self._prepare(inp))
            except Exception as exc:  # an unreadable image is one failed sample, recorded
                log.warning("cannot prepare %s for captioning: %s", inp.sample_id, exc, exc_info=True)
                prepared.append(None)
                results[i] = self._fail(inp, {}, 0, CaptionIssue(grounding.CAPTION_BACKEND_ERROR,
                                                                  f"{type(exc).__name__}: {exc}"))
        pending = [i for i, p in enumerate(prepared) if p is not None]
        issues: dict[int, CaptionIssue] = {}
        require_ocr = self.config.missing_ocr == "retry"
        for attempt in range(1, self.config.max_caption_attempts + 1):
            if not pending:
                break
            items = [prepared[i] for i in pending]
            generations = self._generate(items, attempt, [issues.get(i) for i in pending])  # type: ignore[arg-type]
            retry: list[int] = []
            for i, gen in zip(pending, generations, strict=True):
                item = prepared[i]
                assert item is not None
                if gen.error is not None:  # the backend already retried transport errors; do not loop on them
                    results[i] = self._fail(item.inp, item.inputs, attempt,
                                            CaptionIssue(grounding.CAPTION_BACKEND_ERROR, gen.error))
                    continue
                issue = grounding.check_caption(gen.text, item.ocr_lines, gen.finish_reason, require_ocr)
                cleaned = ""
                if issue is None:  # checked raw (a cut-off caption must not be hidden by the clean-up), then cleaned
                    cleaned = prose.clean_vlm_caption(gen.text, item.ocr_lines, self.config.credit_in_caption)
                    if not cleaned:
                        issue = CaptionIssue(grounding.CAPTION_EMPTY,
                                             "nothing left after removing labels, credits and boilerplate")
                if issue is None:
                    results[i] = self._succeed(item, cleaned, attempt)
                elif attempt < self.config.max_caption_attempts:
                    log.info("caption of %s rejected (%s: %s); retrying", item.inp.sample_id, issue.reason,
                             issue.detail)
                    issues[i] = issue
                    retry.append(i)
                else:
                    results[i] = self._fail(item.inp, item.inputs, attempt, issue, gen.text)
            pending = retry
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _succeed(self, item: _Prepared, text: str, attempt: int) -> CaptionResult:
        caption = grounding.normalize_space(text)
        inputs = dict(item.inputs)
        missing = grounding.missing_ocr_lines(caption, item.ocr_lines)
        if missing:  # missing_ocr == 'append' (with 'retry' the check already failed the caption)
            caption = grounding.append_missing_ocr(caption, missing)
            inputs["ocr_appended"] = missing
        inputs["entities"] = prose.metadata_entities(caption, inputs.get("metadata") or {},
                                                     self.config.credit_in_caption)
        return CaptionResult(item.inp.sample_id, caption, self.backend, self.model_name, PROMPT_VERSION, inputs,
                             attempt)

    def _fail(self, inp: CaptionInput, inputs: dict[str, Any], attempts: int, issue: CaptionIssue,
              text: str | None = None) -> CaptionResult:
        detail = issue.detail
        if issue.missing:
            detail += ": " + grounding.quote_list(list(issue.missing))[:300]
        if text:
            detail += f" (last output: {grounding.normalize_space(text)[:200]!r})"
        log.info("caption of %s failed after %d attempt(s): %s: %s", inp.sample_id, attempts, issue.reason, detail)
        result = CaptionResult(inp.sample_id, "", self.backend, self.model_name, PROMPT_VERSION, dict(inputs),
                               attempts, issue.reason, detail)
        if not self.config.fallback_to_grounded:
            return result
        fallback = self._grounded.caption_batch([inp])[0]
        if fallback.failure is not None:
            return result
        return replace(fallback, attempts=attempts, failure=issue.reason, failure_detail=detail,
                       fallback_from=self.backend)


# ---------------------------------------------------------------------------------------------------------------
# Step 3c: transformers (Qwen-VL family from a local directory)

MODEL_CLASSES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
}
"""`config.model_type` -> the transformers class that generates captions for it."""


class TransformersCaptioner(_VLMCaptioner):
    """Qwen2-VL / Qwen2.5-VL / Qwen3-VL from a local directory: one model per worker, left-padded batches."""

    backend = "transformers"

    def __init__(self, config: CaptionerConfig) -> None:
        super().__init__(config)
        if not config.model_path:
            raise ValueError("the transformers captioner needs model_path (a local model directory)")
        self.model: Any = None
        self.processor: Any = None
        self._device: Any = None
        self._eos_ids: set[int] = set()

    @property
    def model_name(self) -> str:
        return self.config.model or Path(self.config.model_path or "").name

    def setup(self) -> None:
        """Load the processor and model from `model_path` (local files only) onto `device`.

        Raises:
            FileNotFoundError: the directory or its `config.json` does not exist.
            ValueError: the model type is not a supported Qwen-VL, or the processor has no chat template.
        """
        if self.model is not None:
            return
        import torch
        import transformers

        path = Path(self.config.model_path or "")
        if not path.is_dir():
            raise FileNotFoundError(f"captioner model directory {str(path)!r} does not exist (model_path); "
                                    "models are never downloaded: copy the weights there first")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"captioner model directory {str(path)!r} has no config.json")
        model_config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        class_name = MODEL_CLASSES.get(model_config.model_type)
        if class_name is None or not hasattr(transformers, class_name):
            raise ValueError(f"model type {model_config.model_type!r} in {str(path)!r} is not supported by the "
                             f"transformers captioner; expected one of {sorted(MODEL_CLASSES)}")
        if self.config.num_threads:
            torch.set_num_threads(self.config.num_threads)
        device = self.config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(device)
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(
            self.config.dtype, torch.bfloat16 if self._device.type == "cuda" else torch.float32)
        processor = transformers.AutoProcessor.from_pretrained(path, local_files_only=True)
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"  # decoder-only batched generation
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if not (getattr(processor, "chat_template", None) or getattr(tokenizer, "chat_template", None)):
            raise ValueError(f"the processor in {str(path)!r} has no chat template")
        kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
        if self.config.attn_implementation:
            kwargs["attn_implementation"] = self.config.attn_implementation
        model = getattr(transformers, class_name).from_pretrained(path, **kwargs)
        model.to(self._device).eval()
        eos = model.generation_config.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            self._eos_ids.add(tokenizer.eos_token_id)
        self.processor, self.model = processor, model
        log.info("loaded %s (%s) from %s on %s as %s", class_name, model_config.model_type, path, self._device, dtype)

    def _messages(self, prompt: str) -> list[dict[str, Any]]:
        return [{"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]

    def _generate(self, items: Sequence[_Prepared], attempt: int, issues: Sequence[CaptionIssue | None]
                  ) -> list[Generation]:
        if self.model is None:
            raise RuntimeError("call setup() before caption_batch()")
        out: list[Generation] = []
        size = self.config.batch_size
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            try:
                out.extend(self._generate_chunk(chunk, attempt, issues[start : start + size]))
            except Exception as exc:  # e.g. out of memory: try the images one by one, record the ones that fail
                if len(chunk) == 1:
                    log.warning("caption generation failed for %s: %s", chunk[0].inp.sample_id, exc, exc_info=True)
                    out.append(Generation(error=f"{type(exc).__name__}: {exc}"))
                    continue
                log.warning("batched caption generation failed (%s); retrying one image at a time", exc)
                for j, item in enumerate(chunk):
                    try:
                        out.extend(self._generate_chunk([item], attempt, [issues[start + j]]))
                    except Exception as one_exc:
                        log.warning("caption generation failed for %s: %s", item.inp.sample_id, one_exc,
                                    exc_info=True)
                        out.append(Generation(error=f"{type(one_exc).__name__}: {one_exc}"))
        return out

    def _generate_chunk(self, chunk: Sequence[_Prepared], attempt: int, issues: Sequence[CaptionIssue | None]
                        ) -> list[Generation]:
        import torch

        texts = [self.processor.apply_chat_template(self._messages(item.prompt), tokenize=False,
                                                    add_generation_prompt=True) for item in chunk]
        encoded = self.processor(text=texts, images=[item.image for item in chunk], padding=True,
                                 return_tensors="pt").to(self._device)
        max_new = self.config.max_new_tokens
        gen_kwargs: dict[str, Any] = {"max_new_tokens": max_new, "do_sample": False,
                                      "pad_token_id": self.processor.tokenizer.pad_token_id}
        seed: int | None = None
        if attempt > 1:
            gen_kwargs.update(max_new_tokens=self.retry_token_budget(issues), do_sample=True,
                              temperature=self.config.retry_temperature, top_p=0.9)
            seed = self.config.seed + attempt
        elif self.config.temperature > 0:
            gen_kwargs.update(do_sample=True, temperature=self.config.temperature)
            seed = self.config.seed
        devices = []
        if self._device.type == "cuda":
            devices = [self._device.index if self._device.index is not None else torch.cuda.current_device()]
        with torch.inference_mode(), torch.random.fork_rng(devices=devices):
            if seed is not None:
                torch.manual_seed(seed)
            output = self.model.generate(**encoded, **gen_kwargs)
        new_tokens = output[:, encoded["input_ids"].shape[1]:]
        decoded = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        gens = []
        for row, text in zip(new_tokens.tolist(), decoded, strict=True):
            stopped = any(token in self._eos_ids for token in row)
            gens.append(Generation(text.strip(), "stop" if stopped else "length"))
        return gens


# ---------------------------------------------------------------------------------------------------------------
# Step 3d: an OpenAI-compatible endpoint


class OpenAICaptioner(_VLMCaptioner):
    """Captions from an OpenAI-compatible chat-completions endpoint (e.g. vLLM serving Qwen3-VL)."""

    backend = "openai"

    def __init__(self, config: CaptionerConfig) -> None:
        super().__init__(config)
        if not config.endpoint or not config.model:
            raise ValueError("the openai captioner needs endpoint and model")
        self.client: Any = None

    @property
    def model_name(self) -> str:
        return self.config.model or ""

    def setup(self) -> None:
        """Build the HTTP client (reads the API key from the environment variable named by `api_key_env`)."""
        if self.client is not None:
            return
        from captioning.openai_client import ChatClient

        self.client = ChatClient(self.config.endpoint or "", self.config.model or "", self.config.api_key_env,
                                 timeout_s=self.config.timeout_s, max_retries=self.config.max_retries,
                                 backoff_s=self.config.backoff_s, concurrency=self.config.concurrency,
                                 seed=self.config.seed)

    def _generate(self, items: Sequence[_Prepared], attempt: int, issues: Sequence[CaptionIssue | None]
                  ) -> list[Generation]:
        from captioning.openai_client import ChatClientError, image_part

        if self.client is None:
            raise RuntimeError("call setup() before caption_batch()")
        params: dict[str, Any] = {"max_tokens": self.config.max_new_tokens, "temperature": self.config.temperature}
        if attempt > 1:
            params.update(max_tokens=self.retry_token_budget(issues), temperature=self.config.retry_temperature,
                          top_p=0.9, seed=self.config.seed + attempt)
        requests = []
        for item in items:
            messages = [{"role": "system", "content": SYSTEM_PROMPT},
                        {"role": "user", "content": [image_part(item.image), {"type": "text", "text": item.prompt}]}]
            requests.append((messages, params))
        out = []
        for response in self.client.create_many(requests):
            if isinstance(response, ChatClientError):
                out.append(Generation(error=f"{response.kind}: {response}"))
            else:
                out.append(Generation(response.text.strip(), response.finish_reason))
        return out


