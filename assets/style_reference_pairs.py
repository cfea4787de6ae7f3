"""`style_reference_pairs`: training examples for a style-reference model, and each curated sample's style cluster.

Global, recomputed from the curated set (`curation.style.pairs`). Also keeps the persisted faiss index of the
eligible samples' style descriptors up to date (`<root>/style_index/index.faiss`): samples that left the curated set
are removed, new ones added, the rest untouched.
"""


import json
from dataclasses import asdict

import dagster as dg
import numpy as np
import pyarrow as pa
from pydantic import Field

from assets.image_features import image_features
from assets.rebalanced_images import rebalanced_images
from assets.style_embeddings import style_embeddings
from assets.style_inputs import load_style_inputs
from curation.decisions import decisions_table
from curation.style.creators import creator_of
from curation.style.index import StyleIndex
from curation.style.pairs import KINDS, PAIRS_CODE_VERSION, PairsConfig, build_pairs
from orchestration.resources import StorageResource
from orchestration.storage import SUCCESS_MARKER, TableStore

ASSET = "style_reference_pairs"
CLUSTERS = "style_clusters"
STYLE_INDEX = "style_index/index.faiss"

PAIRS_SCHEMA = pa.schema([
    pa.field("pair_id", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("reference_ids", pa.list_(pa.string()), nullable=False),
    pa.field("target_id", pa.string(), nullable=False),
    pa.field("style_similarity", pa.float32(), nullable=False),
    pa.field("reference_style_similarity", pa.list_(pa.float32()), nullable=False),
    pa.field("content_similarity", pa.float32(), nullable=False),
    pa.field("strength", pa.float32(), nullable=False),
    pa.field("reference_strengths", pa.list_(pa.float32()), nullable=False),
    pa.field("style_cluster", pa.int32(), nullable=False),
    pa.field("target_cluster", pa.int32(), nullable=False),
    pa.field("reference_clusters", pa.list_(pa.int32()), nullable=False),
    pa.field("creator", pa.string()),
])
CLUSTER_SCHEMA = pa.schema([
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("style_cluster", pa.int32(), nullable=False),
    pa.field("creator", pa.string()),
])


class StyleReferencePairsConfig(dg.Config):
    """Pair drawing (defaults: see PairsConfig)."""

    clusters: int | None = Field(default=None, description="Style clusters (None: about sqrt(n / 2)).")
    max_references: int = Field(default=PairsConfig.max_references, description="References per pair, at most.")
    max_content_similarity: float = Field(default=PairsConfig.max_content_similarity,
                                          description="References at or above this content cosine are skipped.")
    targets_per_cluster: int = Field(default=PairsConfig.targets_per_cluster,
                                     description="Target slots per style cluster (the balance).")
    seed: int = Field(default=PairsConfig.seed, description="Seed of the clustering and the draws.")

    def to_pairs_config(self) -> PairsConfig:
        """The one conversion from Dagster config to the pure config."""
        return PairsConfig(clusters=self.clusters, max_references=self.max_references,
                           max_content_similarity=self.max_content_similarity,
                           targets_per_cluster=self.targets_per_cluster, seed=self.seed)


def update_style_index(store: TableStore, ids: list[str], style: np.ndarray, descriptor: str) -> dict[str, int]:
    """Bring the persisted faiss index to exactly `ids` (remove the departed, add the new)."""
    path = f"{store.base}/{STYLE_INDEX}"
    blob = store.read_bytes(path)
    index = StyleIndex.from_bytes(blob) if blob else None
    if index is None or index.descriptor != descriptor or index.dim != style.shape[1]:
        index = StyleIndex(style.shape[1], descriptor)
    removed = index.retain(set(ids))
    added = index.add(ids, style)
    if added or removed or blob is None:
        store.write_bytes(path, index.to_bytes())
    return {"index_size": len(index), "index_added": added, "index_removed": removed,
            "index_version": index.version()}


@dg.asset(
    deps=[rebalanced_images, style_embeddings, image_features],
    code_version=PAIRS_CODE_VERSION,
    kinds={"parquet", "faiss"},
    group_name="style",
    check_specs=[
        dg.AssetCheckSpec("accounting", asset=ASSET,
                          description="curated samples = clustered + excluded with a reason"),
        dg.AssetCheckSpec("eligible_only", asset=ASSET,
                          description="every sample in a pair is curated and not opted out"),
        dg.AssetCheckSpec("content_bound", asset=ASSET,
                          description="every target's content similarity with its references is under the bound"),
        dg.AssetCheckSpec("balance", asset=ASSET,
                          description="no style cluster has more target slots than the budget"),
    ],
)
def style_reference_pairs(context: dg.AssetExecutionContext, config: StyleReferencePairsConfig,
                          storage: StorageResource) -> dg.MaterializeResult:
    """References (1..k) and a target that share a style but not a content, with a calibrated strength."""
    store = storage.store()
    pairs_config = config.to_pairs_config()
    inputs = load_style_inputs(store)
    creators = {}
    for sid, meta in inputs.metadata.items():
        found = creator_of(meta)
        if found is not None:
            creators[sid] = found[0]
    result = build_pairs(inputs.ids, inputs.style, inputs.content, creators, pairs_config)
    index_meta = update_style_index(store, inputs.ids, inputs.style, inputs.style_model) if inputs.ids else {}
    run_id = context.run.run_id
    store.write_parquet(store.part_path(ASSET, None, 0), pa.Table.from_pylist(result.pairs, schema=PAIRS_SCHEMA))
    order = sorted(range(len(inputs.ids)), key=lambda i: inputs.ids[i])  # build_pairs clusters in id order
    sorted_ids = [inputs.ids[i] for i in order]
    store.write_parquet(store.part_path(CLUSTERS, None, 0), pa.Table.from_pylist(
        [{"sample_id": s, "style_cluster": int(c), "creator": creators.get(s)}
         for s, c in zip(sorted_ids, result.clusters, strict=True)], schema=CLUSTER_SCHEMA))
    store.write_parquet(store.part_path("decisions/" + ASSET, None, 0),
                        decisions_table(inputs.excluded, run_id, PAIRS_CODE_VERSION))
    eligible = set(inputs.ids)
    members = {s for p in result.pairs for s in [p["target_id"], *p["reference_ids"]]}
    slots: dict[int, set[str]] = {}
    for p in result.pairs:
        slots.setdefault(p["style_cluster"], set()).add(p["target_id"] if p["kind"] != "mix" else
                                                        p["reference_ids"][0])
    over = {c: len(v) for c, v in slots.items() if len(v) > pairs_config.targets_per_cluster}
    worst_content = max((p["content_similarity"] for p in result.pairs), default=0.0)
    reasons: dict[str, int] = {}
    for d in inputs.excluded:
        reasons[d.reason] = reasons.get(d.reason, 0) + 1
    store.write_json(f"{store.dir(ASSET)}/{SUCCESS_MARKER}", {
        "run_id": run_id, "config": asdict(pairs_config), "pairs": len(result.pairs),
        "strength_quantiles": [round(float(q), 6) for q in result.strength_quantiles], **index_meta})
    sizes = [len(v) for v in slots.values()]
    metadata = {"dagster/row_count": len(result.pairs), "curated": len(inputs.curated.ids),
                "eligible": len(inputs.ids), **{f"excluded_{k}": v for k, v in sorted(reasons.items())},
                **{f"pairs_{k}": result.counts[k] for k in KINDS},
                "style_clusters": len(set(result.clusters.tolist())),
                "clusters_with_pairs": len(slots), "target_slots_min": min(sizes, default=0),
                "target_slots_max": max(sizes, default=0), "samples_with_creator": len(creators),
                "max_content_similarity_seen": round(float(worst_content), 4),
                "strength_calibration": dg.MetadataValue.json(
                    {"p10": float(result.strength_quantiles[10]), "p50": float(result.strength_quantiles[50]),
                     "p90": float(result.strength_quantiles[90])}),
                **index_meta, "style_model": inputs.style_model}
    checks = [
        dg.AssetCheckResult(check_name="accounting", passed=len(inputs.ids) + len(inputs.excluded) ==
                            len(inputs.curated.ids), metadata={"curated": len(inputs.curated.ids),
                                                               "eligible": len(inputs.ids),
                                                               "excluded": len(inputs.excluded)}),
        dg.AssetCheckResult(check_name="eligible_only", passed=members <= eligible,
                            metadata={"samples_in_pairs": len(members), "not_eligible": len(members - eligible)}),
        dg.AssetCheckResult(check_name="content_bound",
                            passed=worst_content < pairs_config.max_content_similarity,
                            metadata={"max_seen": float(worst_content),
                                      "bound": pairs_config.max_content_similarity}),
        dg.AssetCheckResult(check_name="balance", passed=not over, severity=dg.AssetCheckSeverity.WARN,
                            metadata={"over_budget": json.dumps(over)}),
    ]
    return dg.MaterializeResult(metadata=metadata, check_results=checks)
