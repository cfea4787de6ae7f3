"""Shards given as URIs (`file://` here, the same code path as `s3://`) read exactly like local paths, and their
latent caches go to a local directory."""

from __future__ import annotations

import torch

from tests.training.shards import write_shard, write_shard_dir
from training.data import ShardDataset, list_shards


def test_uri_shards_list_and_read_like_local_paths(tmp_path):
    shards = write_shard_dir(tmp_path / "shards", n_shards=2, per_shard=3, sizes=[(16, 16), (24, 16)])
    (shards / "_hidden.parquet").write_bytes(b"")  # ignored, as in a local directory
    uri = f"file://{shards}"
    local = list_shards(str(shards))
    assert list_shards(uri) == [f"file://{p}" for p in local]
    assert list_shards([f"file://{local[1]}", f"file://{local[0]}"]) == [f"file://{p}" for p in local]

    def batches(paths):
        return [(b["bucket"], b["sample_ids"], b["images"]) for b in ShardDataset(paths, 2, seed=3, epochs=2)]

    for (bucket, ids, images), (bucket_u, ids_u, images_u) in zip(batches(str(shards)), batches(uri), strict=True):
        assert (bucket, ids) == (bucket_u, ids_u)
        torch.testing.assert_close(images, images_u)


def test_missing_uri_shard_is_named(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="nowhere.parquet"):
        list_shards(f"file://{tmp_path}/nowhere.parquet")


def test_latent_cache_of_a_uri_shard_is_local(tmp_path, monkeypatch):
    import training.latent as latent

    class PoolCodec:
        channels, factor = 3, 4

        def encode(self, images):
            return torch.nn.functional.avg_pool2d(images, 4)

    monkeypatch.setattr(latent, "DEFAULT_URI_CACHE_DIR", tmp_path / "cache")
    shard = tmp_path / "shards" / "part-00000.parquet"
    write_shard(shard, [(16, 16)] * 3)
    uri = f"file://{shard}"
    cache = latent.LatentCache(PoolCodec(), [uri])
    cache.build(lambda s: ShardDataset(s, 2, seed=0, shuffle=False, epochs=1))
    files = list((tmp_path / "cache").glob("part-00000.parquet.latents-*-16x16.pt"))
    assert len(files) == 1 and not list(shard.parent.glob("*.pt"))  # nothing written beside the "remote" shard
    assert files[0] == cache.cache_path(uri, "16x16")
    assert cache.cache_path(uri, "16x16").name == latent.LatentCache(PoolCodec(), [str(shard)]).cache_path(
        str(shard), "16x16").name  # the same content-addressed name as for the local path
