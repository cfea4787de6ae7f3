"""Shared fixtures: tiny in-memory images, a temporary storage root, one local Ray per test session."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")


def make_image(width: int = 96, height: int = 64, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A deterministic image with structure (gradients plus noise), so re-encodes differ from other seeds."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                     ((x + y) * 7 + seed * 31) % 256], axis=-1)
    noise = rng.integers(0, 40, size=(height, width, 3))
    img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")
    return img.convert(mode) if mode != "RGB" else img


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    """Bytes of `img` saved as `fmt`."""
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def jpeg_bytes() -> bytes:
    return encode(make_image(), "JPEG", quality=90)


@pytest.fixture
def storage(tmp_path) -> str:
    root = tmp_path / "storage"
    root.mkdir()
    return str(root)


@pytest.fixture(scope="session")
def ray_session():
    """One embedded Ray for the whole session (starting Ray costs seconds and ~0.7 GiB)."""
    import ray

    from orchestration.ray_adapter import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


HEAD_CONCEPT = "stock photo"
RARE_CONCEPTS = ["lighthouse at dusk", "origami crane", "glass harmonica", "salt flat", "tide pool", "stained glass",
                 "hot air balloon", "bonsai tree", "paper lantern", "sand dune", "ice cave", "street mural"]


@pytest.fixture(scope="session")
def curated_storage(tmp_path_factory, ray_session):
    """One `curate run --select '*rebalanced_images'` over two drops, shared by the rebalancing and UI tests.

    The photos of examples/corpus with a `metadata.jsonl` that gives two in three the same title ("stock photo", the
    planted head concept) and the rest a rare one each; then the hostile drop (every input refused for a reason).
    Returns `(summaries, storage, {file name: title})`; the Dagster instance is `<storage>/.dagster`.
    """
    import json
    import shutil
    from pathlib import Path

    import yaml

    from orchestration.cli import load_config, run_pipeline

    corpus = Path(__file__).resolve().parents[1] / "examples" / "corpus"
    root = tmp_path_factory.mktemp("curated")
    drop = root / "photos"
    drop.mkdir()
    rows = []
    for i, photo in enumerate(sorted(p for p in (corpus / "photos").iterdir() if p.suffix == ".jpg")):
        shutil.copy(photo, drop / photo.name)
        rare = i % 3 == 0 and i // 3 < len(RARE_CONCEPTS)
        rows.append({"file_name": photo.name, "title": RARE_CONCEPTS[i // 3] if rare else HEAD_CONCEPT})
    (drop / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = root / "config.yaml"
    # a 36-image drop is far below the default t's floor (20): name the cap, as a user with a small drop would. The
    # cluster rule is the default: k-means puts most of these mixed photos in one top cluster, which is cut, and the
    # rare titles inside it are spared by their (cluster, concept) entries (curation.rebalance_rules)
    config.write_text(yaml.safe_dump({"assets": {"source_images": {"min_side": 32},
                                                 "rebalanced_images": {"concept_cap": 4}}}))
    storage = str(root / "storage")
    saved_home = os.environ.pop("DAGSTER_HOME", None)
    try:  # what `curate run --source ... --config FILE --select '*rebalanced_images'` does, keeping the summaries
        summaries = run_pipeline([str(drop), str(corpus / "hostile")], storage, load_config(str(config)),
                                 "*rebalanced_images")
    finally:
        os.environ.pop("DAGSTER_HOME", None)
        if saved_home is not None:
            os.environ["DAGSTER_HOME"] = saved_home
    return summaries, storage, {r["file_name"]: r["title"] for r in rows}
