"""Ingest of a unit: rows for images, one drop decision per refused input, counts that balance."""

from __future__ import annotations

import json

import pytest

from curation.decisions import DECISIONS_SCHEMA, Decision, StageCounts, decisions_table
from curation.image_io import ProbeLimits
from curation.ingest import IngestConfig, ingest_unit, sha256_hex
from curation.schema import SOURCE_IMAGES_SCHEMA
from curation.sources import plan_units
from tests.conftest import encode, make_image

CONFIG = IngestConfig(probe=ProbeLimits(min_side=32), default_licence="CC0-1.0")


def hostile_folder(root):
    good = encode(make_image(seed=1), "JPEG")
    (root / "good.jpg").write_bytes(good)
    (root / "good.json").write_text(json.dumps({"licence": "CC-BY-4.0", "title": "good"}))
    (root / "copy.jpg").write_bytes(good)
    (root / "zero.jpg").write_bytes(b"")
    (root / "trunc.jpg").write_bytes(good[: len(good) // 2])
    (root / "text.png").write_bytes(b"not an image at all")
    (root / "small.png").write_bytes(encode(make_image(8, 8), "PNG"))
    (root / "png_named.jpg").write_bytes(encode(make_image(seed=2), "PNG"))
    (root / "cmyk.jpg").write_bytes(encode(make_image(seed=3).convert("CMYK"), "JPEG"))
    return good


def test_every_input_is_kept_or_dropped_with_a_reason(tmp_path):
    good = hostile_folder(tmp_path)
    (unit,) = plan_units(str(tmp_path))
    result = ingest_unit(unit, "drop-1", CONFIG)
    assert result.counts.balanced()
    assert result.counts.total == 8 and result.counts.kept == 4
    assert result.bytes_read == sum(p.stat().st_size for p in tmp_path.iterdir() if p.suffix != ".json")
    assert dict(result.counts.dropped) == {"empty": 1, "truncated": 1, "not_an_image": 1, "too_small": 1}
    drops = [d for d in result.decisions if d.decision == "drop"]
    assert len(drops) == result.counts.n_dropped and all(d.reason for d in drops)
    assert result.rows.schema == SOURCE_IMAGES_SCHEMA
    rows = {r["source_uri"].rsplit("/", 1)[1]: r for r in result.rows.to_pylist()}
    assert rows["good.jpg"]["sample_id"] == sha256_hex(good) == rows["copy.jpg"]["sample_id"]
    assert rows["good.jpg"]["image"] == good  # original bytes, untouched
    assert rows["good.jpg"]["licence"] == "CC-BY-4.0" and rows["copy.jpg"]["licence"] == "CC0-1.0"
    assert json.loads(rows["good.jpg"]["metadata"])["sidecar"]["title"] == "good"
    assert rows["png_named.jpg"]["format"] == "PNG" and "extension_mismatch_is_png" in rows["png_named.jpg"]["notes"]
    keeps = {d.source_uri.rsplit("/", 1)[1]: d for d in result.decisions if d.decision == "keep"}
    assert set(keeps) == {"png_named.jpg", "cmyk.jpg"}
    assert keeps["cmyk.jpg"].details["notes"] == ["cmyk_converted_to_rgb"]


def test_ingest_is_deterministic(tmp_path):
    hostile_folder(tmp_path)
    (unit,) = plan_units(str(tmp_path))
    a, b = ingest_unit(unit, "d", CONFIG), ingest_unit(unit, "d", CONFIG)
    assert a.rows.equals(b.rows) and a.decisions == b.decisions


def test_decision_validation_and_table():
    with pytest.raises(ValueError):
        Decision("x", "u", "nonsense", "drop", "r")
    with pytest.raises(ValueError):
        Decision("x", "u", "ingest", "drop", "")
    table = decisions_table([Decision("x", "u", "dedup", "drop", "near_duplicate", 0.93, 0.9, "y", {"k": 1})],
                            "run-1", "v1")
    assert table.schema == DECISIONS_SCHEMA
    row = table.to_pylist()[0]
    assert row["duplicate_of"] == "y" and json.loads(row["details"]) == {"k": 1} and row["run_id"] == "run-1"
    assert decisions_table([], None, None).schema == DECISIONS_SCHEMA


def test_counts_round_trip():
    counts = StageCounts(total=5, kept=3)
    counts.dropped.update({"empty": 1, "truncated": 1})
    counts.notes.update({"cmyk_converted_to_rgb": 2})
    again = StageCounts.from_dict(counts.to_dict())
    assert again == counts and again.balanced()
    assert not StageCounts(total=2, kept=1).balanced()


def test_an_input_that_breaks_a_library_is_recorded_not_fatal(tmp_path, monkeypatch):
    from curation import ingest

    hostile_folder(tmp_path)
    real_probe = ingest.probe_image

    def probe(data, limits, with_metadata=False):
        if data.startswith(b"\x89PNG"):
            raise MemoryError("simulated decoder blow-up")
        return real_probe(data, limits, with_metadata=with_metadata)

    monkeypatch.setattr(ingest, "probe_image", probe)
    (unit,) = plan_units(str(tmp_path))
    result = ingest_unit(unit, "d", CONFIG)
    assert result.counts.balanced() and result.counts.dropped["ingest_error"] == 2  # small.png, png_named.jpg
    errors = [d for d in result.decisions if d.reason == "ingest_error"]
    assert all("MemoryError" in d.details["error"] for d in errors)
    assert result.counts.kept == 3


def test_too_small_generated_image_names_its_ai_signal(tmp_path):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7")
    (tmp_path / "tiny_ai.png").write_bytes(encode(make_image(8, 8), "PNG", pnginfo=info))
    (unit,) = plan_units(str(tmp_path))
    (decision,) = ingest_unit(unit, "d", CONFIG).decisions
    assert decision.reason == "too_small" and decision.details["ai_signals"] == ["png_chunk:parameters(automatic1111)"]
