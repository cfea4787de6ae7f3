"""A learned AI-image probe: L2-regularised logistic regression on frozen image embeddings (UnivFD-style).

The embedding model stays frozen; only a linear layer is fitted, so a few hundred labelled images per class are
enough and the probe is cheap to apply to every image. Held-out metrics come from a stratified split.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize

PROBE_CODE_VERSION = "probe-1"


@dataclass(frozen=True)
class ProbeConfig:
    """How the probe is fitted and applied."""

    test_fraction: float = 0.3
    """Share of each class held out for the reported metrics."""
    l2: float = 1.0
    """L2 penalty on the weights (the embeddings are unit vectors; 1.0 keeps the probe conservative)."""
    seed: int = 0
    """Seed of the split."""
    threshold: float = 0.99
    """Probability at or above which the exclusion filter calls an image AI-generated."""


@dataclass
class Probe:
    """A fitted probe: `score(embeddings)` is P(AI-generated)."""

    weights: np.ndarray
    bias: float
    embedding_model: str
    threshold: float
    metrics: dict
    version: str

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """P(AI-generated) per row of L2-normalised embeddings."""
        return 1.0 / (1.0 + np.exp(-(embeddings.astype(np.float64) @ self.weights + self.bias)))

    def to_json(self) -> str:
        """Serialised form (stored in `ai_image_probe`)."""
        return json.dumps({"weights": self.weights.tolist(), "bias": self.bias,
                           "embedding_model": self.embedding_model, "threshold": self.threshold,
                           "metrics": self.metrics, "version": self.version, "code_version": PROBE_CODE_VERSION})

    @classmethod
    def from_json(cls, text: str) -> Probe:
        """Inverse of `to_json`."""
        data = json.loads(text)
        return cls(np.asarray(data["weights"], dtype=np.float64), float(data["bias"]), data["embedding_model"],
                   float(data["threshold"]), data["metrics"], data["version"])


def _fit(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    # class-balanced weights: a crawl's labelled folders are rarely balanced
    w_pos = len(y) / (2.0 * max(1, y.sum()))
    w_neg = len(y) / (2.0 * max(1, (1 - y).sum()))
    sample_w = np.where(y == 1, w_pos, w_neg)

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = params[:-1], params[-1]
        z = x @ w + b
        p = 1.0 / (1.0 + np.exp(-z))
        eps = 1e-12
        nll = -np.sum(sample_w * (y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))) / len(y)
        grad_z = sample_w * (p - y) / len(y)
        grad = np.concatenate([x.T @ grad_z + l2 * w / len(y), [grad_z.sum()]])
        return nll + 0.5 * l2 * float(w @ w) / len(y), grad

    result = minimize(loss, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return result.x[:-1], float(result.x[-1])


def _auc(scores: np.ndarray, y: np.ndarray) -> float | None:
    pos, neg = scores[y == 1], scores[y == 0]
    if not len(pos) or not len(neg):
        return None
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def _metrics(scores: np.ndarray, y: np.ndarray, threshold: float) -> dict:
    out: dict = {"n": int(len(y)), "n_ai": int(y.sum()), "n_real": int((1 - y).sum()), "auc": _auc(scores, y)}
    for name, t in (("at_0.5", 0.5), ("at_threshold", threshold)):
        pred = scores >= t
        tp, fp = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())
        fn = int((~pred & (y == 1)).sum())
        out[name] = {"precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None,
                     "false_positives": fp}
    return out


def train_probe(ai: np.ndarray, real: np.ndarray, embedding_model: str, config: ProbeConfig = ProbeConfig()) -> Probe:
    """Fit the probe on embeddings of labelled AI-generated and real images.

    Args:
        ai: (n_ai, d) L2-normalised embeddings of AI-generated images.
        real: (n_real, d) embeddings of real images, from the same embedding model.
        embedding_model: that model's name (the probe is only valid for it).
        config: split, penalty and threshold.

    Returns:
        The probe fitted on the training split, with held-out metrics (and training metrics), and a version
        hash of its weights.

    Raises:
        ValueError: fewer than 2 images in a class.
    """
    if len(ai) < 2 or len(real) < 2:
        raise ValueError(f"the probe needs at least 2 labelled images per class, got {len(ai)} AI, {len(real)} real")
    rng = np.random.default_rng(config.seed)
    x = np.vstack([ai, real]).astype(np.float64)
    y = np.concatenate([np.ones(len(ai)), np.zeros(len(real))])
    test = np.zeros(len(y), dtype=bool)
    for label in (0, 1):
        idx = np.flatnonzero(y == label)
        n_test = max(1, int(round(config.test_fraction * len(idx))))
        test[rng.choice(idx, size=n_test, replace=False)] = True
    weights, bias = _fit(x[~test], y[~test], config.l2)
    scores = 1.0 / (1.0 + np.exp(-(x @ weights + bias)))
    metrics = {"held_out": _metrics(scores[test], y[test], config.threshold),
               "train": _metrics(scores[~test], y[~test], config.threshold), "config": asdict(config)}
    version = hashlib.sha256(np.concatenate([weights, [bias]]).tobytes() + embedding_model.encode()).hexdigest()[:12]
    return Probe(weights, bias, embedding_model, config.threshold, metrics, version)
