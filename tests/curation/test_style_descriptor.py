import numpy as np
import pytest
from PIL import ImageFilter

from curation.style.descriptor import StyleConfig, StyleProjector, load_style_embedder
from curation.style.index import StyleIndex
from tests.conftest import make_image

CHANNELS = (8, 16)


def _acts(rng, n=3, sides=(12, 6)):
    return [rng.random((n, s, s, c), dtype=np.float32) for s, c in zip(sides, CHANNELS, strict=True)]


def test_descriptor_ignores_layout_and_is_deterministic():
    config = StyleConfig(dim=24, gram_channels=4, seed=3)
    proj = StyleProjector(CHANNELS, config)
    rng = np.random.default_rng(0)
    layers = _acts(rng)
    out = proj.project(proj.statistics(layers))
    assert out.shape == (3, 24)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    # shuffling the spatial positions of every layer keeps every statistic: the descriptor drops the layout
    shuffled = []
    for act in layers:
        flat = act.reshape(3, -1, act.shape[-1])
        shuffled.append(flat[:, rng.permutation(flat.shape[1])].reshape(act.shape))
    np.testing.assert_allclose(proj.project(proj.statistics(shuffled)), out, atol=1e-5)
    again = StyleProjector(CHANNELS, config)
    np.testing.assert_array_equal(again.project(again.statistics(layers)), out)
    other = StyleProjector(CHANNELS, StyleConfig(dim=24, gram_channels=4, seed=4))
    assert not np.allclose(other.project(other.statistics(layers)), out)


def test_descriptor_sees_second_order_statistics():
    # same channel means and stds, different co-activation: only the covariance block tells them apart
    proj = StyleProjector((2,), StyleConfig(dim=4, gram_channels=2, seed=1))
    rng = np.random.default_rng(1)
    a = rng.standard_normal((1, 32, 32, 1)).astype(np.float32)
    a -= a.mean()
    together = np.concatenate([a, a], axis=-1) + 3
    opposed = np.concatenate([a, -a], axis=-1) + 3
    s1, s2 = proj.statistics([together]), proj.statistics([opposed])
    np.testing.assert_allclose(s1[:, :4], s2[:, :4], atol=1e-5)  # means and stds
    assert np.abs(s1[:, 4:] - s2[:, 4:]).max() > 0.1


def test_projector_refuses_a_dim_above_its_statistics():
    with pytest.raises(ValueError, match="exceeds"):
        StyleProjector((2,), StyleConfig(dim=64, gram_channels=2))


def test_embedder_groups_by_filter_not_by_picture():
    embedder = load_style_embedder(StyleConfig(batch_size=2))
    a, b = make_image(160, 160, seed=5), make_image(160, 160, seed=9)
    blurred = [img.filter(ImageFilter.GaussianBlur(6)) for img in (a, b)]
    style, content = embedder.embed([a, b, *blurred])
    assert style.shape == (3 + 1, 256) and content.shape == (4, 1024)
    sims = style @ style.T
    assert sims[2, 3] > sims[2, 0] + 0.05  # two blurred pictures are closer than a picture and its blur
    assert sims[0, 1] > sims[0, 2] + 0.05
    again, _ = embedder.embed([a])
    np.testing.assert_allclose(again[0], style[0], atol=1e-5)


def test_index_is_incremental_and_round_trips():
    rng = np.random.default_rng(2)
    vecs = rng.standard_normal((5, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [f"{i:x}" * 64 for i in range(1, 6)]
    ids = [s[:64] for s in ids]
    index = StyleIndex(8, "test")
    assert index.add(ids[:3], vecs[:3]) == 3
    assert index.add(ids[:4], vecs[:4]) == 1  # only the new one
    version = index.version()
    found, scores = index.search(vecs[3:4], 2)
    assert found[0][0] == ids[3] and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    loaded = StyleIndex.from_bytes(index.to_bytes())
    assert loaded.sample_ids == index.sample_ids and loaded.version() == version
    np.testing.assert_allclose(loaded.vectors([ids[2]]), vecs[2:3], atol=1e-6)
    assert loaded.remove([ids[3], "f" * 64]) == 1
    assert ids[3] not in loaded and loaded.version() != version
    assert loaded.search(vecs[3:4], 4)[0][0][0] != ids[3]
    assert loaded.retain({ids[0]}) == 2 and loaded.sample_ids == [ids[0]]
    with pytest.raises(ValueError):
        StyleIndex.from_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00junk!")
