from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

import nbformat

import corpus
from caia_jupyter import cli
from caia_jupyter.researcher import compose, validation
from caia_jupyter.reviewer import signing
from caia_jupyter.site import sites
from caia_jupyter.targets.demo_sites import add_reviewer

REPO = Path(__file__).resolve().parents[1]
# Users' Python writes __pycache__ beside what it imports; so does every process the tests start.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False
# jp_fetch: the server extension in-process; the browser tests' `browser` and `lab`
pytest_plugins = ("pytest_jupyter.jupyter_server", "browser_fixtures")


@pytest.fixture
def write_notebook(tmp_path):
    """Write a corpus notebook by name (edited by `edit(nb)`) into a fresh folder; returns its path."""

    def write(name: str = "good", edit=None) -> Path:
        return write_corpus(name, tmp_path / "work", edit)

    return write


@pytest.fixture
def shell(tmp_path, monkeypatch):
    """An IPython shell with caia's magics loaded, working in tmp_path."""
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.chdir(tmp_path)
    InteractiveShell.clear_instance()
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "caia_jupyter")
    yield shell
    InteractiveShell.clear_instance()


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
    folder = tmp_path_factory.mktemp("validated")
    built = compose.build(corpus.write("good", folder))
    result = validation.validate(built)
    assert result.passed, result.error
    return built


def make_site(root, name, csv_text=corpus.SAMPLE_CSV):
    """A site directory whose catalog holds dataset `tiny`, trusting one reviewer whose private key
    is `reviewer_key(site)`, outside the site (as `caia demo` keeps its reviewers' keys)."""
    site = sites.init(root / name, name)
    data = root / name / "data.csv"
    data.write_text(csv_text)
    sites.add_dataset(site, "tiny", data)
    add_reviewer(site, reviewer_key(site))
    return site


def reviewer_key(site) -> Path:
    """The demo reviewer key of a site made by `make_site` or `demo_sites.make_sites`: <sites root>/../reviewers/<name>.key."""
    return site.path.parent.parent / "reviewers" / f"{site.name}.key"


def approve(site, bundle_id, releases, **options):
    """Approve `bundle_id` at `site` as its demo reviewer (see `reviewer_key`)."""
    return signing.approve(site, bundle_id, releases, reviewer_key(site), **options)


def load_benchmark(name: str):
    """The script benchmarks/NAME.py as a module (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_corpus(name, folder, edit=None) -> Path:
    """Write corpus notebook `name` into `folder`, edited by `edit(nb)` when given; returns its path."""
    path = corpus.write(name, folder)
    if edit:
        nb = nbformat.read(path, as_version=4)
        edit(nb)
        nbformat.write(nb, path)
    return path


def build_validated(folder, name="good", edit=None):
    """A corpus notebook (edited by `edit(nb)`), bundled and validated."""
    built = compose.build(write_corpus(name, folder, edit))
    assert validation.validate(built).passed
    return built


def set_source(nb, old, new):
    for cell in nb.cells:
        if old in cell.source:
            cell.source = cell.source.replace(old, new)
            return
    raise AssertionError(f"{old!r} not in the notebook")


@pytest.fixture(scope="module")
def poc(tmp_path_factory):
    """A real NVFLARE POC on loopback (server, site-1..3, admin kit), started once per test module;
    each site's catalog holds `tiny`. Always stopped at the end, leaving no process behind."""
    yield from started_poc(tmp_path_factory.mktemp("poc") / "ws")


def started_poc(workspace, he: bool = False):
    """Start a POC in `workspace` (with NVFLARE's HE contexts when `he`), give each site's catalog
    `tiny`, yield it, and stop it, asserting no NVFLARE process is left: the body of a POC fixture."""
    from caia_jupyter.targets import poc as pocs

    started = pocs.up(workspace, sites=3, he=he, say=lambda *a: None)
    try:
        for name in ("site-1", "site-2", "site-3"):
            data = started.site_dir(name) / "tiny.csv"
            data.write_text(corpus.SAMPLE_CSV)
            sites.add_dataset(sites.open_site(started.site_dir(name)), "tiny", data)
        yield started
    finally:
        pocs.down(workspace, say=lambda *a: None)
        assert started.processes() == [], "caia poc down left NVFLARE processes behind"
