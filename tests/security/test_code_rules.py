"""Security rules that hold for the whole code base: no unpickling of anything, safe YAML, no eval.

The hostile-input tests of the readers are the other files of tests/security/ (containment, special files, one bad
input per drop, a fuzz pass, what listens); others live beside their code: hostile tar member paths
(tests/curation/test_sources.py), sidecar and metadata size limits (tests/curation/test_metadata.py,
tests/assets/test_source_images.py), API keys from the environment and never logged
(tests/captioning/test_openai_client.py), checkpoints loaded with weights_only (tests/training/test_trainer.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("assets", "captioning", "curation", "orchestration", "training", "bench", "examples")


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _call_name(node: ast.Call) -> str:
    func = node.func
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _keyword(node: ast.Call, name: str):
    return next((k.value for k in node.keywords if k.arg == name), None)


def unsafe_calls(source: str) -> list[str]:
    """Calls that could execute code from data: pickle/marshal/dill loads, torch.load without weights_only=True,
    numpy loads with allow_pickle=True, yaml.load / unsafe_load, eval / exec."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            found += [f"import {n}" for n in names if n and n.split(".")[0] in ("pickle", "marshal", "dill", "shelve")]
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node)
        builtin = isinstance(node.func, ast.Name) and name in ("eval", "exec")
        if builtin or name.endswith(("yaml.load", "yaml.unsafe_load", "pickle.load", "pickle.loads")):
            found.append(name)
        elif name.endswith("torch.load"):
            flag = _keyword(node, "weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append("torch.load without weights_only=True")
        elif name.endswith(("np.load", "numpy.load")):
            flag = _keyword(node, "allow_pickle")
            if isinstance(flag, ast.Constant) and flag.value is True or flag is not None and \
                    not isinstance(flag, ast.Constant):
                found.append("np.load with allow_pickle")
    return found


def test_the_scanner_finds_what_it_looks_for():
    bad = ("import pickle\nx = torch.load(p)\ny = torch.load(p, weights_only=False)\nnp.load(p, allow_pickle=True)\n"
           "yaml.load(s)\neval('1')\n")
    assert len(unsafe_calls(bad)) == 6
    assert unsafe_calls("torch.load(p, map_location='cpu', weights_only=True)\nyaml.safe_load(s)\nnp.load(p)\n") == []


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_code_from_data(path):
    assert unsafe_calls(path.read_text(encoding="utf-8")) == []
