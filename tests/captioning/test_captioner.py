"""Captioner API, metadata extraction (step 2), the VLM prompt, and the transformers backend on a tiny Qwen2-VL."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from captioning import grounding
from captioning.captioner import (
    INSTRUCTIONS,
    PROMPT_VERSION,
    CaptionerConfig,
    CaptionInput,
    GroundedCaptioner,
    OpenAICaptioner,
    TransformersCaptioner,
    build_prompt,
    extract_caption_metadata,
    load_captioner,
)
from curation.metadata import extract_metadata
from tests.captioning.conftest import build_tiny_qwen3_vl, solid, two_tone

QUALITY_FAILURES = {grounding.CAPTION_EMPTY, grounding.CAPTION_TRUNCATED, grounding.CAPTION_REPETITIVE,
                    grounding.CAPTION_REFUSAL}

XMP = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/"
  xmlns:Iptc4xmpCore="http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/" photoshop:City="Kyoto" photoshop:Country="Japan">
 <dc:title><rdf:Alt><rdf:li xml:lang="ja">Kinkaku</rdf:li>
  <rdf:li xml:lang="x-default">Golden Pavilion</rdf:li></rdf:Alt></dc:title>
 <dc:description><rdf:Alt><rdf:li xml:lang="x-default">Kinkaku-ji reflected in its pond.</rdf:li></rdf:Alt>
 </dc:description>
 <dc:subject><rdf:Bag><rdf:li>temple</rdf:li><rdf:li>pond</rdf:li></rdf:Bag></dc:subject>
 <Iptc4xmpCore:AltTextAccessibility><rdf:Alt><rdf:li xml:lang="x-default">A gold temple by a pond</rdf:li>
 </rdf:Alt></Iptc4xmpCore:AltTextAccessibility>
</rdf:Description></rdf:RDF></x:xmpmeta>
<?xpacket end="w"?>"""


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """`num_threads=1` (fast on a shared CPU) must not leak into other tests of the session."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def ingest_metadata(img_bytes: bytes, sidecar: dict | None = None) -> dict:
    """The `metadata` JSON that ingest stores for these bytes."""
    embedded = extract_metadata(Image.open(io.BytesIO(img_bytes)))
    return json.loads(json.dumps({"embedded": embedded, "sidecar": sidecar or {}}))


# --- config and API ---------------------------------------------------------------------------------------------


def test_config_validation_and_backend_choice(tmp_path):
    with pytest.raises(ValueError, match="unknown captioner backend"):
        CaptionerConfig(backend="magic")
    with pytest.raises(ValueError, match="missing_ocr"):
        CaptionerConfig(missing_ocr="ignore")
    with pytest.raises(ValueError, match="batch_size"):
        CaptionerConfig(batch_size=0)
    assert isinstance(load_captioner(CaptionerConfig()), GroundedCaptioner)
    assert isinstance(load_captioner(CaptionerConfig(backend="transformers", model_path=str(tmp_path))),
                      TransformersCaptioner)
    assert isinstance(load_captioner(CaptionerConfig(backend="openai", endpoint="http://h/v1", model="m")),
                      OpenAICaptioner)
    with pytest.raises(ValueError, match="model_path"):
        load_captioner(CaptionerConfig(backend="transformers"))
    with pytest.raises(ValueError, match="endpoint and model"):
        load_captioner(CaptionerConfig(backend="openai"))


# --- step 2: metadata -------------------------------------------------------------------------------------------


def test_metadata_from_exif_xmp_and_sidecar():
    img = solid(64, 48, (90, 90, 20))
    exif = Image.Exif()
    exif[0x010F] = "NIKON CORPORATION"
    exif[0x0110] = "NIKON D750"
    exif[0x013B] = "Jane Doe"
    exif[0x9C9E] = "gold;japan".encode("utf-16-le")  # XPKeywords
    exif.get_ifd(0x8769)[0x9003] = "2019:11:03 16:20:00"
    exif.get_ifd(0x8825).update({1: "N", 2: (35.0, 2.0, 22.8), 3: "E", 4: (135.0, 43.0, 44.4)})
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif, xmp=XMP.encode("utf-8"))
    meta = extract_caption_metadata(ingest_metadata(buf.getvalue(), {"url": "https://example.org/p/42"}),
                                    "s3://bucket/drop/x.jpg")
    assert meta["title"] == "Golden Pavilion" and meta["fields"]["title"] == "xmp.dc:title"
    assert meta["alt_text"] == "A gold temple by a pond"
    assert meta["captions"] == ["Kinkaku-ji reflected in its pond."]
    assert meta["tags"] == ["temple", "pond", "gold", "japan"]
    assert meta["fields"]["tags"] == ["xmp.dc:subject", "exif.XPKeywords"]
    assert meta["date"] == "2019-11-03" and meta["fields"]["date"] == "exif.DateTimeOriginal"
    assert meta["camera"] == "NIKON D750"
    assert meta["place"] == "Kyoto, Japan"
    assert meta["gps"] == {"lat": pytest.approx(35.0397, abs=1e-4), "lon": pytest.approx(135.729, abs=1e-3)}
    assert meta["creator"] == "Jane Doe"
    assert meta["source"] == "https://example.org/p/42" and meta["fields"]["source"] == "sidecar.url"


def test_metadata_from_png_text_iptc_and_sidecar_priority():
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "Harbour at dusk")
    info.add_text("Description", "Fishing boats in the harbour of Honfleur.")
    info.add_text("Author", "A. Painter")
    buf = io.BytesIO()
    solid(40, 40, (20, 40, 120)).save(buf, "PNG", pnginfo=info)
    metadata = ingest_metadata(buf.getvalue(), {"caption": "Boats at dusk.", "txt": "Boats at dusk",
                                                "keywords": "harbour, boats; dusk"})
    metadata["embedded"]["iptc"] = {"Keywords": ["boats", "Normandy"], "City": "Honfleur",
                                    "Country-PrimaryLocationName": "France", "DateCreated": "18920704"}
    meta = extract_caption_metadata(metadata)
    assert meta["title"] == "Harbour at dusk" and meta["fields"]["title"] == "text.Title"
    assert meta["captions"] == ["Boats at dusk.", "Fishing boats in the harbour of Honfleur."]  # deduplicated
    assert meta["fields"]["captions"] == ["sidecar.caption", "text.Description"]
    assert meta["tags"] == ["harbour", "boats", "dusk", "Normandy"]
    assert meta["place"] == "Honfleur, France" and meta["date"] == "1892-07-04"
    assert meta["creator"] == "A. Painter" and meta["source"] is None and meta["camera"] is None


def test_metadata_of_the_example_corpus_shape_and_garbage():
    sidecar = {"file_name": "astronaut.jpg", "title": "astronaut", "caption": "Color image of the astronaut Eileen "
               "Collins.", "licence": "public domain (NASA)", "credit": None,
               "original": "scikit-image/scikit-image@cd0a3d22b9f3:images/scikit-image/astronaut.png"}
    meta = extract_caption_metadata({"embedded": {"info": {"jfif": 257}}, "sidecar": sidecar}, "file:///c/a.jpg")
    assert meta["title"] == "astronaut" and meta["captions"] == ["Color image of the astronaut Eileen Collins."]
    assert meta["source"].startswith("scikit-image/")
    for garbage in (None, {}, {"embedded": "x", "sidecar": [1]}, {"embedded": {"exif": {"_error": "bad"},
                                                                                "xmp": "<x:xmpmeta><broken"}}):
        meta = extract_caption_metadata(garbage)
        assert meta["title"] is None and meta["tags"] == [] and meta["fields"] == {}
    generated = extract_caption_metadata({"sidecar": {"description": "a cat, Steps: 20, Sampler: Euler a"}})
    assert generated["captions"] == [] and generated["skipped"] == {"sidecar.description": "generator_parameters"}
    junk = extract_caption_metadata({"embedded": {"text": {"comment": "cmp3.10.3.2Lq3 0x756ffbf7"},
                                                  "exif": {"ImageDescription": "0x1f2e 12345"}}})
    assert junk["captions"] == [] and junk["skipped"] == {"exif.ImageDescription": "not_prose"}


def test_prompt_gives_ocr_and_metadata_as_context():
    meta = extract_caption_metadata({"sidecar": {"title": "Golden Pavilion", "tags": ["temple"],
                                                 "url": "https://example.org/kinkakuji"}})
    prompt, used = build_prompt(meta, ["金閣寺", "Entrance"])
    assert prompt.startswith(INSTRUCTIONS)
    assert 'Text read by OCR (quote it exactly): "金閣寺"; "Entrance"' in prompt
    assert '- Title: "Golden Pavilion"' in prompt and "- Tags: temple" in prompt
    assert "- Source: https://example.org/kinkakuji" in prompt
    assert used == ["title", "tags", "source"]
    for phrase in ("named", "landmarks", "artworks", "art styles", "exactly as written"):
        assert phrase in prompt.replace("Name the", "named")
    credited = extract_caption_metadata({"sidecar": {"title": "Golden Pavilion", "credit": "Jane Doe"}})
    assert "Jane Doe" not in build_prompt(credited, [])[0]  # credits stay in the metadata by default
    assert "- Credit: Jane Doe" in build_prompt(credited, [], credit=True)[0]
    assert "No lists, headings, field labels" in prompt and "photographers, credits, licences" in prompt
    local, used = build_prompt(extract_caption_metadata({}, "file:///secret/path.jpg"), [])
    assert "Context" not in local and used == []


# --- step 3: transformers on a tiny Qwen2-VL --------------------------------------------------------------------


def _inputs() -> list[CaptionInput]:
    return [CaptionInput("a", two_tone(64, 40, (200, 30, 30), (20, 20, 160), 0.5), [("OPEN", 0.9)],
                         {"embedded": {}, "sidecar": {"title": "Shop front"}}),
            CaptionInput("b", solid(30, 70, (30, 140, 40)).convert("RGBA"), [], {})]


def test_transformers_backend_end_to_end(tiny_qwen2_vl_dir, monkeypatch):
    config = CaptionerConfig(backend="transformers", model_path=tiny_qwen2_vl_dir, num_threads=1, max_new_tokens=12,
                             batch_size=4)
    captioner = load_captioner(config)
    captioner.setup()
    assert type(captioner.model).__name__ == "Qwen2VLForConditionalGeneration"
    assert captioner.processor.tokenizer.padding_side == "left"
    calls: list[dict] = []
    generate = captioner.model.generate

    def spy(**kwargs):
        calls.append({"batch": kwargs["input_ids"].shape[0], "do_sample": kwargs["do_sample"],
                      "max_new_tokens": kwargs["max_new_tokens"], "images": kwargs["image_grid_thw"].shape[0]})
        out = generate(**kwargs)
        calls[-1]["new_tokens"] = out.shape[1] - kwargs["input_ids"].shape[1]
        return out

    monkeypatch.setattr(captioner.model, "generate", spy)
    results = captioner.caption_batch(_inputs())
    assert [r.sample_id for r in results] == ["a", "b"]
    assert calls[0] == {"batch": 2, "do_sample": False, "max_new_tokens": 12, "images": 2,
                        "new_tokens": calls[0]["new_tokens"]}
    assert calls[0]["new_tokens"] <= 12
    for result in results:
        assert (result.backend, result.model, result.prompt_version) == (
            "transformers", Path(tiny_qwen2_vl_dir).name, PROMPT_VERSION)
        if result.failure is None:  # a random model can, rarely, say something acceptable
            assert result.caption and result.attempts in (1, 2)
        else:  # gibberish: rejected, retried once with sampling, then reported
            assert result.failure in QUALITY_FAILURES and result.attempts == 2 and result.caption == ""
            assert "last output" in result.failure_detail
    assert results[0].inputs["ocr_lines"] == ["OPEN"] and results[0].inputs["metadata_fields"] == ["sidecar.title"]
    retried = [r for r in results if r.attempts == 2]
    if retried:
        assert len(calls) == 2 and calls[1]["batch"] == len(retried) and calls[1]["do_sample"] is True
        truncated = any(r.failure == grounding.CAPTION_TRUNCATED for r in results)
        assert calls[1]["max_new_tokens"] in ((18,) if truncated else (12, 18))
    # deterministic: greedy first attempt, seeded sampling on the retry
    again = captioner.caption_batch(_inputs())
    assert [r.to_record() for r in again] == [r.to_record() for r in results]


def test_transformers_batch_matches_single_generation(tiny_qwen2_vl_dir):
    """Left padding: an image captioned in a batch gets the same greedy tokens as alone."""
    captioner = load_captioner(CaptionerConfig(backend="transformers", model_path=tiny_qwen2_vl_dir, num_threads=1,
                                               max_new_tokens=8))
    captioner.setup()
    prepared = [captioner._prepare(inp) for inp in _inputs()]
    batched = captioner._generate(prepared, 1, [None, None])
    single = [captioner._generate([p], 1, [None])[0] for p in prepared]
    assert batched == single


def test_transformers_failure_can_fall_back_to_grounded(tiny_qwen2_vl_dir):
    config = CaptionerConfig(backend="transformers", model_path=tiny_qwen2_vl_dir, num_threads=1, max_new_tokens=6,
                             max_caption_attempts=1, fallback_to_grounded=True)
    captioner = load_captioner(config)
    captioner.setup()
    results = captioner.caption_batch(_inputs())
    failed = [r for r in results if r.failure is not None]
    assert failed, "a random 6-token output should not pass the checks"
    grounded = {r.sample_id: r.caption for r in load_captioner(CaptionerConfig()).caption_batch(_inputs())}
    for result in failed:
        assert result.backend == "grounded" and result.fallback_from == "transformers" and result.attempts == 1
        assert result.caption == grounded[result.sample_id] and result.failure in QUALITY_FAILURES
    assert '"OPEN"' in results[0].caption or results[0].failure is None


def test_transformers_backend_picks_the_class_from_model_type_qwen3_vl(tmp_path):
    captioner = load_captioner(CaptionerConfig(backend="transformers", model_path=build_tiny_qwen3_vl(str(tmp_path)),
                                               max_new_tokens=4, max_caption_attempts=1, model="tiny-qwen3-vl",
                                               num_threads=1))
    captioner.setup()
    assert type(captioner.model).__name__ == "Qwen3VLForConditionalGeneration"
    results = captioner.caption_batch(_inputs())
    assert [(r.sample_id, r.model, r.attempts) for r in results] == [("a", "tiny-qwen3-vl", 1),
                                                                     ("b", "tiny-qwen3-vl", 1)]
    assert all(r.failure in QUALITY_FAILURES | {None} for r in results)


def test_transformers_setup_errors(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        load_captioner(CaptionerConfig(backend="transformers", model_path=str(missing))).setup()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_captioner(CaptionerConfig(backend="transformers", model_path=str(empty))).setup()
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="qwen2_5_vl"):
        load_captioner(CaptionerConfig(backend="transformers", model_path=str(other))).setup()
    with pytest.raises(RuntimeError, match="setup"):
        load_captioner(CaptionerConfig(backend="transformers", model_path=str(other))).caption_batch(_inputs())
