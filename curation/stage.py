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
    """Rows per model call (forward pass)."""
    max_actors: int | None = None
    """Upper bound on the pool size (None: as many as the CPUs allow)."""
