"""JupyterLab in headless Chromium (Debian's package, driven by Playwright): the example notebook's
federated cells are marked, the Federated panel shows the CLI's bundle id, validates, and
follows a simulator run whose per-site curves fill while it runs, and a differential privacy
run's epsilon per site. Screenshots go to test-artifacts/."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from caia_jupyter.researcher import bundle
from caia_jupyter.reviewer import signing
from caia_jupyter.targets.demo_sites import make_sites
from conftest import REPO

pytestmark = pytest.mark.slow
sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]
ARTIFACTS = REPO / "test-artifacts"
NOTEBOOK = "01_breast_cancer.ipynb"
DP_NOTEBOOK = "02_breast_cancer_dp.ipynb"  # differential privacy: the sites report epsilon each round


# pytest-jupyter's autouse fixtures would close Playwright's running event loop: not here.
@pytest.fixture
def jp_asyncio_loop():
    yield None


@pytest.fixture
def jp_server_cleanup():
    yield


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """jupyter-lab on a free port, over a folder with the example notebook and three sites."""
    base = tmp_path_factory.mktemp("lab")
    root = base / "root"
    root.mkdir()
    example = (REPO / "example_notebooks" / NOTEBOOK).read_text()
    (root / NOTEBOOK).write_text(example.replace("rounds=5", "rounds=12"))  # long enough to watch it live
    shutil.copyfile(REPO / "example_notebooks" / DP_NOTEBOOK, root / DP_NOTEBOOK)
    shutil.copytree(REPO / "example_notebooks" / "samples", root / "samples")
    centers = make_sites(root / "sites")
    settings = base / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    # This checkout's build of the panel comes first, whatever else the environment has installed.
    extensions = base / "data" / "labextensions"
    extensions.mkdir(parents=True)
    (extensions / "caia-jupyter").symlink_to(REPO / "caia_jupyter" / "labextension")
    # JUPYTER_PREFER_ENV_PATH=0: the data dir above before the environment's (in a venv, jupyter_core
    # otherwise looks in the environment first, where an installed build of the panel may be older)
    env = dict(os.environ, JUPYTER_PREFER_ENV_PATH="0",
               JUPYTER_CONFIG_DIR=str(base / "config"), JUPYTER_DATA_DIR=str(base / "data"),
               JUPYTER_RUNTIME_DIR=str(base / "runtime"), IPYTHONDIR=str(base / "ipython"),
               JUPYTERLAB_SETTINGS_DIR=str(base / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token = secrets.token_hex(16)
    log = open(base / "jupyter-lab.log", "wb")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("jupyter-lab")), "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
         f"--port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"jupyter-lab exited; see {log.name}"
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "jupyter-lab did not start"
                time.sleep(0.25)
        yield {"url": url, "token": token, "root": root, "centers": centers}
    finally:
        children = psutil.Process(server.pid).children(recursive=True)
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
        for child in children:  # kernels and runs live in their own sessions
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (make test does)")
    playwright = sync_api.sync_playwright().start()
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS,
                                          env={**os.environ, "HOME": str(tmp_path_factory.mktemp("chromium-home"))})
    try:
        yield chromium
    finally:
        chromium.close()
        playwright.stop()


@pytest.fixture(scope="module")
def page(browser, lab):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{lab['url']}/lab/tree/{NOTEBOOK}?reset&token={lab['token']}")
    page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(state="attached")
    try:
        yield page
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "lab-final.png"))
        context.close()


def open_panel(page):
    panel = page.locator("#caia-federated-panel")
    if not panel.is_visible():
        page.locator('.jp-SideBar.jp-mod-left .lm-TabBar-tab[data-id="caia-federated-panel"]').click()
    expect(panel).to_be_visible()
    return panel


def test_federated_cells_are_marked(page):
    marked = page.locator(".jp-NotebookPanel .jp-Cell.caia-federated-cell")
    expect(marked).to_have_count(5)
    expect(marked.first).to_contain_text("%%federated dataset=breast_cancer")
    expect(page.locator(".jp-NotebookPanel .jp-CodeCell:not(.caia-federated-cell)").first).to_contain_text("%load_ext")


def test_the_panel_shows_the_bundle_id_the_cli_prints(page, lab):
    panel = open_panel(page)
    printed = subprocess.run([str(Path(sys.executable).with_name("caia")), "bundle", str(lab["root"] / NOTEBOOK)],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    expect(panel.locator('[data-caia="bundle-id"]')).to_have_text(printed)
    expect(panel.locator('[data-caia="cells"] li')).to_have_count(5)
    expect(panel.locator('[data-caia="sites"] tr')).to_have_count(3)


def test_validation_from_the_panel(page):
    panel = open_panel(page)
    panel.locator('[data-caia-action="validate"]').click()
    expect(panel.locator('[data-caia="validation"]')).to_contain_text("passed", timeout=120_000)
    expect(panel.locator('[data-caia="message"]')).to_have_text("validation passed")


def test_a_simulator_run_fills_the_charts_live(page, lab):
    panel = open_panel(page)
    bundle_id = panel.locator('[data-caia="bundle-id"]').inner_text()
    for center in lab["centers"]:
        signing.approve(center.site, bundle_id, {"breast_cancer": "breast_cancer"}, center.reviewer_key)
    page.locator(".jp-NotebookPanel").first.click()  # saving needs the notebook; the panel saves it
    open_panel(page)
    panel.locator('[data-caia-action="submit"]').click()
    # While the run is going: a curve per site, each with a few rounds already drawn.
    page.wait_for_function("""() => {
        const panel = document.querySelector('#caia-federated-panel');
        const running = panel.querySelector('[data-caia="run-status"][data-status="running"]');
        const chart = panel.querySelector('.caia-chart[data-metric="accuracy"]');
        const lines = chart ? Object.values(JSON.parse(chart.dataset.series)) : [];
        return running && lines.length === 3 && lines.every(points => points.length >= 3);
    }""", timeout=180_000)
    ARTIFACTS.mkdir(exist_ok=True)
    panel.screenshot(path=str(ARTIFACTS / "panel-live-run.png"))
    page.screenshot(path=str(ARTIFACTS / "lab-live-run.png"))
    expect(panel.locator('[data-caia="run-status"]')).to_have_attribute("data-status", "finished", timeout=300_000)
    expect(panel.locator('[data-caia="run-sites"] tr')).to_have_count(3)
    for site in ("site-1", "site-2", "site-3"):
        expect(panel.locator(f'[data-caia="run-sites"] tr[data-site="{site}"]')).to_contain_text("done")
    panel.screenshot(path=str(ARTIFACTS / "panel-finished-run.png"))
    assert bundle.load(lab["root"] / "bundles" / "01_breast_cancer").id == bundle_id


def test_a_dp_run_charts_the_epsilon_each_site_spent(page, lab):
    page.goto(f"{lab['url']}/lab/tree/{DP_NOTEBOOK}?token={lab['token']}")
    notebook = page.locator(".jp-NotebookPanel:visible")
    expect(notebook.locator(".jp-Cell.caia-federated-cell").first).to_contain_text("privacy=dp", timeout=60_000)
    panel = open_panel(page)
    panel.locator('[data-caia-action="validate"]').click()
    # .first: the panel may draw its summary more than once after an action
    expect(panel.locator('[data-caia="validation"]', has_text="passed").first).to_be_visible(timeout=120_000)
    bundle_id = panel.locator('[data-caia="bundle-id"]').first.inner_text()
    assert bundle.load(lab["root"] / "bundles" / "02_breast_cancer_dp").manifest["job"]["privacy"]["epsilon"] == 3
    for center in lab["centers"]:
        signing.approve(center.site, bundle_id, {"breast_cancer": "breast_cancer"}, center.reviewer_key)
    notebook.first.click()
    open_panel(page)
    panel.locator('[data-caia-action="submit"]').first.click()
    expect(panel.locator('[data-caia="run-status"][data-status="finished"]').first).to_be_visible(timeout=300_000)
    for metric in ("epsilon", "accuracy"):  # one curve per site, epsilon next to accuracy
        chart = panel.locator(f'.caia-chart[data-metric="{metric}"]').first
        expect(chart).to_have_attribute("data-legend", '["site-1","site-2","site-3"]')
        assert sorted(json.loads(chart.get_attribute("data-series"))) == ["site-1", "site-2", "site-3"]
    panel.screenshot(path=str(ARTIFACTS / "panel-dp-run.png"))
