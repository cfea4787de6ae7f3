"""The code location loads, in process and through Dagster's own validator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg

from curation.ingest import INGEST_CODE_VERSION
from orchestration.definitions import defs

REPO = Path(__file__).resolve().parents[2]


def test_definitions_load_with_every_piece():
    graph = defs.resolve_asset_graph()
    assert dg.AssetKey("source_images") in graph.get_all_asset_keys()
    assert {"storage", "ray_cluster", "models", "source_watch"} <= set(defs.resources)
    assert defs.resolve_sensor_def("source_drop_sensor") is not None
    assert defs.resolve_schedule_def("recuration_schedule").cron_schedule == "0 3 * * 1"
    node = graph.get(dg.AssetKey("source_images"))
    assert node.code_version == INGEST_CODE_VERSION
    assert any(c.name == "accounting" for c in defs.resolve_asset_graph().asset_check_keys
               if c.asset_key == dg.AssetKey("source_images"))


def test_dagster_validates_the_code_location():
    exe = Path(sys.executable).with_name("dagster")
    proc = subprocess.run([str(exe), "definitions", "validate", "-m", "orchestration.definitions"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "passed validation" in proc.stdout + proc.stderr


def test_model_settings_resolve_local_weights_and_devices(tmp_path):
    from orchestration.resources import ModelSettings

    (tmp_path / "clip").mkdir()
    models = ModelSettings(weights_dir=str(tmp_path), device="auto")
    assert models.resolve("clip/vit-l-14.pt") == str(tmp_path / "clip/vit-l-14.pt")
    assert models.resolve("/abs/w.pt") == "/abs/w.pt" and models.resolve(None) is None
    assert models.resolve("laion2b_s34b_b79k") == "laion2b_s34b_b79k"  # a cache tag stays a tag
    assert models.device_for("auto", 1.0) == "cuda" and models.device_for("auto", 0.0) == "cpu"
    assert models.device_for("cpu", 1.0) == "cpu"
    assert ModelSettings(device="cpu").device_for("auto", 1.0) == "cpu"


def test_every_asset_has_a_code_version_and_checks():
    """A code change must mark downstream assets stale in the UI, and every asset verifies what it wrote."""
    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        assert graph.get(key).code_version, f"{key.to_user_string()} has no code_version"
        assert any(c.asset_key == key for c in graph.asset_check_keys), f"{key.to_user_string()} has no check"
