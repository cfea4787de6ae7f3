"""`--config` files: read safely, then checked against the assets' own config schemas before anything runs.

A run configuration is `assets: {asset: {field: value}}` and `ray: {num_cpus: N}`. Every mistake in it is a
`ConfigError` (exit code 2, one line): a misspelled asset or field names the closest valid one, a wrong type is
Dagster's own message (what a launch would reject), and a value out of its range is refused here rather than
crashing deep inside a stage (`files_per_unit: 0` once failed as `range() arg 3 must not be zero` inside a Ray task).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_CONFIG_BYTES = 1 << 20
"""A run configuration is a few kilobytes; anything near this is not one."""
MAX_CONFIG_NODES = 100_000
"""Most YAML nodes after expanding aliases: a billion-laughs document is refused before it is built."""
SECTIONS = ("assets", "ray")


class UsageError(ValueError):
    """A command that cannot start as given (exit code 2, one line): a missing drop, a selection matching nothing."""


class ConfigError(UsageError):
    """A configuration that cannot run, with a one-line message naming what is wrong."""


def closest(name: str, valid: list[str] | tuple[str, ...]) -> str:
    """`; did you mean 'x'?` for the nearest valid name, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


# --------------------------------------------------------------------------------------------------------- reading
def read_yaml(path: str) -> Any:
    """The document of a YAML (or JSON) file, built only from plain YAML types and with bounded alias expansion.

    Raises:
        ConfigError: unreadable, too large, not YAML, a non-standard tag (`!!python/...`), or aliases that expand
            past `MAX_CONFIG_NODES` nodes.
    """
    import yaml

    try:
        if os.path.isdir(path):
            raise ConfigError(f"{path}: is a directory, not a configuration file")
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 10} KiB; not a run configuration")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _bound_expansion(node, path)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        where = f" (line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1})" \
            if exc.problem_mark else ""
        raise ConfigError(f"{path}: {exc.problem or exc.context or 'invalid YAML'}{where}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None
    finally:
        loader.dispose()


def _bound_expansion(root: Any, path: str) -> None:
    """Count the nodes the document would have with every alias expanded (memoised, so it is cheap itself)."""
    import yaml

    sizes: dict[int, int] = {}
    # iterative post-order: a deeply nested document must not overflow the stack here either
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[id(node)] = 1
            continue
        children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else node.value
        if children_done:
            total = 1 + sum(sizes.get(id(c), 0) for c in children)
            if total > MAX_CONFIG_NODES:
                raise ConfigError(f"{path}: aliases expand to more than {MAX_CONFIG_NODES:,} values; refused")
            sizes[id(node)] = total
            continue
        stack.append((node, True))
        stack += [(c, False) for c in children if id(c) not in sizes]


# -------------------------------------------------------------------------------------------------------- ranges
@dataclass(frozen=True)
class Range:
    """Bounds of a number (or of each number in a list or dict of numbers)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def problem(self, value: float) -> str | None:
        if isinstance(value, float) and not math.isfinite(value):
            return f"{value} is not a finite number"
        if self.lo is not None and (value < self.lo or self.lo_open and value == self.lo) or \
                self.hi is not None and (value > self.hi or self.hi_open and value == self.hi):
            return f"must be {self}, got {value}"
        return None

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


@dataclass(frozen=True)
class Choice:
    """A string that must be one of a few names."""

    names: tuple[str, ...] | Callable[[], tuple[str, ...]]

    def problem(self, value: str) -> str | None:
        names = self.names() if callable(self.names) else self.names
        if value in names:
            return None
        return f"{value!r} is not one of {', '.join(names)}{closest(value, names)}"


COUNT = Range(1)  # sizes, batch sizes, unit sizes, steps: zero or less never works
NONNEG = Range(0)
SHARE = Range(0, 1)
POSITIVE = Range(0, lo_open=True)
CPUS = Range(0, lo_open=True)
DEVICE = Choice(("auto", "cpu", "cuda"))


def _model_sizes() -> tuple[str, ...]:
    from training.config import SIZES

    return tuple(SIZES)


RULES: dict[str, dict[str, Range | Choice]] = {
    "source_images": {"max_pixels": COUNT, "min_side": COUNT, "max_frames": COUNT, "max_file_bytes": COUNT,
                      "max_sidecar_bytes": NONNEG, "files_per_unit": COUNT, "rows_per_unit": COUNT,
                      "max_key_bytes": COUNT},
    "ai_image_probe": {"test_fraction": Range(0, 1, True, True), "l2": NONNEG, "threshold": SHARE,
                       "min_side": COUNT},
    "image_features": {"embedding_backend": Choice(("open_nsfw", "open_clip")), "device": DEVICE,
                       "batch_size": COUNT, "num_cpus_per_actor": CPUS, "num_gpus_per_actor": NONNEG},
    "exclusion_signals": {"nsfw_threshold": SHARE, "max_small_text": SHARE, "stages": COUNT, "max_aspect": Range(1),
                          "max_border_fraction": SHARE, "max_blockiness": POSITIVE, "min_blocking_excess": NONNEG,
                          "max_detail_loss": SHARE, "num_cpus_per_actor": CPUS},
    # -1 disables a pHash test; a cosine above 1 disables the semantic one
    "deduplicated_images": {"phash_threshold": Range(-1, 64), "rotated_threshold": Range(-1, 64),
                            "semantic_threshold": POSITIVE, "exact_search_max": COUNT, "ivf_nprobe": COUNT,
                            "max_verifications": COUNT},
    "rebalanced_images": {"levels": COUNT, "clusters_per_level": Range(2), "cluster_cap_factor": POSITIVE,
                          "cluster_budget": Range(0, 1, lo_open=True), "concept_cap": POSITIVE,
                          "cluster_cap_share": Range(0, 1, lo_open=True),
                          "concept_cap_fraction": Range(0, 1, lo_open=True),
                          "concept_min_count": COUNT, "combine": Choice(("min", "product")),
                          "mode": Choice(("drop", "weight")), "seed": NONNEG},
    "ocr_annotations": {"backend": Choice(("rapidocr", "paddleocr")), "min_score": SHARE, "min_short_score": SHARE,
                        "device": DEVICE, "rows_per_part": COUNT, "num_cpus_per_actor": CPUS,
                        "num_gpus_per_actor": NONNEG},
    "captions": {"backend": Choice(("grounded", "transformers", "openai")), "max_new_tokens": COUNT,
                 "batch_size": COUNT, "concurrency": COUNT, "timeout_s": POSITIVE, "max_retries": NONNEG,
                 "min_ocr_score": SHARE, "device": DEVICE, "rows_per_part": COUNT, "num_cpus_per_actor": CPUS,
                 "num_gpus_per_actor": NONNEG},
    "prompt_variants": {"backend": Choice(("deterministic", "transformers", "openai")), "short_max_words": COUNT,
                        "medium_target_words": COUNT, "length_distribution": SHARE, "rows_per_part": COUNT,
                        "num_gpus_per_actor": NONNEG, "max_new_tokens": COUNT, "batch_size": COUNT},
    "training_shards": {"stage_sizes": COUNT, "multiple": COUNT, "max_upscale": Range(1),
                        "image_format": Choice(("JPEG", "PNG")), "quality": Range(1, 100),
                        "target_shard_mb": POSITIVE},
    "midtraining_candidates": {"per_cluster": NONNEG, "coverage": Choice(("spread", "nearest")),
                               "cluster_level": NONNEG, "per_query": NONNEG, "min_text_similarity": Range(-1, 1),
                               "min_image_similarity": Range(-1, 1), "max_candidates": NONNEG},
    "dit_checkpoint": {"model_size": Choice(_model_sizes), "steps": COUNT, "batch_size": COUNT, "lr": POSITIVE,
                       "log_every": COUNT, "checkpoint_every": COUNT, "num_workers": COUNT},
    "style_embeddings": {"backend": Choice(("open_nsfw_gram", "clip", "csd")), "device": DEVICE, "dim": COUNT,
                         "gram_channels": COUNT, "seed": NONNEG, "batch_size": COUNT, "num_cpus_per_actor": CPUS,
                         "num_gpus_per_actor": NONNEG},
    "style_reference_pairs": {"clusters": COUNT, "max_references": COUNT, "max_content_similarity": Range(-1, 1),
                              "targets_per_cluster": COUNT, "seed": NONNEG},
    "creator_style_index": {"max_prototypes": COUNT, "images_per_prototype": COUNT, "min_images": COUNT,
                            "calibration_samples": COUNT, "seed": NONNEG},
}
"""Range or choice of every numeric (and enumerated) asset config field; a test keeps it complete."""


def _rule_problems(asset: str, fields: Mapping[str, Any]) -> list[str]:
    problems = []
    for name, rule in RULES.get(asset, {}).items():
        value = fields.get(name)
        if value is None:
            continue
        values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
        for item in values:
            ok_type = isinstance(item, str) if isinstance(rule, Choice) else \
                isinstance(item, int | float) and not isinstance(item, bool)
            problem = rule.problem(item) if ok_type else None
            if problem:
                problems.append(f"assets.{asset}.{name}: {problem}")
                break
    return problems


# -------------------------------------------------------------------------------------------------------- checking
def configurable_assets() -> dict[str, Any]:
    """Asset (op) name -> its Dagster op definition, for every asset that takes a config."""
    from assets import ALL_ASSETS

    ops = {}
    for asset in ALL_ASSETS:
        op = asset.op
        if op.config_schema is not None and op.config_schema.as_field() is not None:
            ops[op.name] = op
    return ops


def config_class(op) -> type | None:
    """The `dg.Config` class an asset's function takes (whatever its parameter is called)."""
    import typing

    import dagster as dg

    hints = typing.get_type_hints(op.compute_fn.decorated_fn)
    return next((t for t in hints.values() if isinstance(t, type) and issubclass(t, dg.Config)), None)


def _fields_of(op) -> list[str]:
    from dagster._config import Shape

    config_type = op.config_schema.config_type
    return sorted(config_type.fields) if isinstance(config_type, Shape) else []


def check_config(data: Any, path: str = "--config") -> dict[str, Any]:
    """The run configuration if it is valid, else ConfigError naming the first problem.

    Checks, in order: the top-level sections, the asset names, each asset's field names, the field types (through
    the asset's own Dagster config schema: what a launch would reject), then ranges and choices (`RULES`).
    """
    from dagster._config import validate_config

    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with 'assets' and 'ray', found {type(data).__name__}")
    for key in data:
        if key not in SECTIONS:
            raise ConfigError(f"{path}: unknown section {key!r}{closest(str(key), SECTIONS)} "
                              f"(expected {' and '.join(SECTIONS)})")
    assets = data.get("assets") or {}
    if not isinstance(assets, dict):
        raise ConfigError(f"{path}: 'assets' must map asset names to their fields")
    ops = configurable_assets()
    for asset, fields in assets.items():
        if asset not in ops:
            raise ConfigError(f"{path}: unknown asset {asset!r} in 'assets'{closest(str(asset), sorted(ops))}")
        fields = fields or {}
        if not isinstance(fields, dict):
            raise ConfigError(f"{path}: assets.{asset} must map field names to values")
        valid = _fields_of(ops[asset])
        for name in fields:
            if name not in valid:
                raise ConfigError(f"{path}: unknown field {name!r} of assets.{asset}{closest(str(name), valid)}")
        result = validate_config(ops[asset].config_schema.config_type, fields)
        if not result.success:
            message = " ".join(result.errors[0].message.split())
            # "Expected: ..." repeats the whole schema; the field and the offending value are what helps
            message = message.split(" Expected:")[0].replace("path root:", f"assets.{asset}.")
            message = re.sub(r' of type "<class \'(\w+)\'>"', r" (\1)", message)
            raise ConfigError(f"{path}: {message}")
        problems = _rule_problems(asset, fields)
        if problems:
            raise ConfigError(f"{path}: {problems[0]}")
    ray = data.get("ray") or {}
    if not isinstance(ray, dict):
        raise ConfigError(f"{path}: 'ray' must be a mapping such as {{num_cpus: 2}}")
    for key, value in ray.items():
        if key != "num_cpus":
            raise ConfigError(f"{path}: unknown field {key!r} of ray{closest(str(key), ['num_cpus'])}")
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"{path}: ray.num_cpus: {value!r} is not a whole number >= 1")
    return data


def load_config(path: str | None) -> dict[str, Any]:
    """The checked run configuration of a YAML (or JSON) file (empty without one).

    Raises:
        ConfigError: anything wrong with the file or its content, in one line.
    """
    if not path:
        return {}
    return check_config(read_yaml(path), path)
