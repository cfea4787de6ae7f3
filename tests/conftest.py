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
