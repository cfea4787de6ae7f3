"""Shard loader: bucketing, prompt sampling, weights, determinism, rank split."""

from __future__ import annotations

import pytest
import torch

from tests.training.shards import write_shard, write_shard_dir
from training.data import ShardDataset, choose_prompt, list_shards, rank_share, target_size


@pytest.fixture
def shard_dir(tmp_path):
    return write_shard_dir(tmp_path / "shards", n_shards=2, per_shard=6, sizes=[(32, 32), (48, 32)])


def _take(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def test_batches_share_one_bucket(shard_dir):
    ds = ShardDataset(shard_dir, batch_size=3, prompt_length_distribution={"short": 1.0}, seed=0)
    for batch in _take(ds, 6):
        w, h = map(int, batch["bucket"].split("x"))
        assert batch["images"].shape == (3, 3, h, w)
        assert batch["images"].dtype == torch.float32
        assert -1.0 <= float(batch["images"].min()) and float(batch["images"].max()) <= 1.0
        assert len(batch["prompts"]) == len(batch["sample_ids"]) == 3
        assert all(p.startswith("a disc") for p in batch["prompts"])
    assert {b["bucket"] for b in _take(ds, 6)} == {"32x32", "48x32"}


def test_deterministic_for_a_seed(shard_dir):
    dist = {"tags": 0.25, "short": 0.25, "medium": 0.25, "long": 0.25}

    def signature(seed):
        return [(b["bucket"], b["sample_ids"], b["prompts"]) for b in
                _take(ShardDataset(shard_dir, 2, dist, seed=seed), 8)]

    assert signature(3) == signature(3)
    assert signature(3) != signature(4)


def test_prompt_distribution_and_fallback(shard_dir):
    assert choose_prompt({"tags": "", "short": "", "medium": "m", "long": ""}, "long") == "m"
    assert choose_prompt({"tags": "t", "short": "s", "medium": "m", "long": ""}, "long") == "m"  # nearest, not tags
    assert choose_prompt({"tags": "", "short": "s", "medium": "m", "long": "l"}, "tags") == "s"
    assert choose_prompt({"tags": "t", "short": "", "medium": "", "long": ""}, "short") == "t"
    assert choose_prompt({"tags": "", "short": "", "medium": "", "long": ""}, "short") == ""
    ds = ShardDataset(shard_dir, 4, {"long": 1.0}, seed=0)  # every long caption is empty: falls back to medium
    assert all(p.startswith("a coloured disc number") for b in _take(ds, 3) for p in b["prompts"])
    ds = ShardDataset(shard_dir, 4, {"tags": 0.5, "medium": 0.5}, seed=0)
    prompts = [p for b in _take(ds, 10) for p in b["prompts"]]
    tags = sum(p.startswith("disc,") for p in prompts)
    assert 0.25 < tags / len(prompts) < 0.75


def test_sample_weight_is_a_sampling_weight(tmp_path):
    ids = write_shard(tmp_path / "part-00000.parquet", [(16, 16)] * 4, weights=[0.0, 1.0, 1.0, 8.0])
    ds = ShardDataset(tmp_path, 4, seed=0, epochs=20, drop_last=True)
    seen = [sid for b in ds for sid in b["sample_ids"]]
    assert ids[0] not in seen
    assert seen.count(ids[3]) > 3 * seen.count(ids[1])
    write_shard(tmp_path / "zero" / "part-00000.parquet", [(16, 16)] * 2, weights=[0.0, 0.0])
    with pytest.raises(ValueError, match="no trainable rows"):
        next(iter(ShardDataset(tmp_path / "zero", 2, seed=0)))
    unweighted = [sid for b in ShardDataset(tmp_path, 4, seed=0, epochs=1, weighted=False) for sid in b["sample_ids"]]
    assert sorted(unweighted) == sorted(ids)


def test_stage_size_rescales_buckets(shard_dir):
    assert target_size(320, 192, 32, 4) == (40, 24)
    assert target_size(256, 256, 0, 4) == (256, 256)
    batch = next(iter(ShardDataset(shard_dir, 2, seed=0, stage_size=16, multiple=4)))
    assert batch["bucket"] in {"16x16", "20x12"}
    w, h = map(int, batch["bucket"].split("x"))
    assert batch["images"].shape[-2:] == (h, w)


def test_list_shards_and_rank_split(shard_dir, tmp_path):
    (shard_dir / ".part-00009.parquet.tmp.parquet").write_text("partial")
    (shard_dir / "_metadata.parquet").write_text("")
    paths = list_shards(shard_dir)
    assert [p.rsplit("/", 1)[1] for p in paths] == ["part-00000.parquet", "part-00001.parquet"]
    four = [f"part-{i:05d}.parquet" for i in range(5)]
    splits = [rank_share(four, r, 2) for r in range(2)]
    assert sorted(splits[0][0] + splits[1][0]) == four and not set(splits[0][0]) & set(splits[1][0])
    assert all(s[1:] == (0, 1) for s in splits)  # whole shards
    assert rank_share(four[:1], 1, 2) == (four[:1], 1, 2)  # fewer shards than ranks: every other row
    with pytest.raises(FileNotFoundError):
        list_shards(tmp_path / "missing")
