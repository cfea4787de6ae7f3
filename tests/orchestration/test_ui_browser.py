"""The Dagster UI in a real browser: `curate ui` over a storage with a finished run, driven by headless Chromium:
the lineage graph, an asset's metadata table, markdown plots and numeric-metadata charts, then a materialization
launched from the asset page, followed to Success, its event log and captured stderr read.

Needs Debian's Chromium at /usr/bin/chromium (`apt-get install -y chromium`) and the `playwright` Python package (the
dev extra). The browser is never downloaded: `playwright install` is not used.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
VIEWPORT = {"width": 2400, "height": 1400}  # wide enough for full (unabbreviated) asset node names
TIMEOUT_MS = 60_000


def artifact_dir() -> Path:
    """Where screenshots go: $ATELIER_TEST_ARTIFACTS, else <repo>/test-artifacts/ (git-ignored)."""
    path = Path(os.environ.get("ATELIER_TEST_ARTIFACTS") or REPO / "test-artifacts") / "ui"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's Chromium with `apt-get install -y chromium` "
                    "(`make test` needs it for this UI test; never `playwright install`)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the `playwright` package is missing: pip install -e '.[dev]'")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def finished_run(curated_storage):
    """A storage root holding a completed `curate run` up to rebalanced_images (tests/conftest.py), whose last drop is
    the hostile one; returns the storage path and the metadata of that drop's `source_images` materialization, read
    back from the Dagster instance."""
    import dagster as dg

    _, storage, _ = curated_storage
    storage = Path(storage)
    saved_home = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(storage / ".dagster")
    try:
        instance = dg.DagsterInstance.get()
        event = instance.get_latest_materialization_event(dg.AssetKey("source_images"))
        assert event is not None and event.asset_materialization is not None
        metadata = {key: getattr(value, "value", value) for key, value in event.asset_materialization.metadata.items()}
        instance.dispose()
    finally:
        os.environ.pop("DAGSTER_HOME", None)
        if saved_home is not None:
            os.environ["DAGSTER_HOME"] = saved_home
    return storage, metadata


@pytest.fixture(scope="module")
def ui_url(finished_run):
    """`curate ui` over the finished run's storage, as a subprocess; stopped with SIGTERM afterwards."""
    storage, _ = finished_run
    # A fresh instance greets the first visitor with a newsletter dialog over the page; this instance is a test's.
    instance_yaml = storage / ".dagster" / "dagster.yaml"
    instance_yaml.write_text(instance_yaml.read_text() + "nux:\n  enabled: false\n")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    log_path = artifact_dir() / "curate-ui.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "orchestration.cli", "ui", "--storage", str(storage),
                                 "--port", str(port)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, info = time.time() + 120, None
        while time.time() < deadline and info is None and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=2) as resp:
                    info = json.loads(resp.read())
            except OSError:
                time.sleep(1)
        assert info, f"`curate ui` did not serve {url}/server_info (exit code {proc.poll()}); see {log_path}"
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


def _shown_as(node_text: str, name: str) -> bool:
    """Whether a graph node's label is `name`, or `name` middle-truncated as Dagster shows zoomed-out nodes."""
    if node_text == name:
        return True
    head, sep, tail = node_text.partition("…")
    return bool(sep) and len(head) + len(tail) < len(name) and name.startswith(head) and name.endswith(tail)


def test_asset_graph_shows_every_asset(ui_url, page):
    from orchestration.definitions import defs

    names = sorted(key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys())
    assert names, "the Definitions hold no assets"
    page.goto(f"{ui_url}/asset-groups")  # "Global asset lineage"
    graph = page.locator("svg[class*=AssetGraphExplorer_svgContainer]")
    graph.wait_for(state="visible")
    nodes = graph.locator("[class*=AssetNode_assetName]")
    deadline, labels = time.time() + 30, []
    while time.time() < deadline:
        if len(labels := [t.strip() for t in nodes.all_inner_texts()]) >= len(names):
            break
        if not labels:  # groups are collapsed: "Expand all groups" (graph settings menu, shortcut Alt+E)
            page.keyboard.press("Alt+e")
        page.wait_for_timeout(1_000)
    page.screenshot(path=str(artifact_dir() / "asset_graph.png"))
    missing = [name for name in names if not any(_shown_as(label, name) for label in labels)]
    assert not missing, f"assets missing from the lineage graph: {missing}; graph shows {labels}"
    assert len(labels) == len(names), f"graph nodes {labels} != assets {names}"


def test_asset_page_shows_latest_materialization_metadata(ui_url, finished_run, page):
    _, metadata = finished_run
    drops = {key: value for key, value in metadata.items() if key.startswith("dropped_")}
    assert drops and metadata["total"] == sum(drops.values()) + metadata["kept"], metadata

    page.goto(f"{ui_url}/assets/source_images")
    page.get_by_text("Latest materialization").first.wait_for()
    first_drop = sorted(drops)[0]
    page.get_by_text(first_drop, exact=True).first.wait_for()

    def row(key: str) -> str:
        cells = page.locator("tr").filter(has=page.get_by_text(key, exact=True))
        assert cells.count() >= 1, f"no metadata row for {key!r}"
        return cells.first.inner_text()

    for key in ["total", "kept", "dropped", *sorted(drops)]:
        assert re.search(rf"\b{metadata[key]}\b", row(key)), f"{key}: expected {metadata[key]} in {row(key)!r}"
    # dagster/row_count is shown as the asset's "Row count"
    assert metadata["dagster/row_count"] == metadata["kept"]
    summary = page.get_by_text("Row count", exact=True).first
    summary.wait_for()
    # the markdown table of drop reasons renders as a table, one line per reason
    reasons = row("drop_reasons")
    for key, count in drops.items():
        assert re.search(rf"{key[len('dropped_'):]}\s+{count}\b", reasons), reasons

    # plots (markdown images, e.g. score histograms) are optional; any that is present must have loaded
    images = page.locator("table img")
    broken = [images.nth(i).get_attribute("src") for i in range(images.count())
              if not images.nth(i).evaluate("img => img.complete && img.naturalWidth > 0")]
    assert not broken, f"metadata images that did not render: {broken}"
    page.screenshot(path=str(artifact_dir() / "asset_source_images.png"), full_page=True)


def test_rebalancing_plots_render(ui_url, page):
    page.goto(f"{ui_url}/assets/rebalanced_images")
    page.get_by_text("Latest materialization").first.wait_for()
    for key in ("cluster_sizes", "concept_frequencies"):
        row = page.locator("tr").filter(has=page.get_by_text(key, exact=True)).first
        row.get_by_text("[Show Markdown]").click()  # markdown metadata opens in a dialog
        dialog = page.get_by_role("dialog")
        image = dialog.locator("img").first
        image.wait_for()
        assert image.evaluate("img => img.complete && img.naturalWidth > 100"), f"{key}: the plot did not render"
        page.screenshot(path=str(artifact_dir() / f"asset_rebalanced_images_{key}.png"))
        dialog.get_by_role("button", name="Close").click()
        dialog.wait_for(state="hidden")


def test_metadata_plots_render(ui_url, finished_run, page):
    """The asset's Plots view: one chart per numeric metadata key, over its materializations, actually drawn."""
    _, metadata = finished_run
    numeric = [k for k, v in metadata.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    assert {"total", "kept"} <= set(numeric), metadata
    page.goto(f"{ui_url}/assets/source_images")
    page.get_by_text("Latest materialization").first.wait_for()
    page.get_by_role("button", name="Plots").click()
    for key in ("total", "kept"):
        page.get_by_text(key, exact=True).first.wait_for()
    charts = page.locator("canvas")
    charts.first.wait_for()
    page.wait_for_timeout(1_000)  # chart.js animates its first draw
    page.screenshot(path=str(artifact_dir() / "asset_source_images_plots.png"), full_page=True)
    assert charts.count() >= 2, f"{charts.count()} chart(s) for numeric keys {numeric}"
    # pixels of the series and axes (not the white background) on every canvas
    drawn = [charts.nth(i).evaluate("c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                                    " let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && "
                                    "Math.min(d[i], d[i + 1], d[i + 2]) < 200) n++; return n; }")
             for i in range(charts.count())]
    assert all(n > 500 for n in drawn), f"charts left blank: {drawn}"


def test_materialize_from_the_ui_and_read_the_run_log(ui_url, finished_run, page):
    """What a data engineer does: Materialize on the asset page, follow the run to Success, read its event log and
    the step's captured stderr; the run is then checked in the instance the UI serves."""
    import dagster as dg

    storage, _ = finished_run
    page.goto(f"{ui_url}/assets/ai_image_probe")  # unpartitioned and Ray-free: a short run
    page.get_by_text("Latest materialization").first.wait_for()
    # the accessible name carries the icon's ligature text first ("auto_awesome Materialize")
    page.get_by_role("button", name=re.compile(r"(^|\s)Materialize$")).first.click()
    toast = page.get_by_text(re.compile(r"Launched run \w+"))
    toast.wait_for()
    short = re.search(r"Launched run (\w+)", toast.inner_text()).group(1)
    href = page.locator(f"a[href*='/runs/{short}']").first.get_attribute("href")
    run_id = re.search(r"/runs/([0-9a-f-]{36})", href).group(1)

    page.goto(f"{ui_url}/runs/{run_id}")
    page.get_by_text("Success", exact=True).first.wait_for(timeout=300_000)
    for event in ("RUN_START", "STEP_START", "ASSET_MATERIALIZATION", "STEP_SUCCESS"):
        page.get_by_text(event, exact=True).first.wait_for()
    message = page.get_by_text(re.compile(r"^probe \w+: \d+ AI / \d+ real images, held-out AUC")).first
    message.wait_for()
    shown = message.inner_text()
    page.screenshot(path=str(artifact_dir() / "run_events.png"))
    page.get_by_text("View stdout / stderr").first.click()
    page.get_by_text("stderr", exact=True).first.click()
    page.get_by_text(re.compile(r'STEP_SUCCESS - Finished execution of step "ai_image_probe"')).first.wait_for()
    page.screenshot(path=str(artifact_dir() / "run_stderr.png"))

    saved_home = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(storage / ".dagster")
    try:
        instance = dg.DagsterInstance.get()
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS, run
        event = instance.get_latest_materialization_event(dg.AssetKey("ai_image_probe"))
        assert event.run_id == run_id
        version = event.asset_materialization.metadata["version"].value
        instance.dispose()
    finally:
        os.environ.pop("DAGSTER_HOME", None)
        if saved_home is not None:
            os.environ["DAGSTER_HOME"] = saved_home
    assert shown.startswith(f"probe {version}: "), shown
