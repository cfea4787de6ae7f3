"""The `curate` command: inspect, run (through Dagster), lineage, demo and ui."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from orchestration import cli
from tests.conftest import encode, make_image

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def hostile(tmp_path):
    root = tmp_path / "hostile"
    root.mkdir()
    good = encode(make_image(120, 90, seed=1), "JPEG")
    (root / "good.jpg").write_bytes(good)
    (root / "good.txt").write_text("a good picture")
    (root / "empty.jpg").write_bytes(b"")
    (root / "half.jpg").write_bytes(good[: len(good) // 2])
    (root / "text.png").write_bytes(b"hello")
    (root / "wrong_ext.gif").write_bytes(encode(make_image(120, 90, seed=2), "PNG"))
    os.symlink("/etc/hostname", root / "leak.jpg")
    return root


@pytest.fixture
def isolated_home(monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    yield
    os.environ.pop("DAGSTER_HOME", None)


def test_inspect_prints_one_json_line_per_input(hostile, capsys):
    assert cli.main(["inspect", str(hostile)]) == 1  # some inputs could not be decoded
    captured = capsys.readouterr()
    assert captured.err.strip() == "curate inspect: 4 input(s) could not be read or decoded"
    lines = [json.loads(line) for line in captured.out.splitlines()]
    by_name = {Path(r["path"]).name: r for r in lines}
    assert set(by_name) == {"good.jpg", "empty.jpg", "half.jpg", "text.png", "wrong_ext.gif", "leak.jpg"}
    good = by_name["good.jpg"]
    assert (good["format"], good["width"], good["height"], good["error"]) == ("JPEG", 120, 90, None)
    assert len(good["sample_id"]) == 64
    assert by_name["empty.jpg"]["error"] == "empty"
    assert by_name["half.jpg"]["error"] == "truncated"
    assert by_name["text.png"]["error"] == "not_an_image"
    assert by_name["leak.jpg"]["error"] == "symlink_outside_root"
    assert by_name["wrong_ext.gif"]["format"] == "PNG"
    assert len(good["phash"]) == 16 and len(good["dhash"]) == 16
    assert good["embedding_dim"] == 1024 and 0.0 <= good["nsfw_score"] <= 1.0
    assert "phash" not in by_name["empty.jpg"]
    assert cli.main(["inspect", "--no-features", str(hostile / "good.jpg")]) == 0
    assert cli.main(["inspect", "--no-features", str(hostile / "missing.jpg")]) == 1
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["error"] == "missing_file"


def test_run_accounts_for_every_hostile_file_and_lineage_explains(ray_session, hostile, storage, capsys,
                                                                  isolated_home):
    code = cli.main(["run", "--source", str(hostile), "--storage", storage, "--select", "source_images"])
    out = capsys.readouterr().out
    assert code == 0, out
    line = next(row for row in out.splitlines() if row.startswith("source_images"))
    assert line.split()[2:6] == ["6", "2", "4", "ok"], line
    # runs are recorded in a Dagster instance under the storage, which `curate ui` serves
    assert (Path(storage) / ".dagster").is_dir()

    assert cli.main(["lineage", str(hostile / "good.jpg"), "--storage", storage, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (record,) = report["records"]
    assert record["metadata"]["sidecar"] == {"caption": "a good picture"}
    assert report["decisions"] == []

    assert cli.main(["lineage", str(hostile / "half.jpg"), "--storage", storage]) == 0
    text = capsys.readouterr().out
    assert "[ingest] drop truncated" in text and "not in source_images" in text

    sample_id = record["sample_id"]
    assert cli.main(["lineage", sample_id, "--storage", storage]) == 0
    assert str(hostile / "good.jpg") in capsys.readouterr().out
    assert cli.main(["lineage", "0" * 64, "--storage", storage]) == 1


def test_run_rejects_an_unknown_selection(hostile, storage, isolated_home, capsys):
    assert cli.main(["run", "--source", str(hostile), "--storage", storage, "--select", "no_such_asset"]) == 2
    assert "matches no asset" in capsys.readouterr().err
    assert cli.main(["run", "--source", str(hostile / "nowhere"), "--storage", storage]) == 2
    assert "source drop not found" in capsys.readouterr().err


def test_demo_accounts_for_the_whole_sample_corpus(ray_session, tmp_path, capsys, isolated_home):
    storage = str(tmp_path / "demo")
    assert cli.main(["demo", "--storage", storage]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out
    dedup = next(line for line in out.splitlines() if line.startswith("deduplicated_images")).split()
    assert int(dedup[2]) == int(dedup[3]) + int(dedup[4]) and int(dedup[4]) > 0
    # issue 7: shards for every stage and a checkpoint per stage whose metrics show the loss falling
    for stage in ("256", "512", "1024"):
        assert list((Path(storage) / "training_shards" / stage).glob("part-*.parquet"))
        stage_dir = Path(storage) / "dit_checkpoint" / stage
        assert (stage_dir / "checkpoint.pt").is_file() and (stage_dir / "samples.png").is_file()
        lines = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
        evals = [r["eval_loss"] for r in lines]  # the EMA weights on a fixed batch with fixed noise and times
        assert len(evals) == 10 and sum(evals[-2:]) / 2 < lines[0]["eval_loss_initial"], (stage, evals)
    # the grayscale copy of a photo is removed in favour of the photo, and lineage says so both ways
    assert cli.main(["lineage", str(REPO / "examples/corpus/variants/dog_gray.jpg"), "--storage", storage]) == 0
    text = capsys.readouterr().out
    assert "[dedup] drop perceptual_duplicate" in text and "photos/dog__04.jpg" in text
    assert cli.main(["lineage", str(REPO / "examples/corpus/photos/dog__04.jpg"), "--storage", storage]) == 0
    assert "duplicates removed in favour of this sample: 1" in capsys.readouterr().out
    summary = next(line for line in out.splitlines() if line.endswith("in the decisions ledger."))
    import re

    total, refused, excluded, duplicates, curated = (int(n) for n in re.findall(r"\d+", summary))
    assert total >= 80 and 0 < curated < total and refused > 0 and duplicates > 0 and excluded >= 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_and_stops_on_sigterm(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    proc = subprocess.Popen([sys.executable, "-m", "orchestration.cli", "ui", "--storage", str(tmp_path / "s"),
                             "--port", str(port)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        info = None
        while time.time() < deadline and info is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as resp:
                    info = json.loads(resp.read())
            except OSError:
                time.sleep(1)
        assert info and info["dagster_version"] == "1.13.27"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) is not None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
