"""What no caption or prompt may hold outside its quoted text: field labels, class labels, file stems, placeholders
and (unless captions may credit) credits or licences.

One definition for everyone who writes or checks text: the asset checks (`captioning.checks`), the VLM caption
clean-up (`prose.clean_vlm_caption` is tested against it) and the LLM prompt rewriter (an answer with such text is
retried, then replaced by the deterministic variant).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from captioning.prose import CREDIT_RE, FIELD_LABEL_RE, FILE_STEM_TOKEN_RE

Problem = tuple[str, str]

_QUOTED_RE = re.compile(r"\"[^\"]*\"|“[^”]*”")
CLASS_RE = re.compile(r"(?<![\w'])(?:class|label|category)\s*[:=]", re.IGNORECASE)
PLACEHOLDER_RE = re.compile(
    r"\b(?:lorem ipsum|untitled|placeholder|no (?:caption|description|title)|caption here|todo|tbd|n/a)\b|"
    r"<[a-z_ ]+>|\[(?:image|caption|photo)\]|\{[a-z_]+\}", re.IGNORECASE)


def _outside_quotes(text: str, keep: Sequence[str] = ()) -> str:
    for line in sorted(keep, key=len, reverse=True):
        if line:
            text = text.replace(line, " ")
    return _QUOTED_RE.sub(" ", text)


def text_problems(text: str, quoted: Sequence[str] = (), credit_allowed: bool = False) -> list[Problem]:
    """Labels, file stems, class labels, placeholders and (unless allowed) credits in a caption or variant.

    Args:
        text: a caption or a prompt variant.
        quoted: visible text lines (excluded, like every quoted span).
        credit_allowed: the captioner was configured to credit creators.
    """
    plain = _outside_quotes(text, quoted)
    out: list[Problem] = []
    if m := FIELD_LABEL_RE.search(plain):
        out.append(("field_label", f"field label {m.group(0)!r}"))
    if m := CLASS_RE.search(plain):
        out.append(("class_label", f"class label {m.group(0)!r}"))
    if m := FILE_STEM_TOKEN_RE.search(plain):
        out.append(("file_stem", f"file-stem text {m.group(0)!r}"))
    if m := PLACEHOLDER_RE.search(plain):
        out.append(("placeholder", f"placeholder text {m.group(0)!r}"))
    if not credit_allowed and (m := CREDIT_RE.search(plain)):
        out.append(("credit", f"credit or licence text {m.group(0)!r}"))
    return out
