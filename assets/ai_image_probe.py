"""`ai_image_probe`: a linear AI-image detector trained on embeddings of labelled folders, versioned in storage."""

import os
import posixpath
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
from pydantic import Field

from curation.features import FeatureConfig, FeatureExtractor, embedding_matrix
from curation.image_io import ImageRejected, ProbeLimits, probe_image
from curation.probe import PROBE_CODE_VERSION, Probe, ProbeConfig, train_probe
from curation.sources import plan_units, read_unit
from orchestration.package_data import examples_dir
from orchestration.resources import StorageResource
from orchestration.storage import TableStore

ASSET = "ai_image_probe"
CURRENT = "probe.json"
EXAMPLES = examples_dir(strict=False)


def _default_dirs(env: str, fallback: Path) -> list[str]:
    value = os.environ.get(env)
    return [p for p in value.split(os.pathsep) if p] if value else [str(fallback)]


class AiImageProbeConfig(dg.Config):
    """Labelled folders and the probe's fit settings."""

    ai_dirs: list[str] = Field(
        default_factory=lambda: _default_dirs("ATELIER_PROBE_AI_DIRS", EXAMPLES / "probe" / "ai"),
        description="Folders of AI-generated images (default: the demo's 4 examples).")
    real_dirs: list[str] = Field(
        default_factory=lambda: _default_dirs("ATELIER_PROBE_REAL_DIRS", EXAMPLES / "corpus" / "photos"),
        description="Folders of real photos and art.")
    test_fraction: float = Field(default=ProbeConfig.test_fraction, description="Held-out share per class.")
    l2: float = Field(default=ProbeConfig.l2, description="L2 penalty.")
    threshold: float = Field(default=ProbeConfig.threshold, description="Probability that marks an image AI-made.")
    min_side: int = Field(default=64, description="Labelled images smaller than this are skipped.")


def _embed_folders(folders: list[str], extractor: FeatureExtractor, min_side: int) -> tuple[np.ndarray, int]:
    """Embeddings of every decodable image under the folders, and how many inputs were skipped."""
    rows, skipped = [], 0
    for folder in folders:
        for unit in plan_units(folder):
            for item in read_unit(unit):
                if item.data is None or item.reason:
                    skipped += 1
                    continue
                try:
                    probe_image(item.data, ProbeLimits(min_side=min_side))
                except ImageRejected:
                    skipped += 1
                    continue
                rows.append(item.data)
    if not rows:
        return np.empty((0, 0), np.float32), skipped
    table = pa.table({"sample_id": ["-"] * len(rows), "source": ["-"] * len(rows), "source_uri": ["-"] * len(rows),
                      "width": pa.array([0] * len(rows), pa.int32()), "height": pa.array([0] * len(rows), pa.int32()),
                      "byte_size": [len(r) for r in rows], "format": ["-"] * len(rows), "image": rows})
    return embedding_matrix(extractor.process_batch(table)), skipped


def load_probe(store: TableStore) -> Probe | None:
    """The current probe in storage, or None if none was trained."""
    blob = store.read_bytes(posixpath.join(store.dir(ASSET), CURRENT))
    return Probe.from_json(blob.decode()) if blob else None


MIN_LABELS, MIN_AUC = 100, 0.8


@dg.asset(code_version=PROBE_CODE_VERSION, kinds={"numpy"}, group_name="filters", check_specs=[
    dg.AssetCheckSpec("stored_probe_loads", asset="ai_image_probe",
                      description="the probe exclusion_signals will use loads back as the version just trained"),
    dg.AssetCheckSpec("held_out_quality", asset="ai_image_probe",
                      description=f"at least {MIN_LABELS} labelled images per class and held-out AUC >= {MIN_AUC}"),
])
def ai_image_probe(context: dg.AssetExecutionContext, config: AiImageProbeConfig,
                   storage: StorageResource) -> dg.MaterializeResult:
    """Logistic regression on frozen image embeddings of labelled AI / real folders, with held-out metrics."""
    store = storage.store()
    extractor = FeatureExtractor(FeatureConfig())
    extractor.setup()
    ai, skipped_ai = _embed_folders(config.ai_dirs, extractor, config.min_side)
    real, skipped_real = _embed_folders(config.real_dirs, extractor, config.min_side)
    probe = train_probe(ai, real, extractor.embedder.name,
                        ProbeConfig(test_fraction=config.test_fraction, l2=config.l2, threshold=config.threshold))
    directory = store.dir(ASSET)
    store.write_bytes(posixpath.join(directory, f"probe-{probe.version}.json"), probe.to_json().encode())
    store.write_bytes(posixpath.join(directory, CURRENT), probe.to_json().encode())  # the one exclusion uses
    held = probe.metrics["held_out"]
    context.log.info(f"probe {probe.version}: {len(ai)} AI / {len(real)} real images, held-out AUC {held['auc']}")
    stored = load_probe(store)
    auc = held["auc"]
    checks = [
        dg.AssetCheckResult(check_name="stored_probe_loads", passed=stored is not None
                            and stored.version == probe.version, metadata={"version": probe.version}),
        # a warning: a small labelled set still gives a usable (if weak) signal, and the demo has one on purpose
        dg.AssetCheckResult(check_name="held_out_quality", severity=dg.AssetCheckSeverity.WARN,
                            passed=min(len(ai), len(real)) >= MIN_LABELS and auc is not None and auc >= MIN_AUC,
                            metadata={"n_ai": len(ai), "n_real": len(real),
                                      "held_out_auc": auc if auc is not None else float("nan")}),
    ]
    return dg.MaterializeResult(check_results=checks, metadata={
        "version": probe.version,
        "embedding_model": probe.embedding_model,
        "n_ai": len(ai), "n_real": len(real), "skipped": skipped_ai + skipped_real,
        "held_out_auc": held["auc"] if held["auc"] is not None else float("nan"),
        "held_out": dg.MetadataValue.json(held),
        "threshold": probe.threshold,
        "labelled_dirs": dg.MetadataValue.json({"ai": config.ai_dirs, "real": config.real_dirs}),
        "path": dg.MetadataValue.path(store.uri(posixpath.join(directory, CURRENT))),
        "note": "few labelled images give a demonstration, not a detector" if min(len(ai), len(real)) < 100 else "",
    })


__all__ = ["ai_image_probe", "load_probe"]
