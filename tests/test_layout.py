"""Where code runs, enforced: the import contracts in pyproject.toml, checked by import-linter."""

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path, *args: str) -> subprocess.CompletedProcess:
    """`lint-imports` on the caia_jupyter package and the pyproject.toml under `root`."""
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "200"}  # wide: no wrapped lines
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml"), *args],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_the_import_contracts_hold():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 4 kept, 0 broken." in result.stdout


@pytest.fixture
def package_copy(tmp_path) -> Path:
    """A copy of caia_jupyter and pyproject.toml to break on purpose."""
    shutil.copytree(REPO / "caia_jupyter", tmp_path / "caia_jupyter",
                    ignore=shutil.ignore_patterns("__pycache__", "labextension", "*.js", "*.css"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    return tmp_path


BREAKS = {  # what is added where -> the contract it breaks, and the import named in the report
    "the site reads a notebook": ("site/context.py", "\n\ndef peek():\n    import nbformat\n", "site",
                                  "caia_jupyter.site.context -> nbformat"),
    "the site imports a widget through a contract": ("contracts/schema.py", "\nimport ipywidgets\n", "site",
                                                     "caia_jupyter.contracts.schema -> ipywidgets"),
    "the guard imports the researcher's bundle builder": ("site/guard.py", "\nfrom ..researcher import compose\n", "site",
                                                          "caia_jupyter.site.guard -> caia_jupyter.researcher.compose"),
    "the aggregator runs the site runtime": ("aggregator/components.py", "\nfrom ..site import runtime\n", "layers",
                                             "caia_jupyter.aggregator.components -> caia_jupyter.site.runtime"),
    "the contracts import a surface": ("contracts/errors.py", "\nfrom .. import cli\n", "layers",
                                       "caia_jupyter.contracts.errors -> caia_jupyter.cli"),
    "two researcher modules import each other": ("researcher/bundle.py", "\nfrom . import compose\n", "no-circles",
                                                 ".compose -> .bundle"),
}


@pytest.mark.parametrize("case", BREAKS)
def test_a_forbidden_import_breaks_its_contract(package_copy, case):
    module, added, contract, reported = BREAKS[case]
    with open(package_copy / "caia_jupyter" / module, "a") as f:
        f.write(added)
    result = lint_imports(package_copy, "--contract", contract)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0 kept, 1 broken" in result.stdout and reported in result.stdout, result.stdout


def dotted_names(text: str) -> set[str]:
    """caia_jupyter.x.y names in `text` (file names such as caia_jupyter.json left out)."""
    return {name for name in re.findall(r"\bcaia_jupyter(?:\.[A-Za-z_]\w*)+", text) if not name.endswith(".json")}


def test_every_dotted_name_of_caia_in_its_code_configs_and_docs_resolves():
    """Configs, launchers, generated code and docs name caia's modules by dotted path (the sites'
    app_validator, `python -m` launchers, the fork server's preloads, the bundle's runner, the
    validation notebook): after a move, each must still import."""
    files = [*(REPO / "caia_jupyter").rglob("*.py"), REPO / "README.md", *(REPO / "example_notebooks").glob("*.ipynb"),
             *(REPO / "binder").glob("*.ipynb"), *(REPO / "benchmarks").glob("*")]
    names = set().union(*(dotted_names(file.read_text()) for file in files if file.is_file()))
    assert "caia_jupyter.site.guard.CaiaAppValidator" in names and "caia_jupyter.targets.simulator" in names
    unresolved = []
    for name in sorted(names):
        parts = name.split(".")
        for split in range(len(parts), 0, -1):
            try:
                thing = importlib.import_module(".".join(parts[:split]))
                break
            except ImportError:
                continue
        try:
            for part in parts[split:]:
                thing = getattr(thing, part)
        except AttributeError:
            unresolved.append(name)
    assert unresolved == []


def non_blank_lines(package: str) -> int:
    """Non-blank lines of the .py files git holds in a package (not the generated _version.py), as
    the README counts them."""
    files = subprocess.run(["git", "ls-files", f"caia_jupyter/{package}/*.py"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    return sum(1 for file in files for line in (REPO / file).read_text().splitlines() if line.strip())


def test_the_readme_says_how_much_a_site_must_read():
    readme = (REPO / "README.md").read_text()
    stated = re.search(r"`caia_jupyter/site/`\s+is\s+(\d+)\s+non-blank\s+lines\s+of\s+Python,\s+and\s+the\s+contracts\s+it"
                       r"\s+builds\s+on\s+\(`caia_jupyter/contracts/`\)\s+(\d+)\s+more", readme)
    assert stated, "README's trust model must say how many lines caia_jupyter/site/ and contracts/ hold"
    actual = non_blank_lines("site"), non_blank_lines("contracts")
    assert tuple(map(int, stated.groups())) == actual, f"update the README's count to {actual}"
