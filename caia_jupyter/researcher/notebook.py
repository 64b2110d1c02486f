"""Read a saved notebook and take out its federated cells, in order.

Only the source of `%%federated` code cells matters, with its line endings made "\n":
outputs, execution counts, metadata, cell ids and how the file ends its lines never reach a
bundle, so re-running or re-saving a notebook cannot change its bundle id.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import itertools
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..contracts.errors import NotebookError
from ..contracts.sourcecheck import source_problems
from . import annotations

# A `%federated explore` request line (`researcher.explore`), or its value assigned to a name.
REQUEST_LINE = re.compile(r"\s*(?:\w+\s*=\s*)?%federated explore\s(.*)")


@dataclass(frozen=True)
class FederatedCell:
    ordinal: int  # 1-based among federated cells
    index: int  # 0-based among all cells of the notebook
    header: annotations.Header
    source: str  # the code IPython hands to %%federated: the cell below its %%federated line, "\n" line ends
    intro: str  # markdown cells right above it, shown to reviewers
    line_offset: int = 1  # lines of the notebook cell above `source` (the %%federated line, blank lines above it)

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
    """Read, validate and check the federated cells of the notebook at `path`.

    Reads nbformat 4.0 to 4.5, with or without cell ids (duplicates too: ids never reach a
    bundle), `source` as a string or a list of lines. Raises NotebookError naming the notebook,
    or the cell and its line as JupyterLab numbers it (from 1, the %%federated line included).
    """
    path = Path(path)
    cells, intro, raw = [], [], _load(path)
    for index, cell in enumerate(raw):
        if cell["cell_type"] == "markdown":
            intro.append(normalise_newlines(cell["source"]))
            continue
        if cell["cell_type"] == "code":
            where = f"notebook cell {index + 1}"
            text = normalise_newlines(cell["source"])
            found = split_cell(text, where)
            if found is not None:
                header, body, offset = found
                fc = FederatedCell(len(cells) + 1, index, header, body, "\n\n".join(intro), offset)
                # The lines above the body are text (option values may be any left-to-right text), the
                # body is Python; padded so that lines are numbered as JupyterLab numbers them.
                above = "\n".join(text.split("\n")[:offset])
                problems = source_problems(fc.label, above.encode(), python=False)
                problems += source_problems(fc.label, ("\n" * offset + body).encode())
                if problems:
                    raise NotebookError(problems[0])
                check_source(fc.source, fc.label, offset)
                cells.append(fc)
        intro = []
    if not cells:
        explores = any(REQUEST_LINE.match(line) for c in raw if c["cell_type"] == "code" for line in c["source"].splitlines())
        raise NotebookError(
            f"{path} has no federated cells; start the cells meant for the sites with %%federated"
            + (f" (its %federated explore line makes a statistics bundle: caia explore {path.name} --sites ...)" if explores else "")
        )
    settings = annotations.merge([(c.label, c.header) for c in cells])
    return FederatedNotebook(path, tuple(cells), settings)


def _load(path: Path) -> list[dict]:
    """The cells of the notebook at `path`, each {"cell_type", "source" (a string)}, once the
    notebook is checked against nbformat's own JSON schema for its minor version.

    nbformat's schema files, checked with fastjsonschema (as nbformat itself can): importing
    nbformat would import jsonschema and its format checkers, about 1.7 s of the CLI's start.
    Raises NotebookError, one line, for a file that is missing, not JSON, not nbformat 4, or
    not valid against the schema.
    """
    if not path.is_file():
        raise NotebookError(f"notebook {path} does not exist; save it first or check the path")
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NotebookError(f"{path} is not a notebook: not valid JSON ({e}); open and re-save it in Jupyter") from e
    except RecursionError as e:  # JSON nested deeper than Python's recursion limit
        raise NotebookError(f"{path} is not a notebook caia reads: its JSON is nested too deeply; "
                            "open and re-save it in Jupyter") from e
    major = nb.get("nbformat") if isinstance(nb, dict) else None
    if major != 4:
        raise NotebookError(f"{path} is not an nbformat 4 notebook (nbformat {major!r}); open and re-save it in JupyterLab")
    minor = nb.get("nbformat_minor")
    for cell in nb.get("cells") if isinstance(nb.get("cells"), list) else ():
        if isinstance(cell, dict) and isinstance(minor, int) and minor < 5:
            # Tools write cell ids into older minors too; their schema has none. Ids never reach a bundle.
            cell.pop("id", None)
        elif isinstance(cell, dict):
            cell.setdefault("id", "none")  # 4.5 requires ids; nbformat makes one up for a cell without
    try:
        _validator(_schema_file(minor))(nb)
    except RecursionError as e:
        raise NotebookError(f"{path} is not a notebook caia reads: it is nested too deeply; re-save it in Jupyter") from e
    except _schema_error() as e:
        reason = (str(e) or type(e).__name__).splitlines()[0]
        raise NotebookError(f"{path} is not a valid notebook: {reason}; re-save it in Jupyter") from e
    return [{"cell_type": c["cell_type"], "source": "".join(c["source"]) if isinstance(c["source"], list) else c["source"]}
            for c in nb["cells"]]


def _schema_file(minor) -> Path:
    """nbformat's schema file for 4.`minor`: its current 4.x schema for a minor it does not know (or
    one not an int), as nbformat does."""
    folder = Path(importlib.util.find_spec("nbformat").origin).parent / "v4"  # finds it without importing it
    schema = folder / f"nbformat.v4.{minor}.schema.json"
    return schema if type(minor) is int and schema.is_file() else folder / "nbformat.v4.schema.json"


@functools.cache  # one per schema file nbformat ships: a bounded cache
def _validator(schema: Path):
    """fastjsonschema's check of the nbformat schema in the file `schema` (`_schema_file`)."""
    import fastjsonschema

    return fastjsonschema.compile(json.loads(schema.read_text(encoding="utf-8")))


def _schema_error():
    import fastjsonschema

    return fastjsonschema.JsonSchemaException


def normalise_newlines(text: str) -> str:
    """`text` with every CRLF and lone CR made LF: line endings are how a file was saved, not code."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def split_cell(source: str, where: str) -> tuple[annotations.Header, str, int] | None:
    """(header, body, line offset) of a `%%federated` code cell, None for a local cell.

    A cell is federated exactly when IPython runs it as the `%%federated` cell magic: IPython's
    own input transformer decides (it skips blank lines above the magic and removes indentation
    common to every line), and `body` is what it hands to the magic. `offset` counts the lines
    of the cell above `body`. Raises NotebookError naming `where` for a `%%federated` that is
    not the cell's first line but that IPython reads as a magic: below a comment or code, or
    indented alone (it fails in the kernel), or in the text of another magic such as `%%time`
    (caia refuses it whatever that magic does with its text: a cell is bundled only when
    `%%federated` opens it); and for a cell holding `%%federated` that IPython cannot read.
    """
    from IPython.core.inputtransformer2 import TransformerManager

    text = _ensure_newline(normalise_newlines(source))
    try:
        transformed = TransformerManager().transform_cell(text)
    except SyntaxError as e:
        if annotations.MAGIC not in text:
            return None  # a local cell IPython rejects: the kernel says so, it is not ours to bundle
        raise NotebookError(f"{where}: IPython cannot read this cell ({e.msg}); fix it") from None
    call = _cell_magic_call(transformed)
    if call is None or not call[0].startswith("federated"):
        _refuse_stray_magic(text, transformed, where)
        return None
    name, line, body = call
    offset = text.count("\n") - body.count("\n")
    if name != "federated":
        raise NotebookError(f"{where} line {offset}: IPython reads the cell magic as %%{name!r}, which does not exist; "
                            "write %%federated, then a space before each option")
    try:
        header = annotations.parse_options(line)
    except NotebookError as e:
        raise NotebookError(f"{where} line {offset}: {e}") from None
    return header, body, offset


def _refuse_stray_magic(text: str, transformed: str, where: str) -> None:
    """Raise NotebookError when IPython reads `%%federated` in a cell that does not start with it
    (`transformed` is IPython's reading of `text`), or cannot read a cell that holds it."""
    stray = next(_stray_magics(transformed, None), False)
    if stray is not False:
        if stray is not None:
            how = f"it is inside {stray}, and only a cell that %%federated opens is bundled"
        else:
            first = next(line for line in text.splitlines() if line.strip())
            indented = first.lstrip().startswith(annotations.MAGIC)
            how = (f"{'it is indented' if indented else 'a line is above it'}: IPython does not run it as a "
                   "cell magic and the cell fails in the kernel")
        raise NotebookError(
            f"{where}: %%federated must be its first line, unindented ({how}); start the cell with %%federated"
        )
    if annotations.MAGIC in text:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                compile(transformed, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
        except (SyntaxError, ValueError) as e:  # e.g. a byte-order mark before %%federated
            reason = e.msg if isinstance(e, SyntaxError) else str(e)
            raise NotebookError(f"{where}: IPython cannot read this cell ({reason}); fix it") from None


def _stray_magics(transformed: str, outer: str | None):
    """For each place IPython would run `%%federated` in code it turned into `transformed`,
    other than as the whole cell's magic: the outermost magic whose text holds it ("%%time"),
    or None when it sits in the cell itself (IPython reads it there as a line magic that does not
    exist). The text of any other magic is read the same way, recursively."""
    from IPython.core.inputtransformer2 import TransformerManager

    # IPython writes each magic call on a line of its own: read line by line, so that the magics
    # of code Python cannot parse as a whole (an indented line magic) still show.
    for code in transformed.splitlines():
        try:
            nodes = list(ast.walk(ast.parse(code.strip())))
        except SyntaxError:
            continue
        for method, name, line, *body in filter(None, map(_magic_call, nodes)):
            if (method, name) in (("run_line_magic", "%federated"), ("run_cell_magic", "federated")):
                yield outer
            elif name != "federated":  # the %federated line magic (`%federated submit`) is local code
                try:
                    inner = TransformerManager().transform_cell(_ensure_newline(body[0] if body else line))
                except SyntaxError:
                    continue
                yield from _stray_magics(inner, outer or f"{'%%' if body else '%'}{name}")


def _magic_call(node: ast.AST) -> tuple[str, ...] | None:
    """(method, magic name, its line[, body]) when `node` is IPython's call of a magic with literal text."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("run_line_magic", "run_cell_magic")):
        return None
    args = node.args
    if len(args) != (3 if node.func.attr == "run_cell_magic" else 2) or not all(
            isinstance(a, ast.Constant) and isinstance(a.value, str) for a in args):
        return None
    return (node.func.attr, *(a.value for a in args))


def _cell_magic_call(transformed: str) -> tuple[str, str, str] | None:
    """(magic name, its line, body) when IPython turned a cell into one cell-magic call."""
    try:
        tree = ast.parse(transformed)
    except SyntaxError:
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Expr):
        return None
    call = _magic_call(tree.body[0].value)
    return call[1:] if call is not None and call[0] == "run_cell_magic" else None


def check_source(source: str, label: str, line_offset: int = 0) -> None:
    """Refuse code a site could not run: IPython-only syntax and Python syntax errors, including
    those only the compiler finds (`nonlocal` or `return` outside a function).

    `line_offset`: lines of the notebook cell above `source`, so that messages give the line
    JupyterLab shows. Raises NotebookError "<label> line <n>: ...".
    """
    from IPython.core.inputtransformer2 import TransformerManager

    plain = _ensure_newline(normalise_newlines(source))
    transformed = TransformerManager().transform_cell(plain)
    # IPython also drops blank lines at the top, removes indentation common to all lines and blanks
    # whitespace-only lines: none is IPython syntax (Python reports an indentation), so lines are
    # compared from the first that is not blank, stripped.
    lines = plain.splitlines()
    blank = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    pairs = itertools.zip_longest(lines[blank:], transformed.splitlines(), fillvalue="")
    for number, (ours, theirs) in enumerate(pairs, 1 + blank + line_offset):
        if ours.strip() != theirs.strip():
            raise NotebookError(
                f"{label} line {number} uses IPython syntax ({ours.strip()!r}), which cannot run at a site; "
                "move it to a local cell"
            )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarnings are for Python to show when the code runs
            compile(plain, label, "exec", dont_inherit=True)
    except SyntaxError as e:
        where = f" line {e.lineno + line_offset}" if e.lineno else ""
        raise NotebookError(f"{label}{where}: {type(e).__name__}: {e.msg}; fix the cell") from e
    except (ValueError, MemoryError, RecursionError) as e:  # a null byte; an expression nested too deeply
        raise NotebookError(f"{label}: Python cannot compile it ({type(e).__name__}); fix the cell") from e


def _ensure_newline(text: str) -> str:
    return text if text.endswith("\n") or not text else text + "\n"
