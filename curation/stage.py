"""What a processing stage declares about itself, independent of any executor."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageResources:
    """What one worker (Ray actor) of a stage needs."""

    num_cpus: float = 1.0
    """CPUs reserved per actor (fractions allowed)."""
    num_gpus: float = 0.0
    """GPUs reserved per actor; declared, never probed on the driver."""
    batch_size: int = 64
    """Rows per `process_batch` call."""
    max_actors: int | None = None
    """Upper bound on the pool size (None: as many as the CPUs allow)."""


class ModelStage:
    """A stage that loads one model per worker: `load(config)` runs once in `setup()`, then `self.model` serves every
    unit the worker is given. `load` must be a picklable top-level function (it travels to each Ray actor)."""

    def __init__(self, name: str, load, config, resources: StageResources) -> None:
        self.name = name
        self.load = load
        self.config = config
        self.resources = resources
        self.model = None

    def setup(self) -> None:
        self.model = self.load(self.config)
        if hasattr(self.model, "setup"):
            self.model.setup()

    def process_batch(self, table):  # units carry their own reading and writing; see run_units_on_actors
        raise NotImplementedError(f"{self.name} runs whole units, not batches")
