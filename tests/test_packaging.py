"""`pip install .` carries what `curate demo` needs: the wheel holds the sample corpus, the demo config and the
probe's examples as `atelier_examples`, and an unpacked wheel (what pip installs) finds them from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")  # keep the checkout clean: setuptools builds under build/ otherwise
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(REPO)], check=True, cwd=build, timeout=300)
    (path,) = out.glob("atelier-*.whl")
    return path


def test_the_wheel_holds_the_examples(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"atelier_examples/" + p.relative_to(REPO / "examples").as_posix()
                for p in (REPO / "examples").rglob("*") if p.is_file() and "__pycache__" not in p.parts
                and (p.parts[len(REPO.parts) + 1] in ("corpus", "probe") or p.name == "demo.yaml")}
    assert expected and expected <= names, sorted(expected - names)
    assert {"orchestration/cli/__init__.py", "curation/concept_vocabulary.txt"} <= names


def test_an_installed_copy_finds_its_examples_from_elsewhere(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    code = ("from orchestration.package_data import examples_dir; import orchestration; d = examples_dir(); "
            "print(orchestration.__file__); print(d); print(sorted(p.name for p in (d / 'corpus').iterdir()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.splitlines()
    assert out[0].startswith(str(site)) and out[1] == str(site / "atelier_examples")
    assert "photos" in out[2] and "manifest.parquet" in out[2]
    version = subprocess.run([sys.executable, "-m", "orchestration.cli", "--version"], cwd=elsewhere, env=env,
                             capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.strip() == "curate 0.1.0", version
