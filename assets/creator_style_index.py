"""`creator_style_index`: creators named by the curated samples' metadata, their style prototypes, calibrated
attribution (`curation.style.creators`); what `curate attribute` answers from.

Persisted at `<root>/creator_style_index/index.npz` and incremental: a creator whose set of curated samples is
unchanged keeps its prototypes; the leave-one-out calibration is redone on every build (a capped sample). Creators
named by an `artist` opt-out are never indexed, and their samples are already out of the eligible set.
"""


from dataclasses import asdict

import dagster as dg
import pyarrow as pa
from pydantic import Field

from assets.rebalanced_images import rebalanced_images
from assets.style_embeddings import style_embeddings
from assets.style_inputs import load_style_inputs
from curation.decisions import decisions_table
from curation.style.creators import (
    CreatorIndex,
    CreatorIndexConfig,
    build_creator_index,
    creator_of,
    normalise_creator,
)
from curation.style.descriptor import STYLE_CODE_VERSION
from orchestration.resources import StorageResource
from orchestration.storage import SUCCESS_MARKER, TableStore

ASSET = "creator_style_index"
INDEX_FILE = "index.npz"

SCHEMA = pa.schema([
    pa.field("creator", pa.string(), nullable=False),
    pa.field("name", pa.string(), nullable=False),
    pa.field("images", pa.int32(), nullable=False),
    pa.field("prototypes", pa.int32(), nullable=False),
    pa.field("sample_ids", pa.list_(pa.string()), nullable=False),
    pa.field("index_version", pa.string(), nullable=False),
])


class CreatorStyleIndexConfig(dg.Config):
    """Prototype and calibration settings (defaults: see CreatorIndexConfig)."""

    max_prototypes: int = Field(default=CreatorIndexConfig.max_prototypes, description="Prototypes per creator.")
    images_per_prototype: int = Field(default=CreatorIndexConfig.images_per_prototype,
                                      description="One more prototype per this many images.")
    min_images: int = Field(default=CreatorIndexConfig.min_images, description="Fewer curated images: not indexed.")
    calibration_samples: int = Field(default=CreatorIndexConfig.calibration_samples,
                                     description="Leave-one-out calibration sample size.")
    seed: int = Field(default=CreatorIndexConfig.seed, description="Seed of the k-means and the calibration sample.")

    def to_index_config(self) -> CreatorIndexConfig:
        """The one conversion from Dagster config to the pure config."""
        return CreatorIndexConfig(max_prototypes=self.max_prototypes, images_per_prototype=self.images_per_prototype,
                                  min_images=self.min_images, calibration_samples=self.calibration_samples,
                                  seed=self.seed)


def index_path(store: TableStore) -> str:
    """Where the persisted creator index lives."""
    return f"{store.dir(ASSET)}/{INDEX_FILE}"


def load_creator_index(store: TableStore) -> CreatorIndex | None:
    """The persisted index, or None before the first materialization."""
    blob = store.read_bytes(index_path(store))
    return CreatorIndex.from_bytes(blob) if blob else None


@dg.asset(
    deps=[rebalanced_images, style_embeddings],
    code_version=STYLE_CODE_VERSION,
    kinds={"numpy"},
    group_name="style",
    check_specs=[
        dg.AssetCheckSpec("accounting", asset=ASSET,
                          description="curated = eligible (with or without a creator) + excluded with a reason"),
        dg.AssetCheckSpec("eligible_only", asset=ASSET,
                          description="every indexed sample is curated, not opted out; no opted-out creator"),
        dg.AssetCheckSpec("calibrated", asset=ASSET,
                          description="attribution was calibrated by leave-one-out (enough labelled creators)"),
    ],
)
def creator_style_index(context: dg.AssetExecutionContext, config: CreatorStyleIndexConfig,
                        storage: StorageResource) -> dg.MaterializeResult:
    """Creators (normalised), several style prototypes each, and the calibrated attribution parameters."""
    store = storage.store()
    index_config = config.to_index_config()
    inputs = load_style_inputs(store)
    vectors = dict(zip(inputs.ids, inputs.style, strict=True))
    creators, fields = {}, {}
    for sid in inputs.ids:
        found = creator_of(inputs.metadata.get(sid) or "{}")
        if found is not None:
            creators[sid] = found[:2]
            fields[found[2]] = fields.get(found[2], 0) + 1
    opted = {normalise_creator(e.value) for e in inputs.opt_outs.entries if e.kind == "artist"}
    try:
        previous = load_creator_index(store)
    except ValueError as exc:  # a damaged index is rebuilt from scratch, said so
        context.log.warning(f"creator index unreadable, rebuilding: {exc}")
        previous = None
    index, counts = build_creator_index(creators, vectors, inputs.style_model, index_config, excluded=opted,
                                        previous=previous)
    store.write_bytes(index_path(store), index.to_bytes())
    version = index.version()
    store.write_parquet(store.part_path(ASSET, None, 0), pa.Table.from_pylist(
        [{"creator": e.key, "name": e.name, "images": len(e.sample_ids), "prototypes": len(e.prototypes),
          "sample_ids": e.sample_ids, "index_version": version} for e in index.entries], schema=SCHEMA))
    store.write_parquet(store.part_path("decisions/" + ASSET, None, 0),
                        decisions_table(inputs.excluded, context.run.run_id, STYLE_CODE_VERSION))
    cal = index.calibration
    store.write_json(f"{store.dir(ASSET)}/{SUCCESS_MARKER}", {"run_id": context.run.run_id, "version": version,
                                                             "calibration": asdict(cal), **counts})
    indexed = {s for e in index.entries for s in e.sample_ids}
    eligible = set(inputs.ids)
    metadata = {"dagster/row_count": len(index.entries), "index_version": version,
                "curated": len(inputs.curated.ids), "eligible": len(inputs.ids), "labelled": len(creators),
                "creator_fields": dg.MetadataValue.json(fields),
                **{f"creators_{k}": v for k, v in counts.items()}, "tau": cal.tau,
                "t_unattributed": cal.t_unattributed, "t_creators": cal.t_creators, "calibration": cal.method,
                **{f"calibration_{k}": v for k, v in cal.metrics.items()}, "style_model": inputs.style_model}
    checks = [
        dg.AssetCheckResult(check_name="accounting", passed=len(inputs.ids) + len(inputs.excluded) ==
                            len(inputs.curated.ids), metadata={"curated": len(inputs.curated.ids),
                                                               "eligible": len(inputs.ids),
                                                               "excluded": len(inputs.excluded)}),
        dg.AssetCheckResult(check_name="eligible_only", passed=indexed <= eligible and not
                            ({e.key for e in index.entries} & opted),
                            metadata={"indexed_samples": len(indexed), "not_eligible": len(indexed - eligible)}),
        dg.AssetCheckResult(check_name="calibrated", passed=not cal.method.startswith("default"),
                            severity=dg.AssetCheckSeverity.WARN,
                            metadata={"positives": cal.positives, "negatives": cal.negatives}),
    ]
    return dg.MaterializeResult(metadata=metadata, check_results=checks)

