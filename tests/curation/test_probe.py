"""The learned probe: separable data is learned, metrics come from held-out rows, the probe round-trips."""

from __future__ import annotations

import numpy as np
import pytest

from curation.embedding import l2_normalise
from curation.probe import Probe, ProbeConfig, train_probe


def clusters(n_ai: int, n_real: int, dim: int = 32, gap: float = 2.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    axis = np.zeros(dim)
    axis[0] = gap
    ai = l2_normalise((rng.normal(size=(n_ai, dim)) + axis).astype(np.float32))
    real = l2_normalise((rng.normal(size=(n_real, dim)) - axis).astype(np.float32))
    return ai, real


def test_separable_classes_are_learned_and_reported_on_held_out_rows():
    ai, real = clusters(60, 140)
    probe = train_probe(ai, real, "model-x", ProbeConfig(threshold=0.9))
    held = probe.metrics["held_out"]
    assert held["n"] == 18 + 42 and held["auc"] > 0.95
    assert held["at_0.5"]["recall"] > 0.8 and held["at_0.5"]["precision"] > 0.8
    assert probe.score(ai).mean() > 0.7 and probe.score(real).mean() < 0.3


def test_indistinguishable_classes_give_chance_auc():
    rng = np.random.default_rng(1)
    ai = l2_normalise(rng.normal(size=(100, 16)).astype(np.float32))
    real = l2_normalise(rng.normal(size=(100, 16)).astype(np.float32))
    assert abs(train_probe(ai, real, "m").metrics["held_out"]["auc"] - 0.5) < 0.2


def test_round_trip_and_version():
    ai, real = clusters(10, 10)
    probe = train_probe(ai, real, "model-x")
    again = Probe.from_json(probe.to_json())
    assert again.version == probe.version and np.allclose(again.score(ai), probe.score(ai))
    assert train_probe(ai, real, "model-x").version == probe.version  # deterministic for a seed


def test_too_few_examples_fail_clearly():
    ai, real = clusters(1, 10)
    with pytest.raises(ValueError, match="at least 2 labelled images per class"):
        train_probe(ai, real, "m")
