"""End to end on real NVFLARE: a job altered on its way to the sites is refused by every site, and
the code it smuggled never runs (the file it would write never appears). Two attacks: an
unchecked-hash .pyc shadowing the approved module, and an approved copy of the client config in
custom/ beside a config in config/ that starts a command."""

import json
import shutil

import pytest

from caia_jupyter.reviewer import signing
from caia_jupyter.site import sites
from caia_jupyter.targets import poc as pocs
from caia_jupyter.targets import remote, simulator
from conftest import approve, build_validated, make_site
from test_guard import bytecode, external_process_config

pytestmark = pytest.mark.slow
SITES = ("site-1", "site-2", "site-3")


def shadow_module_with_bytecode(app, marker):
    bytecode(app, "custom/__pycache__/federated.cpython-311.pyc", marker=str(marker))


def shadow_client_config(app, marker):
    shutil.copy(app / "config" / "config_fed_client.json", app / "custom" / "config_fed_client.json")
    (app / "config" / "config_fed_client.json").write_text(json.dumps(external_process_config(f"touch {marker}")))


ATTACKS = {"pyc-shadowing-the-module": (shadow_module_with_bytecode, "folder custom/__pycache__/"),
           "approved-config-copy-beside-a-command": (shadow_client_config, "holds custom/config_fed_client.json")}


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("tampered")
    built = build_validated(root / "nb")
    made = [make_site(root / "sites", name) for name in SITES]
    for site in made:
        approve(site, built.id, {"tiny": "tiny"})
    return root, built, made


def assert_refused_everywhere(run, built, reason, marker):
    assert run.wait(timeout=300) == "refused", run.message
    assert set(run.refusals) == set(SITES)
    for site, refusal in run.refusals.items():
        assert refusal.startswith(f"{site} refused bundle {built.id}: ") and reason in refusal
    assert not marker.exists(), "the smuggled code ran"


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_simulated_sites_refuse_a_job_altered_in_transit(federation, tmp_path, attack):
    root, built, made = federation
    tamper, reason = ATTACKS[attack]
    marker = tmp_path / "marker"
    run_dir = simulator.create_run(built, {site.name: site.path for site in made}, root / "runs")
    for app in simulator.prepare(run_dir).glob("app_site-*"):
        tamper(app, marker)
    assert_refused_everywhere(simulator.start(run_dir), built, reason, marker)


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_poc_sites_refuse_a_job_altered_in_transit(poc, tmp_path, attack):  # conftest's POC, this module's own
    built = build_validated(tmp_path / "nb")
    for name in SITES:
        signing.approve(sites.open_site(poc.site_dir(name)), built.id, {"tiny": "tiny"}, poc.reviewer_key(name))
    tamper, reason = ATTACKS[attack]
    marker = tmp_path / "marker"
    run_dir = remote.create_run(built, list(SITES), tmp_path / "runs", "poc", poc.admin_kit, pocs.ADMIN)
    for app in remote.prepare(run_dir, built).glob("app_site-*"):
        tamper(app, marker)
    assert_refused_everywhere(remote.start(run_dir), built, reason, marker)
