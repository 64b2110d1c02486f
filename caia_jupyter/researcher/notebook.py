"""Read a saved notebook and take out its federated cells, in order.

Only the source of `%%federated` code cells matters: outputs, execution counts and
metadata never reach a bundle, so re-running a notebook cannot change its bundle id.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..contracts.errors import NotebookError
from . import annotations


@dataclass(frozen=True)
class FederatedCell:
    ordinal: int  # 1-based among federated cells
    index: int  # 0-based among all cells of the notebook
    header: annotations.Header
    source: str  # the cell without its %%federated line
    intro: str  # markdown cells right above it, shown to reviewers

    @property
    def label(self) -> str:
        return f"federated cell {self.ordinal} (notebook cell {self.index + 1})"

    @property
    def first_line(self) -> str:
        return next((line.strip() for line in self.source.splitlines() if line.strip()), "")


@dataclass(frozen=True)
class FederatedNotebook:
    path: Path
    cells: tuple[FederatedCell, ...]
    settings: annotations.Settings


def read(path: str | Path) -> FederatedNotebook:
    """Read, validate and check the federated cells of the notebook at `path`."""
    import nbformat  # here, not at the top: its schema validator takes ~1 s to import

    path = Path(path)
    if not path.is_file():
        raise NotebookError(f"notebook {path} does not exist; save it first or check the path")
    try:
        text = path.read_text(encoding="utf-8")
        json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NotebookError(f"{path} is not a notebook: not valid JSON ({e}); open and re-save it in Jupyter") from e
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nbformat warns about missing cell ids, which do not matter here
            nb = nbformat.reads(text, as_version=4)
            nbformat.validate(nb)
    except (nbformat.ValidationError, nbformat.reader.NotJSONError, ValueError, KeyError, AttributeError, TypeError) as e:
        reason = (getattr(e, "message", None) or str(e) or type(e).__name__).splitlines()[0]
        raise NotebookError(f"{path} is not a valid notebook: {reason}; re-save it in Jupyter") from e

    cells, intro = [], []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            intro.append(cell.source)
            continue
        if cell.cell_type == "code":
            header, body = annotations.split_cell(cell.source)
            if header is not None:
                fc = FederatedCell(len(cells) + 1, index, header, _ensure_newline(body), "\n\n".join(intro))
                check_source(fc.source, fc.label)
                cells.append(fc)
        intro = []
    if not cells:
        raise NotebookError(
            f"{path} has no federated cells; start the cells meant for the sites with %%federated"
        )
    settings = annotations.merge([(c.label, c.header) for c in cells])
    return FederatedNotebook(path, tuple(cells), settings)


def check_source(source: str, label: str) -> None:
    """Refuse code a site could not run: IPython-only syntax and Python syntax errors, including
    those only the compiler finds (`nonlocal` or `return` outside a function)."""
    from IPython.core.inputtransformer2 import TransformerManager

    plain = _ensure_newline(source)
    transformed = TransformerManager().transform_cell(plain)
    if transformed != plain:
        for number, (ours, theirs) in enumerate(zip(plain.splitlines(), transformed.splitlines()), 1):
            if ours != theirs:
                break
        raise NotebookError(
            f"{label} line {number} uses IPython syntax ({ours.strip()!r}), which cannot run at a site; "
            "move it to a local cell"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarnings are for Python to show when the code runs
            compile(plain, label, "exec", dont_inherit=True)
    except SyntaxError as e:
        raise NotebookError(f"{label} line {e.lineno}: SyntaxError: {e.msg}; fix the cell") from e
    except (ValueError, MemoryError, RecursionError) as e:  # a null byte; an expression nested too deeply
        raise NotebookError(f"{label}: Python cannot compile it ({type(e).__name__}); fix the cell") from e


def _ensure_newline(text: str) -> str:
    return text if text.endswith("\n") or not text else text + "\n"
