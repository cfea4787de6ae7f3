"""Small PNG plots and markdown snippets for the rebalancing report (dataset card, Dagster metadata).

Figures are drawn on matplotlib's Agg canvas created inside each function (`Figure` + `FigureCanvasAgg`): nothing
touches pyplot or the global backend, so importing this module configures nothing. PNGs are small (~6x3.5 in at
80 dpi, typically 15-40 KB) so they can be inlined as data URIs in markdown.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

THUMB_SIDE = 64


def _figure(width: float = 6.0, height: float = 3.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=80)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def _rank_curve(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.sort(np.asarray(values, dtype=np.float64))[::-1]
    v = v[v > 0]
    return np.arange(1, len(v) + 1), v


def cluster_size_plot(before: Sequence[float] | np.ndarray, after: Sequence[float] | np.ndarray,
                      title: str = "cluster sizes") -> bytes:
    """Rank-size plot (log-log) of cluster sizes before and after rebalancing, as PNG bytes.

    Args:
        before: samples per cluster before.
        after: kept samples (or weight sums) per cluster after; each curve is sorted on its own.
        title: the axes title.

    Returns:
        PNG bytes.
    """
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for values, label, style in ((before, "before", "-"), (after, "after", "--")):
        rank, size = _rank_curve(values)
        if len(rank):
            ax.plot(rank, size, style, label=f"{label} (n={size.sum():,.0f})", linewidth=1.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("cluster rank")
    ax.set_ylabel("samples in cluster")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    return _png(fig)


def concept_frequency_plot(before: Mapping[str, float], after: Mapping[str, float], label_top: int = 5,
                           title: str = "concept frequencies") -> bytes:
    """Concept frequency by rank (log-log) before and after, as PNG bytes.

    The x axis is the concept's rank BEFORE rebalancing for both curves, so the flattened head is visible; the
    `label_top` most frequent concepts are annotated.

    Args:
        before: samples per concept before.
        after: kept samples (or weight sums) per concept after.
        label_top: how many head concepts get a text label.
        title: the axes title.

    Returns:
        PNG bytes.
    """
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    names = sorted((c for c, v in before.items() if v > 0), key=lambda c: (-before[c], c))
    if names:
        rank = np.arange(1, len(names) + 1)
        b = np.array([before[c] for c in names], dtype=np.float64)
        a = np.array([after.get(c, 0.0) for c in names], dtype=np.float64)
        ax.plot(rank, b, "-", label="before", linewidth=1.5)
        ax.plot(rank[a > 0], a[a > 0], ".", markersize=3, label="after", alpha=0.7)
        for i, name in enumerate(names[:label_top]):
            ax.annotate(name[:24], (rank[i], b[i]), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("concept rank (before)")
    ax.set_ylabel("samples with concept")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    return _png(fig)


def loss_curve_plot(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                    title: str = "training loss") -> bytes:
    """Loss against step (log y) for one or more named series `{name: (steps, losses)}`, as PNG bytes."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for name, (steps, losses) in curves.items():
        if len(steps):
            ax.plot(steps, losses, marker=".", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    return _png(fig)


def png_markdown(png_bytes: bytes, alt: str = "") -> str:
    """Markdown image with the PNG inlined as a data URI: `![alt](data:image/png;base64,...)`."""
    alt = alt.replace("[", "(").replace("]", ")")
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png_bytes).decode('ascii')})"


def thumbnail_png(image: Any, side: int = THUMB_SIDE) -> bytes:
    """A PNG thumbnail no larger than `side` x `side` (aspect kept) of a PIL image or encoded image bytes."""
    from PIL import Image

    from curation.image_io import to_rgb

    img = Image.open(io.BytesIO(image)) if isinstance(image, bytes | bytearray) else image
    img = to_rgb(img)
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        value = f"{value:.3g}"
    elif isinstance(value, list | tuple):
        value = ", ".join(str(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def thumbnail_table_markdown(rows: Sequence[Mapping[str, Any]], thumbs: Sequence[Sequence[Any]],
                             side: int = THUMB_SIDE) -> str:
    """A markdown table (e.g. of the largest clusters) with inline thumbnails in a last `examples` column.

    Args:
        rows: one mapping per table row; the columns are the first row's keys, in order.
        thumbs: per row, its example images (PIL images or encoded bytes); each is shrunk to <= `side` px.
        side: largest thumbnail side in pixels.

    Returns:
        The markdown table (header, separator, one line per row).
    """
    if len(rows) != len(thumbs):
        raise ValueError("one list of thumbnails per row")
    if not rows:
        return ""
    columns = list(rows[0].keys())
    lines = ["| " + " | ".join(_cell(c) for c in [*columns, "examples"]) + " |",
             "| " + " | ".join(["---"] * (len(columns) + 1)) + " |"]
    for row, images in zip(rows, thumbs, strict=True):
        pictures = " ".join(png_markdown(thumbnail_png(img, side)) for img in images)
        lines.append("| " + " | ".join([*(_cell(row.get(c, "")) for c in columns), pictures]) + " |")
    return "\n".join(lines)
