"""A training stage directory on object storage: the Ray Train worker's local copy and its uploads.

`training/` reads and writes a local `out_dir`. When the stage directory is a URI (`s3://...`, `gs://...`,
`file://...`: anything `TableStore` opens), each Ray Train worker trains in a local temporary directory on its own
node instead, and `StageSync` keeps that directory and the URI in step:

- before training every rank downloads the stored `checkpoint.pt` (all ranks resume from the same step), rank 0 also
  `metrics.jsonl`; unless a checkpoint was found, the `init_from` checkpoint (a URI or a local path) is fetched too;
- after every checkpoint save (the trainer's `on_checkpoint` hook) rank 0 uploads `metrics.jsonl`, then
  `checkpoint.pt`: a run killed between the two resumes from the older checkpoint and drops the newer metrics lines,
  so no window is lost or duplicated;
- at the end rank 0 uploads what changed and `samples.png`, and the returned paths are the URIs.

Each upload is atomic: on a filesystem (local, `file://`, HDFS, ...) it is written under a temporary name and renamed,
as `TableStore.write_bytes` does; on an object store (S3, GCS, Azure) straight to its key, since an object appears
only once its upload completes and a rename there is a server-side copy (limited to 5 GiB on S3; an XL checkpoint
is about 6.5 GiB). Files are streamed, never held in memory whole. No Dagster here; no Ray either (the caller passes
the rank).
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestration.storage import TableStore
from training.checkpoint import CHECKPOINT_NAME, METRICS_NAME, SAMPLES_NAME, SUMMARY_NAME
from training.data import is_uri

log = logging.getLogger(__name__)

CHUNK = 8 << 20
INIT_NAME = "init_from.pt"
_OBJECT_STORES = {"s3", "s3a", "gcs", "gs", "abfs", "abfss", "az", "adl"}


def _locate(uri: str) -> tuple[TableStore, str]:
    """(store, path inside its filesystem) of a file URI."""
    store = TableStore(posixpath.dirname(uri.rstrip("/")))
    return store, posixpath.join(store.base, posixpath.basename(uri.rstrip("/")))


def _object_store(store: TableStore) -> bool:
    return store.fs.type_name.removeprefix("py::fsspec+") in _OBJECT_STORES


def _version(path: Path) -> tuple[int, int]:
    """What tells one state of a local file from the next (the trainer replaces files whole)."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def download(store: TableStore, path: str, local: Path) -> bool:
    """Copy the stored file at `path` (inside `store`'s filesystem) to `local`; False if there is none."""
    if not store.exists(path):
        return False
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        with store.fs.open_input_stream(path) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
        os.replace(tmp, local)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def upload(local: Path, store: TableStore, path: str) -> None:
    """Copy `local` to `path` inside `store`'s filesystem, atomically (see the module docstring)."""
    store.fs.create_dir(posixpath.dirname(path), recursive=True)
    target = path if _object_store(store) else f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        with open(local, "rb") as src, store.fs.open_output_stream(target) as dst:
            while block := src.read(CHUNK):
                dst.write(block)
        if target != path:
            store.fs.move(target, path)
    except BaseException:
        if target != path:
            try:
                store.fs.delete_file(target)
            except OSError:
                pass
        raise


def fetch(uri_or_path: str, local: Path) -> Path:
    """A local copy of a checkpoint given as a URI (downloaded to `local`) or a local path (returned as is)."""
    if not is_uri(uri_or_path):
        return Path(uri_or_path)
    store, path = _locate(uri_or_path)
    if not download(store, path, local):
        raise FileNotFoundError(f"checkpoint not found: {uri_or_path}")
    return local


class StageSync:
    """One worker's local copy of a stage directory stored at a URI.

    Args:
        out_uri: the stage directory (`<storage>/dit_checkpoint/<stage>` as a URI).
        rank: this worker's world rank; only rank 0 uploads.
        local_dir: the local working directory (default: `<tmp>/atelier-stage-<hash of out_uri>-rank<rank>`,
            emptied first, since what a killed run left there is stale, the URI holding the truth; removed by
            `cleanup`). The stage lock of the asset keeps two runs of one stage from sharing it.
    """

    def __init__(self, out_uri: str, rank: int, local_dir: str | os.PathLike | None = None) -> None:
        self.out_uri = out_uri.rstrip("/")
        self.rank = rank
        self.store = TableStore(self.out_uri)
        self._owns_dir = local_dir is None
        if local_dir is None:
            key = hashlib.sha256(self.out_uri.encode()).hexdigest()[:16]
            local_dir = Path(tempfile.gettempdir()) / f"atelier-stage-{key}-rank{rank}"
            shutil.rmtree(local_dir, ignore_errors=True)
        self.local = Path(local_dir)
        self.local.mkdir(parents=True, exist_ok=True)
        self._stored: dict[str, tuple[int, int]] = {}  # file name -> _version of the local file the URI holds

    def remote(self, name: str) -> str:
        """The URI of a file of the stage directory."""
        return f"{self.out_uri}/{name}"

    def _path(self, name: str) -> str:
        return posixpath.join(self.store.base, name)

    def prepare(self, resume: bool = True, init_from: str | None = None) -> str | None:
        """Download what training starts from; returns the local `init_from` to give the trainer (None if unset or
        if a stored checkpoint makes it irrelevant: a resumed run ignores `init_from`)."""
        names = (CHECKPOINT_NAME, METRICS_NAME) if self.rank == 0 else (CHECKPOINT_NAME,)
        for name in names if resume else ():
            if download(self.store, self._path(name), self.local / name):
                self._stored[name] = _version(self.local / name)
        if not init_from or (self.local / CHECKPOINT_NAME).exists():
            return None
        return str(fetch(init_from, self.local / INIT_NAME))

    def push(self, names: tuple[str, ...] = (METRICS_NAME, CHECKPOINT_NAME, SUMMARY_NAME)) -> list[str]:
        """Upload, in this order, the named local files that differ from what the URI holds (rank 0 only);
        returns the names uploaded."""
        if self.rank != 0:
            return []
        pushed = []
        for name in names:
            local = self.local / name
            if not local.exists():
                continue
            version = _version(local)
            if self._stored.get(name) == version:
                continue
            upload(local, self.store, self._path(name))
            self._stored[name] = version
            pushed.append(name)
        return pushed

    def on_checkpoint(self, step: int) -> None:
        """The trainer's hook: metrics first, then the checkpoint (see the module docstring)."""
        pushed = self.push()
        log.info("step %d: uploaded %s to %s", step, ", ".join(pushed) or "nothing new", self.out_uri)

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        """Upload the final state and samples.png; the TrainResult dict with the URIs in place of local paths."""
        if self.rank != 0:
            return result
        self.push((METRICS_NAME, CHECKPOINT_NAME, SUMMARY_NAME, SAMPLES_NAME))
        return {**result, "metrics_path": self.remote(METRICS_NAME), "checkpoint_path": self.remote(CHECKPOINT_NAME),
                "preview_path": self.remote(SAMPLES_NAME) if result.get("preview_path") else None}

    def cleanup(self) -> None:
        """Remove the local working directory (if this object made it)."""
        if self._owns_dir:
            shutil.rmtree(self.local, ignore_errors=True)


def run_synced(config: dict[str, Any], rank: int,
               loop: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """Run a training loop (`train_loop_per_worker`) whose `config["out_dir"]` is a URI, in a local directory.

    Args:
        config: the worker config; `out_dir` a URI, `init_from` a URI, a local path or None.
        rank: this worker's world rank.
        loop: `loop(config, on_checkpoint=...)` -> TrainResult dict.

    Returns:
        The loop's result, with rank 0's paths as URIs.
    """
    sync = StageSync(config["out_dir"], rank)
    try:
        init_from = sync.prepare(config.get("resume", True), config.get("init_from"))
        local_config = {**config, "out_dir": str(sync.local), "init_from": init_from}
        result = loop(local_config, on_checkpoint=sync.on_checkpoint if rank == 0 else None)
        return sync.finish(result)
    finally:
        sync.cleanup()
