"""The storage root and a source drop on an S3-compatible server: moto's server mode on 127.0.0.1, reached over HTTP
by pyarrow's S3 filesystem and s3fs exactly as production reaches S3 (credentials, region and endpoint from the
standard AWS_* variables; nothing is patched in-process). `curate run` is a subprocess, killed with SIGKILL in the
middle of a stage and run again: finished parts are reused untouched and every input is accounted for.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.compute as pc
import pytest

REPO = Path(__file__).resolve().parents[2]
PHOTOS = REPO / "examples" / "corpus" / "photos"
DATA, DROPS = "atelier-data", "atelier-drops"
STORAGE = f"s3://{DATA}/atelier"
SOURCE = f"s3://{DROPS}/incoming/photos"
FILES_PER_UNIT = 6  # 36 photos -> 6 parts per drop-partitioned stage, so a kill can land between parts
SELECT = "*deduplicated_images"  # the probe, ingest, features, exclusion (per drop) and dedup (global)


@pytest.fixture(scope="module")
def s3_env():
    """A moto S3 server on loopback and the environment a production process would have for it."""
    pytest.importorskip("moto.server", reason="moto[server] is a dev dependency: pip install -e '.[dev,s3]'")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "atelier-test",
           "AWS_SECRET_ACCESS_KEY": "atelier-test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}  # never ask an instance-metadata address for credentials
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture(scope="module")
def s3(s3_env):
    import boto3

    client = boto3.client("s3")
    for bucket in (DATA, DROPS):
        client.create_bucket(Bucket=bucket)
    return client


def _objects(s3, bucket: str, prefix: str = "") -> dict[str, tuple[str, object]]:
    """key -> (ETag, LastModified) of every object under a prefix."""
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = (obj["ETag"], obj["LastModified"])
    return out


def test_metadata_jsonl_reads_the_same_from_s3(s3, tmp_path):
    """The bounded line reader over an s3fs file (whose readline() takes no size) and over a local file."""
    from curation.sidecars import load_jsonl
    from curation.sources import ReadLimits

    limits = ReadLimits(max_sidecar_bytes=64)
    body = b'{"file_name": "a.jpg", "title": "one"}\n' + b'{"file_name": "b.jpg", "t": "' + b"x" * 200 + b'"}\n' \
        + b'{"file_name": "c.jpg"}\n'
    (tmp_path / "metadata.jsonl").write_bytes(body)
    s3.put_object(Bucket=DROPS, Key="jsonl/metadata.jsonl", Body=body)
    local = load_jsonl(str(tmp_path / "metadata.jsonl"), "metadata.jsonl", limits)
    remote = load_jsonl(f"s3://{DROPS}/jsonl/metadata.jsonl", "metadata.jsonl", limits)
    assert remote == local
    assert [r.key for r in remote[0]] == ["a.jpg", "c.jpg"] and remote[1] == ["line 2: longer than 64 bytes, ignored"]


def _curate(env: dict[str, str], config: Path) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"} | env
    return subprocess.Popen([sys.executable, "-m", "orchestration.cli", "run", "--source", SOURCE, "--storage",
                             STORAGE, "--config", str(config), "--select", SELECT], cwd=REPO, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the command and every process it started (Ray's raylet, GCS and workers), by pid."""
    try:
        family = [proc.pid] + [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = [proc.pid]
    for pid in family:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)
    psutil.wait_procs([p for p in map(_process, family) if p is not None], timeout=30)


def _process(pid: int):
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_curate_run_on_s3_resumes_after_a_kill(s3, s3_env, tmp_path):
    from orchestration.storage import TableStore

    images = sorted(p for p in PHOTOS.iterdir() if p.suffix in (".jpg", ".png"))
    for path in sorted(PHOTOS.iterdir()):  # the photos and their metadata.jsonl, as a drop lands in a bucket
        s3.upload_file(str(path), DROPS, f"incoming/photos/{path.name}")
    config = tmp_path / "config.yaml"
    config.write_text(f"assets:\n  source_images:\n    files_per_unit: {FILES_PER_UNIT}\n")
    n_units = -(-len(images) // FILES_PER_UNIT)

    # 1. kill -9 as soon as image_features has written its first part (source_images is complete by then)
    proc = _curate(s3_env, config)
    deadline, features = time.time() + 420, {}
    try:
        while time.time() < deadline and proc.poll() is None:
            features = {k: v for k, v in _objects(s3, DATA, "atelier/image_features/").items()
                        if re.search(r"/part-\d+\.parquet$", k)}
            if features:
                break
            time.sleep(0.2)
    finally:
        _kill_tree(proc)
    out = proc.stdout.read()
    assert features, f"image_features wrote no part before the run ended (exit {proc.returncode}):\n{out}"
    before = {k: v for k, v in _objects(s3, DATA, "atelier/").items() if re.search(r"/part-\d+\.parquet$", k)}
    done = sorted(k for k in before if k.startswith("atelier/image_features/"))
    assert 1 <= len(done) < n_units, f"the kill did not land inside image_features: {done}"
    assert not [k for k in _objects(s3, DATA, "atelier/image_features/") if k.endswith("_SUCCESS.json")]
    ingest_parts = [k for k in before if k.startswith("atelier/source_images/")]
    assert len(ingest_parts) == n_units

    # 2. the same command again: it finishes, reusing what the killed run had finished
    proc = _curate(s3_env, config)
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            _kill_tree(proc)
    assert proc.returncode == 0, out
    log_uri = re.search(r"^log: (s3://\S+)$", out, re.M).group(1)
    after = _objects(s3, DATA, "atelier/")
    for key, identity in before.items():  # not rewritten: same ETag and same LastModified
        assert after.get(key) == identity, f"{key} was rewritten by the resumed run"
    assert not [k for k in after if ".tmp-" in k], "temporary objects left behind"
    log_key = log_uri.removeprefix(f"s3://{DATA}/")
    log = s3.get_object(Bucket=DATA, Key=log_key)["Body"].read().decode()
    assert f"source_images: {n_units} unit(s), {n_units} reused, 0 to compute" in log
    assert f"image_features: {n_units} unit(s), {len(done)} reused, {n_units - len(done)} to compute" in log

    # 3. accounting, read back through the production TableStore over S3: every input is a kept row or a ledger row
    store = TableStore(STORAGE)
    (partition,) = store.registered_sources()
    assert store.source_uri(partition) == SOURCE
    uris = {f"{SOURCE}/{p.name}" for p in images}
    for asset in ("source_images", "image_features", "exclusion_signals"):
        marker = store.read_json(f"{store.dir(asset, partition)}/_SUCCESS.json")
        assert marker is not None, f"{asset}: no completion marker"
        assert len(store.list_parts(store.dir(asset, partition))) == n_units
    def drops(asset: str):
        ledger = store.read_decisions(asset)
        return ledger.filter(pc.equal(ledger.column("decision"), "drop"))

    kept = store.read_table(store.dir("source_images", partition), columns=["sample_id", "source_uri"])
    refused = drops("source_images")
    assert set(kept.column("source_uri").to_pylist()) | set(refused.column("source_uri").to_pylist()) == uris
    assert kept.num_rows + refused.num_rows == len(uris)
    features = store.read_table(store.dir("image_features", partition), columns=["sample_id"])
    assert features.num_rows + drops("image_features").num_rows == kept.num_rows
    signals = store.read_table(store.dir("exclusion_signals", partition), columns=["sample_id", "excluded"])
    assert sorted(signals.column("sample_id").to_pylist()) == sorted(features.column("sample_id").to_pylist())
    excluded = drops("exclusion_signals")
    rows = signals.to_pylist()
    survivors = {r["sample_id"] for r in rows if not r["excluded"]}
    assert len(survivors) + excluded.num_rows == signals.num_rows
    curated = set(store.read_table(store.dir("deduplicated_images"), columns=["sample_id"]).column("sample_id")
                  .to_pylist())
    duplicates = set(drops("deduplicated_images").column("sample_id").to_pylist())
    assert curated | duplicates == survivors and not curated & duplicates
