"""Names federated cells use but do not define, and how a bundle carries them.

Resolved from the researcher's kernel: a module becomes an import line, a short plain literal
becomes source, any other value is captured as a pickle file that the manifest flags and
reviewers see called out; it may only build a plain value (numbers, dates, numpy scalars: see
`captured`), since unpickling runs whatever a pickle names. Functions and classes from local cells are
refused instead: reviewers must be able to read code that runs at their site. So is a value
that looks like data (a table, an array, a tensor, a long collection, a long text): data is
read at each site by `load_data(ctx)`, never carried in a bundle.
"""

from __future__ import annotations

import builtins
import collections
import keyword
import math
import pickle
import re
import symtable
import types
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass

from ..contracts import captured
from ..contracts.errors import NotebookError

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")  # an ASCII dotted module name
MODULE_DUNDERS = {"__name__", "__doc__", "__file__", "__spec__", "__loader__", "__package__", "__builtins__"}
KERNEL_ONLY = {"get_ipython", "display", "In", "Out", "exit", "quit", "_ih", "_oh", "_dh"}
MAX_LITERAL_CHARS = 10_000  # longer source is not a setting a reviewer reads; it is refused
# Settings (layer sizes, label maps, a few hyperparameters) hold a handful of items; a
# collection with more, counted through every nesting level, is taken for data (ids, rows).
MAX_CAPTURED_ITEMS = 64
# An opaque value is a small object (a tokenizer, a scaler); a bigger pickle is data in disguise,
# and `caia unpack` must accept every bundle `caia pack` writes.
MAX_OPAQUE_BYTES = 4 << 20
# (top-level module, class) of values that hold data rows, found anywhere in a value's class
# hierarchy; matched by name so that checking imports none of these libraries. Every numpy
# array and torch tensor counts, a 0-d one too: one rule, and a single number passes as
# float(x) or param.KEY=VALUE.
DATA_TYPES = {
    ("pandas", "DataFrame"), ("pandas", "Series"), ("pandas", "Index"),
    ("numpy", "ndarray"), ("torch", "Tensor"),
    ("polars", "DataFrame"), ("polars", "LazyFrame"), ("polars", "Series"),
    ("pyarrow", "Table"), ("pyarrow", "RecordBatch"), ("pyarrow", "Array"), ("pyarrow", "ChunkedArray"),
}
DATA_HINT = ("data must not travel in a bundle: read it at each site in load_data(ctx) with ctx.dataset(NAME) "
             "(a setting: param.KEY=VALUE on the %%federated line)")


@dataclass(frozen=True)
class Capture:
    name: str
    kind: str  # "import" | "literal" | "opaque"
    source: str  # the line defining the name in the federated module
    type_name: str  # what the value is, for reviewers
    payload: bytes = b""  # the pickle of an opaque value (plain values only: see `captured`)


def free_names(source: str, locate: Callable[[int], str] = "line {}".format) -> list[str]:
    """Global names `source` reads but never binds (builtins excluded), sorted. Raises
    NotebookError for source Python cannot compile (cells that compile alone may not together),
    naming where with `locate(line of source)`."""
    try:
        top = symtable.symtable(source, "federated", "exec")
    except SyntaxError as e:
        raise NotebookError(f"the federated cells, joined in order, are not valid Python at {locate(e.lineno or 1)}: "
                            f"{e.msg}; fix the cell that holds it") from e
    if any(sym.get_name() == "*" for sym in top.get_symbols()):
        raise NotebookError("a federated cell uses `import *`; import names explicitly so reviewers see them")
    defined = {sym.get_name() for sym in top.get_symbols() if sym.is_local()}
    used: set[str] = set()

    def visit(table):
        for sym in table.get_symbols():
            if sym.is_declared_global() and sym.is_assigned():
                defined.add(sym.get_name())
            if sym.is_referenced() and (sym.is_global() or table is top and not sym.is_local()):
                used.add(sym.get_name())
        for child in table.get_children():
            visit(child)

    visit(top)
    return sorted(used - defined - set(dir(builtins)) - MODULE_DUNDERS)


def resolve(names: list[str], namespace: Mapping | None) -> list[Capture]:
    """Resolve free names from a kernel namespace (None when bundling from a file)."""
    captures = []
    for name in names:
        if name in KERNEL_ONLY:
            raise NotebookError(f"federated code uses {name}, which exists only in a Jupyter kernel; move it to a local cell")
        if namespace is None or name not in namespace:
            hint = (
                "run the cell that defines it, then bundle from the kernel with `%federated bundle`"
                if namespace is None
                else "run the cell that defines it first"
            )
            raise NotebookError(
                f"federated code uses {name!r}, which no federated cell defines; define it in a %%federated cell, or {hint}"
            )
        captures.append(capture(name, namespace[name]))
    return captures


def capture(name: str, value) -> Capture:
    """How the bundle carries kernel value `value` of free name `name`.

    Raises NotebookError for a module whose __name__ is not a dotted ASCII name (it would be
    written into an import line), a value that looks like data (see `data_reason`), a literal
    longer than MAX_LITERAL_CHARS, a function or class from a local cell, an opaque value
    bigger than MAX_OPAQUE_BYTES or one whose pickle needs more than plain constructors (see `captured`).
    """
    if isinstance(value, types.ModuleType):
        module = value.__name__
        if not isinstance(module, str) or not _DOTTED.fullmatch(module) or any(map(keyword.iskeyword, module.split("."))):
            shown = repr(module)[:100] if isinstance(module, str) else f"a {type(module).__name__}"
            raise NotebookError(f"federated code uses {name!r}, a module whose name {shown} is not a dotted Python name; "
                                "import the module in a %%federated cell")
        line = f"import {module}" if module == name else f"import {module} as {name}"
        if "." in module and module.rsplit(".", 1)[1] == name:
            line = f"from {module.rsplit('.', 1)[0]} import {name}"
        return Capture(name, "import", line, "module")
    reason = data_reason(value)
    if reason:
        raise NotebookError(f"federated code uses {name!r}, {reason} from the kernel; {DATA_HINT}")
    literal = literal_source(value)
    if literal is not None:
        if len(literal) > MAX_LITERAL_CHARS:
            raise NotebookError(
                f"federated code uses {name!r}, a {type(value).__name__} of {len(literal)} characters as source "
                f"(at most {MAX_LITERAL_CHARS}); {DATA_HINT}"
            )
        return Capture(name, "literal", f"{name} = {literal}", type(value).__name__)
    if isinstance(value, (types.FunctionType, type)) and getattr(value, "__module__", None) == "__main__":
        raise NotebookError(
            f"federated code uses {name!r}, defined in a local cell; move its definition into a %%federated cell "
            "so reviewers can read it"
        )
    try:
        payload = pickle.dumps(value, protocol=5)
    except Exception as e:  # pickling raises many kinds
        raise NotebookError(f"cannot capture {name!r} ({type(value).__name__}) for the sites: {e}") from e
    if len(payload) > MAX_OPAQUE_BYTES:
        raise NotebookError(
            f"federated code uses {name!r}, a {type(value).__name__} that pickles to {len(payload) >> 20} MiB "
            f"(at most {MAX_OPAQUE_BYTES >> 20} MiB); {DATA_HINT}"
        )
    try:
        captured.load(payload)
    except captured.NotPlain as e:
        raise NotebookError(f"cannot capture {name!r} ({type(value).__name__}) for the sites: {e}; "
                            "caia captures only plain values: define it in a %%federated cell") from None
    loader = f"{name} = _caia_load_captured({name!r})"
    return Capture(name, "opaque", loader, captured.type_name(value), payload)


def data_reason(value) -> str | None:
    """What makes `value` look like data ("a pandas.DataFrame", "a list of more than 64 items"), or None.

    Looks into lists, tuples, sets, deques and mappings at every level, counting their items
    against MAX_CAPTURED_ITEMS and their texts against MAX_LITERAL_CHARS; imports no library.
    """
    items, pending, seen = 0, [value], set()
    while pending:
        current = pending.pop()
        found = _data_type(current)
        if found is None and isinstance(current, (str, bytes, bytearray)) and len(current) > MAX_LITERAL_CHARS:
            found = f"{type(current).__name__} of {len(current)} characters"
        if found:
            return f"a {found}" if current is value else f"a {type(value).__name__} holding a {found}"
        if id(current) in seen or not isinstance(current, (Mapping, list, tuple, Set, collections.deque)):
            continue
        seen.add(id(current))
        items += len(current)
        if items > MAX_CAPTURED_ITEMS:
            return f"a {type(value).__name__} of more than {MAX_CAPTURED_ITEMS} items"
        pending += [part for pair in current.items() for part in pair] if isinstance(current, Mapping) else list(current)
    return None


def _data_type(value) -> str | None:
    for cls in type(value).__mro__:
        module = (getattr(cls, "__module__", None) or "").split(".")[0]
        if (module, cls.__name__) in DATA_TYPES:
            return f"{module}.{cls.__name__}"
    return None


def literal_source(value) -> str | None:
    """Deterministic Python source for a plain literal, or None if `value` is not one."""
    if value is None or isinstance(value, (bool, int, str, bytes)):
        return repr(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        items = [literal_source(v) for v in value]
        if None in items or type(value) not in (list, tuple):
            return None
        if isinstance(value, tuple):
            return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
        return "[" + ", ".join(items) + "]"
    if type(value) is dict:
        pairs = [(literal_source(k), literal_source(v)) for k, v in value.items()]
        if any(k is None or v is None for k, v in pairs):
            return None
        return "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"
    if type(value) in (set, frozenset):
        items = [literal_source(v) for v in value]
        if None in items:
            return None
        body = ", ".join(sorted(items))
        if type(value) is frozenset:
            return f"frozenset({{{body}}})" if items else "frozenset()"
        return f"{{{body}}}" if items else "set()"
    return None
