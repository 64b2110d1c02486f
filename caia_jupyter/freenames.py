"""Names federated cells use but do not define, and how a bundle carries them.

Resolved from the researcher's kernel: a module becomes an import line, a plain literal
becomes source, any other value is captured with cloudpickle as an opaque file that the
manifest flags and reviewers see called out. Functions and classes from local cells are
refused instead: reviewers must be able to read code that runs at their site.
"""

from __future__ import annotations

import builtins
import math
import symtable
import types
from collections.abc import Mapping
from dataclasses import dataclass

import cloudpickle

from .errors import NotebookError

MODULE_DUNDERS = {"__name__", "__doc__", "__file__", "__spec__", "__loader__", "__package__", "__builtins__"}
KERNEL_ONLY = {"get_ipython", "display", "In", "Out", "exit", "quit", "_ih", "_oh", "_dh"}
MAX_LITERAL_CHARS = 10_000


@dataclass(frozen=True)
class Capture:
    name: str
    kind: str  # "import" | "literal" | "opaque"
    source: str  # the line defining the name in the federated module
    type_name: str  # what the value is, for reviewers
    payload: bytes = b""  # cloudpickle bytes of an opaque value


def free_names(source: str) -> list[str]:
    """Global names `source` reads but never binds (builtins excluded), sorted."""
    top = symtable.symtable(source, "federated", "exec")
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
    if isinstance(value, types.ModuleType):
        module = value.__name__
        line = f"import {module}" if module == name else f"import {module} as {name}"
        if "." in module and module.rsplit(".", 1)[1] == name:
            line = f"from {module.rsplit('.', 1)[0]} import {name}"
        return Capture(name, "import", line, "module")
    literal = literal_source(value)
    if literal is not None and len(literal) <= MAX_LITERAL_CHARS:
        return Capture(name, "literal", f"{name} = {literal}", type(value).__name__)
    if isinstance(value, (types.FunctionType, type)) and getattr(value, "__module__", None) == "__main__":
        raise NotebookError(
            f"federated code uses {name!r}, defined in a local cell; move its definition into a %%federated cell "
            "so reviewers can read it"
        )
    try:
        payload = cloudpickle.dumps(value, protocol=5)
    except Exception as e:  # cloudpickle raises many kinds
        raise NotebookError(f"cannot capture {name!r} ({type(value).__name__}) for the sites: {e}") from e
    kind = type(value)
    loader = f"{name} = _caia_load_captured({name!r})"
    return Capture(name, "opaque", loader, f"{kind.__module__}.{kind.__qualname__}", payload)


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
