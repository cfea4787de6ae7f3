"""Dagster resources: storage, the Ray cluster (through dagster-ray) and model settings."""

import os
from typing import Any

import dagster as dg
from dagster_ray import LocalRay
from pydantic import Field, PrivateAttr

from orchestration.ray_adapter import init_ray
from orchestration.storage import TableStore

DEFAULT_STORAGE = "data"


def default_storage_root() -> str:
    """`ATELIER_STORAGE` if set, else `./data`."""
    return os.environ.get("ATELIER_STORAGE", DEFAULT_STORAGE)


class StorageResource(dg.ConfigurableResource):
    """Where every asset's Parquet parts and the decisions ledger live."""

    root: str = Field(default_factory=default_storage_root,
                      description="A local directory or any URI pyarrow/fsspec opens (s3://bucket/prefix, gs://...).")

    def store(self) -> TableStore:
        """The table store over this root."""
        return TableStore(self.root)


class AtelierRay(LocalRay):
    """Ray for the pipeline: an embedded local cluster by default, or the cluster named by `RAY_ADDRESS`.

    One cluster per run: with the in-process executor the resource is set up once per run, and a process that already
    has Ray (the `curate` CLI running several runs) reuses it instead of starting another.
    """

    num_cpus: int | None = Field(default=None, description="CPUs of the embedded cluster (default: all).")

    _started: bool = PrivateAttr(default=False)

    @property
    def name(self) -> str:
        return "AtelierRay"

    def connect(self, context: Any) -> Any:  # noqa: D102 - dagster-ray hook
        import ray

        options = dict(self.ray_init_options)
        env_vars = self.get_env_vars_to_inject()
        if env_vars:
            options.setdefault("runtime_env", {}).setdefault("env_vars", {}).update(env_vars)
        self._started = init_ray(self.num_cpus, **options)
        self.data_execution_options.apply()
        verb = "started an embedded" if self._started else "joined the"
        context.log.info(f"Ray: {verb} cluster with {ray.cluster_resources().get('CPU', 0):.0f} CPUs")
        return None

    def cleanup(self, context: Any, exception: BaseException | None) -> None:  # noqa: D102 - dagster-ray hook
        import ray

        if self._started and ray.is_initialized():
            ray.shutdown()
        self._started = False


class ModelSettings(dg.ConfigurableResource):
    """Where model weights come from and where models run. Nothing is ever downloaded."""

    weights_dir: str | None = Field(
        default_factory=lambda: os.environ.get("ATELIER_WEIGHTS_DIR"),
        description="Root of local production weights (open_clip, VLM, PaddleOCR dirs). None: the embedded defaults.",
    )
    device: str = Field(default="auto", description="'auto' (CUDA for actors that declare GPUs), 'cpu' or 'cuda'.")

    def resolve(self, path: str | None) -> str | None:
        """A weights path as given, or under `weights_dir` when relative (a cache tag without a slash is kept)."""
        if not path or os.path.isabs(path) or "://" in path or not self.weights_dir or "/" not in path and not \
                os.path.exists(os.path.join(self.weights_dir, path)):
            return path
        return os.path.join(self.weights_dir, path)

    def device_for(self, requested: str, num_gpus: float) -> str:
        """The device a stage runs on: an explicit choice wins, 'auto' follows the GPUs its actors declare."""
        choice = self.device if requested == "auto" else requested
        if choice == "auto":
            return "cuda" if num_gpus > 0 else "cpu"
        return choice
