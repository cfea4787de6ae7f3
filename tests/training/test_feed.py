"""What feeds the step: cached text states, decode workers, attention without a mask when nothing is padded,
the checkpoint summary."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.training.shards import write_shard_dir
from training.config import SIZES, TrainConfig
from training.text import HashTextEncoder
from training.text_cache import TextStateCache, encoder_key
from training.trainer import train

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = replace(SIZES["debug"], dim=32, heads=2, kv_heads=1, depth=2, repa_depth=1, repa_hidden=16)
BASE = TrainConfig(steps=6, lr=2e-3, warmup_steps=2, log_every=3, checkpoint_every=3, threads=1, stage_size=0,
                   batch_size=4, text_encoder="hash", teacher="none", repa_weight=0.0, cfg_dropout=0.0,
                   loader_workers=0, preview_prompts=())


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_shard_dir(tmp_path_factory.mktemp("shards"), n_shards=2, per_shard=4, sizes=[(16, 16)])


class _Counting(HashTextEncoder):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.encoded: list[str] = []

    def _encode_uncached(self, prompts):
        self.encoded.extend(prompts)
        return super()._encode_uncached(prompts)


def test_text_states_are_encoded_once_and_keyed_by_encoder_and_text(shards, tmp_path):
    from training.data import list_shards

    paths = list_shards(shards)
    variants = ("tags", "short")

    def cache(encoder, cache_dir=tmp_path / "cache", max_length=64):
        return TextStateCache(encoder, encoder_key(encoder, (-1,), max_length), variants, cache_dir)

    enc = _Counting(dim=16)
    first = cache(enc)
    first.build(paths)
    # 8 "a disc N" and 6 "disc, colorN" (colours repeat across shards): each distinct text encoded once
    assert first.built == 2 and len(enc.encoded) == len(set(enc.encoded)) == 8 + 6
    table = first.load(paths[0])
    states, mask = HashTextEncoder(dim=16).encode(["disc, color1"])
    assert torch.equal(table["disc, color1"].float(), states[0, : int(mask.sum())].half().float())

    again = _Counting(dim=16)
    rerun = cache(again)
    rerun.build(paths)  # a rerun (or a later stage whose shards hold the same captions) encodes nothing
    assert again.encoded == [] and rerun.reused == 2
    other = cache(_Counting(dim=16), max_length=8)  # another encoder setting: its own files
    assert other.path(paths[0]) != first.path(paths[0])
    assert cache(_Counting(dim=24)).path(paths[0]) != first.path(paths[0])


def test_trainer_reuses_text_states_and_decode_workers_change_nothing(shards, tmp_path):
    cfg = replace(BASE, text_cache_dir=str(tmp_path / "text"), prompt_length_distribution={"tags": 1.0})
    inline = train(MODEL, cfg, str(shards), tmp_path / "inline", resume=False)
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "text").iterdir()}
    assert len(files) == 2
    workers = train(MODEL, replace(cfg, loader_workers=2), str(shards), tmp_path / "workers", resume=False)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "text").iterdir()} == files  # read, not rebuilt
    losses = [[json.loads(line)["loss"] for line in open(r.metrics_path)] for r in (inline, workers)]
    assert losses[0] == losses[1]  # same batches in the same order, decoded in two processes


def test_attention_has_no_mask_unless_text_is_padded_or_dropped(shards, tmp_path, monkeypatch):
    calls: list[bool] = []
    sdpa = F.scaled_dot_product_attention

    def spy(*args, attn_mask=None, **kwargs):
        calls.append(attn_mask is not None)
        return sdpa(*args, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    # tags "disc, colorN": two words for every image, so no batch is padded
    train(MODEL, replace(BASE, prompt_length_distribution={"tags": 1.0}), str(shards), tmp_path / "a", resume=False)
    assert calls and not any(calls)
    calls.clear()  # "a disc N" (3 words) with "disc, colorN" (2): padding in most batches
    train(MODEL, replace(BASE, prompt_length_distribution={"tags": 0.5, "short": 0.5}, seed=3), str(shards),
          tmp_path / "b", resume=False)
    assert any(calls)
    calls.clear()
    train(MODEL, replace(BASE, prompt_length_distribution={"tags": 1.0}, cfg_dropout=1.0), str(shards),
          tmp_path / "c", resume=False)
    assert any(calls)  # dropped text is masked


def test_checkpoint_summary_describes_the_file(shards, tmp_path):
    result = train(MODEL, BASE, str(shards), tmp_path / "s", resume=False, profile=True)
    summary = json.loads((tmp_path / "s" / "checkpoint.json").read_text())
    data = Path(result.checkpoint_path).read_bytes()
    assert summary["sha256"] == hashlib.sha256(data).hexdigest() and summary["bytes"] == len(data)
    assert summary["step"] == 6 and summary["params"] == result.params and summary["world_size"] == 1
    lines = [json.loads(line) for line in open(result.metrics_path)]
    phases = ("data", "text", "forward", "backward", "optimizer", "ema")
    assert all(m[f"time_{p}"] > 0 for m in lines for p in phases)


def test_fsdp_in_a_one_process_group(shards, tmp_path):
    from training.distributed import run_local

    cfg = replace(BASE, strategy="fsdp")
    config = {"model_config": asdict(MODEL), "train_config": asdict(cfg), "shards": [str(shards)],
              "out_dir": str(tmp_path / "f")}
    [result] = run_local(config, 1)
    plain = train(MODEL, cfg, str(shards), tmp_path / "p", resume=False)
    losses = [[json.loads(line)["loss"] for line in open(p)] for p in (result["metrics_path"], plain.metrics_path)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
