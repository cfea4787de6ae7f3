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


KUBERAY_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "deploy",
                              "dagster-ray-kuberay.yaml")


def ray_resource(num_cpus: int | None = None) -> Any:
    """The `ray_cluster` resource named by `ATELIER_RAY`.

    `local` (default): `AtelierRay`, an embedded cluster or the one `RAY_ADDRESS` names (the long-lived KubeRay
    cluster of deploy/kuberay). `kuberay`: dagster-ray's `KubeRayInteractiveJob`, one RayJob cluster per run, built
    from `resources.ray_cluster.config` of `ATELIER_KUBERAY_CONFIG` (default deploy/dagster-ray-kuberay.yaml).
    """
    mode = os.environ.get("ATELIER_RAY", "local")
    if mode == "local":
        return AtelierRay(num_cpus=num_cpus)
    if mode != "kuberay":
        raise ValueError(f"ATELIER_RAY={mode!r}: expected 'local' or 'kuberay'")
    import yaml
    from dagster_ray.kuberay import KubeRayInteractiveJob

    path = os.environ.get("ATELIER_KUBERAY_CONFIG", KUBERAY_CONFIG)
    if not os.path.exists(path):
        raise FileNotFoundError(f"ATELIER_RAY=kuberay needs the dagster-ray config {path} (ATELIER_KUBERAY_CONFIG)")
    with open(path, encoding="utf-8") as f:
        document = yaml.safe_load(f) or {}
    try:
        config = document["resources"]["ray_cluster"]["config"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: no resources.ray_cluster.config section") from exc
    return KubeRayInteractiveJob(**config)


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
