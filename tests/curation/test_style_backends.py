"""The production style backends (`clip`, `csd`) on tiny random-init ViTs saved to disk and loaded back by path."""

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from curation.style.backends import clip_style_blocks
from curation.style.descriptor import StyleConfig, config_from_name, descriptor_name, load_style_embedder
from curation.style.extract import StyleExtractor

TINY_VISION = {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16, "mlp_ratio": 2.0}
TINY_TEXT = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}


def images() -> list[Image.Image]:
    """A few pictures of different sizes and modes (RGB, RGBA, L, palette)."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8), "RGB")
    rgba = Image.fromarray(rng.integers(0, 255, (64, 40, 4), dtype=np.uint8), "RGBA")
    grey = Image.fromarray(rng.integers(0, 255, (33, 33), dtype=np.uint8), "L")
    return [rgb, rgba, grey, rgb.convert("P"), rgb.resize((200, 120))]


def save_open_clip_dir(path, seed: int):
    """A tiny open_clip CLIP in open_clip's local-dir layout (open_clip_config.json + safetensors)."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = open_clip.CLIP(embed_dim=16, vision_cfg=TINY_VISION, text_cfg=TINY_TEXT)
    path.mkdir()
    (path / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": {"embed_dim": 16, "vision_cfg": TINY_VISION, "text_cfg": TINY_TEXT}, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    return path, model


def save_hf_dir(path, seed: int):
    """A tiny transformers CLIPVisionModel directory."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=16)
    CLIPVisionModel(config).save_pretrained(str(path))
    return path


def save_csd_checkpoint(path, seed: int):
    """A tiny checkpoint laid out like CSD's release: {'model_state_dict': {'module.backbone.*', heads}}."""
    from open_clip.transformer import QuickGELU, VisionTransformer

    torch.manual_seed(seed)
    backbone = VisionTransformer(image_size=32, patch_size=8, width=32, layers=2, heads=1, mlp_ratio=4.0,
                                 output_dim=16, act_layer=QuickGELU)
    state = {f"module.backbone.{k}": v for k, v in backbone.state_dict().items() if k != "proj"}
    state["module.last_layer_style"] = torch.randn(32, 16)
    state["module.last_layer_content"] = torch.randn(32, 16)
    torch.save({"model_state_dict": state, "epoch": 3}, path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("style_weights")
    return {
        "open_clip": save_open_clip_dir(root / "oc_a", 1)[0],
        "open_clip_b": save_open_clip_dir(root / "oc_b", 2)[0],
        "hf": save_hf_dir(root / "hf_a", 1),
        "csd": save_csd_checkpoint(root / "csd_a.pth", 1),
        "csd_b": save_csd_checkpoint(root / "csd_b.pth", 2),
    }


CASES = [("clip", "open_clip", 24), ("clip", "hf", 24), ("csd", "csd", 16)]


def _config(backend, path, **kw):
    return StyleConfig(backend=backend, weights=str(path), dim=24, gram_channels=4, batch_size=2, **kw)


@pytest.mark.parametrize("backend,key,dim", CASES)
def test_backend_embeds_images_of_any_size_and_mode(weights, backend, key, dim):
    embedder = load_style_embedder(_config(backend, weights[key]))
    style, content = embedder.embed(images())
    assert embedder.dim == dim and style.shape == (5, dim) and content.shape[0] == 5
    assert style.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(style, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(content, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(style[0], style[2])
    empty, _ = embedder.embed([])
    assert empty.shape == (0, dim)
    again = load_style_embedder(_config(backend, weights[key]))  # a second load: same name, same descriptors
    assert again.name == embedder.name
    np.testing.assert_allclose(again.embed(images())[0], style, atol=1e-5)
    single, _ = again.embed(images()[1:2])  # batch composition does not change a descriptor
    np.testing.assert_allclose(single[0], style[1], atol=1e-5)


@pytest.mark.parametrize("backend,key", [("clip", "open_clip"), ("csd", "csd")])
def test_extractor_stores_float16_unit_rows_named_by_the_weights(weights, backend, key):
    import io

    blobs = []
    for img in images()[:3]:
        buf = io.BytesIO()
        img.save(buf, "PNG")
        blobs.append(buf.getvalue())
    table = pa.table({"sample_id": ["a", "b", "c"], "source": ["s"] * 3, "source_uri": ["u1", "u2", "u3"],
                      "image": pa.array(blobs, pa.binary())})
    rows, decisions, counts = StyleExtractor(_config(backend, weights[key])).process(table)
    assert rows.num_rows == 3 and not decisions and counts.kept == 3
    assert rows.schema.field("style").type.value_type == pa.float16()
    vecs = np.asarray(rows.column("style").to_pylist(), np.float32)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=2e-3)
    assert set(rows.column("style_model").to_pylist()) == {descriptor_name(_config(backend, weights[key]))}


def test_names_encode_backend_and_weights_and_round_trip(weights):
    clip_a = descriptor_name(_config("clip", weights["open_clip"]))
    clip_b = descriptor_name(_config("clip", weights["open_clip_b"]))
    csd_a, csd_b = (descriptor_name(_config("csd", weights[k])) for k in ("csd", "csd_b"))
    assert clip_a.startswith("clip/style-1/d24-r4-s") and csd_a.startswith("csd/style-1/w")
    assert len({clip_a, clip_b, csd_a, csd_b, descriptor_name(_config("clip", weights["hf"]))}) == 5
    default = descriptor_name(StyleConfig())
    assert default == "open_nsfw_gram/style-1/d256-r32-s20261202"  # unchanged: stored descriptors stay valid
    assert config_from_name(default) == StyleConfig()
    back = config_from_name(clip_a, weights=str(weights["open_clip"]), batch_size=3)
    assert descriptor_name(back) == clip_a and back.batch_size == 3 and back.dim == 24
    assert descriptor_name(config_from_name(csd_a, weights=str(weights["csd"]))) == csd_a
    with pytest.raises(ValueError, match="give their local path"):
        config_from_name(csd_a)
    with pytest.raises(ValueError, match="not the weights"):
        config_from_name(csd_a, weights=str(weights["csd_b"]))
    with pytest.raises(ValueError, match="not one this code computes"):
        config_from_name("vgg/style-1/d256-r32-s1")
    with pytest.raises(ValueError, match="malformed"):
        config_from_name("csd/style-1/d256-r32-s1")


@pytest.mark.parametrize("backend", ["clip", "csd"])
def test_missing_or_absent_weights_refuse_naming_path_and_backend(tmp_path, backend):
    missing = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(FileNotFoundError, match=f"{backend}.*{missing}"):
        load_style_embedder(StyleConfig(backend=backend, weights=str(missing)))
    with pytest.raises(ValueError, match=f"{backend}.*needs local weights"):
        load_style_embedder(StyleConfig(backend=backend))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "empty")):
        load_style_embedder(StyleConfig(backend=backend, weights=str(tmp_path / "empty")))
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=str(garbage)):
        load_style_embedder(StyleConfig(backend=backend, weights=str(garbage), model="ViT-B-32"))


def test_weights_that_do_not_fill_the_model_are_refused(tmp_path, weights):
    state = torch.load(weights["csd"], weights_only=True)["model_state_dict"]
    del state["module.backbone.ln_post.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="does not fit"):
        load_style_embedder(StyleConfig(backend="csd", weights=str(tmp_path / "partial.pth")))
    with pytest.raises(ValueError, match="not a CSD checkpoint"):
        torch.save({"x": torch.zeros(1)}, tmp_path / "other.pth")
        load_style_embedder(StyleConfig(backend="csd", weights=str(tmp_path / "other.pth")))
    from safetensors.torch import load_file, save_file

    hf = save_hf_dir(tmp_path / "hf_partial", 3)
    tensors = load_file(str(hf / "model.safetensors"))
    save_file({k: v for k, v in tensors.items() if "post_layernorm.weight" not in k}, str(hf / "model.safetensors"))
    with pytest.raises(ValueError, match="does not hold the whole vision tower"):
        load_style_embedder(StyleConfig(backend="clip", weights=str(hf)))
    # an open_clip checkpoint file needs its architecture; an architecture it does not fit is refused
    ckpt = tmp_path / "oc.safetensors"
    ckpt.write_bytes((weights["open_clip"] / "open_clip_model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="needs its open_clip architecture"):
        load_style_embedder(StyleConfig(backend="clip", weights=str(ckpt)))
    with pytest.raises(ValueError, match="cannot load open_clip"):
        load_style_embedder(StyleConfig(backend="clip", weights=str(ckpt), model="ViT-B-32"))


def test_unknown_backend_and_weights_without_their_backend_are_refused(weights):
    with pytest.raises(ValueError, match="unknown style backend 'vgg'"):
        load_style_embedder(StyleConfig(backend="vgg"))
    with pytest.raises(ValueError, match="set style_embeddings.backend"):  # never the default CNN by omission
        descriptor_name(StyleConfig(weights=str(weights["csd"])))


def test_clip_blocks_sit_at_thirds_of_the_depth():
    assert clip_style_blocks(24) == [8, 16] and clip_style_blocks(12) == [4, 8]
    assert clip_style_blocks(2) == [0, 1] and clip_style_blocks(1) == [0]


def test_attribute_answers_a_csd_index_given_its_weights_and_refuses_others(tmp_path, weights):
    from assets.creator_style_index import index_path
    from curation.style.creators import build_creator_index
    from orchestration.attribute import attribute_files
    from orchestration.storage import TableStore

    config = _config("csd", weights["csd"])
    embedder = load_style_embedder(config)
    pictures = images()
    style, _ = embedder.embed(pictures)
    ids = [f"{i:064x}" for i in range(len(pictures))]
    creators = {sid: (("ann", "Ann") if i % 2 else ("bob", "Bob")) for i, sid in enumerate(ids)}
    index, _ = build_creator_index(creators, dict(zip(ids, style, strict=True)), embedder.name)
    store = TableStore(str(tmp_path / "storage"))
    store.write_bytes(index_path(store), index.to_bytes())
    query = tmp_path / "query.png"
    pictures[0].save(query)
    with pytest.raises(SystemExit, match="give their local path"):
        attribute_files(str(tmp_path / "storage"), [str(query)])
    with pytest.raises(SystemExit, match="not the weights"):
        attribute_files(str(tmp_path / "storage"), [str(query)], style_weights=str(weights["csd_b"]))
    [line] = attribute_files(str(tmp_path / "storage"), [str(query)], style_weights=str(weights["csd"]))
    assert line["descriptor"] == embedder.name
    assert sum(c["share"] for c in line["creators"]) + line["unattributed"] == pytest.approx(1.0, abs=1e-6)


def test_open_clip_checkpoint_file_with_its_architecture_matches_the_directory(tmp_path, weights):
    import open_clip

    arch = tmp_path / "arch"
    arch.mkdir()
    (arch / "atelier-test-tiny-vit.json").write_text(json.dumps({"embed_dim": 16, "vision_cfg": TINY_VISION,
                                                                 "text_cfg": TINY_TEXT}))
    open_clip.add_model_config(arch)
    ckpt = tmp_path / "tiny.safetensors"
    ckpt.write_bytes((weights["open_clip"] / "open_clip_model.safetensors").read_bytes())
    from_file = load_style_embedder(_config("clip", ckpt, model="atelier-test-tiny-vit"))
    from_dir = load_style_embedder(_config("clip", weights["open_clip"]))
    np.testing.assert_allclose(from_file.embed(images())[0], from_dir.embed(images())[0], atol=1e-5)
    # the architecture a file is read with is part of its identity (QuickGELU vs GELU share weight shapes)
    assert from_file.name != descriptor_name(_config("clip", ckpt, model="other-arch"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend,key", [("clip", "open_clip"), ("clip", "hf"), ("csd", "csd")])
def test_cuda_gives_the_cpu_descriptors(weights, backend, key):
    cpu = load_style_embedder(_config(backend, weights[key]))
    gpu = load_style_embedder(_config(backend, weights[key], device="cuda"))
    assert gpu.name == cpu.name
    np.testing.assert_allclose(gpu.embed(images())[0], cpu.embed(images())[0], atol=1e-3)


def test_asset_config_maps_backend_and_weights_and_keeps_the_default_hash(tmp_path, weights):
    from assets.style_embeddings import StyleEmbeddingsConfig, style_config_hash
    from orchestration.resources import ModelSettings

    models = ModelSettings(weights_dir=str(tmp_path))
    config = StyleEmbeddingsConfig(backend="csd", weights="csd/checkpoint.pth", num_gpus_per_actor=1.0)
    style = config.to_style_config(models)
    assert style.backend == "csd" and style.weights == str(tmp_path / "csd" / "checkpoint.pth")
    assert style.device == "cuda"  # 'auto' follows the GPUs the actors declare
    default = StyleEmbeddingsConfig().to_style_config()
    assert default == StyleConfig(threads=1)
    # the stage hash main had before the backends existed: parts stored then are reused
    assert style_config_hash(default) == "42d211d917b11b5f"
    csd_a, csd_b = (style_config_hash(_config("csd", weights[k])) for k in ("csd", "csd_b"))
    assert csd_a != csd_b and csd_a == style_config_hash(_config("csd", weights["csd"], device="cuda"))
    with pytest.raises(FileNotFoundError, match="csd.*checkpoint.pth"):
        style_config_hash(style)
