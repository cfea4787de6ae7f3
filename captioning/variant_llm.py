"""The LLM backend of the variants: versioned rewrite prompts, output clean-up, and the generators
(a local causal LM, or an OpenAI-compatible chat endpoint).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from captioning.variant_config import (
    LLM_KINDS,
    PROMPTS,
    Generator,
    VariantConfig,
)
from captioning.variant_rules import (
    _LABEL_RE,
    _free_entities,
    _is_quoted_tag,
    _minimal_quotes,
    _norm,
    _nwords,
    split_tags,
    variant_limit,
)

log = logging.getLogger(__name__)

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

