"""The NVFLARE internals the simulator relies on are checked against the installed NVFLARE at start-up."""

import json
import tomllib
from pathlib import Path

import pytest
from nvflare.app_common.executors.client_api import in_process_backend
from nvflare.private.fed.app.simulator.simulator_runner import SimulatorRunner

from caia_jupyter.contracts.errors import FlareError
from caia_jupyter.targets import nvflare_internals, simulator

REPO = Path(__file__).resolve().parents[1]


def test_the_installed_nvflare_is_the_verified_one_and_pinned():
    assert nvflare_internals.problems() == []
    nvflare_internals.check()
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"nvflare=={nvflare_internals.VERIFIED}" in dependencies


def reshaped_deploy(monkeypatch):
    monkeypatch.setattr(SimulatorRunner, "_deploy_apps", lambda self, job_name, data_bytes: None)
    return "SimulatorRunner._deploy_apps takes (self, job_name, data_bytes)"


def removed_poll_interval(monkeypatch):
    monkeypatch.delattr(in_process_backend, "_RESULT_POLL_INTERVAL")
    return "in_process_backend:_RESULT_POLL_INTERVAL is gone"


def removed_setup(monkeypatch):
    monkeypatch.delattr(SimulatorRunner, "setup")  # NVFLARE's own, which the guarded runner extends
    return "SimulatorRunner.setup is gone"


@pytest.mark.parametrize("change", [reshaped_deploy, removed_poll_interval, removed_setup])
def test_a_changed_internal_is_one_line_naming_the_nvflare_versions(monkeypatch, change):
    named = change(monkeypatch)
    with pytest.raises(FlareError) as refused:
        nvflare_internals.check()
    message = str(refused.value)
    assert "\n" not in message
    assert named in message
    assert message.startswith("the installed NVFLARE 2.9.0 changed what caia's simulator relies on: ")
    assert message.endswith("caia was verified on NVFLARE 2.9.0, which pyproject.toml pins: pip install nvflare==2.9.0")


def test_the_launcher_stops_before_the_simulator_starts_when_an_internal_changed(monkeypatch, tmp_path):
    named = reshaped_deploy(monkeypatch)
    (tmp_path / "run.json").write_text(json.dumps({"sites": {"site-1": "", "site-2": ""}, "min_clients": 2}))
    assert simulator.launch(tmp_path) == 1
    outcome = json.loads((tmp_path / "outcome.json").read_text())
    assert outcome["status"] == "failed" and named in outcome["message"]
    assert not (tmp_path / "workspace").exists()  # nothing of NVFLARE ran
