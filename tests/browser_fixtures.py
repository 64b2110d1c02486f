"""The browser tests' shared fixtures, registered for every test module by tests/conftest.py: headless
Chromium (Debian's package, driven by Playwright) as `browser`, jupyter-lab over the example notebook
and three demo sites as `lab`, and `running_lab` to run jupyter-lab over any folder. Playwright is
imported when a test asks for `browser`, so a machine without it skips those tests only."""

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

from caia_jupyter.targets.demo_sites import make_sites
from conftest import REPO

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]
ARTIFACTS = REPO / "test-artifacts"
NOTEBOOK = "01_breast_cancer.ipynb"
DP_NOTEBOOK = "02_breast_cancer_dp.ipynb"  # differential privacy: the sites report epsilon each round


# pytest-jupyter's autouse fixtures would close the event loop Playwright's sync API runs: a test
# using the browser gets neither; every other test gets pytest-jupyter's own (a fixture that asks for
# its own name gets the one it overrides).
@pytest.fixture
def jp_asyncio_loop(request):
    yield None if "browser" in request.fixturenames else request.getfixturevalue("jp_asyncio_loop")


@pytest.fixture
def jp_server_cleanup(request):
    if "browser" not in request.fixturenames:
        request.getfixturevalue("jp_server_cleanup")
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
    yield from running_lab(base, root, centers=centers)


def running_lab(base: Path, root: Path, *arguments: str, **extra):
    """Run jupyter-lab over `root` (its configuration and data under `base`), with this checkout's
    build of the extension and `arguments` on its command line; yield {"url", "token", "root", "base",
    **extra} while it runs, then stop it and every process it started."""
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
         f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True", *arguments],
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
        yield {"url": url, "token": token, "root": root, "base": base, **extra}
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
    """Headless Chromium (CHROMIUM), one per test module; skips without Playwright, fails without Chromium."""
    sync_api = pytest.importorskip("playwright.sync_api")
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
