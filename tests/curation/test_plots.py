"""Plots are valid, small PNGs; markdown snippets inline them as data URIs."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys

import numpy as np
from PIL import Image

from curation.plots import cluster_size_plot, concept_frequency_plot, png_markdown, thumbnail_table_markdown
from tests.conftest import encode, make_image


def check_png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 60_000
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_cluster_and_concept_plots():
    rng = np.random.default_rng(0)
    before = np.concatenate([[5000], rng.integers(1, 200, 300)])
    after = np.minimum(before, 300)
    img = check_png(cluster_size_plot(before, after))
    assert img.width > 200 and img.height > 150
    concepts = {f"concept {i}": float(v) for i, v in enumerate(before)}
    check_png(concept_frequency_plot(concepts, {k: min(v, 300.0) for k, v in concepts.items()}))
    check_png(cluster_size_plot([], []))  # empty input still draws
    check_png(concept_frequency_plot({}, {}))


def test_markdown_data_uris_and_thumbnail_table():
    png = cluster_size_plot([3, 2, 1], [1, 1, 1])
    md = png_markdown(png, "sizes [before]")
    m = re.fullmatch(r"!\[(.*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", md)
    assert m and m.group(1) == "sizes (before)" and base64.b64decode(m.group(2)) == png
    rows = [{"cluster": 3, "size": 1200, "top concepts": ["product shot", "a|b"]}, {"cluster": 7, "size": 80,
                                                                                    "top concepts": []}]
    thumbs = [[encode(make_image(300, 200, seed=1), "JPEG"), make_image(50, 90, seed=2)], []]
    table = thumbnail_table_markdown(rows, thumbs)
    lines = table.splitlines()
    assert lines[0] == "| cluster | size | top concepts | examples |" and len(lines) == 4
    assert "a\\|b" in lines[2]
    uris = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", lines[2])
    assert len(uris) == 2
    for uri in uris:
        img = check_png(base64.b64decode(uri))
        assert max(img.size) <= 64
    assert Image.open(io.BytesIO(base64.b64decode(uris[0]))).size == (64, 43)  # aspect kept


def test_import_configures_no_backend():
    code = "import sys, curation.plots; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
