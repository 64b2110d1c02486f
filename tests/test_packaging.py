"""Packaging facts that must stay true: one version, Binder pinned to what pyproject allows."""

import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import caia_jupyter
import pytest

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def pyproject_dependencies() -> dict[str, Requirement]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {Requirement(d).name: Requirement(d) for d in deps}


def binder_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "binder" / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            specs = list(requirement.specifier)
            assert len(specs) == 1 and specs[0].operator == "==", f"binder must pin {line} with =="
            pins[requirement.name] = specs[0].version
    return pins


def test_binder_pins_every_dependency_within_pyproject_ranges():
    deps, pins = pyproject_dependencies(), binder_pins()
    assert set(pins) == set(deps), f"binder and pyproject list different packages: {set(pins) ^ set(deps)}"
    for name, requirement in deps.items():
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"binder pins {name}=={pins[name]}, outside pyproject's {requirement.specifier}"
        )
        exact = [s.version for s in requirement.specifier if s.operator == "=="]
        assert not exact or exact == [pins[name]], f"{name}: pyproject pins {exact}, binder {pins[name]}"


def test_binder_installs_the_package_itself():
    assert "pip install --no-deps ." in (REPO / "binder" / "postBuild").read_text()


def test_one_version_everywhere():
    declared = json.loads((REPO / "labextension" / "package.json").read_text())["version"]
    installed = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "caia-jupyter" / "package.json"
    assert caia_jupyter.__version__ == importlib.metadata.version("caia-jupyter") == declared
    assert json.loads(installed.read_text())["version"] == declared


def test_jupyter_lists_both_extensions_enabled_and_ok():
    def listing(*command):
        done = subprocess.run([str(Path(sys.executable).with_name("jupyter")), *command], capture_output=True, text=True)
        return re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)  # without terminal colours

    assert f"caia-jupyter v{caia_jupyter.__version__} enabled OK (python, caia-jupyter)" in listing("labextension", "list")
    servers = listing("server", "extension", "list")
    assert "caia_jupyter enabled" in servers and f"caia_jupyter {caia_jupyter.__version__} OK" in servers


def test_the_committed_run_widget_is_the_bundle_of_its_sources(tmp_path):
    """kernel/static/run_widget.{js,css} are esbuild's output of labextension/src/widget.ts: rebuilt, identical."""
    esbuild = REPO / "labextension" / "node_modules" / ".bin" / "esbuild"
    if not esbuild.exists():
        pytest.skip("labextension/node_modules is not installed: `jlpm install` in labextension/")
    script = json.loads((REPO / "labextension" / "package.json").read_text())["scripts"]["build:widget"]
    command = script.replace("../caia_jupyter/kernel/static/run_widget.js", str(tmp_path / "run_widget.js"))
    subprocess.run(f"node_modules/.bin/{command}", shell=True, cwd=REPO / "labextension", check=True)
    static = REPO / "caia_jupyter" / "kernel" / "static"
    for name in ("run_widget.js", "run_widget.css"):
        fresh, committed = (tmp_path / name).read_bytes(), (static / name).read_bytes()
        assert fresh == committed, f"{name} is stale: run `jlpm build` in labextension/"
