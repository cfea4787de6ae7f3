"""The code location loads, in process and through Dagster's own validator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg

from orchestration.definitions import defs

REPO = Path(__file__).resolve().parents[2]


def test_definitions_load_with_every_piece():
    graph = defs.resolve_asset_graph()
    assert dg.AssetKey("source_images") in graph.get_all_asset_keys()
    assert {"storage", "ray_cluster", "models", "source_watch"} <= set(defs.resources)
    assert defs.resolve_sensor_def("source_drop_sensor") is not None
    assert defs.resolve_schedule_def("recuration_schedule").cron_schedule == "0 3 * * 1"
    node = graph.get(dg.AssetKey("source_images"))
    assert node.code_version == "ingest-1"
    assert any(c.name == "accounting" for c in defs.resolve_asset_graph().asset_check_keys
               if c.asset_key == dg.AssetKey("source_images"))


def test_dagster_validates_the_code_location():
    exe = Path(sys.executable).with_name("dagster")
    proc = subprocess.run([str(exe), "definitions", "validate", "-m", "orchestration.definitions"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "passed validation" in proc.stdout + proc.stderr
