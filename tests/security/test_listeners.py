"""Nothing listens on a non-loopback address by default: the embedded Ray (GCS, raylet, workers, agents) and the UI
bind 127.0.0.1; `--ray-listen-all` / `ATELIER_RAY_LISTEN_ALL=1` and `curate ui --host` are the explicit ways out."""

from __future__ import annotations

import ipaddress
import json

import pytest

from orchestration.cli import build_parser
from tests.security.hostile import run_isolated

psutil = pytest.importorskip("psutil")
pytestmark = pytest.mark.slow  # each starts a Ray

LISTENERS = """
import json, os, time
import psutil
import ray  # imported first on purpose: the loopback setting must hold even then
from orchestration.ray_adapter import init_ray
__CAP__()
init_ray(num_cpus=1)

@ray.remote
def work(x):
    return x + 1

@ray.remote
class Holder:
    def ping(self):
        return os.getpid()

assert ray.get([work.remote(i) for i in range(4)]) == [1, 2, 3, 4]
holder = Holder.remote()
ray.get(holder.ping.remote())
time.sleep(1)
me = psutil.Process()
found = []
for proc in [me] + me.children(recursive=True):
    try:
        found += [[proc.name(), c.laddr.ip, c.laddr.port] for c in proc.net_connections(kind="inet")
                  if c.status == psutil.CONN_LISTEN]
    except psutil.Error:
        pass
ray.shutdown()
print(json.dumps(found))
"""


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _listeners(extra_env: str = "") -> list:
    proc = run_isolated(extra_env + LISTENERS, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_embedded_ray_listens_on_loopback_only():
    found = _listeners()
    names = {name for name, _, _ in found}
    assert {"gcs_server", "raylet"} <= names, found  # the scan sees Ray's servers at all
    assert [f for f in found if not _is_loopback(f[1])] == []


def test_the_explicit_flag_widens_it():
    found = _listeners("import os\nos.environ['ATELIER_RAY_LISTEN_ALL'] = '1'\n")
    assert any(not _is_loopback(ip) for _, ip, _ in found), found


def test_loopback_check_itself():
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("::ffff:127.0.0.1")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("::") and not _is_loopback("192.0.2.2")


def test_ui_and_run_default_to_this_machine_only():
    parser = build_parser()
    assert parser.parse_args(["ui"]).host == "127.0.0.1"
    assert parser.parse_args(["run"]).ray_listen_all is False


def test_curate_ui_listens_on_loopback_only(tmp_path):
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    from tests.security.hostile import REPO

    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "orchestration.cli", "ui", "--storage", str(tmp_path / "s"),
                             "--port", str(port)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    found: set = set()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not any(p == port for _, _, p in found):
            time.sleep(1)
            found = set()
            root = psutil.Process(proc.pid)
            for p in [root] + root.children(recursive=True):
                try:
                    found |= {(p.name(), c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="inet")
                              if c.status == psutil.CONN_LISTEN}
                except psutil.Error:
                    pass
        assert any(p == port for _, _, p in found), f"the UI never listened on {port}"
        assert [f for f in found if not _is_loopback(f[1])] == []
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
