"""Values captured from the researcher's kernel travel as pickles that can only build plain values.

Unpickling calls whatever a pickle names, and a value chooses how it pickles (and what type it
claims): a captured value is code in disguise unless loading it can call nothing else. So a
captured pickle may name only the constructors in `ALLOWED` (numbers, dates, numpy scalars and
dtypes, torch dtypes, a few containers); `load` resolves nothing else. Bundling refuses a value
that needs more, `caia verify` and the site guard refuse such a file, and the site loads every
captured value with `load`.
"""

from __future__ import annotations

import io
import pickle

TORCH_DTYPES = ("bfloat16", "bool", "complex64", "complex128", "float16", "float32", "float64",
                "int8", "int16", "int32", "int64", "uint8")
ALLOWED = {  # (module, name) a captured pickle may resolve; each builds a plain value and runs nothing else
    ("builtins", "complex"), ("builtins", "range"), ("builtins", "slice"),
    ("collections", "OrderedDict"),
    ("datetime", "date"), ("datetime", "datetime"), ("datetime", "time"), ("datetime", "timedelta"), ("datetime", "timezone"),
    ("decimal", "Decimal"), ("fractions", "Fraction"),
    ("numpy", "dtype"), ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
    *(("torch", name) for name in TORCH_DTYPES),
}


class NotPlain(ValueError):
    """A captured pickle that needs more than ALLOWED to load, or is no pickle at all."""


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED:
            raise NotPlain(f"it needs {module}.{name} to load, which could run any code")
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise NotPlain("it refers to an object outside the pickle")


def load(data: bytes):
    """The value a captured pickle holds, built with ALLOWED constructors only; raises NotPlain."""
    try:
        return _PlainUnpickler(io.BytesIO(data)).load()
    except NotPlain:
        raise
    except Exception as e:  # a damaged pickle raises many kinds
        raise NotPlain(f"it is not a readable pickle ({type(e).__name__})") from e


def type_name(value) -> str:
    """`module.QualifiedName` of a value's type, as the manifest records it."""
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def problems(name: str, data: bytes, claimed_type: str | None = None) -> list[str]:
    """Why captured file `name` may not travel or load at a site; [] if it builds a plain value
    of `claimed_type` (when given, the type the manifest and the review show)."""
    try:
        value = load(data)
    except NotPlain as e:
        return [f"{name} is not a plain captured value: {e}; define the value in a %%federated cell instead"]
    if claimed_type is not None and type_name(value) != claimed_type:
        return [f"{name} holds a {type_name(value)}, not the {claimed_type} its manifest entry says"]
    return []
