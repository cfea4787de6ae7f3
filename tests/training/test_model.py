"""DiT blocks: shapes, text masking, GQA, gated attention, shared modulation, 2-D RoPE, iREPA."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from training.config import SIZES, ModelConfig, param_count
from training.model import (
    Attention,
    DiT,
    IREPAProjector,
    apply_rope,
    count_parameters,
    image_grid_angles,
    irepa_loss,
    rope_2d_angles,
    spatial_normalise,
)

CFG = replace(SIZES["debug"], dim=32, depth=3, heads=4, kv_heads=2, text_dim=16, repa_depth=2)


def reference_attention(q, k, v, key_mask=None):
    """Plain softmax attention; q [B,H,S,hd], k/v [B,Hkv,S,hd] repeated per group."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return scores.softmax(-1) @ v


def randomised(model: DiT) -> DiT:
    """The output head is zero-initialised (as in DiT); give it weights so outputs depend on the input."""
    torch.nn.init.normal_(model.final.weight, std=0.1)
    return model


def _qkv(attn: Attention, x):
    b, s, _ = x.shape
    q = attn.wq(x).view(b, s, attn.heads, attn.head_dim).transpose(1, 2)
    k = attn.wk(x).view(b, s, attn.kv_heads, attn.head_dim).transpose(1, 2)
    v = attn.wv(x).view(b, s, attn.kv_heads, attn.head_dim).transpose(1, 2)
    return q, k, v


def test_shapes_any_aspect_ratio_and_param_count():
    torch.manual_seed(0)
    model = DiT(CFG)
    x = torch.randn(2, 3, 16, 24)
    v, grid = model(x, torch.rand(2), torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool))
    assert v.shape == x.shape and grid.shape == (2, CFG.dim, 4, 6)
    v0, _ = model(x, torch.rand(2))  # unconditional: no text at all
    assert v0.shape == x.shape
    assert count_parameters(model) == param_count(CFG)
    assert param_count(SIZES["debug"]) < 1_000_000 < param_count(SIZES["S"]) < param_count(SIZES["XL"])
    with pytest.raises(ValueError):
        model(torch.randn(1, 3, 10, 16), torch.rand(1))


def test_padded_text_tokens_do_not_change_outputs():
    torch.manual_seed(0)
    model = randomised(DiT(replace(CFG, prediction="v")).eval())
    x, t = torch.randn(2, 3, 16, 16), torch.rand(2)
    text = torch.randn(2, 3, 16)
    mask = torch.ones(2, 3, dtype=torch.bool)
    ref, ref_grid = model(x, t, text, mask)
    padded = torch.cat([text, 100 * torch.randn(2, 4, 16)], 1)
    pad_mask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], 1)
    out, grid = model(x, t, padded, pad_mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grid, ref_grid, atol=1e-5, rtol=1e-5)
    changed, _ = model(x, t, torch.cat([text, 100 * torch.randn(2, 4, 16)], 1),
                       torch.ones(2, 7, dtype=torch.bool))
    assert not torch.allclose(changed, ref, atol=1e-3)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_gqa_matches_reference_attention(kv_heads):
    torch.manual_seed(0)
    attn = Attention(32, heads=4, kv_heads=kv_heads, qk_norm=False, gated=False)
    x = torch.randn(2, 7, 32)
    key_mask = torch.ones(2, 7, dtype=torch.bool)
    key_mask[1, :3] = False
    q, k, v = _qkv(attn, x)
    if kv_heads == 4:  # full multi-head attention: torch's own SDPA without GQA
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
        torch.testing.assert_close(expected, reference_attention(q, k, v, key_mask), atol=1e-5, rtol=1e-5)
    expected = reference_attention(q, k, v, key_mask)
    expected = attn.wo(expected.transpose(1, 2).reshape(2, 7, 32))
    torch.testing.assert_close(attn(x, None, key_mask), expected, atol=1e-5, rtol=1e-5)


def test_sigmoid_gate_scales_attention_before_output_projection():
    torch.manual_seed(0)
    attn = Attention(32, heads=4, kv_heads=2, qk_norm=False, gated=True)
    x = torch.randn(2, 5, 32)
    q, k, v = _qkv(attn, x)
    core = reference_attention(q, k, v).transpose(1, 2).reshape(2, 5, 32)
    torch.testing.assert_close(attn(x, None, None), attn.wo(core * torch.sigmoid(attn.gate(x))), atol=1e-5,
                               rtol=1e-5)
    with torch.no_grad():
        attn.gate.weight.zero_()
        attn.gate.bias.fill_(-30.0)
    assert attn(x, None, None).abs().max() < 1e-9


def test_shared_modulation_and_per_block_offsets():
    torch.manual_seed(0)
    model = DiT(CFG).eval()
    six_d = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 6 * CFG.dim]
    assert six_d == [model.mod_shared[1]]  # exactly one projection to 6·d, shared by all blocks
    for block in model.blocks:
        assert block.mod_offset.shape == (6, CFG.dim)
        assert not any(isinstance(m, torch.nn.Linear) and m.out_features == 6 * CFG.dim for m in block.modules())
    outputs: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda _m, _i, o: outputs.append(o.clone())) for b in model.blocks]
    x, t, text = torch.randn(1, 3, 16, 16), torch.rand(1), torch.randn(1, 2, 16)
    model(x, t, text)
    before, outputs[:] = list(outputs), []
    with torch.no_grad():
        model.blocks[1].mod_offset.add_(0.5)
    model(x, t, text)
    after = list(outputs)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(after[0], before[0])
    assert not torch.allclose(after[1], before[1])


def test_rope_2d_is_relative_and_text_is_unrotated():
    torch.manual_seed(0)
    hd = 16
    q, k = torch.randn(1, 1, 1, hd), torch.randn(1, 1, 1, hd)

    def score(pq, pk):
        aq = rope_2d_angles(torch.tensor([pq[0]]), torch.tensor([pq[1]]), hd, 100.0)
        ak = rope_2d_angles(torch.tensor([pk[0]]), torch.tensor([pk[1]]), hd, 100.0)
        return float((apply_rope(q, aq) * apply_rope(k, ak)).sum())

    base = score((2, 3), (5, 1))
    assert score((7, 9), (10, 7)) == pytest.approx(base, abs=1e-4)  # same (drow, dcol)
    assert score((2, 3), (5, 2)) != pytest.approx(base, abs=1e-3)  # column offset matters
    assert score((2, 3), (6, 1)) != pytest.approx(base, abs=1e-3)  # row offset matters
    assert score((3, 2), (1, 5)) != pytest.approx(base, abs=1e-3)  # rows and columns are distinct axes
    torch.testing.assert_close(apply_rope(q, torch.zeros(1, hd // 2)), q)
    assert image_grid_angles(2, 3, hd, 100.0).shape == (6, hd // 2)


def test_irepa_projector_and_loss():
    torch.manual_seed(0)
    projector = IREPAProjector(32, 64, hidden=16)
    assert isinstance(projector.net[0], torch.nn.Conv2d) and projector.net[0].kernel_size == (3, 3)
    projected = projector(torch.randn(2, 32, 4, 6)).detach()
    assert projected.shape == (2, 64, 4, 6)
    teacher = torch.randn(2, 64, 7, 7)
    loss = irepa_loss(projected, teacher)
    assert -1.0 <= float(loss) <= 1.0
    # spatial normalisation: a per-image, per-channel affine change of the teacher does not matter
    affine = teacher * torch.rand(2, 64, 1, 1).add(0.5) + torch.randn(2, 64, 1, 1) * 10
    assert float(irepa_loss(projected, affine)) == pytest.approx(float(loss), abs=1e-4)
    target = spatial_normalise(torch.randn(2, 64, 4, 6))
    assert float(irepa_loss(target * 3, target)) == pytest.approx(-1.0, abs=1e-4)


def test_activation_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = DiT(CFG)
    x, t, text = torch.randn(2, 3, 16, 16), torch.rand(2), torch.randn(2, 3, 16)
    grads = []
    for flag in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = flag
        v, grid = model(x, t, text)
        (v.square().mean() + grid.mean()).backward()
        grads.append(model.blocks[0].attn.wq.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_config_validation():
    with pytest.raises(ValueError):
        ModelConfig(dim=30, heads=4)
    with pytest.raises(ValueError):
        ModelConfig(heads=4, kv_heads=3)
    with pytest.raises(ValueError):
        ModelConfig(depth=2, repa_depth=3)
