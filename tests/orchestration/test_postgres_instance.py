"""The Dagster instance on PostgreSQL, configured as deploy/helm/dagster-values.yaml configures it, on a throwaway
local server (Debian's `postgresql`: initdb + pg_ctl on a temporary directory, loopback only, removed afterwards).

Through it: a `curate run` (source_images and image_features of 6 photos), the source sensor started and ticked
by the daemon of `curate ui` (its ingest run of a 4-photo drop dequeued by the QueuedRunCoordinator), and
image_features of that drop launched with the UI's own GraphQL mutation; each checked in Postgres's run, event-log
and schedule tables, not only through Dagster's API.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PHOTOS = REPO / "examples" / "corpus" / "photos"
HELM_VALUES = REPO / "deploy" / "helm" / "dagster-values.yaml"
PASSWORD = "atelier-test-only"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on 127.0.0.1:<free port> with the role and database the Helm values name.

    Postgres refuses to run as root: as root (CI, containers) it runs as the `postgres` account that Debian's
    package creates. Yields the connection settings."""
    bindir = _postgres_bin()
    if bindir is None:
        reason = "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin (`make install` installs Debian's " \
                 "`postgresql`)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    values = yaml.safe_load(HELM_VALUES.read_text())["postgresql"]
    as_user = {}
    if os.geteuid() == 0:
        import pwd

        account = pwd.getpwnam("postgres")
        as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    root = Path(tempfile.mkdtemp(prefix="atelier-pg-"))
    if as_user:
        os.chown(root, as_user["user"], as_user["group"])
    data, sockets = root / "data", root / "sockets"
    env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", "TZ": "UTC"}

    def pg(*args: str) -> None:
        subprocess.run([str(bindir / args[0]), *args[1:]], cwd=root, env=env, check=True, capture_output=True,
                       timeout=120, **as_user)

    port = _free_port()
    try:
        subprocess.run(["mkdir", str(sockets)], cwd=root, check=True, **as_user)
        pg("initdb", "-D", str(data), "-U", "postgres", "--no-locale", "-E", "UTF8", "--auth-local=trust",
           "--auth-host=scram-sha-256")
        # durability off: a test server, gone when the test ends
        pg("pg_ctl", "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "-o",
           f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} -c fsync=off -c synchronous_commit=off "
           f"-c full_page_writes=off", "start")
        import psycopg2

        admin = psycopg2.connect(host=str(sockets), port=port, user="postgres", dbname="postgres")
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f"CREATE ROLE {values['postgresqlUsername']} LOGIN PASSWORD %s", (PASSWORD,))
            cur.execute(f"CREATE DATABASE {values['postgresqlDatabase']} OWNER {values['postgresqlUsername']}")
        admin.close()
        yield {"host": "127.0.0.1", "port": port, "user": values["postgresqlUsername"], "password": PASSWORD,
               "dbname": values["postgresqlDatabase"]}
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], cwd=root,
                           env=env, capture_output=True, timeout=60, **as_user)
        shutil.rmtree(root, ignore_errors=True)


def instance_config(values: dict, db: dict) -> dict:
    """dagster.yaml as the Dagster chart renders it from our Helm values (storage with its scheme, run coordinator,
    scheduler, run monitoring, telemetry), with the server's address for the chart's host name and the
    DefaultRunLauncher for the K8sRunLauncher (no cluster here). The password comes from DAGSTER_PG_PASSWORD, as in
    the chart."""
    pg = values["postgresql"]
    daemon = values["dagsterDaemon"]
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    return {
        "storage": {"postgres": {"postgres_db": {
            "username": pg["postgresqlUsername"], "password": {"env": "DAGSTER_PG_PASSWORD"}, "hostname": db["host"],
            "db_name": pg["postgresqlDatabase"], "port": db["port"], "params": pg["postgresqlParams"],
            **({"scheme": pg["postgresqlScheme"]} if pg.get("postgresqlScheme") else {})}}},
        "run_coordinator": {"module": "dagster.core.run_coordinator", "class": daemon["runCoordinator"]["type"],
                            "config": {"max_concurrent_runs": queued["maxConcurrentRuns"]}},
        "run_launcher": {"module": "dagster.core.launcher", "class": "DefaultRunLauncher"},
        "scheduler": {"module": "dagster.core.scheduler", "class": values["scheduler"]["type"]},
        "run_monitoring": {"enabled": daemon["runMonitoring"]["enabled"]},
        "telemetry": {"enabled": values["telemetry"]["enabled"]},
        "nux": {"enabled": False},
    }


@pytest.fixture(scope="module")
def pg_home(postgres, tmp_path_factory):
    home = tmp_path_factory.mktemp("dagster-home")
    values = yaml.safe_load(HELM_VALUES.read_text())
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_config(values, postgres)))
    return home


def _sql(db: dict, query: str, *args) -> list[tuple]:
    import psycopg2

    with psycopg2.connect(**db) as conn, conn.cursor() as cur:
        cur.execute(query, args)
        rows = cur.fetchall()
    conn.close()
    return rows


def _drop(parent: Path, name: str, n: int, offset: int) -> Path:
    """A folder of `n` of the sample photos, its mtime an hour old (settled, for the sensor)."""
    drop = parent / name
    drop.mkdir(parents=True)
    for photo in sorted(PHOTOS.glob("*.jpg"))[offset:offset + n]:
        shutil.copy(photo, drop / photo.name)
    old = time.time() - 3600
    os.utime(drop, (old, old))
    return drop


def _graphql(url: str, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"{url}/graphql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        answer = json.loads(resp.read())
    assert not answer.get("errors"), answer
    return answer["data"]


def _wait_for(what: str, probe, timeout: float, log: Path):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (value := probe()) is not None:
            return value
        time.sleep(2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; see {log}")


def _run_status(db: dict, run_id: str) -> str | None:
    rows = _sql(db, "SELECT status FROM runs WHERE run_id = %s", run_id)
    return rows[0][0] if rows else None


def _finished(db: dict, run_id: str) -> str | None:
    status = _run_status(db, run_id)
    return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None


def test_pipeline_sensor_and_ui_launch_on_postgres(postgres, pg_home, ray_session, tmp_path, monkeypatch, capsys):
    from orchestration import cli

    storage = tmp_path / "storage"
    monkeypatch.setenv("DAGSTER_HOME", str(pg_home))
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", postgres["password"])

    # 1. `curate run` records its run, events and partitions in Postgres (ingest + features of 6 photos)
    first = _drop(tmp_path / "given", "first", 6, 0)
    code = cli.main(["run", "--source", str(first), "--storage", str(storage), "--select", "*image_features"])
    out = capsys.readouterr().out
    assert code == 0, out
    runs = _sql(postgres, "SELECT r.run_id, r.status FROM runs r JOIN run_tags t ON t.run_id = r.run_id "
                          "WHERE t.key = 'atelier/cli' AND t.value = 'curate run'")
    assert runs and all(status == "SUCCESS" for _, status in runs), runs
    (first_key,) = [k for (k,) in _sql(postgres, "SELECT partition FROM dynamic_partitions "
                                                  "WHERE partitions_def_name = 'source_drops'")]
    materialized = _sql(postgres, "SELECT asset_key FROM event_logs WHERE dagster_event_type = "
                                  "'ASSET_MATERIALIZATION' AND partition = %s ORDER BY id", first_key)
    assert [json.loads(k) for (k,) in materialized] == [["source_images"], ["image_features"]], materialized

    # 2. `curate ui` on the same instance: its daemon ticks the source sensor, whose run the queue launches
    incoming = tmp_path / "incoming"
    _drop(incoming, "second", 4, 6)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "curate-ui.log"
    # the launched runs join this session's Ray through RAY_ADDRESS, as production runs join the KubeRay cluster
    env = dict(os.environ, ATELIER_SOURCE_ROOTS=str(incoming),
               RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)
    with open(log, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "orchestration.cli", "ui", "--storage", str(storage),
                                 "--port", str(port)], cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        def serving():
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=2):
                    return True
            except OSError:
                return None if proc.poll() is None else pytest.fail(f"`curate ui` exited; see {log}")

        _wait_for("`curate ui` to serve", serving, 180, log)
        repos = _graphql(url, "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location "
                              "{ name } } } } }")["repositoriesOrError"]["nodes"]
        (repo,) = repos
        where = {"repositoryLocationName": repo["location"]["name"], "repositoryName": repo["name"]}
        started = _graphql(url, "mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) { __typename "
                                "... on Sensor { sensorState { status } } ... on PythonError { message } } }",
                           {"s": {**where, "sensorName": "source_drop_sensor"}})["startSensor"]
        assert started.get("sensorState", {}).get("status") == "RUNNING", started

        def sensor_run():
            rows = _sql(postgres, "SELECT run_id FROM run_tags WHERE key = 'dagster/sensor_name' "
                                  "AND value = 'source_drop_sensor'")
            return rows[0][0] if rows else None

        sensor_run_id = _wait_for("the sensor's run", sensor_run, 180, log)
        assert _wait_for("the sensor's run to finish", lambda: _finished(postgres, sensor_run_id), 300, log) \
            == "SUCCESS", _sql(postgres, "SELECT event FROM event_logs WHERE run_id = %s", sensor_run_id)[-5:]
        ticks = _sql(postgres, "SELECT status, tick_body FROM job_ticks WHERE type = 'SENSOR'")
        assert any(status == "SUCCESS" and sensor_run_id in body for status, body in ticks), ticks
        second_key = _sql(postgres, "SELECT value FROM run_tags WHERE run_id = %s AND key = 'dagster/partition'",
                          sensor_run_id)[0][0]
        assert second_key.startswith("second-") and second_key != first_key

        # 3. "Materialize" as the asset page does it: the UI's launchPipelineExecution mutation on the asset job
        launched = _graphql(url, LAUNCH, {"p": {
            "selector": {**where, "jobName": "__ASSET_JOB", "assetSelection": [{"path": ["image_features"]}]},
            "runConfigData": {}, "executionMetadata": {"tags": [{"key": "dagster/partition", "value": second_key}]},
        }})["launchPipelineExecution"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]
        assert _wait_for("the launched run to finish", lambda: _finished(postgres, run_id), 300, log) == "SUCCESS"
        events = _sql(postgres, "SELECT asset_key, partition FROM event_logs WHERE run_id = %s AND "
                                "dagster_event_type = 'ASSET_MATERIALIZATION'", run_id)
        assert [(json.loads(k), p) for k, p in events] == [(["image_features"], second_key)]
        queued = _sql(postgres, "SELECT count(*) FROM event_logs WHERE run_id = %s AND "
                                "dagster_event_type = 'PIPELINE_ENQUEUED'", run_id)[0][0]
        assert queued == 1, "the launch did not go through the QueuedRunCoordinator"
        assert (storage / "image_features" / second_key / "_SUCCESS.json").is_file()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


LAUNCH = """mutation($p: ExecutionParams!) { launchPipelineExecution(executionParams: $p) { __typename
  ... on LaunchRunSuccess { run { runId } }
  ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } }
  ... on InvalidSubsetError { message }
} }"""
