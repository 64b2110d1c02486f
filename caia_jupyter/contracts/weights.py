"""How a model's `state_dict` travels and how FedAvg averages it: one rule, entry by entry.

The server never imports torch, so every entry travels as a numpy array in its *carrier* dtype:
the entry's own dtype, except bfloat16 (numpy has none), carried as float32. The entry's own dtype
is the one in `build_model().state_dict()`, recorded when `caia submit` makes the initial weights
({entry: dtype name}, `DTYPES_FILE`); it travels with the job's initial model, and the global
model returns every entry in it (`global_model.pt` loads with `load_state_dict(strict=True)`).

The rule, over the updates kept in a round, each weighted by its site's `num_samples` w_i (an
integer, 1 <= w_i <= MAX_NUM_SAMPLES; W = sum(w_i)), the weighted mean being sum(w_i * x_i) / W:

- floating entries (float16, bfloat16, float32, float64): sum((w_i / W) * x_i) computed in float64,
  clipped to [min_i x_i, max_i x_i] (where the exact mean lies: float rounding never takes it out,
  so equal values stay unchanged and the mean of finite values is finite, even at float64's
  limits), cast to the entry's dtype (round to nearest even; bfloat16 through its float32 carrier,
  as torch casts);
- integer entries (uint8, int8, int16, int32, int64; e.g. BatchNorm's `num_batches_tracked`): the
  exact weighted mean (Python integers), rounded half to even, in the entry's dtype: always within
  its range, and equal values stay unchanged;
- bool entries: True where the exact weighted mean is >= 1/2 (a weighted majority; a tie is True).

Weight differences (manifest job.updates "weight_diff"): each site sends its weights minus the
global model it received, d_i = x_i - g, computed by NVFLARE's Client API in the carrier dtype. The
next global model is then g + (the weighted mean of the d_i): for floating entries the rule above
applied to the d_i (in float64, clipped to [min_i d_i, max_i d_i]) added to g in float64, kept within
the dtype's finite range, then cast;
for integer entries g + d_i in the carrier dtype is exactly x_i (numpy wraps both ways), averaged by
the rule above. A bool entry has no difference (numpy cannot subtract bools): a model with one is
refused for weight differences when its initial weights are made (`targets.job.initial_weights`).
A filter that turns an integer difference into floats (PercentilePrivacy, SVTPrivacy divide it by
the step count) makes the update unfit: exclude such entries (`num_batches_tracked`) with ExcludeVars.

The server averages only updates that fit (`aggregator.components.unusable`): every entry in its
carrier dtype and shape, floating values finite in the entry's own dtype (`finite`).

Any other entry (not a tensor; a complex, quantized or sparse tensor) is refused when the model is
built, naming the entry: at validation first, so nothing new fails at a site.
"""

from __future__ import annotations

import numpy as np

FLOATS = ("float16", "bfloat16", "float32", "float64")
INTEGERS = ("uint8", "int8", "int16", "int32", "int64")
SUPPORTED = (*FLOATS, *INTEGERS, "bool")
DTYPES_FILE = "model_dtypes.json"  # {entry: dtype name}
BFLOAT16_MAX = (2 - 2**-7) * 2.0**127  # the largest finite bfloat16, 3.39e38
MAX_NUM_SAMPLES = 2**53 - 1  # the largest num_samples: exact as a float (it is also reported as a metric)


def carrier(dtype: str) -> np.dtype:
    """The numpy dtype an entry of torch dtype `dtype` (a name in SUPPORTED) travels in."""
    return np.dtype("float32" if dtype == "bfloat16" else dtype)


def average(updates: list[tuple[dict[str, np.ndarray], int]], dtypes: dict[str, str], base: dict[str, np.ndarray],
            diff: bool = False) -> dict[str, np.ndarray]:
    """FedAvg of `updates`, [(arrays {entry: array}, num_samples: int > 0)], by the rule above, from the
    global model `base` {entry: array}; returns {entry: array in its carrier dtype}, in the order of
    `dtypes`. With `diff`, each update holds differences from `base` (`weight differences` below).

    An update may lack entries (a site's privacy filter, e.g. NVFLARE's ExcludeVars, removed them):
    it takes no part in those entries' means, and an entry no update holds keeps `base`'s value. Every
    entry an update holds must be in its carrier dtype and shape (the server checks that first:
    updates are untrusted)."""
    out = {}
    for name, dtype in dtypes.items():
        held = [(np.asarray(arrays[name]), int(weight)) for arrays, weight in updates if name in arrays]
        if not held:
            out[name] = np.asarray(base[name]).astype(carrier(dtype))
        elif diff and dtype in FLOATS:  # kept finite in the entry's dtype, as a mean of finite values is
            bound = BFLOAT16_MAX if dtype == "bfloat16" else float(np.finfo(carrier(dtype)).max)
            mean = np.clip(np.asarray(base[name], np.float64) + _mean(held, dtype), -bound, bound)
            out[name] = np.asarray(mean).astype(carrier(dtype))
        else:  # an integer difference is exact both ways (numpy wraps), so each site's value is base + difference
            with np.errstate(over="ignore"):
                values = [(np.asarray(base[name]) + value if diff else value, weight) for value, weight in held]
            out[name] = np.asarray(_mean(values, dtype)).astype(carrier(dtype))
    return out


def _mean(held: list[tuple[np.ndarray, int]], dtype: str) -> np.ndarray:
    """The weighted mean of one entry's values [(array, weight)] by the rule above, before the cast."""
    total = sum(weight for _, weight in held)
    values = [value for value, _ in held]
    if dtype in FLOATS:
        mean = sum(np.asarray(value, np.float64) * (weight / total) for value, weight in held)
        stacked = np.stack(values)
        return np.clip(mean, stacked.min(axis=0), stacked.max(axis=0))
    weighted = np.asarray(sum(value.astype(object) * weight for value, weight in held), dtype=object)  # exact: Python ints
    if dtype == "bool":
        return 2 * weighted >= total
    quotient, remainder = weighted // total, weighted % total  # 0 <= remainder < total
    return quotient + ((2 * remainder > total) | ((2 * remainder == total) & (quotient % 2 == 1)))


def finite(array: np.ndarray, dtype: str) -> bool:
    """Whether every value of `array` (an entry in its carrier dtype) is finite in the entry's dtype
    `dtype` (a name in SUPPORTED): not NaN, not infinite, and for bfloat16 (carried as float32) within
    bfloat16's range, so the global model never turns infinite when torch casts it back."""
    if dtype not in FLOATS:
        return True
    bound = BFLOAT16_MAX if dtype == "bfloat16" else np.finfo(array.dtype).max
    return bool(np.all(np.abs(array) <= bound))  # False for NaN too


def read_dtypes(value) -> dict[str, str]:
    """A dtype map from parsed JSON: {entry: a name in SUPPORTED}; raises ValueError otherwise."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and v in SUPPORTED for k, v in value.items()):
        raise ValueError(f"not a map of state_dict entries to dtypes caia averages ({', '.join(SUPPORTED)})")
    return dict(value)
