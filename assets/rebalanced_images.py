"""`rebalanced_images`: the curated set with over-represented embedding clusters and metadata concepts thinned out.

Global and recomputed whenever the curated set, the opt-out list or the configuration changes (a concept that was
rare can become frequent as drops arrive). Opt-outs are re-applied here, so every downstream stage (OCR, captions,
shards) only ever sees samples that may be trained on.
"""

import hashlib
import json
import posixpath
from dataclasses import asdict

import dagster as dg
import numpy as np
import pyarrow as pa
from pydantic import Field

from assets.deduplicated_images import ASSET as DEDUP
from assets.deduplicated_images import deduplicated_images
from captioning.captioner import extract_caption_metadata
from curation.concepts import ConceptVocabulary, match_concepts, text_key
from curation.decisions import StageCounts, decisions_table
from curation.features import embedding_matrix
from curation.opt_out import opt_out_decision
from curation.plots import cluster_size_plot, concept_frequency_plot, png_markdown, thumbnail_table_markdown
from curation.rebalance import REBALANCE_CODE_VERSION, RebalanceConfig, rebalance
from orchestration.opt_outs import load_opt_outs
from orchestration.resources import StorageResource
from orchestration.sample_parts import read_source_rows
from orchestration.storage import SUCCESS_MARKER, TableStore

ASSET = "rebalanced_images"

SCHEMA = pa.schema([
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("cluster_path", pa.list_(pa.int64()), nullable=False),  # leaf first
    pa.field("concepts", pa.list_(pa.string()), nullable=False),
    pa.field("p_cluster", pa.float64(), nullable=False),
    pa.field("p_concept", pa.float64(), nullable=False),
    pa.field("keep_probability", pa.float64(), nullable=False),
    pa.field("sample_weight", pa.float32(), nullable=False),  # what training uses (1 for kept rows in drop mode)
    pa.field("balanced_weight", pa.float32(), nullable=False),  # p / mean(p): for weighting instead of dropping
    pa.field("kept", pa.bool_(), nullable=False),
])


class RebalancedImagesConfig(dg.Config):
    """Cluster and concept balancing (defaults: see RebalanceConfig)."""

    levels: int = Field(default=RebalanceConfig.levels, description="Levels of the k-means hierarchy.")
    clusters_per_level: list[int] | None = Field(default=None, description="k per level, finest first (None: auto).")
    cluster_cap_factor: float = Field(default=RebalanceConfig.cluster_cap_factor,
                                      description="A top cluster above this many times the median is cut to it.")
    cluster_cap_share: float = Field(default=RebalanceConfig.cluster_cap_share,
                                     description="A top cluster above this share of the corpus is cut to it.")
    cluster_spares_rare_concepts: bool = Field(default=RebalanceConfig.cluster_spares_rare_concepts,
                                               description="A cut cluster keeps its rare concepts (False: Vo et al.).")
    cluster_budget: float | None = Field(default=None, description="Fraction kept by cluster balancing (None: auto).")
    concept_cap: float | None = Field(default=None, description="MetaCLIP t (None: concept_cap_fraction x samples).")
    concept_cap_fraction: float = Field(default=RebalanceConfig.concept_cap_fraction,
                                        description="Default t as a fraction of the samples (at least 20).")
    concept_min_count: int = Field(default=10, description="Corpus n-grams seen this often join the vocabulary.")
    vocabulary_path: str | None = Field(default=None, description="A concept file replacing the default vocabulary.")
    combine: str = Field(default=RebalanceConfig.combine, description="'min' or 'product' of the two probabilities.")
    mode: str = Field(default=RebalanceConfig.mode, description="'drop' (sample) or 'weight' (keep all, weighted).")
    seed: int = Field(default=RebalanceConfig.seed, description="Seed of k-means and of the keep draws.")

    def to_rebalance_config(self) -> RebalanceConfig:
        """The one conversion from Dagster config to the pure config."""
        return RebalanceConfig(levels=self.levels, clusters_per_level=tuple(self.clusters_per_level)
                               if self.clusters_per_level else None, cluster_cap_factor=self.cluster_cap_factor,
                               cluster_cap_share=self.cluster_cap_share, cluster_budget=self.cluster_budget,
                               cluster_spares_rare_concepts=self.cluster_spares_rare_concepts,
                               concept_cap=self.concept_cap, concept_cap_fraction=self.concept_cap_fraction,
                               combine=self.combine, mode=self.mode, seed=self.seed)


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def concept_texts(metadata_json: str, source_uri: str) -> list[str]:
    """A sample's metadata texts: title, alt text, captions, tags (each matched on its own)."""
    meta = extract_caption_metadata(json.loads(metadata_json), source_uri)
    texts = [meta["title"], meta["alt_text"], *meta["captions"], *meta["tags"]]
    return [t for t in texts if isinstance(t, str) and t.strip()]


def _metadata(store: TableStore, curated: pa.Table) -> dict[str, str]:
    """sample_id -> its ingest metadata JSON."""
    source_of = dict(zip(curated.column("sample_id").to_pylist(), curated.column("source").to_pylist(), strict=True))
    return {sid: r["metadata"] for sid, r in read_source_rows(store, source_of, ["metadata"]).items()}


def _plots(store: TableStore, result, table: pa.Table) -> dict:
    before, after = result.cluster_sizes_before, result.cluster_sizes_after
    md = {}
    if before:
        md["cluster_sizes"] = dg.MetadataValue.md(png_markdown(cluster_size_plot(
            before[0], after[0], "leaf cluster sizes (log-log), before and after"), "cluster sizes"))
    if result.concept_counts_before:
        md["concept_frequencies"] = dg.MetadataValue.md(png_markdown(concept_frequency_plot(
            result.concept_counts_before, result.concept_counts_after, title="concept frequency (log-log)"),
            "concept frequencies"))
    top = before[-1] if before else np.zeros(0)
    rows, thumbs = [], []
    top_labels = np.array([path[-1] for path in table.column("cluster_path").to_pylist()]) if table.num_rows else []
    ids = np.array(table.column("sample_id").to_pylist())
    sources = np.array(table.column("source").to_pylist())
    largest = [c for c in np.argsort(-top, kind="stable")[:5] if top[c] > 0]
    members = {int(c): np.flatnonzero(top_labels == c)[:4] for c in largest}
    pictures = read_source_rows(store, {str(ids[m]): str(sources[m]) for ms in members.values() for m in ms},
                                ["image"])  # one read of every thumbnail's row groups
    for cluster in largest:
        images = [pictures[str(ids[m])]["image"] for m in members[int(cluster)] if str(ids[m]) in pictures]
        rows.append({"cluster": int(cluster), "before": int(top[cluster]), "after": round(float(after[-1][cluster]),
                                                                                         1)})
        thumbs.append(images)
    if rows:
        md["largest_clusters"] = dg.MetadataValue.md(thumbnail_table_markdown(rows, thumbs))
    return md


@dg.asset(
    deps=[deduplicated_images],
    code_version=REBALANCE_CODE_VERSION,
    kinds={"faiss", "parquet"},
    group_name="rebalance",
    check_specs=[
        dg.AssetCheckSpec("accounting", asset=ASSET,
                          description="curated = kept + dropped (rebalance or opt-out), each with a reason"),
        dg.AssetCheckSpec("weights", asset=ASSET, description="kept rows weigh > 0; probabilities in (0, 1]"),
    ],
)
def rebalanced_images(context: dg.AssetExecutionContext, config: RebalancedImagesConfig,
                      storage: StorageResource) -> dg.MaterializeResult:
    """Hierarchical k-means balancing over embeddings plus MetaCLIP balancing over metadata concepts."""
    store = storage.store()
    with store.lock(ASSET, owner=context.run.run_id):
        return _rebalance(context, config, store)


def _rebalance(context, config: RebalancedImagesConfig, store: TableStore) -> dg.MaterializeResult:
    run_id = context.run.run_id
    rb_config = config.to_rebalance_config()
    dedup_state = store.read_json(posixpath.join(store.dir(DEDUP), "_STATE.json"))
    if dedup_state is None:
        raise RuntimeError("materialize deduplicated_images (and its upstream assets) before rebalanced_images")
    opt_outs = load_opt_outs(store)
    vocab_file = config.vocabulary_path
    input_id = _hash({"dedup": dedup_state, "opt_outs": opt_outs.fingerprint(), "config": asdict(rb_config),
                      "vocabulary": vocab_file, "min_count": config.concept_min_count,
                      "code": REBALANCE_CODE_VERSION})
    directory = store.dir(ASSET)
    marker = store.read_json(f"{directory}/{SUCCESS_MARKER}")
    if marker and marker.get("input_id") == input_id:
        context.log.info("curated set, opt-outs and configuration unchanged: nothing to rebalance")
        return dg.MaterializeResult(metadata={**marker["metadata"], "recomputed": False},
                                    check_results=verify(store, marker["curated"]))

    curated = store.read_table(store.dir(DEDUP), columns=["sample_id", "source", "source_uri", "embedding"])
    metadata_of = _metadata(store, curated)
    texts = {}
    gate, keep_rows = [], []
    for i, (sid, uri) in enumerate(zip(curated.column("sample_id").to_pylist(),
                                       curated.column("source_uri").to_pylist(), strict=True)):
        texts[sid] = concept_texts(metadata_of.get(sid, "{}"), uri)
        request = opt_outs.match(sid, uri, metadata_of.get(sid))
        if request is None:
            keep_rows.append(i)
        else:
            gate.append(opt_out_decision(sid, uri, request))
    eligible = curated.take(pa.array(keep_rows, pa.int64()))
    ids = eligible.column("sample_id").to_pylist()
    vocabulary = (ConceptVocabulary.from_file(vocab_file) if vocab_file else
                  ConceptVocabulary.from_corpus([texts.get(s, []) for s in ids], min_count=config.concept_min_count))
    concepts = [match_concepts(texts.get(s, []), vocabulary) for s in ids]
    if ids:
        result = rebalance(ids, embedding_matrix(eligible), concepts, rb_config,
                           eligible.column("source_uri").to_pylist(), [text_key(texts.get(s, [])) for s in ids])
        base = result.table()
        p = result.keep_probability
        balanced = (p / p.mean()).astype(np.float32)
        table = pa.table({"sample_id": base.column("sample_id"), "source": eligible.column("source"),
                          "source_uri": eligible.column("source_uri"), **{c: base.column(c) for c in (
                              "cluster_path", "concepts", "p_cluster", "p_concept", "keep_probability",
                              "sample_weight")}, "balanced_weight": pa.array(balanced, pa.float32()),
                          "kept": base.column("kept")}, schema=SCHEMA)
        decisions, counts, summary = result.decisions, result.counts, result.summary()
    else:
        result, table, decisions, counts, summary = None, SCHEMA.empty_table(), [], StageCounts(), {}
    counts.total += len(gate)
    for d in gate:
        counts.dropped[d.reason] += 1
    store.delete_dir(directory)
    store.delete_dir(store.decisions_dir(ASSET))
    store.write_parquet(store.part_path("decisions/" + ASSET, None, 0),
                        decisions_table(gate + decisions, run_id, REBALANCE_CODE_VERSION), {"input_id": input_id})
    store.write_parquet(store.part_path(ASSET, None, 0), table, {"input_id": input_id})
    plots = _plots(store, result, table) if result is not None else {}
    metadata = {**counts.to_dict(), "dagster/row_count": int(sum(table.column("kept").to_pylist())),
                "clusters_per_level": json.dumps(summary.get("clusters_per_level")),
                "concept_cap": summary.get("concept_cap", 0.0), "vocabulary": len(vocabulary),
                "expected_kept": round(float(summary.get("expected_kept", 0.0)), 1), "mode": rb_config.mode,
                "largest_concepts": dg.MetadataValue.json(summary.get("largest_concepts", [])),
                "path": dg.MetadataValue.path(store.uri(directory))}
    plain = {k: v for k, v in metadata.items() if not isinstance(v, dg.MetadataValue)}
    store.write_json(f"{directory}/{SUCCESS_MARKER}", {"input_id": input_id, "run_id": run_id, "curated":
                                                       curated.num_rows, "code_version": REBALANCE_CODE_VERSION,
                                                       "config_hash": _hash(asdict(rb_config)), "metadata": plain})
    return dg.MaterializeResult(metadata={**metadata, **plots, "recomputed": True},
                                check_results=verify(store, curated.num_rows))


def verify(store: TableStore, curated: int) -> list[dg.AssetCheckResult]:
    table = store.read_table(store.dir(ASSET))
    ledger = store.read_table(store.decisions_dir(ASSET), columns=["decision", "reason"])
    drops = [r for d, r in zip(ledger.column("decision").to_pylist(), ledger.column("reason").to_pylist(),
                               strict=True) if d == "drop"]
    kept = sum(table.column("kept").to_pylist()) if table.num_rows else 0
    opted = sum(r == "opted_out" for r in drops)
    weights_ok = True
    if table.num_rows:
        w = np.asarray(table.column("sample_weight").to_pylist())
        k = np.asarray(table.column("kept").to_pylist(), bool)
        p = np.asarray(table.column("keep_probability").to_pylist())
        weights_ok = bool((w[k] > 0).all() and ((p > 0) & (p <= 1 + 1e-9)).all())
    return [
        dg.AssetCheckResult(check_name="accounting", passed=curated == kept + len(drops) and table.num_rows + opted
                            == curated and all(drops), metadata={"curated": curated, "kept": kept,
                                                                 "dropped": len(drops), "opted_out": opted}),
        dg.AssetCheckResult(check_name="weights", passed=weights_ok),
    ]
