"""`curate run` as an operator sees it: quiet output with a log file, a dry run that tells reuse from recomputation
and why, and one failing drop that does not hide the others (issue 13)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from orchestration import cli
from tests.conftest import encode, make_image

pytestmark = pytest.mark.slow


@pytest.fixture
def isolated_home(monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    yield
    os.environ.pop("DAGSTER_HOME", None)


def _drop(root: Path, n: int, seed: int = 0) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        (root / f"img{i:02d}.jpg").write_bytes(encode(make_image(96, 80, seed=seed + i), "JPEG"))
    return root


def _dry(storage: str, *args: str, capsys) -> dict[str, str]:
    assert cli.main(["run", "--dry-run", "--storage", storage, "--select", "source_images", *args]) == 0
    rows = [line.split(None, 3) for line in capsys.readouterr().out.splitlines()[2:-1]]
    return {r[1]: f"{r[2]} {r[3]}" for r in rows}


def test_quiet_run_dry_run_and_a_failed_drop(ray_session, tmp_path, capsys, isolated_home):
    good = _drop(tmp_path / "good", 6)
    storage = str(tmp_path / "storage")
    config = tmp_path / "c.yaml"
    config.write_text("assets:\n  source_images:\n    min_side: 32\n    files_per_unit: 2\n")
    base = ["--storage", storage, "--config", str(config), "--select", "source_images"]

    # a drop on a storage that cannot be reached fails its run; the good drop still runs and both are summarised
    code = cli.main(["run", "--source", str(good), "--source", "nosuchscheme://bucket/drop", *base])
    out = capsys.readouterr().out
    assert code == 1, out
    lines = out.splitlines()
    assert re.search(r"^source_images\s+good-\w+\s+6\s+6\s+0\s+ok", out, re.M), out
    failed = [line for line in lines if line.startswith("FAILED: ")]
    assert len(failed) == 1 and "nosuchscheme" in failed[0], out
    assert lines[-2].startswith("curate run: 1 run(s) failed or skipped"), out
    # quiet: the plan, one line per run, the table, the closing lines; Dagster's event stream is in the log only
    assert len(lines) < 20, out
    assert not any(" - dagster - " in line or "STEP_" in line for line in lines), out
    log = Path(lines[-1].removeprefix("log: "))
    assert log.is_file() and log.parent == Path(storage) / "_logs"
    text = log.read_text()
    assert " - dagster - INFO - " in text and "Protocol not known: nosuchscheme" in text, text[-2000:]

    # dry run: every part reused, nothing written
    before = sorted(p.relative_to(storage) for p in Path(storage).rglob("*") if "_logs" not in p.parts)
    verdicts = _dry(storage, "--source", str(good), "--config", str(config), capsys=capsys)
    (good_key,) = [k for k in verdicts if k.startswith("good-")]
    assert verdicts[good_key].startswith("reuse 3 part(s) reused"), verdicts
    # one changed file: its part only; a new config: every part, and a smaller plan retires the parts past it
    (good / "img03.jpg").write_bytes(encode(make_image(96, 80, seed=99), "JPEG"))
    verdicts = _dry(storage, "--source", str(good), "--config", str(config), capsys=capsys)
    assert verdicts[good_key] == "compute 1 part(s): its files changed; 2 part(s) reused", verdicts
    config.write_text("assets:\n  source_images:\n    min_side: 32\n    files_per_unit: 4\n")
    verdicts = _dry(storage, "--source", str(good), "--config", str(config), capsys=capsys)
    assert verdicts[good_key] == ("compute 2 part(s): config or code version changed; 0 part(s) reused; "
                                  "1 part(s) past the plan retired"), verdicts
    after = sorted(p.relative_to(storage) for p in Path(storage).rglob("*") if "_logs" not in p.parts)
    assert after == before  # nothing written by the dry runs
