"""The bundled corpus is what its script makes, byte for byte (when the shared development data is present)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "examples" / "corpus"
SHARED = REPO.parent / "shared" / "data" / "corpus_dev"


def _files(root: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = b"symlink->" + str(p.readlink()).encode()
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/corpus_dev beside the repository")
def test_make_corpus_reproduces_the_committed_corpus(tmp_path):
    out = tmp_path / "corpus"
    subprocess.run([sys.executable, str(REPO / "examples" / "make_corpus.py"), "--shared", str(SHARED), "--out",
                    str(out)], check=True, timeout=300)
    committed = {k: v for k, v in _files(CORPUS).items() if k != "ATTRIBUTION.md"}
    made = _files(out)
    assert sorted(made) == sorted(committed)
    differing = [name for name in made if made[name] != committed[name]]
    assert differing == []


def test_corpus_is_small_and_attributed():
    size = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file() and not p.is_symlink())
    assert size < 5 * 1024 * 1024
    attribution = (CORPUS / "ATTRIBUTION.md").read_text()
    assert "CC-BY-4.0" in attribution and "scikit-image" in attribution
