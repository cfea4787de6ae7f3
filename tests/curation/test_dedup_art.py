"""Dedup precision on non-photographic images (issue 14): distinct abstract, flat, line, pixel, UI and poster pictures
survive, their true near-copies go, through the production feature path and the production removal rule.

The embedded CNN embedding puts unrelated flat compositions at cosine 0.91-0.94, so the semantic search proposes
candidates between distinct pictures here; the test checks that verification rejected such candidates (it would
pass vacuously otherwise) and that none of them removed a picture. The full-size figures (>= 600 distinct pictures)
are `bench/dedup_art_eval.py`'s, in BENCHMARKS.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from curation.dedup import DedupConfig, deduplicate
from tests.curation.art_devset import candidates, features, generate, outcome

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture(scope="module")
def devset():
    items = list(generate(per_kind=6, seed=3, data_root=DATA if DATA.is_dir() else None, real_limit=6))
    return items, features(items)


def test_distinct_art_survives_and_copies_go(devset):
    items, table = devset
    result = deduplicate(candidates(table), DedupConfig())
    scored = outcome(items, result.keep, result.decisions)
    assert scored.false_removals == 0, [d.source_uri for d in result.decisions]
    assert scored.recall >= 0.9, scored.missed_by_kind
    assert result.edges["rejected_by_verification"] > 0  # candidates between distinct pictures existed
    removed = [d for d in result.decisions if d.reason != "exact_duplicate"]
    assert removed and all("verification" in d.details for d in removed)


def test_without_verification_the_same_candidates_remove_distinct_pictures(devset):
    # the ablation: the SemDeDup rule alone, each candidate edge to a kept row taken as proof
    items, table = devset
    result = deduplicate(candidates(table), DedupConfig(verify=False))
    assert outcome(items, result.keep, result.decisions).false_removals > 0


def test_verification_budget_keeps_a_row_whose_candidates_all_fail():
    items = [it for it in generate(per_kind=2, seed=5) if it.copy == "original"]
    table = features(items)
    c = candidates(table)
    c.embeddings = np.tile(c.embeddings[:1], (len(c), 1))  # every pair a semantic candidate
    result = deduplicate(c, DedupConfig(phash_threshold=-1, max_verifications=1))
    assert result.keep.all()
    assert result.edges["verification_budget_exhausted"] > 0
