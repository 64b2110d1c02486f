"""How a model's `state_dict` travels and how FedAvg averages it: one rule, entry by entry.

The server never imports torch, so every entry travels as a numpy array in its *carrier* dtype:
the entry's own dtype, except bfloat16 (numpy has none), carried as float32. The entry's own dtype
is the one in `build_model().state_dict()`, recorded when `caia submit` makes the initial weights
({entry: dtype name}, `DTYPES_FILE`); it travels with the job's initial model, and the global
model returns every entry in it (`global_model.pt` loads with `load_state_dict(strict=True)`).

The rule, over the updates kept in a round, each weighted by its site's `num_samples` w_i:
mean = sum(w_i * x_i) / sum(w_i), computed in float64, then

- floating entries (float16, bfloat16, float32, float64): the mean cast to the entry's dtype
  (round to nearest even; bfloat16 through its float32 carrier, as torch casts);
- integer entries (uint8, int8, int16, int32, int64; e.g. BatchNorm's `num_batches_tracked`): the
  mean rounded half to even, in the entry's dtype (exact while the values stay below 2**53);
- bool entries: True where the weighted mean is >= 0.5 (a weighted majority; a tie is True).

Any other entry (not a tensor; a complex, quantized or sparse tensor) is refused when the model is
built, naming the entry: at validation first, so nothing new fails at a site.
"""

from __future__ import annotations

import numpy as np

FLOATS = ("float16", "bfloat16", "float32", "float64")
INTEGERS = ("uint8", "int8", "int16", "int32", "int64")
SUPPORTED = (*FLOATS, *INTEGERS, "bool")
DTYPES_FILE = "model_dtypes.json"  # {entry: dtype name}


def carrier(dtype: str) -> np.dtype:
    """The numpy dtype an entry of torch dtype `dtype` (a name in SUPPORTED) travels in."""
    return np.dtype("float32" if dtype == "bfloat16" else dtype)


def average(updates: list[tuple[dict[str, np.ndarray], int]], dtypes: dict[str, str]) -> dict[str, np.ndarray]:
    """FedAvg of `updates`, [(arrays {entry: array}, num_samples > 0)], by the rule above; returns
    {entry: array in its carrier dtype}, in the order of `dtypes`. Every update must hold every
    entry of `dtypes` in the same shape (the server checks that first: updates are untrusted)."""
    total = float(sum(weight for _, weight in updates))
    out = {}
    for name, dtype in dtypes.items():
        mean = np.asarray(sum(np.asarray(arrays[name], np.float64) * float(weight) for arrays, weight in updates) / total)
        if dtype == "bool":
            mean = mean >= 0.5
        elif dtype in INTEGERS:
            mean = np.rint(mean)
        out[name] = np.asarray(mean, dtype=carrier(dtype))
    return out


def read_dtypes(value) -> dict[str, str]:
    """A dtype map from parsed JSON: {entry: a name in SUPPORTED}; raises ValueError otherwise."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and v in SUPPORTED for k, v in value.items()):
        raise ValueError(f"not a map of state_dict entries to dtypes caia averages ({', '.join(SUPPORTED)})")
    return dict(value)
