"""What the global style assets read: the curated, not opted-out samples with their style and content vectors.

`rebalanced_images` re-applies the opt-out list on every run; the list is checked again here so a request recorded
since the last rebalancing already keeps its samples out of the pairs and the creator index. Each curated sample is
either eligible or excluded with a reason (`opted_out`, `no_style_embedding`, `no_content_embedding`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from assets.style_embeddings import ASSET as STYLE
from curation.decisions import Decision
from curation.features import embedding_matrix
from curation.opt_out import OptOutList, opt_out_decision
from curation.style.extract import style_matrix
from orchestration.opt_outs import load_opt_outs
from orchestration.reads import SampleLocator, read_located
from orchestration.sample_parts import Curated, curated_samples, read_source_rows
from orchestration.storage import TableStore

FEATURES = "image_features"


@dataclass
class StyleInputs:
    """Eligible samples (sorted) and their vectors; the excluded curated samples as decisions."""

    curated: Curated
    ids: list[str]
    style: np.ndarray
    content: np.ndarray
    metadata: dict[str, str]
    style_model: str
    excluded: list[Decision]
    opt_outs: OptOutList


def _vectors(store: TableStore, asset: str, curated: Curated, wanted: list[str], column: str,
             model_column: str) -> tuple[dict[str, np.ndarray], set[str]]:
    locator = SampleLocator.build(store, [store.dir(asset, p) for p in sorted(set(curated.source.values()))],
                                  set(wanted))
    table = read_located(store, locator.group(wanted), ["sample_id", column, model_column])
    if table.num_rows == 0:
        return {}, set()
    matrix = style_matrix(table, column) if column == "style" else embedding_matrix(table)
    ids = table.column("sample_id").to_pylist()
    return dict(zip(ids, matrix, strict=True)), set(table.column(model_column).to_pylist())


def load_style_inputs(store: TableStore) -> StyleInputs:
    """The curated samples, split into eligible (with vectors) and excluded (with a decision each)."""
    curated = curated_samples(store)
    opt_outs = load_opt_outs(store)
    meta = read_source_rows(store, curated.source, ["source_uri", "metadata"])
    excluded: list[Decision] = []
    allowed = []
    for sid in curated.ids:
        row = meta.get(sid)
        request = opt_outs.match(sid, curated.uri[sid], row["metadata"] if row else None)
        if request is not None:
            excluded.append(opt_out_decision(sid, curated.uri[sid], request))
        else:
            allowed.append(sid)
    style, style_models = _vectors(store, STYLE, curated, allowed, "style", "style_model")
    content, _ = _vectors(store, FEATURES, curated, allowed, "embedding", "embedding_model")
    if len(style_models) > 1:
        raise RuntimeError(f"style_embeddings holds several descriptors {sorted(style_models)}: re-materialize "
                           f"style_embeddings for every drop with one configuration")
    ids = []
    for sid in allowed:
        if sid not in style:
            excluded.append(Decision(sid, curated.uri[sid], "style", "drop", "no_style_embedding"))
        elif sid not in content:
            excluded.append(Decision(sid, curated.uri[sid], "style", "drop", "no_content_embedding"))
        else:
            ids.append(sid)
    dim = next(iter(style.values())).shape[0] if style else 0
    return StyleInputs(
        curated, ids,
        np.stack([style[s] for s in ids]) if ids else np.empty((0, dim), np.float32),
        np.stack([content[s] for s in ids]) if ids else np.empty((0, 0), np.float32),
        {s: meta[s]["metadata"] for s in ids if s in meta}, next(iter(style_models), ""), excluded, opt_outs)
