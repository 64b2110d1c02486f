from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import corpus
from caia_jupyter import cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def write_notebook(tmp_path):
    """Write a corpus notebook by name into a fresh folder; returns its path."""

    def write(name: str = "good") -> Path:
        return corpus.write(name, tmp_path / "work")

    return write


@pytest.fixture
def caia(capsys):
    """Run the `caia` CLI in-process: returns (exit code, stdout, stderr)."""

    def run(*args) -> tuple[int, str, str]:
        code = cli.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def validated_good(tmp_path_factory):
    """The good corpus notebook, bundled and validated once per session (papermill, real kernel)."""
    from caia_jupyter import bundle, validation

    folder = tmp_path_factory.mktemp("validated")
    built = bundle.build(corpus.write("good", folder))
    result = validation.validate(built)
    assert result.passed, result.error
    return built


def copy_bundle(bundle_path: Path, destination: Path) -> Path:
    shutil.copytree(bundle_path, destination)
    return destination
